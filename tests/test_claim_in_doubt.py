"""A claim whose append fails may still have reached the log: its claim marker (delivery report
lost), or its repair records (marker not written). Either fences the previous epoch on restore:
restore drops every record of an older epoch than one it has seen. So the server must refuse the
old epoch from then on too, or it acknowledges commits that no restore will ever apply.

Real Tansu broker; the fault is injected at the Changelog seam (tests/faultlog.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from confluent_kafka import Producer

from tests.faultlog import FaultyChangelog
from tests.infra import Broker
from tierstore.server.changelog_kafka import KafkaChangelog, KafkaConfig
from tierstore.server.config import ServerConfig
from tierstore.server.errors import FencedError, UnavailableError
from tierstore.server.logproto import CLAIM, data_headers
from tierstore.server.objectstore import LocalObjectStore
from tierstore.server.service import StoreService

pytestmark = pytest.mark.kafka


def _service(tmp: Path, name: str, log: object) -> StoreService:
    return StoreService(ServerConfig(data_dir=tmp / name),
                        LocalObjectStore(tmp / f"objects-{name}"), log)  # type: ignore[arg-type]


def _old_owner_commits(svc: StoreService, epoch: int) -> bool:
    """The previous owner commits once more: True if acknowledged, False if fenced."""
    try:
        svc.commit("acct", 0, epoch, 2, 0, [b"k"], [b"v2"], [], {"in:0": 2})
    except FencedError:
        return False
    return True


def _restored(tmp: Path, broker: Broker) -> tuple[bytes | None, dict[str, int]]:
    """The state a server on an empty data dir restores from the changelog alone."""
    fresh = _service(tmp, "fresh", KafkaChangelog(KafkaConfig(broker.bootstrap)))
    try:
        meta, _ = fresh.open("acct", 0, "kv", 1)
        return fresh.get("acct", 0, 0, [b"k"])[0], meta.offsets
    finally:
        fresh.shutdown(snapshot=False)


def _assert_restore_agrees(tmp: Path, broker: Broker, acked: bool) -> None:
    """A restore from the log keeps the old owner's second commit exactly when it was acked."""
    expected = (b"v2", {"in:0": 2}) if acked else (b"v1", {"in:0": 1})
    assert _restored(tmp, broker) == expected, (
        "an acknowledged commit was dropped on restore" if acked else "a fenced commit restored")


def test_a_claim_whose_marker_landed_unacknowledged_fences_the_old_epoch(
    tmp_path: Path, broker: Broker
) -> None:
    log = FaultyChangelog(KafkaChangelog(KafkaConfig(broker.bootstrap)))
    svc = _service(tmp_path, "a", log)
    try:
        old, _ = svc.open("acct", 0, "kv", 1)
        svc.commit("acct", 0, old.epoch, 1, 0, [b"k"], [b"v1"], [], {"in:0": 1})
        log.fail_append_after = lambda kind, keys: kind == CLAIM
        with pytest.raises(UnavailableError):
            svc.open("acct", 0, "kv", 1)  # the claim marker is in the log all the same
        acked = _old_owner_commits(svc, old.epoch)
    finally:
        svc.shutdown(snapshot=False)
    _assert_restore_agrees(tmp_path, broker, acked)


def test_newer_uncommitted_records_in_the_log_fence_the_old_epoch_after_a_reload(
    tmp_path: Path, broker: Broker
) -> None:
    svc = _service(tmp_path, "a", KafkaChangelog(KafkaConfig(broker.bootstrap)))
    try:
        old, _ = svc.open("acct", 0, "kv", 1)
        svc.commit("acct", 0, old.epoch, 1, 0, [b"k"], [b"v1"], [], {"in:0": 1})
    finally:
        svc.shutdown(snapshot=False)
    # A claim of the next epoch got its repair record into the log, and then failed before its
    # marker (the broker went away). The record carries the new epoch.
    producer = Producer({"bootstrap.servers": broker.bootstrap})
    producer.produce("tierstore-acct-changelog", b"v1", b"k", 0,
                     headers=data_headers(old.epoch + 1, 0))
    assert producer.flush(10) == 0
    # The server restarts on its data dir; the previous owner's handle commits again.
    svc = _service(tmp_path, "a", KafkaChangelog(KafkaConfig(broker.bootstrap)))
    try:
        acked = _old_owner_commits(svc, old.epoch)
    finally:
        svc.shutdown(snapshot=False)
    _assert_restore_agrees(tmp_path, broker, acked)

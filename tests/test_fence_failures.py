"""The offset fence (server/fence.py) runs after a commit's marker is acknowledged: the commit is
durable then, whatever the fence's own reads and appends do. A failure inside the fence must not
leave that commit out of the local state (the next claim would then write the older offsets
after it, and a restore would apply the commit's data with the older offsets: the input is
processed twice, and the server's state differs from the log's).

Real Tansu broker; the fence's read or repair append fails at the Changelog seam."""

from __future__ import annotations

from pathlib import Path

import pytest
from confluent_kafka import Producer

from tests.faultlog import FaultyChangelog
from tests.infra import Broker
from tierstore.server.changelog_kafka import KafkaChangelog, KafkaConfig
from tierstore.server.config import ServerConfig
from tierstore.server.errors import UnavailableError
from tierstore.server.logproto import data_headers
from tierstore.server.objectstore import LocalObjectStore
from tierstore.server.service import StoreService

pytestmark = pytest.mark.kafka


def _service(tmp: Path, name: str, log: object) -> StoreService:
    return StoreService(ServerConfig(data_dir=tmp / name),
                        LocalObjectStore(tmp / f"objects-{name}"), log)  # type: ignore[arg-type]


def _state(svc: StoreService) -> tuple[bytes | None, dict[str, int]]:
    meta, _ = svc.open("acct", 0, "kv", 1)
    return svc.get("acct", 0, 0, [b"k"])[0], meta.offsets


@pytest.mark.parametrize("fault", ["read", "repair-append"])
def test_a_failing_fence_keeps_the_durable_commit(
    fault: str, tmp_path: Path, broker: Broker
) -> None:
    log = FaultyChangelog(KafkaChangelog(KafkaConfig(broker.bootstrap)))
    svc = _service(tmp_path, "a", log)
    try:
        svc.open("acct", 0, "kv", 1)
        meta, _ = svc.open("acct", 0, "kv", 1)  # epoch 2
        svc.commit("acct", 0, meta.epoch, 1, 0, [b"k"], [b"v1"], [], {"in:0": 1})
        # A zombie of epoch 1 appends a record: the next commit's batch lands after it.
        producer = Producer({"bootstrap.servers": broker.bootstrap})
        producer.produce("tierstore-acct-changelog", b"zombie", b"z", 0,
                         headers=data_headers(meta.epoch - 1, 9))
        assert producer.flush(10) == 0
        if fault == "read":
            log.fail_reads = 1
        else:
            log.fail_append_before = lambda kind, keys: list(keys) == [b"z"]
        try:
            svc.commit("acct", 0, meta.epoch, 2, 0, [b"k"], [b"v2"], [], {"in:0": 2})
            acked = True
        except UnavailableError:  # in doubt: the worker reopens and learns the outcome
            acked = False
        assert log.fail_reads == 0 and log.fail_append_before is None, "no fault injected"
        here = _state(svc)
    finally:
        svc.shutdown(snapshot=False)
    assert here in ((b"v1", {"in:0": 1}), (b"v2", {"in:0": 2})), here
    if acked:
        assert here == (b"v2", {"in:0": 2})
    fresh = _service(tmp_path, "fresh", KafkaChangelog(KafkaConfig(broker.bootstrap)))
    try:
        assert _state(fresh) == here, "the server's state and the changelog's differ"
    finally:
        fresh.shutdown(snapshot=False)

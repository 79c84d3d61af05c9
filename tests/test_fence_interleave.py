"""Two servers believe they own one shard. The old owner's commit has its data records in the
log; the new owner's claim lands after them, and the old owner's commit marker right after that
claim (before the new owner's repair of the keys it found). Restore drops that marker (an older
epoch than the claim before it), and the new owner's repair overwrites the data: the commit is
not in the state. So the old owner must not acknowledge it: its fence must see the claim
between its own records and its marker, not only the records before its batch.

Real Tansu broker; the interleaving is forced at the Changelog seam."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from tests.faultlog import FaultyChangelog
from tests.infra import Broker
from tierstore.server.changelog_kafka import KafkaChangelog, KafkaConfig
from tierstore.server.config import ServerConfig
from tierstore.server.errors import FencedError
from tierstore.server.objectstore import LocalObjectStore
from tierstore.server.ports import Header
from tierstore.server.service import StoreService

pytestmark = pytest.mark.kafka

WAIT_S = 20.0


class OldOwnerLog(FaultyChangelog):
    """Holds the next commit's marker until told to go, once its data records are acked."""

    def __init__(self, inner: KafkaChangelog) -> None:
        super().__init__(inner)
        self.armed = False
        self.data_landed = threading.Event()
        self.go = threading.Event()
        self.marker_landed = threading.Event()

    def append_batch(self, store: str, partition: int, keys: Sequence[bytes],
                     values: Sequence[bytes | None], headers: Sequence[Header],
                     marker_value: bytes, marker_headers: Sequence[Header],
                     while_waiting: Callable[[], None] | None = None) -> int:
        if not self.armed:
            return super().append_batch(store, partition, keys, values, headers, marker_value,
                                        marker_headers, while_waiting)
        self.armed = False
        inner = self.inner
        assert isinstance(inner, KafkaChangelog)

        def hold() -> None:
            if while_waiting is not None:
                while_waiting()
            assert inner._get_producer().flush(WAIT_S) == 0  # the data records are in the log
            self.data_landed.set()
            assert self.go.wait(WAIT_S)

        try:
            return inner.append_batch(store, partition, keys, values, headers, marker_value,
                                      marker_headers, hold)
        finally:
            self.marker_landed.set()


class NewOwnerLog(FaultyChangelog):
    """Lets the old owner's marker land before its own repair append (the second append)."""

    def __init__(self, inner: KafkaChangelog, old: OldOwnerLog) -> None:
        super().__init__(inner)
        self.old = old
        self.armed = False

    def append_batch(self, store: str, partition: int, keys: Sequence[bytes],
                     values: Sequence[bytes | None], headers: Sequence[Header],
                     marker_value: bytes, marker_headers: Sequence[Header],
                     while_waiting: Callable[[], None] | None = None) -> int:
        if self.armed and keys:  # the repair of the keys found before its claim
            self.armed = False
            self.old.go.set()
            assert self.old.marker_landed.wait(WAIT_S)
        return super().append_batch(store, partition, keys, values, headers, marker_value,
                                    marker_headers, while_waiting)


def _service(tmp: Path, name: str, log: object, objects: str = "objects") -> StoreService:
    return StoreService(ServerConfig(data_dir=tmp / name),
                        LocalObjectStore(tmp / objects), log)  # type: ignore[arg-type]


def test_a_claim_between_a_batch_and_its_marker_fences_the_commit(
    tmp_path: Path, broker: Broker
) -> None:
    log_a = OldOwnerLog(KafkaChangelog(KafkaConfig(broker.bootstrap)))
    log_b = NewOwnerLog(KafkaChangelog(KafkaConfig(broker.bootstrap)), log_a)
    a, b = _service(tmp_path, "a", log_a), _service(tmp_path, "b", log_b)
    outcome: list[object] = []
    try:
        meta, _ = a.open("acct", 0, "kv", 1)
        a.commit("acct", 0, meta.epoch, 1, 0, [b"k"], [b"v1"], [], {"in:0": 1})
        b.registry.shard(b.registry.describe("acct"), 0)  # b loads the shard (to the log's end)

        def old_owner_commits() -> None:
            try:
                a.commit("acct", 0, meta.epoch, 2, 0, [b"k"], [b"v2"], [], {"in:0": 2})
                outcome.append("acknowledged")
            except FencedError as exc:
                outcome.append(exc)

        log_a.armed = log_b.armed = True
        t = threading.Thread(target=old_owner_commits)
        t.start()
        assert log_a.data_landed.wait(WAIT_S)
        b.open("acct", 0, "kv", 1)  # the takeover: its claim lands after a's data records
        t.join(WAIT_S)
        assert outcome, "the old owner's commit did not finish"
    finally:
        log_a.go.set()
        a.shutdown(snapshot=False)
        b.shutdown(snapshot=False)
    fresh = _service(tmp_path, "fresh", KafkaChangelog(KafkaConfig(broker.bootstrap)),
                     "objects-fresh")  # restores from the changelog alone
    try:
        m, _ = fresh.open("acct", 0, "kv", 1)
        restored = fresh.get("acct", 0, 0, [b"k"])[0], m.offsets
    finally:
        fresh.shutdown(snapshot=False)
    if outcome[0] == "acknowledged":
        assert restored == (b"v2", {"in:0": 2}), "an acknowledged commit is not in the state"
    else:
        assert restored == (b"v1", {"in:0": 1})

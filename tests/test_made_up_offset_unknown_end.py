"""tests/drills/test_unknown_offset.py covers a made-up marker offset (Tansu answers a retried
marker it takes for a duplicate with offset 0) while the shard knows where the log ends. This
is the case where it does not: after a failed append of an empty batch (an offsets-only commit
or a claim with nothing to repair), the next empty append's made-up 0 was believed. The local
changelog offset went back to 1, and the next commit's fence read the whole log under the shard
lock and re-appended every key of the store.

Real Tansu broker; the failure and the made-up offset are injected at the Changelog seam."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from tests.faultlog import FaultyChangelog
from tests.infra import Broker
from tierstore.server.changelog_kafka import KafkaChangelog, KafkaConfig
from tierstore.server.config import ServerConfig
from tierstore.server.errors import UnavailableError
from tierstore.server.objectstore import LocalObjectStore
from tierstore.server.ports import Header
from tierstore.server.service import StoreService

pytestmark = pytest.mark.kafka


class LyingLog(FaultyChangelog):
    lie: int | None = None

    def append_batch(self, store: str, partition: int, keys: Sequence[bytes],
                     values: Sequence[bytes | None], headers: Sequence[Header],
                     marker_value: bytes, marker_headers: Sequence[Header],
                     while_waiting: Callable[[], None] | None = None) -> int:
        offset = super().append_batch(store, partition, keys, values, headers, marker_value,
                                      marker_headers, while_waiting)
        lie, self.lie = self.lie, None
        return offset if lie is None else lie


def test_a_made_up_offset_after_a_failed_empty_append_is_not_believed(
    tmp_path: Path, broker: Broker
) -> None:
    log = LyingLog(KafkaChangelog(KafkaConfig(broker.bootstrap)))
    svc = StoreService(ServerConfig(data_dir=tmp_path / "a"), LocalObjectStore(tmp_path / "o"),
                       log)
    try:
        meta, spec = svc.open("lies", 0, "kv", 1)
        for seq in range(1, 4):
            keys = [b"k%02d-%d" % (i, seq) for i in range(20)]
            svc.commit("lies", 0, meta.epoch, seq, 0, keys, [b"v"] * 20, [], {"in:0": seq})
        log.fail_append_before = lambda kind, keys: not keys
        with pytest.raises(UnavailableError):  # an offsets-only commit fails: end unknown
            svc.commit("lies", 0, meta.epoch, 4, 0, [], [], [], {"in:0": 4})
        shard = svc.registry.shard(spec, 0)
        shard.settle()
        applied = shard.meta.changelog_offset
        log.lie = 0  # the reopen's claim marker is "a duplicate" to the broker
        meta, _ = svc.open("lies", 0, "kv", 1)
        shard.settle()
        assert shard.meta.changelog_offset >= applied, "the local changelog offset went back"
        reads, appends = log.reads, log.appends
        svc.commit("lies", 0, meta.epoch, 1, 0, [b"new"], [b"v"], [], {"in:0": 5})
        assert (log.reads, log.appends) == (reads, appends + 1), "the fence re-appended keys"
    finally:
        svc.shutdown(snapshot=False)

"""Regression for a bug the broker-restart drill found: after a broker restart the producer's
retried commit marker can come back with a made-up offset. Tansu answers a retry it takes for a
duplicate with offset 0; Kafka may answer one without an offset (-1). The shard took the offset
at its word. Its offset fence then thought the next commit's batch had records of another
writer before it, and read the whole log under the shard lock (a two-minute stall on Tansu), or
failed on a negative offset, and re-appended every key of the store. Now an implausible marker
offset leaves the end of the log unknown, as after a failed append.

The shard runs over an in-memory changelog that tells the same lie once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from tests.memlog import MemoryChangelog
from tierstore.server.config import ServerConfig
from tierstore.server.objectstore import LocalObjectStore
from tierstore.server.ports import ChangelogRecord, Header
from tierstore.server.service import StoreService


class LyingChangelog(MemoryChangelog):
    def __init__(self) -> None:
        super().__init__()
        self.lie: int | None = None
        self.reads = 0

    def append_batch(
        self, store: str, partition: int, keys: Sequence[bytes],
        values: Sequence[bytes | None], headers: Sequence[Header], marker_value: bytes,
        marker_headers: Sequence[Header], while_waiting: Callable[[], None] | None = None,
    ) -> int:
        offset = super().append_batch(store, partition, keys, values, headers, marker_value,
                                      marker_headers, while_waiting)
        lie, self.lie = self.lie, None
        return offset if lie is None else lie

    def read(self, store: str, partition: int, start_offset: int
             ) -> Iterator[list[ChangelogRecord]]:
        self.reads += 1
        return super().read(store, partition, start_offset)


@pytest.mark.parametrize("lie", [0, -1])
def test_a_made_up_marker_offset_does_not_trigger_the_fence(lie: int, tmp_path: Path) -> None:
    log = LyingChangelog()
    objects = LocalObjectStore(tmp_path / "objects")
    svc = StoreService(ServerConfig(data_dir=tmp_path / "a"), objects, log)
    state: dict[bytes, bytes] = {}
    try:
        meta, _ = svc.open("lies", 0, "kv", 1)
        for seq in range(1, 12):
            keys = [b"k%02d-%d" % (i, seq % 3) for i in range(20)]
            values = [b"v%d" % seq] * len(keys)
            if seq == 6:
                log.lie = lie  # the broker's answer to this commit's marker
            if seq == 7:
                reads, length = log.reads, len(log.logs[("lies", 0)])
            svc.commit("lies", 0, meta.epoch, seq, 0, keys, values, [], {"in:0": seq})
            state.update(zip(keys, values, strict=True))
            if seq == 7:
                assert log.reads == reads, "the fence read the log after a made-up offset"
                assert len(log.logs[("lies", 0)]) == length + len(keys) + 1, "keys re-appended"
    finally:
        svc.shutdown(snapshot=False)
    fresh = StoreService(ServerConfig(data_dir=tmp_path / "b"), LocalObjectStore(tmp_path / "o2"),
                         log)  # restores from the changelog alone
    try:
        meta, spec = fresh.open("lies", 0, "kv", 1)
        shard = fresh.registry.shard(spec, 0)
        assert dict(shard.scan(0, None, None, None, False)) == state
        assert meta.offsets == {"in:0": 11}
    finally:
        fresh.shutdown(snapshot=False)

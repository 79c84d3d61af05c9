"""A failed snapshot must not look like a snapshot: `seconds_since_snapshot` (inspect, and the
metric tierstore_shard_seconds_since_snapshot) keeps growing while the object store refuses
uploads, as docs/operations.md tells operators to watch for; and a failed background snapshot
is still retried no sooner than the snapshot interval. In process: real hot tier, a local
object store whose uploads can be made to fail (the seam)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tierstore.server.config import ServerConfig
from tierstore.server.errors import ObjectStoreError, StateStoreError
from tierstore.server.objectstore import LocalObjectStore
from tierstore.server.service import StoreService
from tierstore.server.status import server_status


class FlakyStore(LocalObjectStore):
    down = False

    def put_file(self, key: str, path: Path) -> None:
        if self.down:
            raise ObjectStoreError(f"put of {key}: object store down (test)")
        super().put_file(key, path)


def test_a_failed_snapshot_does_not_reset_seconds_since_snapshot(tmp_path: Path) -> None:
    objects = FlakyStore(tmp_path / "objects")
    cfg = ServerConfig(data_dir=tmp_path / "data", snapshot_interval_s=3600)
    svc = StoreService(cfg, objects, None)
    try:
        meta, spec = svc.open("s", 0, "kv", 1)
        svc.commit("s", 0, meta.epoch, 1, 0, [b"k"], [b"v"], [], {"in:0": 1})
        shard = svc.registry.shard(spec, 0)
        shard.last_snapshot_at -= 7200  # the last snapshot (here: the load) was 2 hours ago
        assert svc.snapshotter.is_due(shard)
        objects.down = True
        with pytest.raises(StateStoreError):
            svc.snapshotter.snapshot_now(shard)
        status = server_status(svc, "s").shards[0]
        assert status.commits_since_snapshot == 1
        assert status.seconds_since_snapshot >= 7200, status.seconds_since_snapshot
        # the failed attempt is retried after the interval, not at every tick
        assert not svc.snapshotter.is_due(shard)
        objects.down = False
        svc.snapshotter.snapshot_now(shard)
        status = server_status(svc, "s").shards[0]
        assert status.commits_since_snapshot == 0 and status.seconds_since_snapshot < 60
        svc.commit("s", 0, meta.epoch, 2, 0, [b"k"], [b"w"], [], {"in:0": 2})
        shard.last_snapshot_at = time.monotonic() - 7200
        assert svc.snapshotter.is_due(shard)  # a success clears the retry delay
    finally:
        svc.shutdown(snapshot=False)

"""Regression for a bug the S3 fault drill found: two snapshots of one shard at once (the
background snapshotter and an on-demand Snapshot call) could leave a manifest naming a deleted
file. The first upload found an SST already stored and did not upload it again; the second,
finishing first, ran gc, which deleted that file (no kept manifest named it); then the first
wrote its manifest. Snapshotter.snapshot_now now serializes the snapshots of a shard.

Deterministic: the first upload is held just before its manifest is written, while the second
one is let run (without the fix it completes and deletes the file; with it, it waits).
"""

from __future__ import annotations

import threading
from pathlib import Path

from tierstore.server.config import ServerConfig
from tierstore.server.errors import ObjectNotFoundError
from tierstore.server.objectstore import LocalObjectStore
from tierstore.server.service import StoreService
from tierstore.server.snapshots import Manifest, file_key, sha256_file


class GatedStore(LocalObjectStore):
    """Holds the next manifest write until `release` is set."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.armed = False
        self.at_gate = threading.Event()
        self.release = threading.Event()

    def put_bytes(self, key: str, data: bytes) -> None:
        if self.armed and "/manifests/" in key:
            self.armed = False
            self.at_gate.set()
            assert self.release.wait(30), "the gate was never opened"
        super().put_bytes(key, data)


def test_snapshots_of_one_shard_never_overlap(tmp_path: Path) -> None:
    objects = GatedStore(tmp_path / "objects")
    cfg = ServerConfig(data_dir=tmp_path / "data", snapshot_keep=1, snapshot_gc_grace_s=0)
    svc = StoreService(cfg, objects, None)
    try:
        meta, spec = svc.open("overlap", 0, "kv", 1)
        shard = svc.registry.shard(spec, 0)

        def commit(seq: int) -> None:
            keys = [b"k%03d-%d" % (i, seq) for i in range(200)]
            svc.commit("overlap", 0, meta.epoch, seq, 0, keys, [b"v" * 50] * 200, [], {})

        commit(1)
        svc.snapshotter.snapshot_now(shard)  # stores the first SST
        commit(2)
        objects.armed = True
        first = threading.Thread(target=svc.snapshotter.snapshot_now, args=(shard,))
        first.start()  # finds the first SST stored, uploads the rest, stops at its manifest
        assert objects.at_gate.wait(30)
        commit(3)
        shard.db.flush()
        shard.db.compact()  # the second checkpoint no longer has the first SST
        second_done = threading.Event()

        def second() -> None:
            svc.snapshotter.snapshot_now(shard)
            second_done.set()

        other = threading.Thread(target=second)
        other.start()
        overlapped = second_done.wait(1.0)  # with the fix it waits for the first: no overlap
        objects.release.set()
        first.join(30)
        other.join(30)
        for m in svc.snapshots.list_manifests("overlap", 0):
            _verify(objects, m)
        assert not overlapped, "two snapshots of one shard ran at once"
    finally:
        objects.release.set()
        svc.shutdown(snapshot=False)


def _verify(objects: LocalObjectStore, m: Manifest) -> None:
    for f in m.files:
        path = objects.root / file_key(m.store, m.partition, f.sha256)
        if not path.exists():
            raise ObjectNotFoundError(f"snapshot {m.snapshot_id} names missing file {f.name}")
        assert (path.stat().st_size, sha256_file(path)) == (f.size, f.sha256)

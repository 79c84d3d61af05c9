"""Eviction racing a load of the same shard (in process: real hot tier, real local object store).

Eviction closes the shard, drops it from the registry and then deletes its directory. A request
that arrives in between used to load the shard again from that directory, which still had its
CURRENT file, and the eviction then deleted the files under the freshly opened database: the
commits made on it were lost at the next reload.
"""

from __future__ import annotations

import threading
from pathlib import Path

from tierstore.server.config import ServerConfig
from tierstore.server.objectstore import LocalObjectStore
from tierstore.server.service import StoreService
from tierstore.server.shard import Shard


def _service(tmp_path: Path, max_local_bytes: int = 0) -> StoreService:
    cfg = ServerConfig(data_dir=tmp_path / "data", evict_idle_s=0,
                       max_local_bytes=max_local_bytes)
    return StoreService(cfg, LocalObjectStore(tmp_path / "objects"), None)


def test_a_load_racing_an_eviction_never_uses_the_directory_being_deleted(
    tmp_path: Path,
) -> None:
    svc = _service(tmp_path)
    try:
        meta, spec = svc.open("race", 0, "kv", 1)
        svc.commit("race", 0, meta.epoch, 1, 0, [b"before"], [b"1"], [], {"in:0": 1})
        shard = svc.registry.shard(spec, 0)
        loaded: list[Shard] = []
        errors: list[BaseException] = []
        unload = svc.registry.unload

        def load() -> None:
            try:
                loaded.append(svc.registry.shard(spec, 0))
            except BaseException as exc:  # reported below
                errors.append(exc)

        racer = threading.Thread(target=load)

        def unload_then_race(sh: Shard) -> None:
            unload(sh)
            racer.start()  # a request for the shard arrives mid-eviction
            racer.join(1.0)  # with the fix it waits for the eviction to finish

        svc.registry.unload = unload_then_race  # type: ignore[method-assign]
        assert svc.evictor.evict(shard)
        svc.registry.unload = unload  # type: ignore[method-assign]
        racer.join(30)
        assert not errors, errors
        assert loaded and loaded[0] is not shard
        # The worker claims the reloaded shard and commits on it.
        meta2, _ = svc.open("race", 0, "kv", 1)
        svc.commit("race", 0, meta2.epoch, meta2.commit_seq + 1, 0, [b"after"], [b"2"], [],
                   {"in:0": 2})
        assert svc.get("race", 0, 0, [b"before", b"after"]) == [b"1", b"2"]
    finally:
        svc.shutdown(snapshot=False)
    svc = _service(tmp_path)  # restart on the same disk: every commit is still there
    try:
        assert svc.get("race", 0, 0, [b"before", b"after"]) == [b"1", b"2"]
    finally:
        svc.shutdown(snapshot=False)


def test_an_eviction_whose_close_fails_still_completes_and_does_not_raise(
    tmp_path: Path,
) -> None:
    """Closing a shard can fail (a full disk at the final flush). Eviction closes it after a
    successful snapshot, so nothing is lost; the error used to escape Evictor.evict and
    run_once, and killed the service's ticker thread (no more interval snapshots, TTL sweeps
    or evictions until a restart)."""
    from tierstore.server.errors import UnavailableError

    svc = _service(tmp_path)
    try:
        meta, spec = svc.open("full", 0, "kv", 1)
        svc.commit("full", 0, meta.epoch, 1, 0, [b"k"], [b"v"], [], {"in:0": 1})
        shard = svc.registry.shard(spec, 0)
        close = shard.db.close

        def failing_close() -> None:
            close()
            raise UnavailableError("closing shard: disk full on the data dir (test)")

        shard.db.close = failing_close  # type: ignore[method-assign]
        assert svc.evictor.evict(shard)
        assert not svc.registry.shard_dir("full", 0).exists()
        assert svc.get("full", 0, 0, [b"k"]) == [b"v"]  # restored from the snapshot
    finally:
        svc.shutdown(snapshot=False)


def test_standby_copies_are_not_evicted_through_a_snapshot(tmp_path: Path) -> None:
    """A standby copy is another server's shard: evicting it used to upload a snapshot of it
    from this server (its commit differs from the owner's newest snapshot), racing the
    owner's own snapshots and cleanup in the same object-store prefix."""
    svc = _service(tmp_path, max_local_bytes=1)  # every shard is over the budget
    try:
        meta, spec = svc.open("copy", 0, "kv", 1)
        svc.commit("copy", 0, meta.epoch, 1, 0, [b"k"], [b"v"], [], {"in:0": 1})
        shard = svc.registry.shard(spec, 0)
        shard.standby = True  # as the standby manager marks a copy it follows
        uploads: list[Shard] = []
        snapshot_now = svc.snapshotter.snapshot_now

        def counting(sh: Shard) -> object:
            uploads.append(sh)
            return snapshot_now(sh)

        svc.snapshotter.snapshot_now = counting  # type: ignore[method-assign,assignment]
        assert not svc.evictor.evict(shard)
        report = svc.evictor.run_once(now=shard.last_used + 3600)
        assert shard.name not in report.evicted
        assert uploads == []
        assert svc.registry.shard_dir("copy", 0).exists()
    finally:
        svc.shutdown(snapshot=False)


def test_standby_copies_are_not_due_for_snapshots(tmp_path: Path) -> None:
    """An owner that loses a shard keeps following it as a standby, with the commits it made
    as the owner still counted: the ticker must not snapshot it alongside the new owner."""
    cfg = ServerConfig(data_dir=tmp_path / "data", snapshot_every_commits=2)
    svc = StoreService(cfg, LocalObjectStore(tmp_path / "objects"), None)
    try:
        meta, spec = svc.open("lost", 0, "kv", 1)
        svc.commit("lost", 0, meta.epoch, 1, 0, [b"k"], [b"v"], [], {"in:0": 1})
        shard = svc.registry.shard(spec, 0)
        shard.commits_since_snapshot = 2
        assert svc.snapshotter.is_due(shard)
        shard.standby = True
        assert not svc.snapshotter.is_due(shard)
    finally:
        svc.shutdown(snapshot=False)

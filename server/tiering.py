"""Tiering: keep the hot tier under a disk budget by evicting idle shards to object storage.

When the shards open on this server take more than `max_local_bytes` of local disk, the least
recently used idle shards are snapshotted and removed from local disk. Their next use restores
them (snapshot + changelog tail), so a server can hold far more state than its disk.

A shard is idle when it has no staged writes and has not been used for `min_idle_s`. Eviction
holds the shard's lock from the snapshot to the removal, so no commit can land in between; a
request that raced with it finds the shard closed and gets UNAVAILABLE (retry), and the next
request reloads it.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass

from tierstore.server.errors import StateStoreError
from tierstore.server.registry import Registry
from tierstore.server.shard import Shard
from tierstore.server.snapshotter import Snapshotter

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TieringPolicy:
    max_local_bytes: int = 0  # 0: no budget, never evict
    min_idle_s: float = 5.0


@dataclass(frozen=True)
class EvictionReport:
    local_bytes_before: int
    local_bytes_after: int
    evicted: tuple[str, ...]


def dir_bytes(path: object) -> int:
    from pathlib import Path

    total = 0
    try:
        for f in Path(str(path)).rglob("*"):
            try:
                if f.is_file():
                    total += f.stat().st_size
            except FileNotFoundError:  # removed meanwhile (an eviction, a compaction)
                continue
    except FileNotFoundError:  # the directory itself went away while it was walked
        pass
    return total


class Evictor:
    def __init__(self, registry: Registry, snapshotter: Snapshotter, policy: TieringPolicy) -> None:
        self.registry = registry
        self.snapshotter = snapshotter
        self.policy = policy
        self.evictions = 0

    def local_bytes(self) -> int:
        return dir_bytes(self.registry.data_dir / "shards")

    def run_once(self, now: float | None = None) -> EvictionReport:
        """Evict LRU idle shards until local bytes are under the budget (or none is idle)."""
        before = self.local_bytes()
        evicted: list[str] = []
        budget = self.policy.max_local_bytes
        if budget <= 0 or before <= budget:
            return EvictionReport(before, before, ())
        now = time.monotonic() if now is None else now
        candidates = sorted(
            (s for s in self.registry.open_shards()
             if now - s.last_used >= self.policy.min_idle_s and not s.standby),
            key=lambda s: s.last_used,
        )
        current = before
        for shard in candidates:
            if current <= budget:
                break
            size = dir_bytes(self.registry.shard_dir(shard.spec.name, shard.partition))
            if self.evict(shard):
                evicted.append(shard.name)
                current -= size
        after = self.local_bytes()
        if evicted:
            log.info("evicted %d shard(s) to object storage: %d -> %d local bytes (budget %d)",
                     len(evicted), before, after, budget)
        return EvictionReport(before, after, tuple(evicted))

    def evict(self, shard: Shard) -> bool:
        """Snapshot the shard, close it and delete its local files. False if it was busy.

        The registry's load lock of the shard is held throughout (taken first, as a load
        takes it before the shard lock): a request that finds the shard gone meanwhile waits
        for the files to be deleted, then restores it, instead of opening the directory that
        is being deleted under it."""
        load_lock = self.registry.load_lock(shard.spec.name, shard.partition)
        if not load_lock.acquire(blocking=False):  # being (re)loaded: busy
            return False
        try:
            with shard._lock:
                # A standby copy is not this server's to snapshot (its owner does that, in the
                # same object-store prefix), and the standby manager would only load it again.
                if shard.broken or shard.db.closed or shard._stage or shard.standby:
                    return False
                try:
                    if shard.commits_since_snapshot > 0 or not self._has_snapshot(shard):
                        self.snapshotter.snapshot_now(shard)
                except (StateStoreError, OSError) as exc:
                    log.warning("not evicting %s: snapshot failed: %s", shard.name, exc)
                    return False
                shard.broken = "evicted to object storage"
                try:
                    self.registry.unload(shard)
                except StateStoreError as exc:  # e.g. a full disk at the final flush: the
                    # database is closed anyway, and the snapshot just taken holds every commit
                    log.warning("evicting %s: closing it failed: %s", shard.name, exc)
                shutil.rmtree(self.registry.shard_dir(shard.spec.name, shard.partition),
                              ignore_errors=True)
        finally:
            load_lock.release()
        self.evictions += 1
        return True

    def _has_snapshot(self, shard: Shard) -> bool:
        manifests = self.registry.snapshots.list_manifests(shard.spec.name, shard.partition)
        return bool(manifests) and manifests[0].commit_seq == shard.meta.commit_seq \
            and manifests[0].epoch == shard.meta.epoch

"""What a server holds, as plain Python: read by the Inspect RPC and by the metrics collector.

Reading status changes nothing. A shard closed while it is being read reports zeros for what can
no longer be read (its size, its entry count) rather than failing the whole report.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from tierstore import __version__
from tierstore.server.shard import Shard

if TYPE_CHECKING:
    from tierstore.server.service import StoreService


@dataclass(frozen=True)
class ShardStatus:
    store: str
    partition: int
    type: str
    num_partitions: int
    epoch: int
    commit_seq: int
    changelog_offset: int
    committed_offsets: dict[str, int]
    local_bytes: int
    approximate_num_entries: int
    commits_since_snapshot: int
    seconds_since_snapshot: float
    idle_seconds: float
    load_source: str  # "local", "snapshot", "changelog", "new", or "" if unknown
    last_snapshot_id: int  # 0: none taken by this process
    last_snapshot_bytes: int
    replayed_records: int
    replay_seconds: float
    broken: bool
    standby: bool = False  # a follower copy: this server does not own the shard
    standby_lag_seconds: float = 0.0  # standbys: since the copy last reached the log's end


@dataclass(frozen=True)
class ServerStatus:
    version: str
    object_store: str
    changelog: str
    shards: list[ShardStatus]
    block_cache_usage_bytes: int
    block_cache_capacity_bytes: int
    memtable_usage_bytes: int
    snapshots_taken: int
    snapshots_failed: int
    stores: list[str] = field(default_factory=list)

    @property
    def hot_tier_bytes(self) -> int:
        return sum(s.local_bytes for s in self.shards)


def _safe_int(fn: Callable[[], int]) -> int:
    try:
        return int(fn())
    except Exception:  # the shard was closed meanwhile
        return 0


def shard_status(svc: StoreService, shard: Shard,
                 lags: dict[str, float] | None = None) -> ShardStatus:
    now = time.monotonic()
    key = (shard.spec.name, shard.partition)
    meta = shard.meta
    report = svc.registry.load_reports.get(key)
    upload = svc.snapshots.last_upload(*key)
    closed = shard.db.closed
    return ShardStatus(
        store=shard.spec.name,
        partition=shard.partition,
        type=shard.spec.type,
        num_partitions=shard.spec.num_partitions,
        epoch=meta.epoch,
        commit_seq=meta.commit_seq,
        changelog_offset=meta.changelog_offset,
        committed_offsets=dict(meta.offsets),
        local_bytes=0 if closed else _safe_int(shard.db.live_bytes),
        approximate_num_entries=0 if closed else _safe_int(shard.count),
        commits_since_snapshot=shard.commits_since_snapshot,
        seconds_since_snapshot=now - shard.last_snapshot_at,
        idle_seconds=now - shard.last_used,
        load_source=report.source if report else "",
        last_snapshot_id=upload.snapshot_id if upload else 0,
        last_snapshot_bytes=upload.bytes_total if upload else 0,
        replayed_records=report.replay.records_read if report and report.replay else 0,
        replay_seconds=report.replay.seconds if report and report.replay else 0.0,
        broken=bool(shard.broken),
        standby=shard.standby,
        standby_lag_seconds=(lags or {}).get(shard.name, 0.0) if shard.standby else 0.0,
    )


def server_status(svc: StoreService, store: str = "", list_stores: bool = False) -> ServerStatus:
    """The open shards (of `store`, or all), sorted; with `list_stores`, every store name known
    locally or in the object store (a listing call), or with `store` only that one: a caller
    allowed to see one store must not learn the names of the others."""
    shards = sorted(
        (s for s in svc.registry.open_shards() if not store or s.spec.name == store),
        key=lambda s: (s.spec.name, s.partition),
    )
    stores = ([s.name for s in svc.registry.list_specs() if not store or s.name == store]
              if list_stores else [])
    lags = svc.standbys.lag_seconds() if svc.standbys is not None else {}
    return ServerStatus(
        version=__version__,
        object_store=svc.snapshots.objects.describe(),
        changelog=svc.cfg.kafka_bootstrap,
        shards=[shard_status(svc, s, lags) for s in shards],
        block_cache_usage_bytes=svc.hot.block_cache_usage(),
        block_cache_capacity_bytes=svc.hot.cfg.block_cache_bytes,
        memtable_usage_bytes=svc.hot.memtable_usage(),
        snapshots_taken=svc.snapshotter.taken,
        snapshots_failed=svc.snapshotter.failed,
        stores=stores,
    )

"""The store service in plain Python: what the gRPC servicer calls, with no protobuf in sight."""

from __future__ import annotations

import dataclasses
import logging
import sys
import threading
from collections.abc import Callable, Generator, Iterator, Sequence
from itertools import chain, islice
from pathlib import Path

from tierstore import ttl as ttlcodec
from tierstore.server.cluster import Membership
from tierstore.server.config import ServerConfig
from tierstore.server.errors import (
    FencedError,
    InvalidArgumentError,
    StateStoreError,
    UnavailableError,
    WrongServerError,
)
from tierstore.server.freshness import ReadFreshness, ReadRouter
from tierstore.server.hottier import HotTier, ShardMeta
from tierstore.server.ports import Changelog, ObjectStore
from tierstore.server.registry import Registry
from tierstore.server.restoretarget import RestoreTarget, TargetPolicy
from tierstore.server.shard import CommitResult, Shard, ShardLimits
from tierstore.server.snapshots import Manifest, SnapshotStore
from tierstore.server.snapshotter import SnapshotPolicy, Snapshotter
from tierstore.server.specs import StoreSpec
from tierstore.server.standby import Standbys
from tierstore.server.status import ServerStatus, server_status
from tierstore.server.tiering import Evictor, TieringPolicy

log = logging.getLogger(__name__)

TTL_SWEEP_GRACE_MS = 5_000  # the server sweeps an entry this long after its expiry


def _split_by_bytes(
    chunk: list[tuple[bytes, bytes]], budget: int
) -> Iterator[list[tuple[bytes, bytes]]]:
    """Split a page so each part stays under `budget` bytes (one entry always fits a part)."""
    part: list[tuple[bytes, bytes]] = []
    size = 0
    for k, v in chunk:
        n = len(k) + len(v) + 16  # 16: field tags and length prefixes, generously
        if part and size + n > budget:
            yield part
            part, size = [], 0
        part.append((k, v))
        size += n
    if part:
        yield part


class StoreService:
    def __init__(
        self,
        cfg: ServerConfig,
        objects: ObjectStore,
        changelog: Changelog | None,
    ) -> None:
        self.cfg = cfg
        data_dir = Path(cfg.data_dir)
        data_dir.mkdir(parents=True, exist_ok=True)
        hot_cfg = dataclasses.replace(cfg.hot, disable_wal=changelog is not None)
        self.hot = HotTier(data_dir / "shards", hot_cfg)
        self.snapshots = SnapshotStore(
            objects, keep=cfg.snapshot_keep, workers=cfg.snapshot_workers,
            gc_grace_s=cfg.snapshot_gc_grace_s,
        )
        self.registry = Registry(
            data_dir, self.hot, objects, self.snapshots, changelog,
            ShardLimits(cfg.max_value_bytes, cfg.max_staged_bytes),
        )
        self.snapshotter = Snapshotter(
            self.snapshots, data_dir / "tmp",
            SnapshotPolicy(cfg.snapshot_every_commits, cfg.snapshot_interval_s),
        )
        self.changelog = changelog
        self.membership: Membership | None = None  # set by attach_cluster() after binding
        self.standbys: Standbys | None = None
        # reader options: stale reads, min_offsets waits (at most half the workers wait)
        self.reads = ReadRouter(self, cfg.grpc_workers // 2)
        self.evictor = Evictor(self.registry, self.snapshotter,
                               TieringPolicy(max_local_bytes=cfg.max_local_bytes,
                                             min_idle_s=cfg.evict_idle_s))
        self.restore_target: RestoreTarget | None = None
        if cfg.restore_target_seconds > 0:
            if changelog is None:
                log.warning("restore_target_seconds is set but there is no changelog: a "
                            "restore is a snapshot download only, and commits since the last "
                            "snapshot are on the local disk alone")
            self.restore_target = RestoreTarget(self.registry, self.snapshotter,
                                                TargetPolicy(cfg.restore_target_seconds))
        # Called after each applied commit with (records, bytes) of its Commit message (metrics).
        self.on_commit: Callable[[int, int], None] | None = None
        self._closed = threading.Event()
        self._ticker = threading.Thread(target=self._tick, name="snapshot-timer", daemon=True)
        self._ticker.start()

    # --- API ------------------------------------------------------------------------------
    def open(
        self,
        store: str,
        partition: int,
        type_: str,
        num_partitions: int,
        window_size_ms: int = 0,
        retention_ms: int = 0,
        ttl_ms: int = 0,
    ) -> tuple[ShardMeta, StoreSpec]:
        self._check_open()
        self._route(store, partition)
        spec = self.registry.resolve(
            store, type_, num_partitions, window_size_ms, retention_ms, partition=partition,
            ttl_ms=ttl_ms,
        )
        for _ in range(3):
            shard = self._promote(self.registry.shard(spec, partition))
            try:
                return shard.claim(), spec
            except FencedError:
                # Another server's claim landed before this one (views of the membership
                # differed): the shard reloads with it, and this open claims again, after it.
                continue
        raise UnavailableError(f"shard {store}/{partition} keeps changing hands; retry")

    def attach_cluster(self, membership: Membership) -> None:
        """Serve only the shards the rendezvous placement gives this server, and follow the
        shards it is a standby for."""
        self.membership = membership
        membership.start()
        if self.cfg.standby_replicas > 0:
            self.standbys = Standbys(self.registry, membership, self.cfg.standby_replicas)
            self.standbys.start()

    def _route(self, store: str, partition: int) -> None:
        m = self.membership
        if m is not None and m.enabled:
            owner = m.owner(store, partition)
            if owner != m.cfg.advertise:
                raise WrongServerError(
                    f"shard {store}/{partition} is placed on {owner}, not here", owner
                )

    def _owned(self, store: str, partition: int) -> Shard:
        self._check_open()
        self._route(store, partition)
        spec = self.registry.describe(store)
        return self._promote(self.registry.shard(spec, partition))

    def _promote(self, shard: Shard) -> Shard:
        """Serve a shard as its owner. A standby copy first catches up to the end of the log.
        With several servers, the first use on this server also claims it (a new epoch in the
        changelog), so a previous owner that is still running is fenced: its next append
        lands after the claim and is refused (Shard.log_end)."""
        if shard.standby and self.standbys is not None:
            with shard._lock:
                if shard.standby:
                    applied = self.standbys.catch_up(shard)
                    shard.standby = False
                    # The follow loop must not make it a standby again before (or after) the
                    # claim below, which takes the lock again: see Standbys.follow_once.
                    shard.promoted = True
                    log.info("promoted standby %s (caught up %d records)", shard.name, applied)
        m = self.membership
        for _ in range(3):
            if m is None or not m.enabled or shard.taken_over:
                return shard
            try:
                with shard._lock:
                    if not shard.taken_over:
                        meta = shard.claim()
                        shard.taken_over = True
                        log.info("took over %s at epoch %d", shard.name, meta.epoch)
                return shard
            except FencedError:
                # The previous owner appended after this server loaded the shard: reload (the
                # replay includes its commit) and claim again.
                shard = self.registry.shard(shard.spec, shard.partition)
        raise UnavailableError(f"shard {shard.name} keeps changing hands; retry")

    def stage(
        self, store: str, partition: int, epoch: int, commit_seq: int,
        put_keys: Sequence[bytes], put_values: Sequence[bytes], delete_keys: Sequence[bytes],
    ) -> int:
        return self._owned(store, partition).stage(
            epoch, commit_seq, put_keys, put_values, delete_keys
        )

    def commit(
        self, store: str, partition: int, epoch: int, commit_seq: int, staged_batches: int,
        put_keys: Sequence[bytes], put_values: Sequence[bytes], delete_keys: Sequence[bytes],
        offsets: dict[str, int], range_begin: Sequence[bytes] = (),
        range_end: Sequence[bytes] = (),
    ) -> CommitResult:
        shard = self._owned(store, partition)
        result = shard.commit(
            epoch, commit_seq, staged_batches, put_keys, put_values, delete_keys, offsets,
            range_begin, range_end,
        )
        self.snapshotter.maybe_schedule(shard)
        if self.on_commit is not None and result.applied:
            self.on_commit(len(put_keys) + len(delete_keys),
                           sum(map(len, put_keys)) + sum(map(len, put_values))
                           + sum(map(len, delete_keys)))
        return result

    def get(self, store: str, partition: int, epoch: int, keys: Sequence[bytes],
            fresh: ReadFreshness | None = None) -> list[bytes | None]:
        return self.reads.shard(store, partition, epoch, fresh).get_many(epoch, keys)

    def scan(
        self, store: str, partition: int, epoch: int, from_key: bytes | None,
        to_key: bytes | None, prefix: bytes | None, reverse: bool, page_size: int, limit: int,
        fresh: ReadFreshness | None = None,
    ) -> Generator[list[tuple[bytes, bytes]], None, None]:
        """Pages of at most scan_page_size entries and (unless one entry is larger) half of
        max_message_bytes, so that a page always fits in a gRPC message and one scan holds
        a bounded amount of memory."""
        if page_size < 0 or limit < 0:
            raise InvalidArgumentError("page_size and limit must be non-negative")
        page = min(page_size or self.cfg.scan_page_size, self.cfg.scan_page_size)
        budget = self.cfg.max_message_bytes // 2  # the other half: framing, with room to spare
        shard = self.reads.shard(store, partition, epoch, fresh)
        items = shard.scan(epoch, from_key, to_key, prefix, reverse)
        if limit:  # a uint64 on the wire; islice refuses more than sys.maxsize
            items = islice(items, min(limit, sys.maxsize))
        while True:
            # Whole pages at C speed; the byte check is a sum over the page, and only a page
            # over the byte budget (large values) is split entry by entry.
            chunk = list(islice(items, page))
            if shard.db.closed:  # evicted, moved or reloaded meanwhile: its iterator ended
                raise UnavailableError(f"shard {shard.name} was closed during the scan; retry")
            if not chunk:
                return
            if sum(map(len, chain.from_iterable(chunk))) + 16 * len(chunk) <= budget:
                yield chunk
            else:
                yield from _split_by_bytes(chunk, budget)

    def count(self, store: str, partition: int, fresh: ReadFreshness | None = None,
              epoch: int = 0) -> int:
        return self.reads.shard(store, partition, epoch, fresh).count(epoch)

    def close_shard(self, store: str, partition: int, epoch: int) -> None:
        self._owned(store, partition).release(epoch)

    def describe(self, store: str) -> StoreSpec:
        return self.registry.describe(store)

    def snapshot(self, store: str, partition: int) -> list[Manifest]:
        spec = self.registry.describe(store)
        parts = range(spec.num_partitions) if partition < 0 else [partition]
        manifests = []
        for p in parts:
            if partition < 0 and not self.registry.shard_dir(store, p).exists():
                continue
            manifests.append(self.snapshotter.snapshot_now(self.registry.shard(spec, p)))
        return manifests

    def inspect(self, store: str = "") -> ServerStatus:
        """Read-only: the shards open here (of `store`, or all) and every known store."""
        if store:
            self.registry.describe(store)
        return server_status(self, store, list_stores=True)

    def sweep_expired(self, now_ms: int | None = None) -> int:
        """Delete the expired entries of the TTL stores open here (a bounded batch per shard and
        call; the ticker calls it). Expiry is judged at `now_ms`, by default the wall clock less
        TTL_SWEEP_GRACE_MS (room for clock skew against the writers). Returns the count."""
        now = ttlcodec.now_ms() - TTL_SWEEP_GRACE_MS if now_ms is None else now_ms
        removed = 0
        for shard in self.registry.open_shards():
            try:
                removed += shard.sweep_expired(now)
            except StateStoreError as exc:  # e.g. the changelog is down: the next tick retries
                log.warning("TTL sweep of %s failed: %s", shard.name, exc)
        return removed

    def store_readiness(self, store: str) -> str:
        """Why this server cannot serve `store` right now, or "" if it can (the gRPC health
        status per store). Counted are only the shards this server owns (all of them without
        --peers): one being loaded (snapshot download, changelog replay), one whose last load
        failed (until a load succeeds), one open but broken (a failed local write: it reloads on
        its next use). Shards are loaded on first use, so a store none of whose shards is open
        here is ready: its next claim restores it."""
        if self._closed.is_set():
            return "the server is shutting down"
        loading, failed = self.registry.load_state(store)
        loading = [p for p in loading if self._owns(store, p)]
        if loading:
            return f"restoring partition(s) {', '.join(map(str, loading))}"
        failures = [f"partition {p}: load failed: {why}" for p, why in sorted(failed.items())
                    if self._owns(store, p)]
        if failures:
            return "; ".join(failures)
        for shard in self.registry.open_shards():
            if (shard.spec.name == store and shard.broken and not shard.standby
                    and self._owns(store, shard.partition)):
                return f"partition {shard.partition}: {shard.broken}"
        return ""

    def _owns(self, store: str, partition: int) -> bool:
        m = self.membership
        return m is None or not m.enabled or m.owner(store, partition) == m.cfg.advertise

    # --- lifecycle ------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed.is_set():
            raise UnavailableError("the server is shutting down")

    def _tick(self) -> None:
        period = min(self.cfg.snapshot_interval_s, 5.0,
                     max(self.cfg.evict_idle_s, 0.2) if self.cfg.max_local_bytes else 5.0)
        while not self._closed.wait(period):
            try:
                for shard in self.registry.open_shards():
                    self.snapshotter.maybe_schedule(shard)
                self.sweep_expired()
                self.release_moved()
                if self.cfg.max_local_bytes:
                    self.evictor.run_once()
            except Exception:  # the next tick tries again: this thread must not end
                log.exception("background round (snapshots, TTL sweep, moved shards, "
                              "eviction) failed")

    def release_moved(self) -> list[str]:
        """Close shards the placement now gives to another server (a peer joined or came
        back), after snapshotting their new commits; their next owner restores them."""
        m = self.membership
        if m is None or not m.enabled:
            return []
        released = []
        keep = 1 + (self.cfg.standby_replicas if self.standbys is not None else 0)
        for shard in self.registry.open_shards():
            if m.cfg.advertise in m.order(shard.spec.name, shard.partition)[:keep]:
                if m.owner(shard.spec.name, shard.partition) != m.cfg.advertise:
                    shard.standby = True  # an owner that lost the shard keeps following it
                    shard.taken_over = False  # and claims it again if it comes back
                continue
            try:
                if shard.commits_since_snapshot:
                    self.snapshotter.snapshot_now(shard)
            except (StateStoreError, OSError) as exc:
                log.warning("releasing %s without a final snapshot: %s", shard.name, exc)
            self.registry.unload(shard)
            released.append(shard.name)
        if released:
            log.info("released %d shard(s) placed elsewhere: %s", len(released),
                     ", ".join(released))
        return released

    def shutdown(self, snapshot: bool = True) -> None:
        """Stop taking requests, snapshot shards with new commits, close everything."""
        self._closed.set()
        if self.restore_target is not None:
            self.restore_target.stop()
        if self.standbys is not None:
            self.standbys.stop()
        if self.membership is not None:
            self.membership.stop()
        self.snapshotter.stop()
        for shard in self.registry.open_shards():
            if snapshot and shard.commits_since_snapshot > 0:
                try:
                    self.snapshotter.snapshot_now(shard)
                except Exception as exc:  # keep closing the others
                    log.warning("final snapshot of %s failed: %s", shard.name, exc)
        self.registry.close_all()
        if self.changelog is not None:
            self.changelog.close()

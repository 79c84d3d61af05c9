"""The store service in plain Python: what the gRPC servicer calls, with no protobuf in sight."""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Iterator, Sequence
from itertools import islice
from pathlib import Path

from tierstore.server.config import ServerConfig
from tierstore.server.errors import InvalidArgumentError, UnavailableError
from tierstore.server.hottier import HotTier, ShardMeta
from tierstore.server.ports import Changelog, ObjectStore
from tierstore.server.registry import Registry
from tierstore.server.shard import CommitResult, Shard, ShardLimits
from tierstore.server.snapshots import Manifest, SnapshotStore
from tierstore.server.snapshotter import SnapshotPolicy, Snapshotter
from tierstore.server.specs import StoreSpec

log = logging.getLogger(__name__)


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
    ) -> tuple[ShardMeta, StoreSpec]:
        self._check_open()
        spec = self.registry.resolve(
            store, type_, num_partitions, window_size_ms, retention_ms, partition=partition
        )
        shard = self.registry.shard(spec, partition)
        return shard.claim(), spec

    def _owned(self, store: str, partition: int) -> Shard:
        self._check_open()
        spec = self.registry.describe(store)
        return self.registry.shard(spec, partition)

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
        offsets: dict[str, int],
    ) -> CommitResult:
        shard = self._owned(store, partition)
        result = shard.commit(
            epoch, commit_seq, staged_batches, put_keys, put_values, delete_keys, offsets
        )
        self.snapshotter.maybe_schedule(shard)
        return result

    def get(self, store: str, partition: int, epoch: int, keys: Sequence[bytes]
            ) -> list[bytes | None]:
        return self._owned(store, partition).get_many(epoch, keys)

    def scan(
        self, store: str, partition: int, epoch: int, from_key: bytes | None,
        to_key: bytes | None, prefix: bytes | None, reverse: bool, page_size: int, limit: int,
    ) -> Iterator[list[tuple[bytes, bytes]]]:
        if page_size < 0 or limit < 0:
            raise InvalidArgumentError("page_size and limit must be non-negative")
        page = min(page_size or self.cfg.scan_page_size, self.cfg.scan_page_size)
        items = self._owned(store, partition).scan(epoch, from_key, to_key, prefix, reverse)
        if limit:
            items = islice(items, limit)
        while True:
            chunk = list(islice(items, page))
            if not chunk:
                return
            yield chunk

    def count(self, store: str, partition: int) -> int:
        return self._owned(store, partition).count()

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

    # --- lifecycle ------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed.is_set():
            raise UnavailableError("the server is shutting down")

    def _tick(self) -> None:
        period = min(self.cfg.snapshot_interval_s, 5.0)
        while not self._closed.wait(period):
            for shard in self.registry.open_shards():
                self.snapshotter.maybe_schedule(shard)

    def shutdown(self, snapshot: bool = True) -> None:
        """Stop taking requests, snapshot shards with new commits, close everything."""
        self._closed.set()
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

"""The shard registry: which stores exist, which shards are open here, and loading them.

Loading a shard that is not on local disk restores it: the newest valid snapshot from the object
store, then the changelog from the snapshot's offset to the end (tierstore.server.restore).
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from tierstore.server.errors import ObjectNotFoundError, StoreNotFoundError
from tierstore.server.hottier import HotTier, ShardDB
from tierstore.server.manifest import Manifest
from tierstore.server.ports import Changelog, ObjectStore
from tierstore.server.prefetch import Prefetch
from tierstore.server.replayahead import ReplayAheads
from tierstore.server.restore import LogPrefix, ReplayResult, replay_changelog
from tierstore.server.shard import Shard, ShardLimits
from tierstore.server.snapshots import SnapshotStore
from tierstore.server.specs import StoreSpec, check_store_name, reconcile

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadReport:
    """How a shard came to be open: for logs, metrics and tests."""

    source: str  # "local", "snapshot", "changelog" or "new"
    snapshot_id: int | None
    replay: ReplayResult | None


@dataclass
class RestoreProgress:
    """A shard's load, while it runs and after: read by metrics and inspect. Written only by the
    loading thread (plain attribute updates, so a reader sees a recent value)."""

    started: float = field(default_factory=time.monotonic)
    phase: str = "download"  # "download" (the snapshot), "replay" (the changelog), "done",
    # or "failed" (the load raised; `finished` is then set too)
    bytes_done: int = 0
    bytes_total: int = 0
    records: int = 0
    finished: float | None = None
    replay_started: float | None = None
    first_page: tuple[float, int] | None = None  # (when, records read): the replay's first page
    last_page: tuple[float, int] | None = None

    def on_bytes(self, done: int, total: int) -> None:
        self.bytes_done, self.bytes_total = done, total

    def start_replay(self) -> None:
        self.phase, self.replay_started = "replay", time.monotonic()

    def on_records(self, records: int) -> None:
        self.records = records
        self.last_page = (time.monotonic(), records)
        if self.first_page is None:
            self.first_page = self.last_page

    def seconds(self) -> float:
        return (self.finished or time.monotonic()) - self.started


def _progress_logger(name: str, every_s: float = 5.0) -> Callable[[int], None]:
    """A replay progress callback that logs records read and the rate every few seconds."""
    started = last = time.monotonic()

    def report(records: int) -> None:
        nonlocal last
        now = time.monotonic()
        if now - last >= every_s:
            last = now
            log.info("%s: replaying changelog: %d records (%.0f/s)", name, records,
                     records / max(now - started, 1e-9))

    return report


class Registry:
    def __init__(
        self,
        data_dir: Path,
        hot: HotTier,
        objects: ObjectStore,
        snapshots: SnapshotStore,
        changelog: Changelog | None,
        limits: ShardLimits,
    ) -> None:
        self.data_dir = data_dir
        self.hot = hot
        self.objects = objects
        self.snapshots = snapshots
        self.changelog = changelog
        self.limits = limits
        self._lock = threading.Lock()
        self._create_lock = threading.Lock()  # serializes the creation of new stores
        self._specs: dict[str, StoreSpec] = {}
        self._shards: dict[tuple[str, int], Shard] = {}
        self._loading: dict[tuple[str, int], threading.Lock] = {}
        self.load_reports: dict[tuple[str, int], LoadReport] = {}
        self.restores: dict[tuple[str, int], RestoreProgress] = {}
        self.on_load: Callable[[RestoreProgress], None] | None = None  # after each shard load
        # Readiness (the gRPC health service per store): shards loading now, the last load
        # failure of each shard (cleared by its next successful load), and a callback told the
        # store name whenever one of these changes.
        self.loading: set[tuple[str, int]] = set()
        self.load_failures: dict[tuple[str, int], str] = {}
        self.on_readiness: Callable[[str], None] | None = None
        (data_dir / "stores").mkdir(parents=True, exist_ok=True)
        (data_dir / "tmp").mkdir(parents=True, exist_ok=True)
        shutil.rmtree(data_dir / "tmp", ignore_errors=True)
        (data_dir / "tmp").mkdir(parents=True, exist_ok=True)

    # --- store specs ----------------------------------------------------------------------
    def _spec_path(self, name: str) -> Path:
        return self.data_dir / "stores" / f"{name}.json"

    def find_spec(self, name: str) -> StoreSpec | None:
        # Fast path (every read): a known store's name was checked when it was added; a dict
        # lookup is atomic, and entries are only ever added (under the lock).
        spec = self._specs.get(name)
        if spec is not None:
            return spec
        check_store_name(name)
        with self._lock:
            spec = self._specs.get(name)
        if spec is not None:
            return spec
        path = self._spec_path(name)
        data: bytes | None = path.read_bytes() if path.exists() else None
        if data is None:
            try:
                data = self.objects.get_bytes(f"stores/{name}.json")
            except ObjectNotFoundError:
                return None
        spec = StoreSpec.from_json(data)
        with self._lock:
            new = name not in self._specs
            spec = self._specs.setdefault(name, spec)
        if new:
            self._readiness_changed(name)
        return spec

    def describe(self, name: str) -> StoreSpec:
        spec = self.find_spec(name)
        if spec is None:
            raise StoreNotFoundError(f"store {name!r} does not exist")
        return spec

    def resolve(
        self, name: str, type_: str, num_partitions: int, window_size_ms: int, retention_ms: int,
        partition: int | None = None, ttl_ms: int = 0,
    ) -> StoreSpec:
        """The store's spec, creating the store if this is its first claim. With `partition`, a
        partition out of range is refused before anything is created."""
        existing = self.find_spec(name)
        if existing is None:
            # Concurrent first claims (a worker per partition, started together) create the
            # store once: the others wait here and then find it.
            with self._create_lock:
                existing = self.find_spec(name)
                return self._create_or_reconcile(existing, name, type_, num_partitions,
                                                 window_size_ms, retention_ms, partition, ttl_ms)
        return self._create_or_reconcile(existing, name, type_, num_partitions, window_size_ms,
                                         retention_ms, partition, ttl_ms)

    def _create_or_reconcile(
        self, existing: StoreSpec | None, name: str, type_: str, num_partitions: int,
        window_size_ms: int, retention_ms: int, partition: int | None, ttl_ms: int,
    ) -> StoreSpec:
        spec = reconcile(existing, name, type_, num_partitions, window_size_ms, retention_ms,
                         ttl_ms)
        if partition is not None:
            spec.check_partition(partition)
        if existing is None:
            if self.changelog is not None:
                self.changelog.ensure_topic(name, spec.num_partitions,
                                            spec.changelog_retention_ms())
            self.objects.put_bytes(f"stores/{name}.json", spec.to_json())
            tmp = self._spec_path(name).with_suffix(".tmp")
            tmp.write_bytes(spec.to_json())
            tmp.replace(self._spec_path(name))
            with self._lock:
                self._specs[name] = spec
            self._readiness_changed(name)
            log.info("created store %s (%s, %d partitions)", name, spec.type, spec.num_partitions)
        return spec

    def list_specs(self) -> list[StoreSpec]:
        names = {p.stem for p in (self.data_dir / "stores").glob("*.json")}
        names |= {
            o.key.removeprefix("stores/").removesuffix(".json")
            for o in self.objects.list("stores/")
            if o.key.endswith(".json")
        }
        return [s for n in sorted(names) if (s := self.find_spec(n)) is not None]

    # --- shards ---------------------------------------------------------------------------
    def shard_dir(self, store: str, partition: int) -> Path:
        return self.data_dir / "shards" / store / str(partition)

    def shard(self, spec: StoreSpec, partition: int) -> Shard:
        """The open shard, loading (and if need be restoring) it first."""
        spec.check_partition(partition)
        key = (spec.name, partition)
        sh = self._shards.get(key)  # atomic; the slow path below re-reads it under the lock
        if sh is not None:
            sh.settle()  # a commit being applied in the background may yet break it
            if not sh.broken:
                return sh
        with self.load_lock(spec.name, partition):
            with self._lock:
                sh = self._shards.get(key)
            if sh is not None and sh.broken:
                log.warning("reloading shard %s: %s", sh.name, sh.broken)
                sh.close()
                sh = None
            if sh is None:
                sh = self._load_tracked(spec, partition)
                with self._lock:
                    self._shards[key] = sh
            return sh

    def load_lock(self, store: str, partition: int) -> threading.Lock:
        """The lock held while the shard is loaded (or reloaded) here. Whoever removes a
        shard's files (eviction) holds it too, so a load never opens a directory being
        deleted."""
        with self._lock:
            return self._loading.setdefault((store, partition), threading.Lock())

    def _load_tracked(self, spec: StoreSpec, partition: int) -> Shard:
        key = (spec.name, partition)
        with self._lock:
            self.loading.add(key)
        self._readiness_changed(spec.name)
        try:
            sh = self._load(spec, partition)
        except BaseException as exc:
            with self._lock:
                self.loading.discard(key)
                self.load_failures[key] = f"{type(exc).__name__}: {exc}"
            self._readiness_changed(spec.name)
            raise
        with self._lock:
            self.loading.discard(key)
            self.load_failures.pop(key, None)
        self._readiness_changed(spec.name)
        return sh

    def _readiness_changed(self, store: str) -> None:
        if self.on_readiness is not None:
            try:
                self.on_readiness(store)
            except Exception:  # a health report must never fail a load
                log.exception("readiness callback failed for store %s", store)

    def load_state(self, store: str) -> tuple[list[int], dict[int, str]]:
        """The store's partitions loading here now, and those whose last load failed (why)."""
        with self._lock:
            loading = sorted(p for s, p in self.loading if s == store)
            failed = {p: why for (s, p), why in self.load_failures.items() if s == store}
        return loading, failed

    def known_stores(self) -> list[str]:
        """Stores this server has seen: loaded specs and spec files on local disk (no object
        store call)."""
        with self._lock:
            names = set(self._specs)
        names |= {p.stem for p in (self.data_dir / "stores").glob("*.json")}
        return sorted(names)

    def peek(self, store: str, partition: int) -> Shard | None:
        """The shard if it is open here and usable, without loading anything."""
        with self._lock:
            sh = self._shards.get((store, partition))
        return sh if sh is not None and not sh.broken and not sh.db.closed else None

    def open_shards(self) -> list[Shard]:
        with self._lock:
            return list(self._shards.values())

    def _load(self, spec: StoreSpec, partition: int) -> Shard:
        progress = self.restores[(spec.name, partition)] = RestoreProgress()
        try:
            db, source, manifest, replay = self._restore(
                spec, partition, self.shard_dir(spec.name, partition), progress)
        except BaseException:  # not "in progress" any more: metrics would show it forever
            progress.phase, progress.finished = "failed", time.monotonic()
            raise
        self.load_reports[(spec.name, partition)] = LoadReport(
            source, manifest.snapshot_id if manifest is not None else None, replay)
        repair = replay.keys_to_repair() if replay is not None else set()
        shard = Shard(spec, partition, db, self.changelog, self.limits, repair_keys=repair)
        if replay is not None:
            shard.epoch_floor = replay.max_epoch
            shard.log_end = replay.end_offset
        if source != "local":  # a restore started from this snapshot (or from offset 0)
            shard.snapshot_offset = manifest.changelog_offset if manifest is not None else 0
            shard.snapshot_bytes = manifest.total_bytes if manifest is not None else 0
        if self.on_load is not None:
            self.on_load(progress)
        return shard

    def _restore(
        self, spec: StoreSpec, partition: int, path: Path, progress: RestoreProgress,
        changelog_end: int | None = None,
    ) -> tuple[ShardDB, str, Manifest | None, ReplayResult | None]:
        """Open the shard's database at `path`, restoring it first if it is not there (newest
        snapshot, then the changelog to its end, or to `changelog_end`). Returns the open
        database, the source ("local", "snapshot", "changelog" or "new"), the snapshot used and
        the replay."""
        source, manifest = "local", None
        changelog = self.changelog
        if changelog is not None and changelog_end is not None:
            changelog = LogPrefix(changelog, changelog_end)
        prefetch: Prefetch | None = None
        ahead: ReplayAheads | None = None
        log_progress = _progress_logger(f"{spec.name}/{partition}")

        def on_records(records: int) -> None:
            progress.on_records(records)
            log_progress(records)

        if not (path / "CURRENT").exists():
            shutil.rmtree(path, ignore_errors=True)
            tmp = self.data_dir / "tmp" / f"restore-{uuid.uuid4().hex}"
            on_manifest: Callable[[Manifest], None] | None = None
            if changelog is not None:
                _ensure_topic_soon(changelog, spec)
            if changelog is not None and not spec.windowed:
                # Replay the log's tail while the snapshot downloads (server/replayahead.py).
                ahead = ReplayAheads(changelog, spec.name, partition, on_records)
                on_manifest = ahead.start
            elif changelog is not None:  # read the log's tail while the snapshot downloads
                prefetch = changelog = Prefetch(changelog, spec.name, partition)
                on_manifest = partial(_prefetch_from, prefetch)
            try:
                manifest = self.snapshots.restore_latest(
                    spec.name, partition, tmp, progress=progress.on_bytes,
                    on_manifest=on_manifest)
            except BaseException:
                if prefetch is not None:
                    prefetch.cancel()
                if ahead is not None:
                    ahead.cancel()
                raise
            if manifest is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp.replace(path)
                source = "snapshot"
                log.info("restored %s/%d from snapshot %d", spec.name, partition,
                         manifest.snapshot_id)
            else:
                shutil.rmtree(tmp, ignore_errors=True)
                source = "changelog" if self.changelog is not None else "new"
        downloaded = time.monotonic()
        try:
            db = self.hot.open(path)
        except BaseException:
            if ahead is not None:
                ahead.cancel()
            raise
        replay: ReplayResult | None = None
        if changelog is not None:
            try:
                changelog.ensure_topic(spec.name, spec.num_partitions,
                                       spec.changelog_retention_ms())
                progress.start_replay()
                if ahead is not None and source == "snapshot":
                    replay = ahead.finish(db)
                if replay is None:
                    replay = replay_changelog(
                        db, changelog, spec.name, partition, progress=on_records, spec=spec,
                    )
            except BaseException:
                db.close()
                raise
            finally:
                if prefetch is not None:
                    prefetch.cancel()
                if ahead is not None:
                    ahead.cancel()
            log.info(
                "%s/%d: replayed %d changelog records (%d batches) in %.2fs; %d uncommitted keys",
                spec.name, partition, replay.records_read, replay.batches_applied,
                replay.seconds, len(replay.uncommitted_keys),
            )
        progress.phase, progress.finished = "done", time.monotonic()
        if source in ("snapshot", "changelog"):  # not "local", nor "new" (nothing to restore)
            log.info("%s/%d: %s restore took %.2fs: %.2fs to the snapshot's download's end, "
                     "then %.2fs to the changelog's end", spec.name, partition, source,
                     progress.finished - progress.started, downloaded - progress.started,
                     progress.finished - downloaded)
        return db, source, manifest, replay

    def probe_restore(self, spec: StoreSpec, partition: int, changelog_end: int
                      ) -> RestoreProgress:
        """Restore a copy of the shard, with the changelog up to `changelog_end` (where the
        shard stands: the owner keeps appending meanwhile), into a scratch directory, timing
        each phase, and delete it: what loading the shard on an empty disk costs now
        (restore-time calibration). The open shard is not touched."""
        path = self.data_dir / "tmp" / f"probe-{uuid.uuid4().hex}"
        progress = RestoreProgress()
        try:
            db, *_ = self._restore(spec, partition, path, progress, changelog_end)
            db.close()
        finally:
            shutil.rmtree(path, ignore_errors=True)
        return progress

    def unload(self, shard: Shard) -> None:
        with self._lock:
            if self._shards.get((shard.spec.name, shard.partition)) is shard:
                del self._shards[(shard.spec.name, shard.partition)]
        shard.close()

    def close_all(self) -> None:
        for sh in self.open_shards():
            self.unload(sh)

    def __iter__(self) -> Iterator[Shard]:
        return iter(self.open_shards())


def _prefetch_from(prefetch: Prefetch, manifest: Manifest) -> None:
    prefetch.start(manifest.changelog_offset)


def _ensure_topic_soon(changelog: Changelog, spec: StoreSpec) -> None:
    """Call ensure_topic on a thread while the snapshot downloads: it warms up the producer
    (whose id takes 0.5-1 s; the claim that follows the restore appends at once) and learns
    the topic. Only a head start: the restore calls it again after the download, and that
    call's error (if any) is the one that counts."""

    def run() -> None:
        try:
            changelog.ensure_topic(spec.name, spec.num_partitions, spec.changelog_retention_ms())
        except Exception as exc:
            log.debug("early ensure_topic of %s failed (retried after the download): %s",
                      spec.name, exc)

    threading.Thread(target=run, daemon=True, name=f"ensure-topic-{spec.name}").start()

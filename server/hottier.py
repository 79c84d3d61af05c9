"""The hot tier: one RocksDB database (rocksdict, raw mode) per shard, sharing one memory budget.

Each shard database has two column families:
- ``default``: the user's keys and values, byte-for-byte;
- ``meta``: the shard's epoch, commit sequence, changelog offset and committed input offsets.

Data and metadata are always written in one WriteBatch, so they are durable together or not at
all. This module knows nothing of gRPC, Kafka or S3.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import struct
import threading
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from rocksdict import (
    BlockBasedOptions,
    Cache,
    Checkpoint,
    DbClosedError,
    Options,
    Rdict,
    ReadOptions,
    WriteBatch,
    WriteBufferManager,
    WriteOptions,
)

from tierstore.server import multiget
from tierstore.server.errors import StateStoreError, UnavailableError
from tierstore.server.keys import next_key, prefix_upper_bound

META_CF = "meta"
_U64 = struct.Struct(">Q")
_I64 = struct.Struct(">q")

K_EPOCH = b"epoch"
K_COMMIT_SEQ = b"commit_seq"
K_CHANGELOG_OFFSET = b"changelog_offset"
K_OFFSETS = b"offsets"
K_LOCAL_SPEC = b"local_spec"


@dataclass(frozen=True)
class HotTierConfig:
    """The memory budget shared by every shard on the server."""

    block_cache_bytes: int = 256 * 1024 * 1024
    write_buffer_bytes: int = 128 * 1024 * 1024  # all memtables of all shards together
    write_buffer_size_per_shard: int = 16 * 1024 * 1024
    max_open_files_per_shard: int = 256
    # A bloom filter over each memtable's keys, of this fraction of write_buffer_size_per_shard
    # (0: none; at most 0.25): a point read of a key the memtable lacks skips its skiplist. Off
    # by default: RocksDB allocates it whole with every memtable, however little the memtable
    # holds, so with many shards it costs far more memory than the budget (docs/operations.md).
    memtable_bloom_ratio: float = 0.0
    # RocksDB statistics per shard database: the block-cache hit and miss counts in /metrics.
    # Costs a few per cent of raw RocksDB throughput (docs/operations.md has the figures).
    rocksdb_statistics: bool = True
    # With a changelog, the log is the durable record: RocksDB's own WAL is skipped and the
    # column families flush atomically, so a crash leaves a consistent older state from which
    # the changelog replay catches up. Without a changelog the WAL is on and fsynced per commit.
    disable_wal: bool = False


# The block-cache tickers of RocksDB statistics ("rocksdb.block.cache.hit COUNT : 12").
_CACHE_TICKER = re.compile(rb"^rocksdb\.block\.cache\.(hit|miss) COUNT : (\d+)$", re.M)


@dataclass(frozen=True)
class CacheCounts:
    """Block-cache lookups that found their block (hits) or read it from a file (misses)."""

    hits: int = 0
    misses: int = 0

    def __add__(self, other: CacheCounts) -> CacheCounts:
        return CacheCounts(self.hits + other.hits, self.misses + other.misses)

    @property
    def hit_ratio(self) -> float:
        """hits / lookups; NaN before any lookup."""
        lookups = self.hits + self.misses
        return self.hits / lookups if lookups else float("nan")


def parse_cache_counts(text: str | None) -> CacheCounts:
    """The block-cache hit and miss tickers from a RocksDB statistics dump (zeros if absent)."""
    found = {m.group(1): int(m.group(2)) for m in _CACHE_TICKER.finditer((text or "").encode())}
    return CacheCounts(found.get(b"hit", 0), found.get(b"miss", 0))


class _SharedResources:
    def __init__(self, cfg: HotTierConfig) -> None:
        self.cache = Cache(cfg.block_cache_bytes)
        self.wbm = WriteBufferManager.new_write_buffer_manager_with_cache(
            cfg.write_buffer_bytes, False, self.cache
        )


def rocks_error_kind(exc: BaseException) -> str:
    """Classify a rocksdict exception by its message: 'lock', 'nospace', 'corruption' or 'other'.

    rocksdict raises plain exceptions carrying RocksDB's status text; this is the one place
    that reads those strings.
    """
    text = str(exc).lower()
    if "lock" in text and ("resource temporarily unavailable" in text or "lock hold" in text):
        return "lock"
    if "no space" in text or "nospace" in text or "enospc" in text:
        return "nospace"
    if "corrupt" in text:
        return "corruption"
    return "other"


def _wrap(exc: Exception, what: str) -> StateStoreError:
    kind = rocks_error_kind(exc)
    if kind == "nospace":
        return UnavailableError(f"{what}: disk full on the data dir ({exc})")
    if kind == "lock":
        return UnavailableError(f"{what}: database is locked by another process ({exc})")
    return UnavailableError(f"{what}: {exc}")


@dataclass
class ShardMeta:
    epoch: int = 0
    commit_seq: int = 0
    changelog_offset: int = 0  # the next changelog offset this state has not applied
    offsets: dict[str, int] = field(default_factory=dict)


def log_batch(keys: Sequence[bytes], values: Sequence[bytes | None],
              ranges: Sequence[tuple[bytes, bytes]] = ()) -> WriteBatch:
    """The data part of `ShardDB.apply_log`'s WriteBatch, built without a database (restore
    prepares batches while the snapshot downloads: server/replayahead.py)."""
    wb = WriteBatch(raw_mode=True)
    for begin, end in ranges:
        wb.delete_range(begin, end)
    put = wb.put
    delete = wb.delete
    for k, v in zip(keys, values, strict=True):
        if v is None:
            delete(k)
        else:
            put(k, v)
    return wb


class HotTier:
    """Opens shard databases under one shared block cache and write-buffer budget."""

    def __init__(self, root: Path, cfg: HotTierConfig | None = None) -> None:
        self.root = root
        self.cfg = cfg or HotTierConfig()
        self._shared = _SharedResources(self.cfg)
        self._lock = threading.Lock()
        self._open: weakref.WeakSet[ShardDB] = weakref.WeakSet()
        self._retired = CacheCounts()  # the final counts of databases closed since start

    def options(self) -> Options:
        opts = Options(raw_mode=True)
        opts.create_if_missing(True)
        opts.create_missing_column_families(True)
        opts.set_write_buffer_size(self.cfg.write_buffer_size_per_shard)
        opts.set_write_buffer_manager(self._shared.wbm)
        opts.set_max_open_files(self.cfg.max_open_files_per_shard)
        opts.set_atomic_flush(True)
        if self.cfg.memtable_bloom_ratio > 0:
            opts.set_memtable_prefix_bloom_ratio(self.cfg.memtable_bloom_ratio)
            opts.set_memtable_whole_key_filtering(True)  # whole keys: no prefix extractor
        if self.cfg.rocksdb_statistics:
            opts.enable_statistics()
        table = BlockBasedOptions()
        table.set_block_cache(self._shared.cache)
        table.set_bloom_filter(10, False)
        table.set_cache_index_and_filter_blocks(True)
        opts.set_block_based_table_factory(table)
        return opts

    def open(self, path: Path) -> ShardDB:
        path.parent.mkdir(parents=True, exist_ok=True)
        opts = self.options()
        try:
            db = Rdict(str(path), opts, column_families={META_CF: self.options()})
        except Exception as exc:
            raise _wrap(exc, f"opening shard database {path}") from exc
        shard_db = ShardDB(path, db, disable_wal=self.cfg.disable_wal,
                           on_close=self._retire if self.cfg.rocksdb_statistics else None)
        if self.cfg.rocksdb_statistics:
            with self._lock:
                self._open.add(shard_db)
        return shard_db

    def _retire(self, db: ShardDB) -> None:
        with self._lock:  # counted once: either open here, or retired
            self._retired = self._retired + db.cache_counts()
            self._open.discard(db)

    def block_cache_counts(self) -> CacheCounts | None:
        """Block-cache hits and misses of every shard database opened since start (closed ones
        included, so the counts never go down); None with rocksdb_statistics off."""
        if not self.cfg.rocksdb_statistics:
            return None
        with self._lock:
            total = self._retired
            for db in list(self._open):
                total = total + db.cache_counts()
        return total

    def block_cache_usage(self) -> int:
        return int(self._shared.cache.get_usage())

    def memtable_usage(self) -> int:
        return int(self._shared.wbm.get_usage())


def _keep_alive(items: Any, ro: ReadOptions) -> Iterator[tuple[bytes, bytes]]:
    """Iterate rocksdict items while holding their ReadOptions: RocksDB keeps only a pointer to
    the iterate bounds, so the options must outlive the iterator. `yield from` hands each item
    through at C speed (a Python __next__ per key cost 63% of a scan)."""
    keep = ro  # noqa: F841
    yield from items


def _reverse_bounded(
    items: Any, ro: ReadOptions, lower: bytes | None, upper: bytes | None
) -> Iterator[tuple[bytes, bytes]]:
    """Yield items (descending) with lower <= key < upper."""
    keep = ro  # noqa: F841  (the options must outlive the iterator)
    for k, v in items:
        if upper is not None and k >= upper:
            continue
        if lower is not None and k < lower:
            return
        yield k, v


class ShardDB:
    """One shard's RocksDB database. Reads are thread-safe; writes are serialized by the caller."""

    def __init__(self, path: Path, db: Rdict, disable_wal: bool = False,
                 on_close: Callable[[ShardDB], None] | None = None) -> None:
        self.path = path
        self._db = db
        self._on_close = on_close  # called before the database closes (its final counts)
        self._meta_cf: Any = db.get_column_family_handle(META_CF)
        self._meta: Any = db.get_column_family(META_CF)
        self._sync = WriteOptions()
        self._sync.sync = True
        self._nosync = WriteOptions()
        if disable_wal:
            self._sync.sync = False
            # disable_wal is a property at runtime; rocksdict's stub calls it a method.
            setattr(self._sync, "disable_wal", True)  # noqa: B010
            setattr(self._nosync, "disable_wal", True)  # noqa: B010
        self.disable_wal = disable_wal
        self.closed = False
        # Open scans: a RocksDB iterator keeps the database (and its LOCK) open after close(),
        # so close() ends them (the scan then answers UNAVAILABLE: service.scan).
        self._scans: weakref.WeakSet[Iterator[tuple[bytes, bytes]]] = weakref.WeakSet()
        self._scans_lock = threading.Lock()

    # --- metadata -------------------------------------------------------------------------
    def read_meta(self) -> ShardMeta:
        raw = cast(
            "list[bytes | None]",
            self._meta.get([K_EPOCH, K_COMMIT_SEQ, K_CHANGELOG_OFFSET, K_OFFSETS]),
        )
        return ShardMeta(
            epoch=_U64.unpack(raw[0])[0] if raw[0] else 0,
            commit_seq=_U64.unpack(raw[1])[0] if raw[1] else 0,
            changelog_offset=_I64.unpack(raw[2])[0] if raw[2] else 0,
            offsets=json.loads(raw[3]) if raw[3] else {},
        )

    # --- writes ---------------------------------------------------------------------------
    def apply(
        self,
        put_keys: Sequence[bytes],
        put_values: Sequence[bytes],
        delete_keys: Sequence[bytes],
        meta: ShardMeta,
        *,
        sync: bool,
        ranges: Sequence[tuple[bytes, bytes]] = (),
    ) -> None:
        """Write the data and the shard metadata in one atomic WriteBatch.

        With ``sync`` the WAL is fsynced before returning (the durability point when there is no
        changelog). On failure nothing is applied and UnavailableError is raised.
        """
        self.write_prepared(
            self.prepare(put_keys, put_values, delete_keys, ranges), meta, sync=sync
        )

    def prepare(
        self,
        put_keys: Sequence[bytes],
        put_values: Sequence[bytes],
        delete_keys: Sequence[bytes],
        ranges: Sequence[tuple[bytes, bytes]] = (),
    ) -> WriteBatch:
        """Build (without writing) the data part of a commit's WriteBatch: the range deletes
        ``[begin, end)`` first (one range tombstone each, however many keys they cover), then
        the puts and deletes, which therefore win over the ranges."""
        wb = WriteBatch(raw_mode=True)
        for begin, end in ranges:
            wb.delete_range(begin, end)
        put = wb.put
        for k, v in zip(put_keys, put_values, strict=True):
            put(k, v)
        delete = wb.delete
        for k in delete_keys:
            delete(k)
        return wb

    def write_prepared(self, wb: WriteBatch, meta: ShardMeta, *, sync: bool) -> None:
        """Add the shard metadata to a prepared batch and write it atomically."""
        self._put_meta(wb, meta)
        self._write(wb, sync=sync)

    def apply_log(
        self, keys: Sequence[bytes], values: Sequence[bytes | None], meta: ShardMeta,
        ranges: Sequence[tuple[bytes, bytes]] = (),
    ) -> None:
        """Apply changelog records in log order (None deletes) with `meta`, in one WriteBatch,
        after the range deletes `ranges` (re-derived by restore, never logged)."""
        self.write_prepared(log_batch(keys, values, ranges), meta, sync=False)

    def _put_meta(self, wb: WriteBatch, meta: ShardMeta) -> None:
        cf = self._meta_cf
        wb.put(K_EPOCH, _U64.pack(meta.epoch), cf)
        wb.put(K_COMMIT_SEQ, _U64.pack(meta.commit_seq), cf)
        wb.put(K_CHANGELOG_OFFSET, _I64.pack(meta.changelog_offset), cf)
        wb.put(K_OFFSETS, json.dumps(meta.offsets, sort_keys=True).encode(), cf)

    def _write(self, wb: WriteBatch, *, sync: bool) -> None:
        try:
            self._db.write(wb, self._sync if sync else self._nosync)
        except Exception as exc:
            raise _wrap(exc, f"writing shard {self.path}") from exc

    def delete_range(self, begin: bytes, end: bytes) -> None:
        self._db.delete_range(begin, end)

    def compact(self) -> None:
        """Compact the whole data key space now (RocksDB does it in the background anyway):
        range tombstones and the entries they cover leave the files."""
        self._db.compact_range(None, None)

    def read_local_spec(self) -> dict[str, Any] | None:
        """The spec an embedded (local) store keeps in its own database; None if not set."""
        raw = self._meta.get(K_LOCAL_SPEC)
        return None if raw is None else cast("dict[str, Any]", json.loads(raw))

    def write_local_spec(self, spec: dict[str, Any]) -> None:
        self._meta[K_LOCAL_SPEC] = json.dumps(spec, sort_keys=True).encode()

    # --- reads ----------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self.closed:
            raise self._closed_error()

    def _closed_error(self) -> UnavailableError:
        return UnavailableError(f"shard database {self.path} was closed (evicted or moved); "
                                "retry")

    def get_many(self, keys: Sequence[bytes]) -> list[bytes | None]:
        self._check_open()
        try:  # a large one in two halves on two threads (server/multiget.py)
            return multiget.helpers().get_many(self._get_list, list(keys))
        except DbClosedError as exc:  # closed between the check and the read
            raise self._closed_error() from exc

    def _get_list(self, keys: list[bytes]) -> list[bytes | None]:
        return cast("list[bytes | None]", self._db.get(cast("list[Any]", keys)))

    def get(self, key: bytes) -> bytes | None:
        try:
            value: bytes | None = self._db.get(key)
        except DbClosedError as exc:
            raise self._closed_error() from exc
        return value

    def iterate(
        self,
        from_key: bytes | None,
        to_key: bytes | None,
        reverse: bool = False,
        prefix: bytes | None = None,
    ) -> Iterator[tuple[bytes, bytes]]:
        """Yield (key, value) with from_key <= key <= to_key (both inclusive), or under a prefix.

        The iterator reads one consistent RocksDB view taken when it starts. Closing the
        database ends it early (check `closed` after the last item).
        """
        with self._scans_lock:  # registered before close() can sweep the open scans
            self._check_open()
            it = self._iterate(from_key, to_key, reverse, prefix)
            self._scans.add(it)
        return it

    def _iterate(
        self, from_key: bytes | None, to_key: bytes | None, reverse: bool, prefix: bytes | None,
    ) -> Iterator[tuple[bytes, bytes]]:
        lower: bytes | None = from_key
        upper: bytes | None = None  # exclusive
        if prefix:
            lower = prefix
            upper = prefix_upper_bound(prefix)
        elif to_key is not None:
            upper = next_key(to_key)
        ro = ReadOptions()
        try:
            if not reverse:
                # Forward: RocksDB's upper bound stops the scan without a Python check per key.
                if upper is not None:
                    ro.set_iterate_upper_bound(upper)
                if lower is None:
                    return _keep_alive(self._db.items(read_opt=ro), ro)
                return _keep_alive(self._db.items(from_key=lower, read_opt=ro), ro)
            # Backward: rocksdict mishandles iterate_lower_bound with seek_for_prev, so the
            # lower bound is checked here; the start is the last key <= the upper end.
            if upper is None:
                items = self._db.items(backwards=True, read_opt=ro)
            else:
                items = self._db.items(backwards=True, from_key=upper, read_opt=ro)
        except DbClosedError as exc:  # closed between the check and the read
            raise self._closed_error() from exc
        return _reverse_bounded(items, ro, lower, upper)

    def approximate_num_entries(self) -> int:
        return int(self._db.property_int_value("rocksdb.estimate-num-keys") or 0)

    def cache_counts(self) -> CacheCounts:
        """This database's block-cache hits and misses (zeros without statistics, or once it
        is closed: HotTier has counted them then)."""
        if self.closed:
            return CacheCounts()
        try:
            return parse_cache_counts(self._db.property_value("rocksdb.options-statistics"))
        except Exception:  # closed meanwhile (DbClosedError)
            return CacheCounts()

    def live_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.path.iterdir() if f.is_file())

    # --- lifecycle ------------------------------------------------------------------------
    def checkpoint(self, dest: Path) -> None:
        """Create a RocksDB checkpoint (hard links to the immutable SSTs plus a flushed memtable)
        in `dest`, which must not exist."""
        try:
            Checkpoint(self._db).create_checkpoint(str(dest))
        except Exception as exc:
            shutil.rmtree(dest, ignore_errors=True)
            raise _wrap(exc, f"checkpointing shard {self.path}") from exc

    def flush(self) -> None:
        self._db.flush()
        self._db.flush_wal(True)

    def close(self) -> None:
        """Flush and close. A failure (e.g. disk full) raises UnavailableError; the database is
        closed anyway, and what the flush lost is in the changelog (or the fsynced WAL)."""
        if not self.closed:
            if self._on_close is not None:
                self._on_close(self)
            with self._scans_lock:
                self.closed = True
                scans = list(self._scans)
            for it in scans:  # release their RocksDB iterators (and so the database); one
                # running on another thread raises ValueError: service.scan drops it after its
                # page, on seeing `closed`
                with contextlib.suppress(ValueError):
                    it.close()  # type: ignore[attr-defined]
            try:
                try:
                    if self.disable_wal:
                        self._db.flush()  # memtables hold writes no WAL has
                    else:
                        self._db.flush_wal(True)
                finally:
                    # The column-family objects hold the database open (and its LOCK) until
                    # freed.
                    self._meta = None
                    self._meta_cf = None
                    self._db.close()
            except Exception as exc:
                raise _wrap(exc, f"closing shard {self.path}") from exc

"""Restore: bring a shard's local database up to the end of its changelog.

The rules (docs/protocol.md has the argument for each):
1. Records are buffered until a marker; at a marker every buffered record is applied, in log
   order, in one WriteBatch together with the marker's epoch, sequence and input offsets.
   A marker commits everything buffered before it, so markers removed by compaction lose nothing.
2. A data record or marker whose epoch is older than the newest epoch already seen is a zombie
   write and is dropped.
3. Records after the last marker were never committed: they are not applied, and their keys are
   reported so the next owner can overwrite them with their committed values (the "repair").
4. Window and session stores (given `spec`): segment drops are re-derived, never read from the
   log. The stream time is tracked as batches are applied; at each marker the segments it
   expired are range-deleted in the same WriteBatch, before the batch's records, and records of
   dropped segments are left out (server/segments.py).
5. A claim marker sets the epoch, but its offsets (its claimer's view when it claimed) count
   only if the claimer had applied everything applied here so far (its "b" field is at or
   after the offset after the last applied marker). Otherwise a commit of the previous owner
   landed between the claimer's load and its claim, and is applied here before the claim: its
   offsets are kept (the claimer would have caught up to it and committed them again, had it
   not crashed first). A claim marker without "b" (written before this rule) counts as before.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from tierstore.server.hottier import ShardDB, ShardMeta
from tierstore.server.logproto import CLAIM, MARKER_KEY, Marker, header_epoch, parse_marker
from tierstore.server.ports import Changelog, ChangelogRecord, Header
from tierstore.server.segments import SegmentDrops
from tierstore.server.specs import StoreSpec

log = logging.getLogger(__name__)

Progress = Callable[[int], None]  # called with the number of records read so far


class ReplayTarget(Protocol):
    """What a replay writes to: a ShardDB, or (while the snapshot still downloads) the
    batches held for it by server/replayahead.py."""

    def read_meta(self) -> ShardMeta: ...

    def apply_log(self, keys: Sequence[bytes], values: Sequence[bytes | None], meta: ShardMeta,
                  ranges: Sequence[tuple[bytes, bytes]] = ()) -> None: ...


@dataclass
class ReplayResult:
    meta: ShardMeta
    records_read: int = 0
    records_applied: int = 0
    batches_applied: int = 0
    zombie_records: int = 0
    expired_records: int = 0  # records of dropped segments, skipped
    segment_drops: int = 0  # range deletes re-derived
    max_epoch: int = 0
    uncommitted_keys: set[bytes] = field(default_factory=set)
    # Keys of dropped zombie data records. Each stays in the log; if it were the newest record
    # of its key, compaction would remove the committed value before it. Repairing the key (the
    # committed value appended again) makes it an older record, which compaction may drop.
    zombie_keys: set[bytes] = field(default_factory=set)
    seconds: float = 0.0
    end_offset: int = -1  # the offset after the last record read: where the next append lands
    stopped_at: int = -1  # with `until`: the offset of the marker the replay stopped before
    stop_marker: Marker | None = None

    def keys_to_repair(self) -> set[bytes]:
        """What the shard's next append must re-append with committed values: the tail's
        uncommitted keys and the zombies' keys."""
        return self.uncommitted_keys | self.zombie_keys


class ReadOnlyView:
    """A Changelog that reads through `inner` and never appends (restores, forks); `close`
    leaves `inner` open, since it is not the view's. Subclasses filter `read`."""

    def __init__(self, inner: Changelog) -> None:
        self.inner = inner

    def read(self, store: str, partition: int, start_offset: int
             ) -> Iterator[list[ChangelogRecord]]:
        return self.inner.read(store, partition, start_offset)

    def ensure_topic(self, store: str, num_partitions: int,
                     retention_ms: int | None = None) -> None:
        self.inner.ensure_topic(store, num_partitions, retention_ms)

    def append_batch(self, store: str, partition: int, keys: Sequence[bytes],
                     values: Sequence[bytes | None], headers: Sequence[Header],
                     marker_value: bytes, marker_headers: Sequence[Header],
                     while_waiting: Callable[[], None] | None = None) -> int:
        raise TypeError(f"{type(self).__name__} is a read-only view of a changelog")

    def close(self) -> None:
        pass


class LogPrefix(ReadOnlyView):
    """The changelog up to (not including) offset `end`: the records a restore started then
    would read, even while the shard's owner keeps appending."""

    def __init__(self, inner: Changelog, end: int) -> None:
        super().__init__(inner)
        self.end = end

    def read(self, store: str, partition: int, start_offset: int
             ) -> Iterator[list[ChangelogRecord]]:
        if start_offset >= self.end:
            return
        for page in self.inner.read(store, partition, start_offset):
            if page and page[-1].offset >= self.end:
                head = [r for r in page if r.offset < self.end]
                if head:
                    yield head
                return
            yield page


def replay_changelog(
    db: ReplayTarget,
    changelog: Changelog,
    store: str,
    partition: int,
    progress: Progress | None = None,
    spec: StoreSpec | None = None,
    until: Callable[[Marker], bool] | None = None,
) -> ReplayResult:
    """Apply every committed batch after the database's changelog offset. Crash-safe: each batch
    is applied with its metadata atomically, so an interrupted replay resumes where it stopped.
    Without `spec` (or for a kv store) no segment drops are derived. With `until`, the replay
    stops before the first (non-zombie) marker for which until(marker) is true: neither that
    batch nor anything after it is applied (`stopped_at`, `stop_marker` say where; `end_offset`
    and `uncommitted_keys` then describe only what was read before it)."""
    started = time.monotonic()
    drops = None
    if spec is not None and spec.windowed:
        if not isinstance(db, ShardDB):  # segment drops read the stream time from the db
            raise TypeError("a window or session store replays into an open ShardDB only")
        drops = SegmentDrops(spec, db)
    meta = db.read_meta()
    result = ReplayResult(meta=meta, max_epoch=meta.epoch)
    max_epoch = meta.epoch
    pend_keys: list[bytes] = []
    pend_values: list[bytes | None] = []
    last_epoch_raw: bytes | None = None
    last_epoch = 0
    zombie_keys = result.zombie_keys
    for page in changelog.read(store, partition, meta.changelog_offset):
        if page:
            result.end_offset = page[-1].offset + 1
        for rec in page:
            result.records_read += 1
            if rec.key == MARKER_KEY:
                m = parse_marker(rec.value, rec.headers)
                if m is None:
                    log.warning("%s/%d: ignoring a foreign record with an empty key at offset %d",
                                store, partition, rec.offset)
                    continue
                if m.epoch < max_epoch:
                    result.zombie_records += 1
                    continue
                if until is not None and until(m):
                    result.stopped_at, result.stop_marker = rec.offset, m
                    result.end_offset = rec.offset
                    break
                max_epoch = m.epoch
                offsets = m.offsets
                if m.kind == CLAIM and m.base is not None and meta.changelog_offset > m.base:
                    # Rule 5: a commit the claimer had not applied precedes its claim here.
                    offsets = dict(meta.offsets)
                meta = ShardMeta(m.epoch, m.seq, rec.offset + 1, offsets)
                ranges: list[tuple[bytes, bytes]] = []
                if drops is not None:
                    pend_keys, pend_values, ranges = drops.at_marker(pend_keys, pend_values)
                    result.segment_drops += len(ranges)
                db.apply_log(pend_keys, pend_values, meta, ranges)
                result.records_applied += len(pend_keys)
                result.batches_applied += 1
                pend_keys, pend_values = [], []
                continue
            # Headers repeat across a batch: decode the epoch only when its bytes change.
            raw = rec.headers[0][1] if rec.headers else None
            if raw is not last_epoch_raw and raw != last_epoch_raw:
                last_epoch_raw = raw
                last_epoch = header_epoch(rec.headers) or max_epoch
            if last_epoch < max_epoch:
                result.zombie_records += 1
                zombie_keys.add(rec.key)
                continue
            max_epoch = last_epoch
            if drops is not None and drops.skip(rec.key):
                continue
            pend_keys.append(rec.key)
            pend_values.append(rec.value)
        if progress is not None:
            progress(result.records_read)
        if result.stop_marker is not None:
            break
    result.meta = meta
    result.max_epoch = max_epoch
    result.uncommitted_keys = set(pend_keys)
    result.expired_records = drops.skipped if drops is not None else 0
    result.seconds = time.monotonic() - started
    if result.end_offset < 0:
        result.end_offset = meta.changelog_offset
    return result

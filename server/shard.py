"""A shard (store, partition): ownership by epoch, staged writes, and the atomic commit path.

Commit protocol (docs/protocol.md):
1. check the epoch (FencedError) and the commit sequence (a retry of the last commit succeeds
   without applying anything twice);
2. validate the whole batch; nothing is applied if any part is bad;
3. with a changelog: append the batch and then its commit marker; the commit is durable once the
   marker is acknowledged;
4. apply data + epoch + sequence + input offsets + changelog offset in one RocksDB WriteBatch
   (fsynced when there is no changelog: then that write is the durability point).
If step 3 fails, nothing is applied locally and the keys it may have left in the log are
overwritten with their committed values by the next append (the repair). If step 4 fails after
step 3 (or, without a changelog, at all), the shard is marked broken, so its next use reloads it
from disk (plus the changelog).

With a changelog the commit is acknowledged as soon as step 3 is done, and step 4 runs on a
background thread (`_apply_later`), overlapping the client's next batch. Every later use of
the shard (reads included) first waits for it (`settle`), so no read can see the shard between
the two steps, and `meta` moves only once the data is in RocksDB.

Window and session stores' commits may carry range deletes that drop expired segments
(server/segments.py): they apply after the staged writes and before the commit's own batch, in
the same WriteBatch, and are not logged (restore re-derives them from the stream time).
TTL stores' expired entries are removed by `sweep_expired`, a commit of tombstones made by the
server through the same path (so the changelog gets them) without taking a commit number.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from rocksdict import WriteBatch

from tierstore import ttl as ttlcodec
from tierstore.overlay import overlay_items, select_range
from tierstore.server import segments
from tierstore.server.claim import claim_shard
from tierstore.server.errors import (
    AbortedError,
    FencedError,
    InvalidArgumentError,
    ResourceExhaustedError,
    UnavailableError,
)
from tierstore.server.fence import foreign_records
from tierstore.server.hottier import ShardDB, ShardMeta
from tierstore.server.keys import check_keys, check_range, check_values
from tierstore.server.logproto import COMMIT, data_headers, marker
from tierstore.server.ports import Changelog
from tierstore.server.specs import StoreSpec

_applier: ThreadPoolExecutor | None = None
_applier_lock = threading.Lock()


def _apply_pool() -> ThreadPoolExecutor:
    """The threads that write acknowledged commits into RocksDB (shared by all shards)."""
    global _applier
    with _applier_lock:
        if _applier is None:
            _applier = ThreadPoolExecutor(max_workers=4, thread_name_prefix="shard-apply")
        return _applier


@dataclass(frozen=True)
class ShardLimits:
    max_value_bytes: int = 8 * 1024 * 1024
    max_staged_bytes: int = 256 * 1024 * 1024


@dataclass(frozen=True)
class CommitResult:
    offsets: dict[str, int]
    changelog_offset: int
    applied: bool  # False when this was a retry of a commit already applied


class Shard:
    """All mutation goes through `_lock`; reads go straight to RocksDB (thread-safe)."""

    def __init__(
        self,
        spec: StoreSpec,
        partition: int,
        db: ShardDB,
        changelog: Changelog | None,
        limits: ShardLimits,
        repair_keys: set[bytes] | None = None,
    ) -> None:
        self.spec = spec
        self.partition = partition
        self.db = db
        self.changelog = changelog
        self.limits = limits
        self._lock = threading.RLock()
        self.meta = db.read_meta()
        self.broken: str | None = None
        self._repair: set[bytes] = set(repair_keys or ())
        self._stage: dict[bytes, bytes | None] = {}
        self._stage_seq = 0
        self._stage_batches = 0
        self._stage_bytes = 0
        self.commits_since_snapshot = 0
        self.last_snapshot_at = time.monotonic()
        # The changelog offset and size of the snapshot a restore would start from (None:
        # unknown, e.g. opened from the local disk); a restore replays the log from there.
        self.snapshot_offset: int | None = None
        self.snapshot_bytes = 0
        self.last_used = time.monotonic()
        self.epoch_floor = 0  # the newest epoch seen in the changelog, which a claim must pass
        self.standby = False  # a follower copy (tierstore.server.standby); promoted before use
        self.promoted = False  # served as the owner here: never a standby again (this object)
        # Where this server's next append must land in the changelog, if known. An append that
        # lands elsewhere means another writer (a server that took the shard over) appended.
        self.log_end: int | None = None
        self.taken_over = False
        self.claims_here = 0
        self._sweep_from: bytes | None = None  # where the next TTL sweep starts
        # Set while an acknowledged commit is being written to RocksDB in the background.
        self._applying: threading.Event | None = None

    @property
    def name(self) -> str:
        return f"{self.spec.name}/{self.partition}"

    # --- ownership ------------------------------------------------------------------------
    def claim(self, min_epoch: int = 0) -> ShardMeta:
        """Bump the epoch (fencing every earlier owner), drop staged writes, and record the claim
        durably: with a changelog, the claim marker first, then a catch-up to it, then the
        repair of uncommitted keys (server/claim.py)."""
        with self._lock:
            self._check_usable()
            self._drop_stage()
            meta = claim_shard(self, min_epoch)
            self.claims_here += 1
            return meta

    def set_repair(self, keys: set[bytes]) -> None:
        """Keys found uncommitted at the tail of the log by a catch-up replay."""
        with self._lock:
            self.settle()
            self._repair = set(keys)

    def check_epoch(self, epoch: int) -> None:
        # Below the floor, the log holds records of a newer epoch (an in-doubt claim): restore
        # would drop this epoch's writes.
        if epoch != self.meta.epoch or epoch < self.epoch_floor:
            raise FencedError(
                f"shard {self.name}: epoch {epoch} is fenced; the current epoch is "
                f"{max(self.meta.epoch, self.epoch_floor)} (another owner claimed the shard, "
                "or this claim is stale)"
            )

    def release(self, epoch: int) -> None:
        with self._lock:
            self.settle()
            self.check_epoch(epoch)
            self._drop_stage()

    # --- writes ---------------------------------------------------------------------------
    def stage(
        self,
        epoch: int,
        commit_seq: int,
        put_keys: Sequence[bytes],
        put_values: Sequence[bytes],
        delete_keys: Sequence[bytes],
    ) -> int:
        """Hold writes for the coming commit `commit_seq`; visible to the owner only."""
        with self._lock:
            self._check_usable()
            self.check_epoch(epoch)
            self._validate(put_keys, put_values, delete_keys)
            expected = self.meta.commit_seq + 1
            if commit_seq != expected:
                raise AbortedError(
                    f"shard {self.name}: staged writes for commit {commit_seq}, expected "
                    f"{expected}"
                )
            if self._stage_seq != commit_seq:
                self._drop_stage()
                self._stage_seq = commit_seq
            size = sum(map(len, put_keys)) + sum(map(len, put_values)) + sum(map(len, delete_keys))
            if self._stage_bytes + size > self.limits.max_staged_bytes:
                raise ResourceExhaustedError(
                    f"shard {self.name}: staged writes would exceed "
                    f"{self.limits.max_staged_bytes} bytes; commit more often"
                )
            st = self._stage
            st.update(zip(put_keys, put_values, strict=True))
            st.update(dict.fromkeys(delete_keys))
            self._stage_bytes += size
            self._stage_batches += 1
            self.last_used = time.monotonic()
            return self._stage_batches

    def commit(
        self,
        epoch: int,
        commit_seq: int,
        staged_batches: int,
        put_keys: Sequence[bytes],
        put_values: Sequence[bytes],
        delete_keys: Sequence[bytes],
        offsets: dict[str, int],
        range_begin: Sequence[bytes] = (),
        range_end: Sequence[bytes] = (),
    ) -> CommitResult:
        """Make the staged writes, the range deletes [range_begin[i], range_end[i]), this batch
        and the input offsets durable together, or none (in that order)."""
        with self._lock:
            self._check_usable()
            self.check_epoch(epoch)
            if commit_seq == self.meta.commit_seq and commit_seq > 0:
                # A retry of the commit that was applied: acknowledge it again, apply nothing.
                return CommitResult(dict(self.meta.offsets), self.meta.changelog_offset - 1, False)
            expected = self.meta.commit_seq + 1
            if commit_seq != expected:
                raise AbortedError(
                    f"shard {self.name}: commit sequence {commit_seq} does not follow "
                    f"{self.meta.commit_seq}; reclaim the shard"
                )
            self._validate(put_keys, put_values, delete_keys)
            for name, off in offsets.items():
                if not name or off < 0:
                    raise InvalidArgumentError(
                        f"bad input offset {name!r}: {off} (names must be non-empty and "
                        f"offsets non-negative)"
                    )
            have = self._stage_batches if self._stage_seq == commit_seq else 0
            if staged_batches != have:
                self._drop_stage()
                raise AbortedError(
                    f"shard {self.name}: commit {commit_seq} expected {staged_batches} staged "
                    f"batches but the server holds {have} (staged writes were lost, e.g. by a "
                    f"server restart); the batch must be replayed"
                )
            ranges: list[segments.Range] = []
            if range_begin or range_end or self.spec.windowed:
                ranges = self._check_windowed(put_keys, put_values, delete_keys, range_begin,
                                              range_end, have > 0)
            if have:
                st = self._stage
                if ranges:  # staged writes precede the ranges: those inside are deleted too
                    for k in [k for k in st if segments.in_ranges(k, ranges)]:
                        del st[k]
                st.update(zip(put_keys, put_values, strict=True))
                st.update(dict.fromkeys(delete_keys))
                pk = [k for k, v in st.items() if v is not None]
                pv: list[bytes] = [v for v in st.values() if v is not None]
                dk = [k for k, v in st.items() if v is None]
            else:
                pk, pv, dk = list(put_keys), list(put_values), list(delete_keys)
            merged = dict(self.meta.offsets)
            merged.update(offsets)
            new = ShardMeta(self.meta.epoch, commit_seq, self.meta.changelog_offset, merged)
            marker_offset = self._append_and_apply(pk, pv, dk, new, kind=COMMIT, ranges=ranges)
            self._drop_stage()
            self.commits_since_snapshot += 1
            self.last_used = time.monotonic()
            return CommitResult(dict(merged), marker_offset, True)

    def _append_and_apply(
        self,
        pk: list[bytes],
        pv: list[bytes],
        dk: list[bytes],
        new: ShardMeta,
        kind: bytes,
        ranges: Sequence[segments.Range] = (),
    ) -> int:
        marker_offset = -1
        prepared: list[WriteBatch] = []

        def prepare() -> None:
            prepared.append(self.db.prepare(pk, pv, dk, ranges))

        if self.changelog is not None:
            keys: list[bytes] = pk + dk
            values: list[bytes | None] = [*pv, *([None] * len(dk))]
            repair = self._repair - set(keys)
            if repair:
                # Overwrite keys a failed append may have left in the log with committed values.
                rk = list(repair)
                keys = rk + keys
                values = [*self.db.get_many(rk), *values]
            mval, mheaders = marker(kind, new.epoch, new.commit_seq, new.offsets)
            try:
                marker_offset = self.changelog.append_batch(
                    self.spec.name,
                    self.partition,
                    keys,
                    values,
                    data_headers(new.epoch, new.commit_seq),
                    mval,
                    mheaders,
                    while_waiting=prepare,  # build the WriteBatch during the broker round trip
                )
            except UnavailableError:
                self._repair.update(keys)
                self.log_end = None  # some records may have landed: the end is unknown now
                raise
            start = self.log_end
            self._repair.clear()
            if marker_offset < (new.changelog_offset if start is None else start) + len(keys):
                # No usable offset (a retried marker the broker took for a duplicate): one before
                # its records, or what is applied. Where the log ends is unknown, as after a failed
                # append, and the fence waits for the next append. The commit stands; the local
                # changelog offset stays older, so a replay re-applies it (idempotent).
                self.log_end = None
            else:
                self.log_end = marker_offset + 1
                if start is not None and marker_offset != start + len(keys):
                    foreign_records(self, start, marker_offset, new, set(keys))
                new.changelog_offset = (self.log_end if self.log_end is not None
                                        else marker_offset + 1)
        if not prepared:
            prepare()
        if self.changelog is not None:
            self._apply_later(prepared[0], new)
            return marker_offset
        try:
            self.db.write_prepared(prepared[0], new, sync=self.changelog is None)
        except UnavailableError as exc:
            # Reload before the next use: with a changelog the commit is durable in the log and
            # the replay applies it; without one nothing was applied, and reopening the
            # database clears RocksDB's error state (e.g. a WAL append that hit a full disk,
            # which RocksDB does not always recover from by itself once space returns).
            self.broken = (f"local write failed after the changelog append: {exc}"
                           if self.changelog is not None else f"local write failed: {exc}")
            raise
        self.meta = new
        return marker_offset

    def _apply_later(self, wb: WriteBatch, new: ShardMeta) -> None:
        """Step 4 of a commit whose marker is acknowledged, on a background thread. The caller
        holds the shard lock; everything after it waits in `settle` first. A failed write marks
        the shard broken: the commit is durable in the changelog, and the reload replays it."""
        done = threading.Event()
        self._applying = done

        def apply() -> None:
            try:
                self.db.write_prepared(wb, new, sync=False)
                self.meta = new
            except Exception as exc:  # any failure: the reload replays the commit
                self.broken = f"local write failed after the changelog append: {exc}"
            finally:
                done.set()

        try:
            _apply_pool().submit(apply)
        except RuntimeError:  # the interpreter is shutting down: write here instead
            apply()

    # --- reads ----------------------------------------------------------------------------
    def get_many(self, epoch: int, keys: Sequence[bytes]) -> list[bytes | None]:
        check_keys(keys)
        self._check_usable(epoch)
        self.last_used = time.monotonic()
        values = self.db.get_many(keys)
        if epoch and self._stage:
            st = self._stage
            for i, k in enumerate(keys):
                if k in st:
                    values[i] = st[k]
        return values

    def scan(
        self,
        epoch: int,
        from_key: bytes | None,
        to_key: bytes | None,
        prefix: bytes | None,
        reverse: bool,
    ) -> Iterator[tuple[bytes, bytes]]:
        if prefix:
            if from_key is not None or to_key is not None:
                raise InvalidArgumentError("a prefix scan takes no from/to bounds")
        else:
            check_range(from_key, to_key)
        self._check_usable(epoch)
        self.last_used = time.monotonic()
        base = self.db.iterate(from_key, to_key, reverse, prefix)
        if not (epoch and self._stage):
            return base
        with self._lock:
            over = select_range(self._stage, from_key, to_key, prefix, reverse)
        return overlay_items(base, over, reverse)

    def count(self, epoch: int = 0) -> int:
        self._check_usable(epoch)
        return self.db.approximate_num_entries()

    # --- expiry ---------------------------------------------------------------------------
    def sweep_expired(self, now_ms: int, max_entries: int = 10_000) -> int:
        """TTL stores: examine up to `max_entries` entries (continuing where the last sweep
        stopped, wrapping around) and delete those expired at `now_ms`, through the commit path:
        the tombstones go to the changelog before the hot tier, with a commit marker carrying
        the current epoch, commit number and offsets unchanged (the owner's next commit number
        stays valid). Returns the number deleted; 0 for other stores."""
        if self.spec.ttl_ms <= 0:
            return 0
        with self._lock:
            self.settle()
            # Not on a standby copy (it never writes: the owner sweeps), nor at an epoch
            # restore would drop (wait for the next claim).
            if (self.broken or self.db.closed or self.standby
                    or self.meta.epoch < self.epoch_floor):
                return 0
            doomed: list[bytes] = []
            resume: bytes | None = None
            for seen, (k, raw) in enumerate(self.db.iterate(self._sweep_from, None), 1):
                if ttlcodec.expires_at(raw) <= now_ms:
                    doomed.append(k)
                if seen >= max_entries:
                    resume = k + b"\x00"
                    break
            self._sweep_from = resume
            if not doomed:
                return 0
            m = self.meta
            new = ShardMeta(m.epoch, m.commit_seq, m.changelog_offset, dict(m.offsets))
            self._append_and_apply([], [], doomed, new, kind=COMMIT)
            self.commits_since_snapshot += 1
            return len(doomed)

    # --- helpers --------------------------------------------------------------------------
    def _validate(
        self, put_keys: Sequence[bytes], put_values: Sequence[bytes], delete_keys: Sequence[bytes]
    ) -> None:
        if len(put_keys) != len(put_values):
            raise InvalidArgumentError(
                f"batch has {len(put_keys)} put keys but {len(put_values)} values"
            )
        check_keys(put_keys)
        check_keys(delete_keys, "delete key")
        check_values(put_values, self.limits.max_value_bytes)
        if self.spec.ttl_ms and put_values and min(map(len, put_values)) < ttlcodec.HEADER_LEN:
            raise InvalidArgumentError(
                f"store {self.spec.name!r} is a TTL store: every value starts with an 8-byte "
                "expiry header (tierstore.ttl)"
            )
        if delete_keys and put_keys and not set(put_keys).isdisjoint(delete_keys):
            raise InvalidArgumentError("a key is both put and deleted in one batch")

    def _check_windowed(
        self, put_keys: Sequence[bytes], put_values: Sequence[bytes], delete_keys: Sequence[bytes],
        range_begin: Sequence[bytes], range_end: Sequence[bytes], staged: bool,
    ) -> list[segments.Range]:
        """The commit's range deletes, checked against the stream time it leaves behind; and no
        put (staged or not) may land in an expired segment (server/segments.py)."""
        stage = self._stage if staged else {}
        st = segments.batch_stream_time(put_keys, put_values, delete_keys, stage, self.db)
        ranges = segments.check_ranges(self.spec, range_begin, range_end, st)
        if self.spec.windowed:
            segments.check_no_expired_puts(self.spec, put_keys, st)
            if stage:  # staged puts inside the ranges are deleted by them, not refused
                live = [k for k, v in stage.items()
                        if v is not None and not segments.in_ranges(k, ranges)]
                segments.check_no_expired_puts(self.spec, live, st)
        return ranges

    def _drop_stage(self) -> None:
        self._stage = {}
        self._stage_seq = 0
        self._stage_batches = 0
        self._stage_bytes = 0

    def settle(self) -> None:
        """Wait until the last acknowledged commit is in RocksDB (see `_apply_later`)."""
        pending = self._applying
        if pending is not None:
            pending.wait()

    def _check_usable(self, epoch: int = 0) -> None:
        """Usable, and with an owner's epoch (readers send 0) not fenced."""
        self.settle()
        if self.broken:
            raise UnavailableError(f"shard {self.name} must be reloaded: {self.broken}")
        if epoch:
            self.check_epoch(epoch)

    def close(self) -> None:
        with self._lock:
            self.settle()
            self.db.close()

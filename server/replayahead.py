"""Replay a shard's changelog tail while its snapshot downloads.

A restore from a snapshot used to download the snapshot, open it, then replay the changelog
from the snapshot's offset: the tail's replay (reading the records, applying restore's rules,
building each batch's WriteBatch) came after the download. `ReplayAhead` runs that replay on a
thread as soon as the snapshot is chosen, with the snapshot's metadata from its manifest as the
starting state. Until the database is open, each batch's WriteBatch is built and held
(`PendingLog`, bounded by `max_bytes`: a replay that gets that far ahead waits); `finish(db)`
checks that the opened database stands exactly where the manifest said, writes the held
batches in log order, lets the replay go on into the database, and returns its result.

It changes nothing of what is applied: the same `replay_changelog`, with the same rules, over
the same records in the same order; each batch is still written atomically with its metadata,
so a crash mid-way resumes from the last written batch. Anything unexpected (the database's
metadata is not the manifest's, the replay ahead failed, another snapshot was chosen after a
corrupt one) discards the held batches, and the caller replays as before, from the
database's own state.

Window and session stores do not replay ahead: their segment drops read the stream time from
the database (they use the read-ahead of server/prefetch.py instead).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence

from rocksdict import WriteBatch

from tierstore.server.hottier import ShardDB, ShardMeta, log_batch
from tierstore.server.manifest import Manifest
from tierstore.server.ports import Changelog
from tierstore.server.restore import Progress, ReplayResult, replay_changelog

log = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 32 * 1024 * 1024  # keys and values held before the database is open


class Cancelled(Exception):
    """The replay ahead was given up (its batches are not wanted)."""


def manifest_meta(manifest: Manifest) -> ShardMeta:
    return ShardMeta(manifest.epoch, manifest.commit_seq, manifest.changelog_offset,
                     dict(manifest.committed_offsets))


class PendingLog:
    """The replay's target until the database is open (see the module docstring)."""

    def __init__(self, meta: ShardMeta, max_bytes: int) -> None:
        self._meta = meta
        self._max_bytes = max_bytes
        self._cond = threading.Condition()
        self._held: list[tuple[WriteBatch, ShardMeta]] = []
        self._held_bytes = 0
        self._db: ShardDB | None = None
        self._cancelled = False

    def read_meta(self) -> ShardMeta:
        return self._meta

    def apply_log(self, keys: Sequence[bytes], values: Sequence[bytes | None], meta: ShardMeta,
                  ranges: Sequence[tuple[bytes, bytes]] = ()) -> None:
        wb = log_batch(keys, values, ranges)
        size = sum(map(len, keys)) + sum(len(v) for v in values if v is not None)
        with self._cond:
            while True:
                if self._cancelled:
                    raise Cancelled()
                if self._db is not None:
                    break
                if not self._held or self._held_bytes + size <= self._max_bytes:
                    self._held.append((wb, meta))
                    self._held_bytes += size
                    return
                self._cond.wait()  # full: wait for the database
            db = self._db
        db.write_prepared(wb, meta, sync=False)

    def attach(self, db: ShardDB) -> None:
        """Write the held batches in order; later ones go straight to `db`."""
        with self._cond:
            if self._cancelled:
                raise Cancelled()
            for wb, meta in self._held:
                db.write_prepared(wb, meta, sync=False)
            self._held, self._held_bytes = [], 0
            self._db = db
            self._cond.notify_all()

    def cancel(self) -> None:
        with self._cond:
            self._cancelled = True
            self._held, self._held_bytes = [], 0
            self._cond.notify_all()

    @property
    def cancelled(self) -> bool:
        return self._cancelled


class ReplayAhead:
    """The replay of one shard's tail from one snapshot's offset, on a thread of its own."""

    def __init__(self, changelog: Changelog, store: str, partition: int, manifest: Manifest,
                 progress: Progress | None = None, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.meta = manifest_meta(manifest)
        self._pending = PendingLog(self.meta, max_bytes)
        self._progress = progress
        self._result: ReplayResult | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(
            target=self._run, args=(changelog, store, partition), daemon=True,
            name=f"replay-ahead-{store}/{partition}")
        self._thread.start()

    def _run(self, changelog: Changelog, store: str, partition: int) -> None:
        try:
            self._result = replay_changelog(self._pending, changelog, store, partition,
                                            progress=self._on_records)
        except BaseException as exc:  # handed to finish(); Cancelled when given up
            self._error = exc

    def _on_records(self, records: int) -> None:
        if self._pending.cancelled:
            raise Cancelled()  # stop reading the log too, not only applying
        if self._progress is not None:
            self._progress(records)

    def finish(self, db: ShardDB, on_wait: Callable[[], None] | None = None
               ) -> ReplayResult | None:
        """Hand over the open database and wait for the replay's end. Returns its result, or
        None when the replay ahead cannot be used (the caller then replays from `db`'s own
        state: every batch written here is in it with its metadata)."""
        found = db.read_meta()
        if found != self.meta:
            log.warning("%s: the snapshot's metadata is %s but its manifest said %s: replaying "
                        "the changelog from the database instead", db.path, found, self.meta)
            self.cancel()
            return None
        try:
            self._pending.attach(db)
        except Cancelled:
            return None
        if on_wait is not None:
            on_wait()
        self._thread.join()
        if self._error is not None:
            log.info("%s: the changelog replay ahead of the download failed (%s: %s); "
                     "replaying again from the database", db.path,
                     type(self._error).__name__, self._error)
            return None
        return self._result

    def cancel(self) -> None:
        """Give up: nothing more is written anywhere (the thread ends at its next page)."""
        self._pending.cancel()


class ReplayAheads:
    """The replay ahead of whichever snapshot is downloading: restore_latest announces each
    snapshot it tries (`start`), and a newer replay replaces the one of a snapshot found
    corrupt."""

    def __init__(self, changelog: Changelog, store: str, partition: int,
                 progress: Progress | None = None) -> None:
        self._args = (changelog, store, partition)
        self._progress = progress
        self.current: ReplayAhead | None = None

    def start(self, manifest: Manifest) -> None:
        self.cancel()
        changelog, store, partition = self._args
        self.current = ReplayAhead(changelog, store, partition, manifest, self._progress)

    def finish(self, db: ShardDB) -> ReplayResult | None:
        """See ReplayAhead.finish; None also when no snapshot was announced."""
        return self.current.finish(db) if self.current is not None else None

    def cancel(self) -> None:
        if self.current is not None:
            self.current.cancel()

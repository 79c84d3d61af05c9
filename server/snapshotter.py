"""Taking snapshots: a checkpoint under the shard lock, then an upload in the background.

A snapshot is due every `every_commits` commits or `interval_s` seconds after a commit, and is
taken for every shard with new commits at graceful shutdown. The checkpoint is taken while the
shard's lock is held (it is a flush plus hard links, so it is quick); the upload runs outside it.
"""

from __future__ import annotations

import logging
import queue
import shutil
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tierstore.server.errors import StateStoreError, UnavailableError
from tierstore.server.shard import Shard
from tierstore.server.snapshots import Manifest, SnapshotStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SnapshotPolicy:
    every_commits: int = 1000
    interval_s: float = 300.0


class Snapshotter:
    def __init__(self, store: SnapshotStore, tmp_dir: Path, policy: SnapshotPolicy) -> None:
        self.store = store
        self.tmp_dir = tmp_dir
        self.policy = policy
        self._queue: queue.Queue[Shard | None] = queue.Queue()
        self._queued: set[int] = set()
        self._qlock = threading.Lock()
        self._serials: dict[tuple[str, int], threading.Lock] = {}  # one snapshot at a time
        # (store, partition) -> monotonic time of its last failed snapshot: the interval is
        # counted from there for the retry, while shard.last_snapshot_at stays the last success
        self._failed_at: dict[tuple[str, int], float] = {}
        self._thread = threading.Thread(target=self._run, name="snapshotter", daemon=True)
        self._thread.start()
        self.taken = 0
        self.failed = 0
        # Called after each snapshot with (shard, manifest, seconds): checkpoint plus upload.
        self.on_snapshot: Callable[[Shard, Manifest, float], None] | None = None

    def is_due(self, shard: Shard) -> bool:
        # A standby copy (an owner that lost the shard keeps following it as one) is not
        # snapshotted here: its owner snapshots it, into the same object-store prefix.
        if shard.commits_since_snapshot == 0 or shard.standby:
            return False
        if shard.commits_since_snapshot >= self.policy.every_commits:
            return True
        since = max(shard.last_snapshot_at,
                    self._failed_at.get((shard.spec.name, shard.partition), 0.0))
        return time.monotonic() - since >= self.policy.interval_s

    def maybe_schedule(self, shard: Shard) -> None:
        if self.is_due(shard):
            self.schedule(shard)

    def schedule(self, shard: Shard) -> bool:
        """Queue a background snapshot of the shard; False if one is queued already."""
        with self._qlock:
            if id(shard) in self._queued:
                return False
            self._queued.add(id(shard))
        self._queue.put(shard)
        return True

    def _serial(self, shard: Shard) -> threading.Lock:
        with self._qlock:
            return self._serials.setdefault((shard.spec.name, shard.partition), threading.Lock())

    def snapshot_now(self, shard: Shard) -> Manifest:
        """Checkpoint and upload synchronously. Raises StateStoreError on failure.

        Snapshots of one shard never overlap (SnapshotStore requires it: the gc that ends one
        upload could delete a stored file that an overlapping upload found and did not upload
        again, and its manifest would then name a missing file). The shard's snapshot lock is
        taken only while holding the shard's lock, and waited for outside it (unless the caller
        holds the shard's lock, as eviction does: then no other snapshot can be checkpointing,
        so the one it waits for is uploading and needs no shard lock)."""
        tmp = self.tmp_dir / f"ckpt-{uuid.uuid4().hex}"
        started = time.monotonic()
        serial = self._serial(shard)
        try:
            while True:
                with shard._lock:
                    if serial.acquire(blocking=False):
                        try:
                            shard._check_usable()
                            if shard.db.closed:
                                raise UnavailableError(f"shard {shard.name} is closed")
                            shard.db.checkpoint(tmp)
                        except BaseException:
                            serial.release()
                            raise
                        meta = shard.meta
                        commits = shard.commits_since_snapshot
                        previous_at = shard.last_snapshot_at
                        shard.commits_since_snapshot = 0
                        shard.last_snapshot_at = checkpointed_at = time.monotonic()
                        break
                with serial:  # another snapshot of this shard is under way: wait for its end
                    pass
            try:
                manifest = self.store.upload(
                    shard.spec.name,
                    shard.partition,
                    tmp,
                    epoch=meta.epoch,
                    commit_seq=meta.commit_seq,
                    changelog_offset=meta.changelog_offset,
                    committed_offsets=dict(meta.offsets),
                )
            except BaseException:
                serial.release()
                with shard._lock:
                    shard.commits_since_snapshot += commits
                    # no snapshot was taken: seconds_since_snapshot keeps counting from the
                    # last one that was (unless a newer one succeeded meanwhile)
                    if shard.last_snapshot_at == checkpointed_at:
                        shard.last_snapshot_at = previous_at
                with self._qlock:
                    self._failed_at[(shard.spec.name, shard.partition)] = time.monotonic()
                raise
            serial.release()
            with self._qlock:
                self._failed_at.pop((shard.spec.name, shard.partition), None)
            shard.snapshot_offset = manifest.changelog_offset
            shard.snapshot_bytes = manifest.total_bytes
            self.taken += 1
            if self.on_snapshot is not None:
                self.on_snapshot(shard, manifest, time.monotonic() - started)
            return manifest
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _run(self) -> None:
        while True:
            shard = self._queue.get()
            if shard is None:
                return
            with self._qlock:
                self._queued.discard(id(shard))
            if shard.db.closed:
                continue
            try:
                m = self.snapshot_now(shard)
                log.info("snapshot %d of %s uploaded", m.snapshot_id, shard.name)
            except (StateStoreError, OSError) as exc:
                self.failed += 1
                log.warning("snapshot of %s failed (will retry later): %s", shard.name, exc)
            except Exception:  # a bug must not end the thread (no more snapshots at all)
                self.failed += 1
                log.exception("snapshot of %s failed (will retry later)", shard.name)

    def stop(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=60)

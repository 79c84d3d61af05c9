"""Incremental shard snapshots in an object store (the fourth tier, see DESIGN.md).

Layout, per shard::

    shards/{store}/{partition}/manifests/{snapshot_id:020d}.json
    shards/{store}/{partition}/files/{sha256hex}        content-addressed checkpoint files
    shards/{store}/{partition}/corrupt/{sha256hex}      a restore found that file's object bad

A snapshot is a RocksDB checkpoint. Its files are stored under their sha256, so an immutable SST
shared by later snapshots is uploaded once. The manifest is written LAST, in one atomic put, so a
snapshot exists exactly when its manifest does; an upload that fails midway leaves only
unreferenced files, which ``gc`` removes once they are older than ``gc_grace_s``.

An upload trusts a stored object whose size matches, without reading it back. So an object
damaged in place (same size) would be shared by every later snapshot of that file, and none of
them would restore. A restore that finds a bad object therefore leaves a mark beside it, and
the next upload that has the file writes it again (its true content under its own name, which
can never harm) and removes the mark.

This module uses only the ObjectStore protocol (never boto3). Calls for different shards may run
concurrently; calls for the same shard must be serialized by the caller. Two servers writing the
same shard at once (a zombie owner) must be prevented by epoch fencing upstream, not here.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from tierstore.server.errors import ObjectNotFoundError, SnapshotCorruptError, UnavailableError
from tierstore.server.manifest import (
    Manifest,
    SnapshotFile,
    corrupt_mark_key,
    file_key,
    manifest_key,
    sha256_file,
    shard_prefix,
)
from tierstore.server.ports import HashingDownload, ObjectStore

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]
"""progress(done_bytes, total_bytes): called from worker threads, one call at a time."""

_T = TypeVar("_T")
_A = TypeVar("_A")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_MANIFEST_NAME = re.compile(r"(\d{20})\.json")
_IMMUTABLE_SUFFIXES = (".sst", ".blob")  # RocksDB never reuses these names for other content
_READ_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class GcResult:
    manifests_kept: int
    manifests_deleted: int
    files_deleted: int
    bytes_deleted: int


@dataclass(frozen=True, slots=True)
class UploadStats:
    """What the last `upload` of a shard did; see SnapshotStore.last_upload."""

    snapshot_id: int
    files_total: int
    bytes_total: int  # size of the whole snapshot
    files_uploaded: tuple[str, ...]  # checkpoint file names whose content had to be uploaded
    bytes_uploaded: int
    files_hashed: int  # files read to compute their sha256 (the others hit the cache)
    seconds: float
    gc: GcResult | None  # None if gc failed (the snapshot itself is complete)


@dataclass(frozen=True, slots=True)
class _Local:
    name: str
    path: Path
    size: int
    mtime_ns: int
    ino: int

    def check_unchanged(self) -> None:
        try:
            st = self.path.stat()
        except OSError as exc:
            raise UnavailableError(f"checkpoint file {self.path} vanished: {exc}") from exc
        if (st.st_size, st.st_mtime_ns, st.st_ino) != (self.size, self.mtime_ns, self.ino):
            raise UnavailableError(f"checkpoint file {self.path} changed during the snapshot")


class SnapshotStore:
    """Writes, lists, restores and garbage-collects shard snapshots.

    gc keeps the newest `keep` manifests; each call moves files on up to `workers` threads;
    unreferenced files younger than `gc_grace_s` are never deleted (another server may be in the
    middle of an upload that references them).
    """

    def __init__(
        self, objects: ObjectStore, keep: int = 3, workers: int = 4, gc_grace_s: float = 600.0
    ) -> None:
        if keep < 1 or workers < 1 or gc_grace_s < 0:
            raise ValueError("keep and workers must be >= 1 and gc_grace_s >= 0")
        self.objects = objects
        self.keep = keep
        self.workers = workers
        self.gc_grace_s = gc_grace_s
        self._lock = threading.Lock()
        # (store, partition) -> {(name, size, mtime_ns, inode): sha256}, for *.sst/*.blob only;
        # replaced after each successful upload, so it holds one checkpoint's files per shard.
        self._hashes: dict[tuple[str, int], dict[tuple[str, int, int, int], str]] = {}
        self._last_upload: dict[tuple[str, int], UploadStats] = {}

    def last_upload(self, store: str, partition: int) -> UploadStats | None:
        """Stats of this shard's last successful `upload` in this process."""
        with self._lock:
            return self._last_upload.get((store, partition))

    # ------------------------------------------------------------------------------ upload
    def upload(
        self, store: str, partition: int, checkpoint_dir: Path, *, epoch: int, commit_seq: int,
        changelog_offset: int, committed_offsets: Mapping[str, int],
        extra: Mapping[str, str] | None = None, progress: Progress | None = None,
    ) -> Manifest:
        """Snapshot a RocksDB checkpoint directory (flat; must not change during the call).

        Files whose content is not yet stored are uploaded in parallel; then the manifest is
        written (the atomic step, snapshot_id = previous max + 1); then gc runs (a gc failure is
        logged, not raised). Byte counts are in `last_upload(store, partition)`.
        On failure (ObjectStoreError; UnavailableError if a local file cannot be read or changed
        meanwhile; ValueError if the directory is not a checkpoint) no manifest is written: the
        previous snapshot stays the latest, and files already uploaded are left for gc.
        """
        t0 = time.monotonic()
        prefix = shard_prefix(store, partition)
        local = _scan_checkpoint(Path(checkpoint_dir))
        total = sum(f.size for f in local)
        # one listing instead of one exists() per file; a size mismatch means re-upload, and
        # so does a restore's mark that the object failed verification
        stored = {i.key[len(prefix) + 6 :]: i.size for i in self.objects.list(prefix + "files/")}
        marked = {i.key[len(prefix) + 8 :] for i in self.objects.list(prefix + "corrupt/")}
        with self._lock:
            cache = dict(self._hashes.get((store, partition), {}))
        new_cache: dict[tuple[str, int, int, int], str] = {}
        claimed: set[str] = set()
        uploaded: list[str] = []
        count = {"hashed": 0, "uploaded": 0, "done": 0}
        lock = threading.Lock()

        def one(f: _Local) -> SnapshotFile:
            ck = (f.name, f.size, f.mtime_ns, f.ino)
            sha = cache.get(ck)
            if sha is None:
                try:
                    sha = sha256_file(f.path)
                except OSError as exc:
                    raise UnavailableError(f"cannot read checkpoint file {f.path}: {exc}") from exc
                f.check_unchanged()
            with lock:
                count["hashed"] += ck not in cache
                if f.name.endswith(_IMMUTABLE_SUFFIXES):
                    new_cache[ck] = sha
                need = (stored.get(sha) != f.size or sha in marked) and sha not in claimed
                claimed.add(sha)
            if need:
                key = file_key(store, partition, sha)
                self.objects.put_file(key, f.path)
                try:
                    f.check_unchanged()
                except UnavailableError:  # the object may not match its name: never leave it
                    with contextlib.suppress(Exception):
                        self.objects.delete_many([key])
                    raise
                if sha in marked:
                    log.warning("snapshot of %s/%d: uploaded %s again (object %s), which a "
                                "restore had found corrupt", store, partition, f.name, key)
                    try:  # a mark left behind only costs the next snapshot this upload again
                        self.objects.delete_many([corrupt_mark_key(store, partition, sha)])
                    except Exception:
                        log.warning("could not remove the corrupt mark of %s", key,
                                    exc_info=True)
            with lock:
                if need:
                    uploaded.append(f.name)
                    count["uploaded"] += f.size
                count["done"] += f.size
                if progress is not None:
                    progress(count["done"], total)
            return SnapshotFile(f.name, f.size, sha)

        files = tuple(self._run_parallel(one, local))
        ids = self._manifest_ids(store, partition)
        manifest = Manifest(
            store, partition, (ids[0][0] if ids else 0) + 1, time.time(), epoch, commit_seq,
            changelog_offset, dict(committed_offsets), files, dict(extra or {}),
        )
        key = manifest_key(store, partition, manifest.snapshot_id)
        self.objects.put_bytes(key, manifest.to_json().encode())
        with self._lock:
            self._hashes[(store, partition)] = new_cache
        gc_result: GcResult | None = None
        try:
            gc_result = self.gc(store, partition)
        except Exception:
            log.warning("gc of %s/%d after snapshot %d failed", store, partition,
                        manifest.snapshot_id, exc_info=True)
        stats = UploadStats(manifest.snapshot_id, len(local), total, tuple(sorted(uploaded)),
                            count["uploaded"], count["hashed"], time.monotonic() - t0, gc_result)
        with self._lock:
            self._last_upload[(store, partition)] = stats
        log.info("snapshot %s: %d files, %d of %d bytes uploaded in %.2fs", key, len(files),
                 stats.bytes_uploaded, total, stats.seconds)
        return manifest

    def _run_parallel(self, fn: Callable[[_A], _T], items: Iterable[_A]) -> list[_T]:
        """fn over items on up to `workers` threads, results in order. On the first failure,
        cancel what has not started, wait for what has, and raise that failure."""
        items = list(items)
        if not items:
            return []
        with ThreadPoolExecutor(min(self.workers, len(items)), "snapshot") as pool:
            futures = [pool.submit(fn, it) for it in items]
            done, _ = wait(futures, return_when=FIRST_EXCEPTION)
            errors = [e for f in futures if f in done and (e := f.exception()) is not None]
            if errors:
                for f in futures:
                    f.cancel()
                raise errors[0]
        return [f.result() for f in futures]

    # ------------------------------------------------------------------------------ listing
    def _manifest_ids(self, store: str, partition: int) -> list[tuple[int, str]]:
        """(snapshot_id, key) of every manifest object, newest first."""
        prefix = shard_prefix(store, partition) + "manifests/"
        out = []
        for info in self.objects.list(prefix):
            if m := _MANIFEST_NAME.fullmatch(info.key[len(prefix) :]):
                out.append((int(m.group(1)), info.key))
        return sorted(out, reverse=True)

    def _load(self, store: str, partition: int, snapshot_id: int, key: str) -> Manifest:
        """Raises SnapshotCorruptError, or ObjectNotFoundError if it was deleted meanwhile."""
        m = Manifest.from_json(self.objects.get_bytes(key))
        if (m.store, m.partition, m.snapshot_id) != (store, partition, snapshot_id):
            raise SnapshotCorruptError(
                f"manifest {key} describes {m.store}/{m.partition} snapshot {m.snapshot_id}"
            )
        return m

    def list_manifests(self, store: str, partition: int) -> list[Manifest]:
        """Valid manifests, newest first; corrupt ones are skipped with a logged warning."""
        out = []
        for sid, key in self._manifest_ids(store, partition):
            try:
                out.append(self._load(store, partition, sid, key))
            except ObjectNotFoundError:  # deleted by a concurrent gc
                continue
            except SnapshotCorruptError as exc:
                log.warning("skipping corrupt manifest %s: %s", key, exc)
        return out

    # ------------------------------------------------------------------------------ restore
    def restore_latest(
        self, store: str, partition: int, dest_dir: Path, progress: Progress | None = None,
        accept: Callable[[Manifest], bool] | None = None,
        on_manifest: Callable[[Manifest], None] | None = None, mark_corrupt: bool = True,
    ) -> Manifest | None:
        """Download the newest usable snapshot into `dest_dir` (created; must be absent or
        empty) and return its manifest (with `accept`: the newest one it accepts). Each file
        is written whole (temp file + rename), checked against its size and sha256, and
        fsynced; then dest_dir is fsynced.

        A corrupt manifest, or a missing or corrupt file, is logged as a warning, dest_dir is
        wiped and the previous snapshot is tried. Returns None when the shard has no manifest
        (dest_dir left as it was). `on_manifest` is told each snapshot before its download
        starts (a restore reads the changelog ahead from its offset meanwhile). Raises
        SnapshotCorruptError listing every snapshot tried when
        manifests exist but none is usable, and ObjectStoreError on a transport failure (not a
        reason to fall back to an older snapshot); in both cases dest_dir is left as it was.

        With `mark_corrupt` (the default), an object that fails verification gets a mark that
        makes the next snapshot upload its file again (module doc); without it the call writes
        nothing to the object store.
        """
        t0 = time.monotonic()
        dest_dir = Path(dest_dir)
        created = not dest_dir.exists()
        if not created and (not dest_dir.is_dir() or any(dest_dir.iterdir())):
            raise ValueError(f"restore destination {dest_dir} exists and is not an empty directory")
        dest_dir.mkdir(parents=True, exist_ok=True)
        failures: list[str] = []
        try:
            for sid, key in self._manifest_ids(store, partition):
                try:
                    manifest = self._load(store, partition, sid, key)
                    if accept is not None and not accept(manifest):
                        continue
                    if on_manifest is not None:
                        on_manifest(manifest)
                    self._download(manifest, dest_dir, progress, mark_corrupt)
                except ObjectNotFoundError:  # the manifest was deleted by a concurrent gc
                    continue
                except SnapshotCorruptError as exc:
                    log.warning("snapshot %d of %s/%d is unusable, trying an older one: %s",
                                sid, store, partition, exc)
                    failures.append(f"{key}: {exc}")
                    _wipe(dest_dir)
                    continue
                log.info("restored snapshot %d of %s/%d (%d bytes) in %.2fs", sid, store,
                         partition, manifest.total_bytes, time.monotonic() - t0)
                return manifest
        except BaseException:
            _wipe(dest_dir, remove=created)
            raise
        _wipe(dest_dir, remove=created)
        if failures:
            raise SnapshotCorruptError(
                f"no usable snapshot of {store}/{partition}: " + "; ".join(failures)
            )
        return None

    def _download(self, manifest: Manifest, dest_dir: Path, progress: Progress | None,
                  mark_corrupt: bool) -> None:
        total, done, lock = manifest.total_bytes, [0], threading.Lock()
        sid = manifest.snapshot_id
        hashing = self.objects if isinstance(self.objects, HashingDownload) else None

        def one(f: SnapshotFile) -> None:
            key = file_key(manifest.store, manifest.partition, f.sha256)
            target = dest_dir / f.name
            try:
                if hashing is not None:  # hashed as it streams in: no second read
                    sha = hashing.get_file_sha256(key, target)
                else:
                    self.objects.get_file(key, target)
                    sha = ""
            except ObjectNotFoundError as exc:
                raise SnapshotCorruptError(
                    f"snapshot {sid} file {f.name}: object {key} is missing"
                ) from exc
            size = target.stat().st_size
            if size != f.size:
                sha = "-"
            elif not sha:
                sha = sha256_file(target)
            if (size, sha) != (f.size, f.sha256):
                if mark_corrupt:
                    self._mark_corrupt(manifest, f, size, sha)
                raise SnapshotCorruptError(
                    f"snapshot {sid} file {f.name} (object {key}) failed verification: size "
                    f"{size} (expected {f.size}), sha256 {sha} (expected {f.sha256})"
                )
            with lock:
                done[0] += f.size
                if progress is not None:
                    progress(done[0], total)

        # Largest first: the big files bound the download, so they must not start last.
        self._run_parallel(one, sorted(manifest.files, key=lambda f: -f.size))
        with contextlib.suppress(OSError):
            fd = os.open(dest_dir, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def _mark_corrupt(self, manifest: Manifest, f: SnapshotFile, size: int, sha: str) -> None:
        """Note that f's object failed verification (best effort: without the mark, the next
        snapshot may share the bad object, and a later restore finds it again)."""
        key = corrupt_mark_key(manifest.store, manifest.partition, f.sha256)
        note = (f"found {time.time():.3f}: snapshot {manifest.snapshot_id} file {f.name}: size "
                f"{size} (expected {f.size}), sha256 {sha} (expected {f.sha256})\n")
        try:
            self.objects.put_bytes(key, note.encode())
        except Exception:
            log.warning("could not mark %s as corrupt", key, exc_info=True)

    # ------------------------------------------------------------------------------ gc
    def gc(self, store: str, partition: int) -> GcResult:
        """Keep the newest `keep` valid manifests, and any newer corrupt one; delete the older
        manifests, then the files no kept manifest references whose last_modified is at least
        gc_grace_s old. If a kept manifest is unreadable or none is valid, no file is deleted.
        Not atomic (manifests go first, so a crash leaves only unreferenced files); safe to
        rerun. Raises ObjectStoreError."""
        ids = self._manifest_ids(store, partition)
        kept: list[Manifest] = []
        unreadable, cut = 0, len(ids)
        for i, (sid, key) in enumerate(ids):
            try:
                kept.append(self._load(store, partition, sid, key))
            except ObjectNotFoundError:
                continue
            except SnapshotCorruptError as exc:
                log.warning("gc of %s/%d: manifest %s unreadable: %s", store, partition, key, exc)
                unreadable += 1
            if len(kept) == self.keep:
                cut = i + 1
                break
        old = [key for _, key in ids[cut:]]
        self.objects.delete_many(old)
        if not kept or unreadable:
            return GcResult(len(ids) - len(old), len(old), 0, 0)
        referenced = {f.sha256 for m in kept for f in m.files}
        horizon = time.time() - self.gc_grace_s
        prefix = shard_prefix(store, partition) + "files/"
        doomed = [i for i in self.objects.list(prefix)
                  if i.key[len(prefix):] not in referenced and i.last_modified <= horizon]
        self.objects.delete_many([i.key for i in doomed])
        marks = shard_prefix(store, partition) + "corrupt/"
        self.objects.delete_many([i.key for i in self.objects.list(marks)
                                  if i.key[len(marks):] not in referenced])
        return GcResult(len(ids) - len(old), len(old), len(doomed), sum(i.size for i in doomed))


def _scan_checkpoint(directory: Path) -> list[_Local]:
    try:
        out = []
        for e in sorted(os.scandir(directory), key=lambda e: e.name):
            if not e.is_file():
                raise ValueError(f"checkpoint {directory} has a non-file entry {e.name!r}")
            st = e.stat()
            out.append(_Local(e.name, Path(e.path), st.st_size, st.st_mtime_ns, st.st_ino))
    except OSError as exc:
        raise UnavailableError(f"cannot read checkpoint directory {directory}: {exc}") from exc
    if "CURRENT" not in {f.name for f in out}:
        raise ValueError(f"{directory} is not a RocksDB checkpoint (it has no CURRENT file)")
    return out


def _wipe(directory: Path, remove: bool = False) -> None:
    """Delete everything inside `directory`, and `directory` itself if `remove`."""
    shutil.rmtree(directory, ignore_errors=True)
    if not remove:
        directory.mkdir(parents=True, exist_ok=True)

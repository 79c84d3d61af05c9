"""SnapshotStore with real RocksDB checkpoints, against a local directory and a real moto S3."""

from __future__ import annotations

import hashlib
import json
import logging
import random
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from rocksdict import Checkpoint, Options, Rdict

from tests.infra import S3_ENV, S3Server
from tierstore.server.errors import ObjectStoreError, SnapshotCorruptError, UnavailableError
from tierstore.server.objectstore import LocalObjectStore, S3ObjectStore
from tierstore.server.ports import ObjectInfo, ObjectStore
from tierstore.server.snapshots import (
    Manifest,
    SnapshotFile,
    SnapshotStore,
    file_key,
    manifest_key,
)

STORE, PART = "counts", 3


class Recording:
    """An ObjectStore proxy that records the keys written, and can fail after N put_file calls."""

    def __init__(
        self, inner: ObjectStore, fail_after: int | None = None,
        before_put: Callable[[Path], object] | None = None,
    ) -> None:
        self.inner = inner
        self.fail_after = fail_after
        self.before_put = before_put
        self.files_put: list[str] = []
        self._lock = threading.Lock()

    def put_bytes(self, key: str, data: bytes) -> None:
        self.inner.put_bytes(key, data)

    def put_file(self, key: str, path: Path) -> None:
        with self._lock:
            if self.fail_after is not None and len(self.files_put) >= self.fail_after:
                raise ObjectStoreError(f"injected failure putting {key}")
            self.files_put.append(key)
        if self.before_put is not None:
            self.before_put(path)
        self.inner.put_file(key, path)

    def get_bytes(self, key: str) -> bytes:
        return self.inner.get_bytes(key)

    def get_file(self, key: str, path: Path) -> None:
        self.inner.get_file(key, path)

    def exists(self, key: str) -> bool:
        return self.inner.exists(key)

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        return self.inner.list(prefix)

    def delete_many(self, keys: Sequence[str]) -> None:
        self.inner.delete_many(keys)

    def describe(self) -> str:
        return self.inner.describe()


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.s3)])
def objects(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> ObjectStore:
    if request.param == "local":
        return LocalObjectStore(tmp_path / "objects")
    for k, v in S3_ENV.items():
        monkeypatch.setenv(k, v)
    server: S3Server = request.getfixturevalue("s3_server")
    bucket: str = request.getfixturevalue("s3_bucket")
    return S3ObjectStore(bucket, "snapshots", endpoint_url=server.endpoint)


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Rdict]:
    d = Rdict(str(tmp_path / "db"), Options(raw_mode=True))
    yield d
    d.close()


def write(db: Rdict, start: int, n: int, seed: int) -> None:
    rnd = random.Random(seed)
    for i in range(start, start + n):
        db[f"key{i:08d}".encode()] = rnd.randbytes(200)
    db.flush()


def contents(source: Rdict | Path) -> dict[Any, Any]:
    """Every key and value; a Path is opened as a database (which adds files to it)."""
    d = Rdict(str(source), Options(raw_mode=True)) if isinstance(source, Path) else source
    try:
        return dict(d.items())
    finally:
        if d is not source:
            d.close()


_n = [0]


def checkpoint(db: Rdict, tmp_path: Path) -> Path:
    _n[0] += 1
    path = tmp_path / f"ckpt-{_n[0]}"  # must not exist yet
    Checkpoint(db).create_checkpoint(str(path))
    return path


def upload(snaps: SnapshotStore, db: Rdict, tmp_path: Path, seq: int, **kw: object) -> Manifest:
    return snaps.upload(
        STORE, PART, checkpoint(db, tmp_path), epoch=7, commit_seq=seq, changelog_offset=seq * 10,
        committed_offsets={"orders:3": seq * 100}, **kw,  # type: ignore[arg-type]
    )


def stored_files(objects: ObjectStore) -> set[str]:
    prefix = f"shards/{STORE}/{PART}/files/"
    return {o.key[len(prefix) :] for o in objects.list(prefix)}


def test_roundtrip_restores_contents_and_metadata(
    objects: ObjectStore, db: Rdict, tmp_path: Path
) -> None:
    write(db, 0, 3000, seed=1)
    snaps = SnapshotStore(objects)
    seen: list[tuple[int, int]] = []
    m = upload(snaps, db, tmp_path, 5, extra={"note": "x"}, progress=lambda *a: seen.append(a))
    assert (m.snapshot_id, m.epoch, m.commit_seq, m.changelog_offset) == (1, 7, 5, 50)
    assert m.committed_offsets == {"orders:3": 500} and m.extra == {"note": "x"}
    assert any(f.name.endswith(".sst") for f in m.files) and "CURRENT" in {f.name for f in m.files}
    assert seen[-1] == (m.total_bytes, m.total_bytes)
    assert objects.exists(manifest_key(STORE, PART, 1))
    assert snaps.list_manifests(STORE, PART) == [m]

    progress: list[tuple[int, int]] = []
    dest = tmp_path / "restored" / "shard"
    got = snaps.restore_latest(STORE, PART, dest, progress=lambda d, t: progress.append((d, t)))
    assert got == m
    assert progress[-1] == (m.total_bytes, m.total_bytes)
    assert sorted(p.name for p in dest.iterdir()) == sorted(f.name for f in m.files)
    assert contents(dest) == contents(db)


def test_incremental_upload_skips_shared_files(
    objects: ObjectStore, db: Rdict, tmp_path: Path
) -> None:
    rec = Recording(objects)
    snaps = SnapshotStore(rec)
    write(db, 0, 5000, seed=1)
    m1 = upload(snaps, db, tmp_path, 1)
    s1 = snaps.last_upload(STORE, PART)
    assert s1 is not None and s1.bytes_uploaded == s1.bytes_total == m1.total_bytes > 1_000_000
    first_puts = set(rec.files_put)
    assert first_puts == {file_key(STORE, PART, f.sha256) for f in m1.files}

    rec.files_put.clear()
    write(db, 5000, 1000, seed=2)
    m2 = upload(snaps, db, tmp_path, 2)
    s2 = snaps.last_upload(STORE, PART)
    assert s2 is not None and s2.snapshot_id == m2.snapshot_id == 2
    old_shas = {f.sha256 for f in m1.files}
    shared_ssts = [f.name for f in m1.files if f.name.endswith(".sst")]
    assert shared_ssts and all(name in {f.name for f in m2.files} for name in shared_ssts)
    # exactly the content that was not stored before went up, and the shared SSTs did not
    assert set(rec.files_put) == {
        file_key(STORE, PART, f.sha256) for f in m2.files if f.sha256 not in old_shas
    }
    assert not set(shared_ssts) & set(s2.files_uploaded)
    assert s2.bytes_uploaded == sum(f.size for f in m2.files if f.sha256 not in old_shas)
    assert 0 < s2.bytes_uploaded < s2.bytes_total / 3
    # the shared SSTs' hashes came from the cache (same name, size, mtime, inode)
    assert s2.files_hashed == s2.files_total - len(shared_ssts)
    assert stored_files(objects) == old_shas | {f.sha256 for f in m2.files}

    dest = tmp_path / "restored"
    assert snaps.restore_latest(STORE, PART, dest) == m2
    assert contents(dest) == contents(db)


def test_gc_keeps_newest_and_their_files(objects: ObjectStore, db: Rdict, tmp_path: Path) -> None:
    snaps = SnapshotStore(objects, keep=2, gc_grace_s=0)
    manifests = []
    for i in range(4):
        write(db, i * 1000, 1000, seed=i)
        if i == 2:
            db.compact_range(None, None)  # rewrites every SST: older files become unreferenced
        manifests.append(upload(snaps, db, tmp_path, i + 1))
    stats = snaps.last_upload(STORE, PART)
    assert stats is not None and stats.gc is not None
    assert (stats.gc.manifests_kept, stats.gc.manifests_deleted) == (2, 1)
    assert [m.snapshot_id for m in snaps.list_manifests(STORE, PART)] == [4, 3]
    kept_shas = {f.sha256 for m in manifests[2:] for f in m.files}
    assert stored_files(objects) == kept_shas  # nothing referenced is gone, nothing else stays
    only_old = {f.sha256 for m in manifests[:2] for f in m.files} - kept_shas
    assert only_old  # the compaction really made files unreferenced, and gc removed them
    assert snaps.gc(STORE, PART).files_deleted == 0  # idempotent
    dest = tmp_path / "restored"
    assert snaps.restore_latest(STORE, PART, dest) == manifests[3]
    assert contents(dest) == contents(db)


def test_gc_grace_protects_recent_unreferenced_files(
    objects: ObjectStore, db: Rdict, tmp_path: Path
) -> None:
    graceful = SnapshotStore(objects, keep=1, gc_grace_s=3600)
    write(db, 0, 1000, seed=1)
    m1 = upload(graceful, db, tmp_path, 1)
    write(db, 1000, 1000, seed=2)
    db.compact_range(None, None)
    m2 = upload(graceful, db, tmp_path, 2)
    assert [m.snapshot_id for m in graceful.list_manifests(STORE, PART)] == [2]
    unreferenced = {f.sha256 for f in m1.files} - {f.sha256 for f in m2.files}
    assert unreferenced and unreferenced <= stored_files(objects)  # too young to delete
    result = SnapshotStore(objects, keep=1, gc_grace_s=0).gc(STORE, PART)
    assert result.files_deleted == len(unreferenced)
    assert stored_files(objects) == {f.sha256 for f in m2.files}


def _two_snapshots(
    snaps: SnapshotStore, db: Rdict, tmp_path: Path
) -> tuple[Manifest, dict[Any, Any], Manifest]:
    write(db, 0, 2000, seed=1)
    m1 = upload(snaps, db, tmp_path, 1)
    state1 = contents(db)
    write(db, 2000, 2000, seed=2)
    write(db, 0, 10, seed=3)  # overwrite some old keys too
    m2 = upload(snaps, db, tmp_path, 2)
    assert contents(db) != state1
    return m1, state1, m2


@pytest.mark.parametrize("damage", ["garbage", "truncated", "missing"])
def test_corrupt_file_falls_back_to_previous_snapshot(
    objects: ObjectStore, db: Rdict, tmp_path: Path, caplog: pytest.LogCaptureFixture,
    damage: str,
) -> None:
    snaps = SnapshotStore(objects)
    m1, state1, m2 = _two_snapshots(snaps, db, tmp_path)
    old = {f.sha256 for f in m1.files}
    victim = next(f for f in m2.files if f.name.endswith(".sst") and f.sha256 not in old)
    key = file_key(STORE, PART, victim.sha256)
    if damage == "garbage":
        objects.put_bytes(key, random.Random(0).randbytes(victim.size))  # same size, wrong bytes
    elif damage == "truncated":
        objects.put_bytes(key, objects.get_bytes(key)[:-1])
    else:
        objects.delete_many([key])
    dest = tmp_path / "restored"
    with caplog.at_level(logging.WARNING, logger="tierstore.server.snapshots"):
        got = snaps.restore_latest(STORE, PART, dest)
    assert got == m1
    assert sorted(p.name for p in dest.iterdir()) == sorted(f.name for f in m1.files)
    assert contents(dest) == state1  # the older state, not a mix
    assert any("snapshot 2" in r.getMessage() and victim.name in r.getMessage()
               for r in caplog.records)


def test_object_a_restore_found_corrupt_is_uploaded_again_by_the_next_snapshot(
    objects: ObjectStore, db: Rdict, tmp_path: Path
) -> None:
    """An SST object damaged in place (same size) is shared by every later snapshot of the
    same file, so none of them restores. The restore that finds it marks it, and the next
    snapshot uploads that file again instead of trusting the object by its size: the runbook's
    "take a fresh snapshot" repairs the shard, and the older snapshots restore again too."""
    snaps = SnapshotStore(objects)
    write(db, 0, 2000, seed=1)
    m1 = upload(snaps, db, tmp_path, 1)
    victim = next(f for f in m1.files if f.name.endswith(".sst"))
    key = file_key(STORE, PART, victim.sha256)
    objects.put_bytes(key, random.Random(0).randbytes(victim.size))  # same size, wrong bytes
    m2 = upload(snaps, db, tmp_path, 2)  # nothing new: the damaged object is reused
    assert victim in m2.files
    marks = f"shards/{STORE}/{PART}/corrupt/"
    # A read-only restore (the offline `tierstore restore`) finds it but writes nothing.
    with pytest.raises(SnapshotCorruptError):
        snaps.restore_latest(STORE, PART, tmp_path / "r1", mark_corrupt=False)
    assert list(objects.list(marks)) == []
    with pytest.raises(SnapshotCorruptError):
        snaps.restore_latest(STORE, PART, tmp_path / "r1")
    assert [i.key for i in objects.list(marks)] == [marks + victim.sha256]
    m3 = upload(snaps, db, tmp_path, 3)
    stats = snaps.last_upload(STORE, PART)
    assert stats is not None and victim.name in stats.files_uploaded
    assert objects.get_bytes(key) == (tmp_path / "db" / victim.name).read_bytes()
    assert snaps.restore_latest(STORE, PART, tmp_path / "r2") == m3
    assert contents(tmp_path / "r2") == contents(db)
    assert snaps.restore_latest(STORE, PART, tmp_path / "r3",
                                accept=lambda m: m.snapshot_id == 1) == m1
    # The mark is gone with the repair: the snapshot after next trusts the object again.
    assert list(objects.list(marks)) == []
    upload(snaps, db, tmp_path, 4)
    stats = snaps.last_upload(STORE, PART)
    assert stats is not None and victim.name not in stats.files_uploaded
    # gc drops a mark whose file no kept snapshot references.
    stale = marks + "0" * 64
    objects.put_bytes(stale, b"found 0: a file of a snapshot gc deleted\n")
    snaps.gc(STORE, PART)
    assert list(objects.list(marks)) == []


@pytest.mark.parametrize("damage", ["tampered", "garbage"])
def test_corrupt_manifest_is_skipped(
    objects: ObjectStore, db: Rdict, tmp_path: Path, caplog: pytest.LogCaptureFixture,
    damage: str,
) -> None:
    snaps = SnapshotStore(objects)
    m1, state1, _ = _two_snapshots(snaps, db, tmp_path)
    key = manifest_key(STORE, PART, 2)
    if damage == "tampered":
        doc = json.loads(objects.get_bytes(key))
        doc["changelog_offset"] = 0  # a bit flip that still parses: the checksum catches it
        objects.put_bytes(key, json.dumps(doc).encode())
    else:
        objects.put_bytes(key, b"\x00garbage{")
    with caplog.at_level(logging.WARNING, logger="tierstore.server.snapshots"):
        assert snaps.list_manifests(STORE, PART) == [m1]
    assert any(key in r.getMessage() for r in caplog.records)
    dest = tmp_path / "restored"
    assert snaps.restore_latest(STORE, PART, dest) == m1
    assert contents(dest) == state1


def test_all_corrupt_raises(objects: ObjectStore, db: Rdict, tmp_path: Path) -> None:
    snaps = SnapshotStore(objects)
    m1, _, m2 = _two_snapshots(snaps, db, tmp_path)
    objects.put_bytes(manifest_key(STORE, PART, 2), b"{}")
    objects.delete_many([file_key(STORE, PART, f.sha256) for f in m1.files])  # breaks both
    dest = tmp_path / "restored"
    with pytest.raises(SnapshotCorruptError) as info:
        snaps.restore_latest(STORE, PART, dest)
    assert manifest_key(STORE, PART, 1) in str(info.value)
    assert manifest_key(STORE, PART, 2) in str(info.value)
    assert not dest.exists()  # created by the call, removed again
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SnapshotCorruptError):
        snaps.restore_latest(STORE, PART, empty)
    assert empty.is_dir() and not any(empty.iterdir())
    assert m2.snapshot_id == 2


def test_no_snapshot_returns_none(objects: ObjectStore, tmp_path: Path) -> None:
    snaps = SnapshotStore(objects)
    assert snaps.list_manifests(STORE, PART) == []
    assert snaps.restore_latest(STORE, PART, tmp_path / "dest") is None
    assert not (tmp_path / "dest").exists()
    assert snaps.gc(STORE, PART).manifests_kept == 0


def test_failed_upload_leaves_previous_snapshot_latest(
    objects: ObjectStore, db: Rdict, tmp_path: Path
) -> None:
    write(db, 0, 1000, seed=1)
    m1 = upload(SnapshotStore(objects), db, tmp_path, 1)
    state1 = contents(db)
    write(db, 1000, 1000, seed=2)
    failing = SnapshotStore(Recording(objects, fail_after=0), workers=2)
    with pytest.raises(ObjectStoreError, match="injected"):
        upload(failing, db, tmp_path, 2)
    snaps = SnapshotStore(objects)
    assert snaps.list_manifests(STORE, PART) == [m1]
    dest = tmp_path / "restored"
    assert snaps.restore_latest(STORE, PART, dest) == m1
    assert contents(dest) == state1
    assert upload(snaps, db, tmp_path, 2).snapshot_id == 2  # a retry succeeds


def test_checkpoint_changed_during_upload_is_refused(
    objects: ObjectStore, db: Rdict, tmp_path: Path
) -> None:
    write(db, 0, 100, seed=1)

    def tamper(path: Path) -> None:
        if path.name == "CURRENT":  # a copied file, not a hard link into the live database
            with path.open("ab") as f:
                f.write(b"changed")

    snaps = SnapshotStore(Recording(objects, before_put=tamper))
    with pytest.raises(UnavailableError, match="changed"):
        upload(snaps, db, tmp_path, 1)
    assert snaps.list_manifests(STORE, PART) == []
    # the object whose content no longer matches its name was removed again
    for sha in stored_files(objects):
        key = file_key(STORE, PART, sha)
        assert hashlib.sha256(objects.get_bytes(key)).hexdigest() == sha


def test_concurrent_uploads_of_different_shards(objects: ObjectStore, tmp_path: Path) -> None:
    snaps = SnapshotStore(objects, workers=3)
    dbs = [Rdict(str(tmp_path / f"db{p}"), Options(raw_mode=True)) for p in range(3)]
    try:
        for p, d in enumerate(dbs):
            write(d, 0, 1500, seed=p)
        ckpts = [tmp_path / f"c{p}" for p in range(3)]
        for d, c in zip(dbs, ckpts, strict=True):
            Checkpoint(d).create_checkpoint(str(c))
        with ThreadPoolExecutor(3) as pool:
            futures = [
                pool.submit(snaps.upload, STORE, p, ckpts[p], epoch=1, commit_seq=1,
                            changelog_offset=0, committed_offsets={})
                for p in range(3)
            ]
            assert [f.result().partition for f in futures] == [0, 1, 2]
        for p, d in enumerate(dbs):
            dest = tmp_path / f"restored{p}"
            assert snaps.restore_latest(STORE, p, dest) is not None
            assert contents(dest) == contents(d)
    finally:
        for d in dbs:
            d.close()


def test_bad_arguments(objects: ObjectStore, db: Rdict, tmp_path: Path) -> None:
    snaps = SnapshotStore(objects)
    not_ckpt = tmp_path / "plain"
    not_ckpt.mkdir()
    (not_ckpt / "x.sst").write_bytes(b"x")
    with pytest.raises(ValueError, match="CURRENT"):
        snaps.upload(STORE, PART, not_ckpt, epoch=1, commit_seq=1, changelog_offset=0,
                     committed_offsets={})
    with pytest.raises(ValueError, match="not an empty directory"):
        snaps.restore_latest(STORE, PART, not_ckpt)
    for store, part in [("a/b", 0), ("", 0), ("..", 0), ("s", -1)]:
        with pytest.raises(ValueError):
            snaps.list_manifests(store, part)


def test_manifest_json_roundtrip_and_verification() -> None:
    m = Manifest(
        "s", 0, 12, 1700000000.5, 3, 9, 42, {"t:0": 5}, (SnapshotFile("CURRENT", 16, "a" * 64),),
        {"k": "v"},
    )
    text = m.to_json()
    back = Manifest.from_json(text)
    assert back == m and hash(back) == hash(m)
    assert Manifest.from_json(text.encode()) == m
    doc = json.loads(text)
    for field, value in [("epoch", 4), ("files", []), ("committed_offsets", {"t:0": 6})]:
        bad = {**doc, field: value}
        with pytest.raises(SnapshotCorruptError, match="checksum"):
            Manifest.from_json(json.dumps(bad))
    with pytest.raises(SnapshotCorruptError, match="not supported"):
        Manifest.from_json(json.dumps({**doc, "format_version": 2}))
    with pytest.raises(SnapshotCorruptError):
        Manifest.from_json("[1]")
    # a well-formed checksum over unsafe content is still refused
    unsafe = Manifest("s", 0, 1, 0.0, 0, 0, 0, {}, (SnapshotFile("../etc", 1, "b" * 64),))
    with pytest.raises(SnapshotCorruptError, match="unsafe file name"):
        Manifest.from_json(unsafe.to_json())
    offsets = {"a": 1}
    m2 = Manifest("s", 0, 1, 0.0, 0, 0, 0, offsets, ())
    offsets["a"] = 2
    assert m2.committed_offsets == {"a": 1}  # a private copy

"""Staging ahead (docs/protocol.md, "Staging ahead"): with a changelog, a key-value store's
staged writes are appended to the log when they are staged, before the commit's marker.

What must hold: a restore from the log (also after compaction) equals the committed state, so a
batch that is abandoned after its records reached the log is repaired by the next append; the
fence still counts every record this server appended; a server-side sweep never commits the
owner's staged records with its own marker; a failed append leaves nothing half-applied.

The shard runs over an in-memory changelog (tests/memlog.py) with failures injected at that
seam; tests/test_remote_buffer.py drives the same path from the client over gRPC and Kafka.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from tests.memlog import MemoryChangelog
from tierstore import ttl as ttlcodec
from tierstore.server.config import ServerConfig
from tierstore.server.errors import (
    AbortedError,
    ChangelogError,
    FencedError,
    UnavailableError,
)
from tierstore.server.logproto import MARKER_KEY, data_headers
from tierstore.server.objectstore import LocalObjectStore
from tierstore.server.ports import Ahead, Header
from tierstore.server.service import StoreService


class FaultyLog(MemoryChangelog):
    """Fails the next append_ahead / append_batch when told to (nothing lands), and counts
    reads (the fence reads the log only when foreign records are suspected)."""

    def __init__(self) -> None:
        super().__init__()
        self.fail_ahead = 0
        self.fail_batch = 0
        self.reads = 0

    def append_ahead(self, store: str, partition: int, keys: Sequence[bytes],
                     values: Sequence[bytes | None], headers: Sequence[Header]) -> Ahead:
        if self.fail_ahead:
            self.fail_ahead -= 1
            raise ChangelogError("injected: broker unreachable")
        return super().append_ahead(store, partition, keys, values, headers)

    def append_batch(
        self, store: str, partition: int, keys: Sequence[bytes],
        values: Sequence[bytes | None], headers: Sequence[Header], marker_value: bytes,
        marker_headers: Sequence[Header], while_waiting: Callable[[], None] | None = None,
        ahead: Sequence[Ahead] = (),
    ) -> int:
        if self.fail_batch:
            self.fail_batch -= 1
            raise ChangelogError("injected: delivery failed")
        return super().append_batch(store, partition, keys, values, headers, marker_value,
                                    marker_headers, while_waiting, ahead)

    def read(self, store: str, partition: int, start_offset: int):  # type: ignore[no-untyped-def]
        self.reads += 1
        return super().read(store, partition, start_offset)


@pytest.fixture
def log() -> FaultyLog:
    return FaultyLog()


def _service(path: Path, log: MemoryChangelog, objects: Path) -> StoreService:
    return StoreService(ServerConfig(data_dir=path), LocalObjectStore(objects), log)


def _restored(tmp_path: Path, log: MemoryChangelog, store: str, keys: list[bytes],
              compact: bool) -> list[bytes | None]:
    """What a server with an empty disk reads after restoring the shard from the log."""
    if compact:
        log.compact()
    svc = _service(tmp_path / f"fresh-{store}-{int(compact)}", log, tmp_path / "objects")
    try:
        return svc.get(store, 0, 0, keys)
    finally:
        svc.shutdown(snapshot=False)


def _data_keys(log: MemoryChangelog, store: str) -> list[bytes]:
    return [r.key for r in log.logs[(store, 0)] if r.key != MARKER_KEY]


def test_staged_writes_are_in_the_log_before_the_commit(tmp_path: Path, log: FaultyLog) -> None:
    svc = _service(tmp_path / "a", log, tmp_path / "objects")
    try:
        meta, _ = svc.open("s", 0, "kv", 1)
        log.reads = 0  # (the open's catch-up read)
        before = len(log.logs[("s", 0)])
        assert svc.stage("s", 0, meta.epoch, 1, [b"a", b"b"], [b"1", b"1"], []) == 1
        assert svc.stage("s", 0, meta.epoch, 1, [b"a"], [b"2"], [b"b"]) == 2
        tail = log.logs[("s", 0)][before:]
        assert [r.key for r in tail] == [b"a", b"b", b"a", b"b"]  # no marker yet
        assert all(r.headers == tuple(data_headers(meta.epoch, 1)) for r in tail)
        svc.commit("s", 0, meta.epoch, 1, 2, [b"c"], [b"3"], [], {"in:0": 1})
        assert log.logs[("s", 0)][-1].key == MARKER_KEY
        assert _data_keys(log, "s")[-1] == b"c"  # the commit appended only its own batch
        assert svc.get("s", 0, 0, [b"a", b"b", b"c"]) == [b"2", None, b"3"]
        # Only this server appended: the fence counted every record and read nothing.
        assert log.reads == 0
    finally:
        svc.shutdown(snapshot=False)
    for compact in (False, True):
        assert _restored(tmp_path, log, "s", [b"a", b"b", b"c"], compact) == [b"2", None, b"3"]


@pytest.mark.parametrize("how", ["claim", "release", "lost-stage"])
def test_an_abandoned_batch_is_repaired_by_the_next_append(
        tmp_path: Path, log: FaultyLog, how: str) -> None:
    """Records staged ahead and then abandoned must not be committed by the next marker, nor
    survive compaction as the newest record of their key."""
    svc = _service(tmp_path / "a", log, tmp_path / "objects")
    try:
        meta, _ = svc.open("s", 0, "kv", 1)
        svc.commit("s", 0, meta.epoch, 1, 0, [b"k", b"j"], [b"old", b"old"], [], {"in:0": 1})
        svc.stage("s", 0, meta.epoch, 2, [b"k", b"new"], [b"staged", b"staged"], [b"j"])
        if how == "claim":  # another worker takes the shard over
            meta, _ = svc.open("s", 0, "kv", 1)
            seq = 1
        elif how == "release":
            svc.close_shard("s", 0, meta.epoch)
            meta, _ = svc.open("s", 0, "kv", 1)
            seq = 1
        else:  # the client's commit counts a stage the server no longer holds
            with pytest.raises(AbortedError):
                svc.commit("s", 0, meta.epoch, 2, 5, [], [], [], {"in:0": 2})
            seq = 2
        svc.commit("s", 0, meta.epoch, seq, 0, [b"other"], [b"x"], [], {"in:0": 9})
        want = [b"old", b"old", None, b"x"]
        keys = [b"k", b"j", b"new", b"other"]
        assert svc.get("s", 0, 0, keys) == want
    finally:
        svc.shutdown(snapshot=False)
    for compact in (False, True):
        assert _restored(tmp_path, log, "s", keys, compact) == want


def test_a_failed_append_ahead_drops_the_whole_stage(tmp_path: Path, log: FaultyLog) -> None:
    svc = _service(tmp_path / "a", log, tmp_path / "objects")
    try:
        meta, _ = svc.open("s", 0, "kv", 1)
        svc.commit("s", 0, meta.epoch, 1, 0, [b"k"], [b"old"], [], {"in:0": 1})
        svc.stage("s", 0, meta.epoch, 2, [b"k"], [b"first"], [])
        log.fail_ahead = 1
        with pytest.raises(UnavailableError, match="broker unreachable"):
            svc.stage("s", 0, meta.epoch, 2, [b"n"], [b"second"], [])
        assert svc.get("s", 0, meta.epoch, [b"k", b"n"]) == [b"old", None]  # nothing staged
        with pytest.raises(AbortedError, match="staged"):
            svc.commit("s", 0, meta.epoch, 2, 2, [], [], [], {"in:0": 2})
        meta, _ = svc.open("s", 0, "kv", 1)  # the worker reopens
        assert svc.get("s", 0, 0, [b"k", b"n"]) == [b"old", None]
    finally:
        svc.shutdown(snapshot=False)
    for compact in (False, True):
        assert _restored(tmp_path, log, "s", [b"k", b"n"], compact) == [b"old", None]


def test_a_retried_commit_appends_the_whole_batch_again(tmp_path: Path, log: FaultyLog) -> None:
    """After a failed append the records staged ahead may or may not be in the log: the retry
    (same commit number) appends the whole staged batch, not just its own part."""
    svc = _service(tmp_path / "a", log, tmp_path / "objects")
    try:
        meta, _ = svc.open("s", 0, "kv", 1)
        svc.stage("s", 0, meta.epoch, 1, [b"a"], [b"1"], [])
        log.fail_batch = 1
        with pytest.raises(UnavailableError, match="delivery failed"):
            svc.commit("s", 0, meta.epoch, 1, 1, [b"b"], [b"2"], [], {"in:0": 1})
        log.logs[("s", 0)] = [r for r in log.logs[("s", 0)] if r.key != b"a"]  # it never landed
        svc.commit("s", 0, meta.epoch, 1, 1, [b"b"], [b"2"], [], {"in:0": 1})
        assert svc.get("s", 0, 0, [b"a", b"b"]) == [b"1", b"2"]
    finally:
        svc.shutdown(snapshot=False)
    assert _restored(tmp_path, log, "s", [b"a", b"b"], False) == [b"1", b"2"]


def test_a_takeover_between_staged_records_and_the_marker_is_fenced(
        tmp_path: Path, log: FaultyLog) -> None:
    svc = _service(tmp_path / "a", log, tmp_path / "objects")
    try:
        meta, _ = svc.open("s", 0, "kv", 1)
        svc.commit("s", 0, meta.epoch, 1, 0, [b"k"], [b"old"], [], {"in:0": 1})
        log.reads = 0
        svc.stage("s", 0, meta.epoch, 2, [b"k"], [b"mine"], [])
        # Another server, at a newer epoch, appends after the staged record.
        log.append_ahead("s", 0, [b"k"], [b"theirs"], data_headers(meta.epoch + 1, 1))
        with pytest.raises(FencedError, match="took it over"):
            svc.commit("s", 0, meta.epoch, 2, 1, [], [], [], {"in:0": 2})
        assert log.reads == 1
    finally:
        svc.shutdown(snapshot=False)


def test_a_sweep_never_commits_the_owners_staged_records(tmp_path: Path, log: FaultyLog) -> None:
    svc = _service(tmp_path / "a", log, tmp_path / "objects")
    try:
        meta, _ = svc.open("t", 0, "kv", 1, ttl_ms=1000)
        expired = ttlcodec.encode(b"gone", 1, 0)
        svc.commit("t", 0, meta.epoch, 1, 0, [b"old"], [expired], [], {"in:0": 1})
        staged = ttlcodec.encode(b"staged", 10_000_000, ttlcodec.now_ms())
        svc.stage("t", 0, meta.epoch, 2, [b"s"], [staged], [])
        markers = sum(r.key == MARKER_KEY for r in log.logs[("t", 0)])
        assert svc.sweep_expired() == 0  # waits: its marker would commit the staged record
        assert sum(r.key == MARKER_KEY for r in log.logs[("t", 0)]) == markers
        svc.commit("t", 0, meta.epoch, 2, 1, [], [], [], {"in:0": 2})
        assert svc.sweep_expired() == 1
        assert svc.get("t", 0, 0, [b"old"]) == [None]
    finally:
        svc.shutdown(snapshot=False)


def test_stage_right_after_a_commit_does_not_wait_for_rocksdb(
        tmp_path: Path, log: FaultyLog, monkeypatch: pytest.MonkeyPatch) -> None:
    """The next batch's first stage arrives while the last commit is still being written to
    RocksDB: it takes the acknowledged commit's number, and reads still wait for the write."""
    import threading

    from tierstore.server.hottier import ShardDB

    svc = _service(tmp_path / "a", log, tmp_path / "objects")
    try:
        meta, _ = svc.open("s", 0, "kv", 1)
        release = threading.Event()
        real = ShardDB.write_prepared

        def held_write(self: ShardDB, *a: object, **kw: object) -> None:
            assert release.wait(10)
            real(self, *a, **kw)  # type: ignore[arg-type]

        monkeypatch.setattr(ShardDB, "write_prepared", held_write)
        svc.commit("s", 0, meta.epoch, 1, 0, [b"a"], [b"1"], [], {"in:0": 1})
        assert svc.stage("s", 0, meta.epoch, 2, [b"b"], [b"2"], []) == 1  # not blocked
        release.set()
        assert svc.get("s", 0, meta.epoch, [b"a", b"b"]) == [b"1", b"2"]
        svc.commit("s", 0, meta.epoch, 2, 1, [], [], [], {"in:0": 2})
        assert svc.get("s", 0, 0, [b"a", b"b"]) == [b"1", b"2"]
    finally:
        svc.shutdown(snapshot=False)

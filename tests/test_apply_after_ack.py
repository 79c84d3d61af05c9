"""With a changelog, a commit is acknowledged once its marker is in the log, and RocksDB is
written on a background thread (server/shard.py, `_apply_later`). These tests pin the two
promises that makes: a read never sees the shard between the acknowledgement and the local
write, and a local write that fails after the acknowledgement loses nothing (the shard is
reloaded, and the replay of the changelog applies the commit).

The shard runs over an in-memory changelog (tests/memlog.py); the RocksDB write is slowed or
failed at the ShardDB seam.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from tests.memlog import MemoryChangelog
from tierstore.server.config import ServerConfig
from tierstore.server.hottier import ShardDB
from tierstore.server.objectstore import LocalObjectStore
from tierstore.server.service import StoreService


def _service(tmp_path: Path, log: MemoryChangelog) -> StoreService:
    return StoreService(ServerConfig(data_dir=tmp_path / "data"),
                        LocalObjectStore(tmp_path / "objects"), log)


def test_reads_wait_for_the_background_write(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    svc = _service(tmp_path, MemoryChangelog())
    try:
        meta, _ = svc.open("slow", 0, "kv", 1)
        started = threading.Event()
        real = ShardDB.write_prepared

        def slow_write(self: ShardDB, *a: object, **kw: object) -> None:
            started.set()
            time.sleep(0.3)  # the write under way while the read arrives
            real(self, *a, **kw)  # type: ignore[arg-type]

        monkeypatch.setattr(ShardDB, "write_prepared", slow_write)
        svc.commit("slow", 0, meta.epoch, 1, 0, [b"k"], [b"v1"], [], {"in:0": 1})
        assert started.wait(5)
        # Acknowledged; the write is still running: both reads wait for it.
        assert svc.get("slow", 0, 0, [b"k"]) == [b"v1"]
        assert svc.get("slow", 0, meta.epoch, [b"k"]) == [b"v1"]
        shard = svc.registry.peek("slow", 0)
        assert shard is not None and shard.meta.offsets == {"in:0": 1}
    finally:
        svc.shutdown(snapshot=False)


def test_a_failed_background_write_loses_nothing(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    log = MemoryChangelog()
    svc = _service(tmp_path, log)
    try:
        meta, _ = svc.open("flaky", 0, "kv", 1)
        svc.commit("flaky", 0, meta.epoch, 1, 0, [b"a"], [b"1"], [], {"in:0": 1})
        real = ShardDB.write_prepared
        failures = [OSError("No space left on device")]

        def failing_write(self: ShardDB, *a: object, **kw: object) -> None:
            if failures:
                raise failures.pop()
            real(self, *a, **kw)  # type: ignore[arg-type]

        monkeypatch.setattr(ShardDB, "write_prepared", failing_write)
        # The marker is in the log, so the commit is acknowledged although RocksDB refused it.
        svc.commit("flaky", 0, meta.epoch, 2, 0, [b"a", b"b"], [b"2", b"2"], [], {"in:0": 2})
        # The next use reloads the shard; the replay applies commit 2 from the changelog.
        assert svc.get("flaky", 0, 0, [b"a", b"b"]) == [b"2", b"2"]
        shard = svc.registry.peek("flaky", 0)
        assert shard is not None and shard.meta.offsets == {"in:0": 2}
        assert not failures
    finally:
        svc.shutdown(snapshot=False)

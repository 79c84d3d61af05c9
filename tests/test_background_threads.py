"""The server's background threads survive an unexpected error in one round: a dead thread
would stop snapshots (or TTL sweeps, hand-overs and eviction) until a restart, silently."""

from __future__ import annotations

from pathlib import Path

from tierstore.server.cluster import wait_until
from tierstore.server.config import ServerConfig
from tierstore.server.objectstore import LocalObjectStore
from tierstore.server.service import StoreService


def _service(tmp_path: Path, **kw: object) -> StoreService:
    cfg = ServerConfig(data_dir=tmp_path / "data", **kw)  # type: ignore[arg-type]
    return StoreService(cfg, LocalObjectStore(tmp_path / "objects"), None)


def test_the_snapshot_thread_survives_an_unexpected_error(tmp_path: Path) -> None:
    svc = _service(tmp_path, snapshot_every_commits=1)
    try:
        calls: list[str] = []

        def on_snapshot(*_: object) -> None:
            calls.append("snapshot")
            if len(calls) == 1:
                raise ValueError("a bug in a snapshot callback (test)")

        svc.snapshotter.on_snapshot = on_snapshot
        meta, _ = svc.open("bg", 0, "kv", 1)
        svc.commit("bg", 0, meta.epoch, 1, 0, [b"a"], [b"1"], [], {"in:0": 1})
        assert wait_until(lambda: len(calls) == 1, 10, 0.02)
        svc.commit("bg", 0, meta.epoch, 2, 0, [b"b"], [b"2"], [], {"in:0": 2})
        assert wait_until(lambda: len(calls) == 2, 10, 0.02), "the snapshot thread died"
        assert svc.snapshotter.failed >= 1
    finally:
        svc.shutdown(snapshot=False)


def test_the_ticker_thread_survives_an_unexpected_error(tmp_path: Path) -> None:
    svc = _service(tmp_path, snapshot_interval_s=0.1)
    try:
        calls: list[int] = []

        def sweep() -> int:
            calls.append(1)
            if len(calls) == 1:
                raise ValueError("a bug in one background round (test)")
            return 0

        svc.sweep_expired = sweep  # type: ignore[method-assign,assignment]
        assert wait_until(lambda: len(calls) >= 3, 10, 0.02), "the ticker thread died"
        assert svc._ticker.is_alive()
    finally:
        svc.shutdown(snapshot=False)

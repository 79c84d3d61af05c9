"""Retention frees disk space and keys by dropping whole segments, without a scan.

A window store is filled with ~10 minutes of windows, then stream time is advanced past the
retention step by step. After each commit the shard's RocksDB is flushed and compacted and its
SST bytes and key count are printed (run with -s to see them): they fall by a segment at a time
once retention passes. A spy at the ShardDB seam (a MagicMock with spec_set, wrapping the real
database) shows that the commits that drop segments iterate nothing and carry one range delete,
with no per-key deletes of data. Both on the embedded store (local) and through a server.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest.mock import MagicMock, PropertyMock

import pytest

from tierstore import windowkeys as wk
from tierstore.client import LocalWindowStore, WindowStoreImpl, connect
from tierstore.server.app import RunningServer, create_server
from tierstore.server.config import ServerConfig
from tierstore.server.hottier import ShardDB

SEC, MIN = 1_000, 60_000
RETENTION = 10 * MIN  # segments of 5 minutes
KEYS = [b"sensor-%03d" % i for i in range(40)]
VALUES = [random.Random(i).randbytes(200) for i in range(97)]  # incompressible
VALUE = VALUES[0]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    srv = create_server(
        ServerConfig(listen="127.0.0.1:0", data_dir=tmp_path_factory.mktemp("retention"))
    )
    yield srv
    srv.stop(grace=1)


def sst_bytes(db: ShardDB) -> int:
    return sum(f.stat().st_size for f in db.path.glob("*.sst"))


def measure(db: ShardDB) -> tuple[int, int]:
    """(SST bytes, approximate key count) once everything is flushed and compacted."""
    db.flush()
    db.compact()
    return sst_bytes(db), db.approximate_num_entries()


def spy_on(db: ShardDB) -> Any:
    """A spy with exactly ShardDB's attributes (spec_set) that forwards every call to `db`,
    and reads its `closed` flag (a plain attribute: a mock's own would always be truthy)."""
    spy = MagicMock(spec_set=db, wraps=db)
    type(spy).closed = PropertyMock(side_effect=lambda: db.closed)
    return spy


@pytest.mark.parametrize("kind", ["local", "remote"])
def test_retention_frees_disk_and_keys_by_segment_drops_without_a_scan(
    kind: str, tmp_path: Path, server: RunningServer
) -> None:
    ws: WindowStoreImpl
    if kind == "local":
        ws = LocalWindowStore(tmp_path / "w", SEC, RETENTION)
        local_kv: Any = ws.kv
        real: ShardDB = local_kv._db
        spy = local_kv._db = spy_on(real)
    else:
        client = connect(f"127.0.0.1:{server.port}")
        ws = client.window_store("retention", window_size_ms=SEC, retention_ms=RETENTION)
        svc = server.service
        shard = svc.registry.shard(svc.registry.describe("retention"), 0)
        real = shard.db
        spy = shard.db = spy_on(real)
    assert ws.segment_interval_ms == 5 * MIN
    # Fill: one window per key and second for 10 minutes (segments 0 and 1), committed often.
    for t in range(0, 10 * MIN, SEC):
        for i, k in enumerate(KEYS):
            ws.put(k, VALUES[(t // SEC + i) % len(VALUES)], t)
        if t % (30 * SEC) == 0:
            ws.commit()
    ws.commit()
    figures = [("filled", ws.stream_time_ms, *measure(real))]
    # Advance stream time with a few windows at a time: the expiry bound passes segment 0 at
    # 15 min and segment 1 at 20 min; each commit is checked through the spy.
    for st in (12 * MIN, 15 * MIN + 1, 17 * MIN, 20 * MIN + 1):
        spy.reset_mock()
        ws.put(b"sensor-000", VALUE, st)
        ws.commit()
        assert spy.iterate.call_count == 0, "a commit scanned the shard"
        if kind == "local":
            [call] = spy.apply.call_args_list
            pk, _, dk, _ = call.args
            ranges = call.kwargs["ranges"]
        else:
            [call] = spy.prepare.call_args_list
            pk, _, dk, ranges = call.args
        assert not [k for k in dk if k.startswith(wk.DATA_PREFIX)], "per-key deletes of data"
        assert len(pk) <= 2  # the new window and the stream time
        first_live = wk.first_live_segment(st, RETENTION, ws.segment_interval_ms)
        if st in (15 * MIN + 1, 20 * MIN + 1):  # a segment expired whole: ONE range delete
            assert ranges == [(wk.segment_prefix(first_live - 1), wk.segment_prefix(first_live))]
        else:
            assert not ranges
        figures.append((f"stream time {st // SEC} s", st, *measure(real)))
    print(f"\n{kind}: retention {RETENTION // MIN} min, segments of "
          f"{ws.segment_interval_ms // MIN} min, {len(KEYS)} keys x 1 window/s, "
          f"{len(VALUE)}-byte values")
    print(f"{'after':<22}{'SST bytes':>12}{'keys (approx.)':>16}")
    for label, _, size, keys in figures:
        print(f"{label:<22}{size:>12,}{keys:>16,}")
    (_, _, full, full_keys), _, (_, _, half, half_keys), _, (_, _, empty, empty_keys) = figures
    assert full_keys >= len(KEYS) * 600 * 0.9 and full > len(KEYS) * 600 * len(VALUE) // 4
    assert figures[1][3] >= full_keys and figures[1][2] > 0.95 * full  # no segment expired whole
    assert half < 0.7 * full and half_keys < 0.7 * full_keys  # segment 0 dropped
    assert empty < 0.05 * full and empty_keys < 10  # segment 1 dropped: a handful of windows
    assert list(ws.fetch(b"sensor-001", 0, 20 * MIN)) == []
    assert [t for t, _ in ws.fetch(b"sensor-000", 10 * MIN, wk.MAX_TIME)] == [
        12 * MIN, 15 * MIN + 1, 17 * MIN, 20 * MIN + 1]
    ws.close()

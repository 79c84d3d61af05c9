"""Restore re-derives segment drops: the changelog never carries range deletes, yet a window or
session store restored on an empty data dir from the changelog alone holds exactly the live
segments; and it stays so when the log is compacted, or its head deleted by topic retention.

The servers run in-process over an in-memory changelog (tests/memlog.py), so that the log can
be compacted and truncated at will; tests/test_window_worker.py does the same against a real
broker and S3 server, with kill -9.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.memlog import MemoryChangelog
from tests.windowworker import (
    RETENTION,
    SIZE,
    Worker,
    generate,
    physical_segments,
    read_sessions,
    read_windows,
    reference_sessions,
    reference_windows,
)
from tierstore import windowkeys as wk
from tierstore.client import SessionStoreImpl, WindowStoreImpl, connect
from tierstore.server.app import RunningServer, create_server
from tierstore.server.config import ServerConfig
from tierstore.server.objectstore import open_object_store
from tierstore.server.service import StoreService
from tierstore.server.specs import CHANGELOG_EXTRA_RETENTION_MS


def serve(root: Path, log: MemoryChangelog) -> RunningServer:
    """A server with an empty data dir and its own (empty) snapshot directory: whatever it
    has, it restored from the changelog."""
    cfg = ServerConfig(listen="127.0.0.1:0", data_dir=root / "data",
                       object_store=(root / "objects").resolve().as_uri())
    (root / "objects").mkdir(parents=True)
    return create_server(cfg, service=StoreService(cfg, open_object_store(cfg.object_store_url()),
                                                   log))


@pytest.fixture
def servers() -> Iterator[list[RunningServer]]:
    running: list[RunningServer] = []
    yield running
    for s in running:
        s.stop(grace=0, snapshot=False)


def open_stores(srv: RunningServer) -> tuple[WindowStoreImpl, SessionStoreImpl]:
    client = connect(f"127.0.0.1:{srv.port}")
    return (client.window_store("clicks", window_size_ms=SIZE, retention_ms=RETENTION),
            client.session_store("visits", retention_ms=RETENTION))


def check_restored(srv: RunningServer, events: list[tuple[bytes, int]]) -> tuple[int, int]:
    """The restored stores equal the reference and hold live segments only; returns the
    restore's (segment drops, skipped records) of the window store."""
    ws, ss = open_stores(srv)
    assert read_windows(ws) == reference_windows(events)
    assert read_sessions(ss) == reference_sessions(events)
    assert ws.committed_offsets == ss.committed_offsets == {"events:0": len(events)}
    for store in (ws, ss):
        first_live = wk.first_live_segment(store.stream_time_ms, RETENTION,
                                           store.segment_interval_ms)
        assert min(physical_segments(store)) >= first_live
    replay = srv.service.registry.load_reports[("clicks", 0)].replay
    assert replay is not None
    ws.close()
    ss.close()
    return replay.segment_drops, replay.expired_records


def test_restore_from_changelog_alone_rederives_segment_drops(
    tmp_path: Path, servers: list[RunningServer]
) -> None:
    events = generate(seed=11, n=2_500)
    log = MemoryChangelog()
    servers.append(a := serve(tmp_path / "a", log))
    ws, ss = open_stores(a)
    worker = Worker(ws, ss)
    worker.run(events, len(events), commit_every=100)
    worker.commit(len(events))
    assert ws.dropped_records == ss.dropped_records == worker.late_sessions == 0
    segments = {wk.segment_of_key(r.key) for r in log.logs[("clicks", 0)]
                if r.key.startswith(wk.DATA_PREFIX)}
    assert len(segments) > 15  # the stream crossed many segments...
    assert len(physical_segments(ws)) <= 3  # ... and all but the live ones were dropped
    # windowed stores' topics forget what retention has expired (kv topics: compaction only)
    assert log.topics["clicks"] == (1, RETENTION + CHANGELOG_EXTRA_RETENTION_MS)

    servers.append(b := serve(tmp_path / "b", log))
    drops, skipped = check_restored(b, events)
    assert drops > 10  # the segments were dropped one after the other, as they expired

    # The cleaner keeps the newest record of each key, and one marker: the whole log is one
    # batch, the newest stream time comes last, and the records of expired segments (kept
    # because their keys are never written again) are left out when that batch is applied.
    log.compact()
    servers.append(c := serve(tmp_path / "c", log))
    drops, skipped = check_restored(c, events)
    assert drops == 1 and skipped > 300


def test_restore_after_topic_retention_deleted_the_head(
    tmp_path: Path, servers: list[RunningServer]
) -> None:
    events = generate(seed=12, n=2_000)
    log = MemoryChangelog()
    servers.append(a := serve(tmp_path / "a", log))
    worker = Worker(*open_stores(a))
    worker.run(events, len(events), commit_every=100)
    worker.commit(len(events))
    # Retention deletes old records by (wall-clock) age. Delete the head of each log up to the
    # first record the final state still needs: a record of a segment that is still live.
    for store, ws_or_ss in (("clicks", worker.ws), ("visits", worker.ss)):
        first_live = wk.first_live_segment(ws_or_ss.stream_time_ms, RETENTION,
                                           ws_or_ss.segment_interval_ms)
        recs = log.logs[(store, 0)]
        cut = next(r.offset for r in recs
                   if r.key.startswith(wk.DATA_PREFIX) and wk.segment_of_key(r.key) >= first_live)
        assert cut > len(recs) // 2
        log.truncate_before(store, 0, cut)
    servers.append(b := serve(tmp_path / "b", log))
    check_restored(b, events)

"""One contract suite for window and session stores: remote, local and in-memory.

Each test runs against all three backends (tests/windowed_backends.py); reads are checked
against an in-test model of the expected windows and sessions.
"""

from __future__ import annotations

import pytest

from tests.windowed_backends import BACKENDS, Backend, backend_fixture, server_fixture
from tierstore import windowkeys as wk
from tierstore.client import (
    InMemorySessionStore,
    InMemoryWindowStore,
    SessionStore,
    SessionStoreImpl,
    WindowStore,
    WindowStoreImpl,
    connect,
    errors,
)
from tierstore.server import errors as server_errors
from tierstore.server.app import RunningServer
from tierstore.server.specs import reconcile

MAX = wk.MAX_TIME
MIN = 60_000
HOUR = 3_600_000
KEYS = [b"a", b"a\x00", b"a\x00\x00", b"a\x01", b"ab", b"\x00", b"\x00\x01", b"\xff", b"\xff\xff"]

server = pytest.fixture(scope="module")(server_fixture)
backend = pytest.fixture(params=BACKENDS)(backend_fixture)

Windows = dict[tuple[bytes, int], bytes]


def check_windows(ws: WindowStoreImpl, model: Windows) -> None:
    """Every kind of window read agrees with `model` ((key, start) -> value)."""
    ordered = sorted((k, t, v) for (k, t), v in model.items())
    times = sorted({t for _, t, _ in ordered} | {0, MAX})
    assert list(ws.fetch_all(0, MAX)) == ordered
    assert list(ws.all()) == ordered
    assert list(ws.backward_fetch_all(0, MAX)) == ordered[::-1]
    for lo, hi in [(times[0], times[-1]), (times[1], times[-2]), (times[1], times[1])]:
        assert list(ws.fetch_all(lo, hi)) == [e for e in ordered if lo <= e[1] <= hi]
        for key in {k for k, _, _ in ordered} | {b"zz"}:
            want = [(t, v) for k, t, v in ordered if k == key and lo <= t <= hi]
            assert list(ws.fetch(key, lo, hi)) == want
            assert list(ws.backward_fetch(key, lo, hi)) == want[::-1]
        for kf, kt in [(b"a", b"ab"), (b"a\x00", b"a\x01"), (None, b"a"), (b"\xff", None)]:
            want3 = [
                e for e in ordered
                if (kf is None or e[0] >= kf) and (kt is None or e[0] <= kt) and lo <= e[1] <= hi
            ]
            assert list(ws.fetch_range(kf, kt, lo, hi)) == want3
            assert list(ws.backward_fetch_range(kf, kt, lo, hi)) == want3[::-1]
    for (k, t), v in model.items():
        assert ws.fetch_window(k, t) == v


# --- window stores ------------------------------------------------------------------------------
def test_window_put_fetch_and_overlay(backend: Backend) -> None:
    ws = backend.window(MIN, HOUR)
    assert isinstance(ws, WindowStore)
    assert ws.epoch > 0 if backend.kind == "remote" else ws.epoch == 0
    model: Windows = {}
    for i, key in enumerate(KEYS):
        for t in (0, MIN, 2 * MIN, 3 * MIN):
            v = b"%d@%d" % (i, t)
            ws.put(key, v, t)
            model[key, t] = v
    check_windows(ws, model)
    assert ws.commit({"in:0": 7}) == {"in:0": 7}
    # uncommitted writes overlay committed ones: overwrite, delete (put None), new windows
    ws.put(b"a", b"new", MIN)
    model[b"a", MIN] = b"new"
    ws.put(b"a\x00", None, 2 * MIN)
    del model[b"a\x00", 2 * MIN]
    ws.put(b"b", b"late-key", 30_000)  # any start: windows need not be aligned
    model[b"b", 30_000] = b"late-key"
    ws.put(b"zz", None, 5)  # deleting an absent window is fine
    check_windows(ws, model)
    ws.commit({"in:0": 9})
    ws2 = backend.window(MIN, HOUR)
    assert ws2.committed_offsets == {"in:0": 9}
    check_windows(ws2, model)
    assert ws2.fetch_window(b"zz", 0) is None


def test_hopping_windows(backend: Backend) -> None:
    size, advance = 10_000, 2_000
    ws = backend.window(size, HOUR)
    model: Windows = {}
    for ts in [1_000, 3_500, 3_999, 12_000, 12_001, 25_000, 19_999]:
        first = max(0, (ts - size) // advance * advance + advance)
        for start in range(first, ts + 1, advance):  # every window [start, start+size) with ts
            old = ws.fetch_window(b"k", start)
            n = int(old or b"0") + 1
            ws.put(b"k", b"%d" % n, start)
            model[b"k", start] = b"%d" % n
    check_windows(ws, model)
    assert ws.fetch_window(b"k", 12_000) == b"3"  # [12_000, 22_000): 12_000, 12_001, 19_999
    ws.commit()
    check_windows(backend.window(size, HOUR), model)


def test_times_up_to_2_63_minus_1(backend: Backend) -> None:
    ws = backend.window(1, MAX)
    ws.put(b"k", b"zero", 0)
    model: Windows = {(b"k", 1): b"one", (b"k", MAX - 1): b"almost", (b"k", MAX): b"max"}
    for (k, t), v in model.items():
        ws.put(k, v, t)
    assert ws.stream_time_ms == MAX
    # even the longest retention ends: at stream time 2**63 - 1, start 0 is expired
    check_windows(ws, model)
    ws.put(b"k", b"zero", 0)
    assert ws.dropped_records == 1
    assert list(ws.fetch_all(MAX, MAX)) == [(b"k", MAX, b"max")]
    ws.commit()
    ws2 = backend.window(1, MAX)
    assert ws2.stream_time_ms == MAX
    check_windows(ws2, model)
    with pytest.raises(errors.InvalidArgumentError, match="2\\*\\*63"):
        ws2.put(b"k", b"v", MAX + 1)
    with pytest.raises(errors.InvalidArgumentError, match="2\\*\\*63"):
        list(ws2.fetch(b"k", 0, MAX + 1))


def test_retention_hides_at_once_drops_late_puts_and_drops_whole_segments(
    backend: Backend,
) -> None:
    retention = 10 * MIN
    seg = 5 * MIN  # segments are max(retention // 2, 60 s) long, as in Kafka Streams
    ws = backend.window(MIN, retention)
    assert ws.segment_interval_ms == seg == wk.segment_interval_ms(retention)
    model: Windows = {}
    for t in range(0, 10 * MIN, MIN):
        ws.put(b"k", b"%d" % t, t)
        model[b"k", t] = b"%d" % t
    check_windows(ws, model)
    ws.put(b"k", b"600000", 10 * MIN)  # stream time 10 min: the window at 0 expires now
    model[b"k", 10 * MIN] = b"600000"
    del model[b"k", 0]
    assert ws.stream_time_ms == 10 * MIN
    check_windows(ws, model)
    assert ws.fetch_window(b"k", 0) is None
    ws.put(b"k", b"late", 0)  # start <= stream time - retention: dropped and counted
    ws.put(b"other", b"late", 0)
    assert ws.dropped_records == 2
    ws.put(b"k", b"in time", MIN)  # start > stream time - retention: accepted
    model[b"k", MIN] = b"in time"
    check_windows(ws, model)
    written = [*sorted(t for _, t in model), 0]

    ws.put(b"k", b"far", 1_000_000)  # expires every start <= 400_000 at once
    written.append(1_000_000)
    model[b"k", 1_000_000] = b"far"
    model = {kt: v for kt, v in model.items() if kt[1] > 400_000}
    check_windows(ws, model)
    ws.commit({"in:0": 1})
    # segment 0 ([0, 5 min)) expired whole: dropped by the commit (one range delete). Segment 1
    # is partly live: its expired windows (5 and 6 min) stay on disk, hidden, until it expires.
    assert raw_times(ws) == sorted(t for t in written if t >= seg)
    assert ws.fetch_window(b"k", 6 * MIN) is None
    assert list(ws.fetch(b"k", 0, 400_000)) == []

    ws2 = backend.window(MIN, retention)
    assert ws2.stream_time_ms == 1_000_000  # stream time is durable with the commit
    check_windows(ws2, model)
    ws2.put(b"k", b"late", 400_000)
    assert ws2.dropped_records == 1
    ws2.put(b"k", b"x", 1_100_000)  # bound 500_000: segment 1 is still partly live
    written.append(1_100_000)
    model[b"k", 1_100_000] = b"x"
    model = {kt: v for kt, v in model.items() if kt[1] > 500_000}
    check_windows(ws2, model)
    ws2.commit()
    assert raw_times(ws2) == sorted(t for t in written if t >= seg)  # hidden, not yet removed
    ws2.put(b"k", b"y", 1_300_000)  # bound 700_000: segment 1 has expired whole
    written.append(1_300_000)
    model[b"k", 1_300_000] = b"y"
    model = {kt: v for kt, v in model.items() if kt[1] > 700_000}
    ws2.commit()
    assert raw_times(ws2) == sorted(t for t in written if t >= 2 * seg)
    check_windows(backend.window(MIN, retention), model)


def raw_times(store: WindowStoreImpl) -> list[int]:
    """The window starts physically present in the key-value store, expired or not."""
    return sorted(wk.window_time(k) for k, _ in store.kv.range(wk.DATA_LO, wk.DATA_HI))


def test_uncommitted_windows_and_stream_time_are_lost_on_reopen(backend: Backend) -> None:
    ws = backend.window(MIN, HOUR)
    ws.put(b"k", b"kept", 5 * MIN)
    ws.commit({"in:0": 1})
    ws.put(b"k", b"lost", 100 * HOUR)  # would expire the window at 5 min
    assert list(ws.fetch(b"k", 0, MAX)) == [(100 * HOUR, b"lost")]
    ws.close()
    ws2 = backend.window(MIN, HOUR)
    assert ws2.stream_time_ms == 5 * MIN
    assert list(ws2.fetch(b"k", 0, MAX)) == [(5 * MIN, b"kept")]
    assert ws2.committed_offsets == {"in:0": 1}


def test_window_bad_input(backend: Backend) -> None:
    ws = backend.window(MIN, HOUR)
    bad = errors.InvalidArgumentError
    with pytest.raises(bad, match="negative"):
        ws.put(b"k", b"v", -1)
    with pytest.raises(bad, match="negative"):
        list(ws.fetch(b"k", -5, 10))
    with pytest.raises(bad, match="inverted time range"):
        list(ws.fetch(b"k", 10, 5))
    for call in (ws.fetch_all, ws.backward_fetch_all):
        with pytest.raises(bad, match="inverted time range"):
            call(10, 5)  # refused at the call, not at the first next()
    for call3 in (ws.fetch, ws.backward_fetch):
        with pytest.raises(bad, match="inverted time range"):
            call3(b"k", 10, 5)
    for call4 in (ws.fetch_range, ws.backward_fetch_range):
        with pytest.raises(bad, match="inverted time range"):
            call4(b"a", b"b", 10, 5)
        with pytest.raises(bad, match="negative"):
            call4(None, None, -1, 5)
    with pytest.raises(bad, match="inverted key range"):
        ws.fetch_range(b"z", b"a", 0, 10)
    with pytest.raises(bad, match="empty"):
        ws.put(b"", b"v", 0)
    with pytest.raises(bad, match="encodes to"):
        ws.put(b"\x00" * 40_000, b"v", 0)
    with pytest.raises(bad, match="value must be bytes"):
        ws.put(b"k", "text", 0)  # type: ignore[arg-type]
    assert ws.stream_time_ms == -1  # refused puts do not move stream time
    ws.put(b"k" * (65536 - wk.WINDOW_OVERHEAD), b"v", 0)  # the longest key without 0x00
    ws.commit()
    for size, retention, match in [
        (MIN, MIN - 1, "smaller than window_size_ms"),
        (0, HOUR, "window_size_ms"),
        (-1, HOUR, "negative"),
    ]:
        with pytest.raises(bad, match=match):
            if backend.kind == "remote":
                assert backend.client is not None
                backend.client.window_store(
                    backend.name + "-new", window_size_ms=size, retention_ms=retention
                )
            else:
                InMemoryWindowStore(size, retention)
    with pytest.raises(bad, match="retention"):
        backend.window(MIN, 2 * HOUR)  # the store exists with another retention
    assert list(backend.window(MIN, HOUR).fetch(b"k" * (65536 - wk.WINDOW_OVERHEAD), 0, 0))


# --- session stores -----------------------------------------------------------------------------
Sessions = dict[tuple[bytes, int, int], bytes]


def check_sessions(ss: SessionStoreImpl, model: Sessions) -> None:
    by_key_end = sorted(model.items(), key=lambda kv: (kv[0][0], kv[0][2], kv[0][1]))
    rows = [(k, s, e, v) for (k, s, e), v in by_key_end]
    assert list(ss.find_sessions_range(None, None, 0, MAX)) == rows
    assert list(ss.backward_find_sessions_range(None, None, 0, MAX)) == rows[::-1]
    ends = sorted({e for _, _, e, _ in rows} | {0, MAX})
    for key in {k for k, _, _, _ in rows} | {b"nope"}:
        mine = [(s, e, v) for k, s, e, v in rows if k == key]
        assert list(ss.fetch(key)) == mine
        for earliest_end in ends:
            for latest_start in ends:
                want = [r for r in mine if r[1] >= earliest_end and r[0] <= latest_start]
                got = list(ss.find_sessions(key, earliest_end, latest_start))
                assert got == want, (key, earliest_end, latest_start)
                assert list(ss.backward_find_sessions(key, earliest_end, latest_start)) == want[
                    ::-1
                ]
    for kf, kt in [(b"a", b"ab"), (b"a\x00", b"a\x01"), (None, b"a"), (b"\xff", None)]:
        want4 = [r for r in rows if (kf is None or r[0] >= kf) and (kt is None or r[0] <= kt)]
        assert list(ss.find_sessions_range(kf, kt, 0, MAX)) == want4
        mid = ends[len(ends) // 2]
        want4 = [r for r in want4 if r[2] >= mid and r[1] <= mid]
        assert list(ss.find_sessions_range(kf, kt, mid, mid)) == want4
    for (k, s, e), v in model.items():
        assert ss.fetch_session(k, s, e) == v


def test_sessions_put_find_remove(backend: Backend) -> None:
    ss = backend.session(HOUR)
    assert isinstance(ss, SessionStore)
    model: Sessions = {}
    for i, key in enumerate(KEYS):
        for s, e in [(0, 10), (20, 30), (25, 30), (40, 100), (100, 100), (5, 1_000)]:
            v = b"%d:%d-%d" % (i, s, e)
            ss.put(key, s, e, v)
            model[key, s, e] = v
    check_sessions(ss, model)
    # the spanning query: earliest_end > latest_start finds sessions covering [50, 60]
    assert list(ss.find_sessions(b"a", 60, 50)) == [(40, 100, b"0:40-100"), (5, 1_000, b"0:5-1000")]
    ss.commit({"in:0": 3})
    ss.remove(b"a", 40, 100)
    del model[b"a", 40, 100]
    ss.put(b"ab", 20, 30, None)  # put None removes too
    del model[b"ab", 20, 30]
    ss.remove(b"a", 1, 2)  # removing an absent session is fine
    ss.put(b"a", 20, 30, b"replaced")
    model[b"a", 20, 30] = b"replaced"
    check_sessions(ss, model)
    assert ss.fetch_session(b"a", 40, 100) is None
    ss.commit({"in:0": 4})
    ss2 = backend.session(HOUR)
    assert ss2.committed_offsets == {"in:0": 4}
    assert ss2.stream_time_ms == 1_000
    check_sessions(ss2, model)


def test_session_retention_by_end(backend: Backend) -> None:
    ss = backend.session(1_000)
    ss.put(b"k", 0, 100, b"old")
    ss.put(b"k", 50, 600, b"mid")
    assert [v for _, _, v in ss.fetch(b"k")] == [b"old", b"mid"]
    ss.put(b"j", 500, 1_100, b"new")  # stream time 1100: ends <= 100 expire now
    assert list(ss.fetch(b"k")) == [(50, 600, b"mid")]
    assert ss.fetch_session(b"k", 0, 100) is None
    assert list(ss.find_sessions(b"k", 0, MAX)) == [(50, 600, b"mid")]
    ss.put(b"k", 0, 100, b"late")  # end <= stream time - retention: dropped
    assert ss.dropped_records == 1
    ss.put(b"k", 0, 101, b"just in time")
    model: Sessions = {(b"k", 50, 600): b"mid", (b"j", 500, 1_100): b"new",
                       (b"k", 0, 101): b"just in time"}
    check_sessions(ss, model)
    ss.commit()
    # sessions are segmented by end, in 60 s segments (retention // 2 is less): segment 0 is
    # partly live, so the expired session stays on disk, hidden
    assert raw_ends(ss) == [100, 101, 600, 1_100]
    ss2 = backend.session(1_000)
    assert ss2.stream_time_ms == 1_100
    check_sessions(ss2, model)
    ss2.put(b"k", 0, 100, b"late again")
    assert ss2.dropped_records == 1
    ss2.put(b"k", 60_500, 61_000, b"next segment")  # bound 60_000: segment 0 expired whole
    ss2.commit()
    assert raw_ends(ss2) == [61_000]
    check_sessions(ss2, {(b"k", 60_500, 61_000): b"next segment"})


def raw_ends(store: SessionStoreImpl) -> list[int]:
    """The session ends physically present in the key-value store, expired or not."""
    return sorted(wk.session_times(k)[1] for k, _ in store.kv.range(wk.DATA_LO, wk.DATA_HI))


def test_session_bad_input(backend: Backend) -> None:
    ss = backend.session(HOUR)
    bad = errors.InvalidArgumentError
    with pytest.raises(bad, match="before its start"):
        ss.put(b"k", 10, 5, b"v")
    with pytest.raises(bad, match="before its start"):
        ss.remove(b"k", 10, 5)
    with pytest.raises(bad, match="negative"):
        ss.put(b"k", -1, 5, b"v")
    with pytest.raises(bad, match="negative"):
        list(ss.find_sessions(b"k", -1, 5))
    with pytest.raises(bad, match="2\\*\\*63"):
        ss.fetch_session(b"k", 0, MAX + 1)
    with pytest.raises(bad, match="inverted key range"):
        ss.find_sessions_range(b"b", b"a", 0, 1)
    with pytest.raises(bad, match="empty"):
        ss.put(b"", 0, 1, b"v")
    assert ss.stream_time_ms == -1
    with pytest.raises(bad, match="retention_ms"):
        if backend.kind == "remote":
            assert backend.client is not None
            backend.client.session_store(backend.name + "-new", retention_ms=0)
        else:
            InMemorySessionStore(0)
    ss.commit()
    with pytest.raises(bad, match="retention"):
        backend.session(2 * HOUR)


# --- the server's side of the store spec --------------------------------------------------------
def test_reconcile_checks_window_and_session_params() -> None:
    bad = server_errors.InvalidArgumentError
    with pytest.raises(bad, match="kv store takes no window_size_ms"):
        reconcile(None, "s", "kv", 1, MIN, 0)
    with pytest.raises(bad, match="kv store takes no"):
        reconcile(None, "s", "kv", 1, 0, HOUR)
    with pytest.raises(bad, match="needs window_size_ms > 0"):
        reconcile(None, "s", "window", 1, 0, HOUR)
    with pytest.raises(bad, match="retention_ms 10 is smaller than window_size_ms 20"):
        reconcile(None, "s", "window", 1, 20, 10)
    with pytest.raises(bad, match="needs retention_ms > 0"):
        reconcile(None, "s", "session", 1, 0, 0)
    with pytest.raises(bad, match="session store takes no window_size_ms"):
        reconcile(None, "s", "session", 1, MIN, HOUR)
    w = reconcile(None, "s", "window", 2, MIN, HOUR)
    assert (w.window_size_ms, w.retention_ms, w.num_partitions) == (MIN, HOUR, 2)
    assert reconcile(w, "s", "window", 0, 0, 0) is w  # a later claim may omit them
    assert reconcile(w, "s", "window", 0, MIN, 0) is w
    with pytest.raises(bad, match="retention"):
        reconcile(w, "s", "window", 0, 0, 2 * HOUR)
    with pytest.raises(bad, match="window store"):
        reconcile(w, "s", "kv", 0, 0, 0)
    sess = reconcile(None, "t", "session", 1, 0, HOUR)
    assert reconcile(sess, "t", "session", 0, 0, 0) is sess


def test_remote_reopen_may_omit_params(server: RunningServer) -> None:
    with connect(f"127.0.0.1:{server.port}") as client:
        ws = client.window_store("omit-w", window_size_ms=MIN, retention_ms=HOUR)
        ws.put(b"k", b"v", 0)
        ws.commit()
        ws2 = client.window_store("omit-w")
        assert (ws2.window_size_ms, ws2.retention_ms) == (MIN, HOUR)
        assert list(ws2.fetch(b"k", 0, 0)) == [(0, b"v")]
        assert ws2.epoch > ws.epoch
        with pytest.raises(errors.InvalidArgumentError, match="kv"):
            client.key_value_store("omit-w")
        with pytest.raises(errors.InvalidArgumentError, match="needs window_size_ms"):
            client.window_store("omit-new")
        ws2.close()

"""A sessionizing worker over a session store, on every backend, against an in-test reference.

The worker merges sessions with an inactivity gap the way Kafka Streams' SessionWindows
aggregation does (KStreamSessionWindowAggregate): for an event at `ts` it finds the key's
sessions with end >= ts - gap and start <= ts + gap, removes them and puts one merged session
with the summed count; an event whose merged session ended before stream time - grace is late
and dropped. The stream is generated (seeded), a few thousand events, out of order within a
bound. The worker commits its input offset with the store, "crashes" twice (closes without
committing) and resumes from the committed offset.
"""

from __future__ import annotations

import random
from collections import defaultdict

import pytest

from tests.windowed_backends import BACKENDS, Backend, backend_fixture, server_fixture
from tierstore import windowkeys as wk
from tierstore.client import SessionStoreImpl

server = pytest.fixture(scope="module")(server_fixture)
backend = pytest.fixture(params=BACKENDS)(backend_fixture)

GAP = 1_000
DISORDER = 2_000  # an event is at most this much older than the newest one before it
GRACE = DISORDER  # so no event is late
OFFSET = "events:0"

Event = tuple[bytes, int]


def generate(seed: int, n: int) -> list[Event]:
    rng = random.Random(seed)
    keys = [b"user-%d" % i for i in range(4)] + [b"\x00odd\x00", b"\xff"]
    base, out = 1_000_000, []
    for _ in range(n):
        base += rng.choice([0, 10, 30, 60, 120, 250, 2_500])  # per key: gaps around GAP
        out.append((rng.choice(keys), base - rng.randint(0, DISORDER)))
    return out


def reference(events: list[Event], retention_ms: int) -> dict[bytes, list[tuple[int, int, int]]]:
    """Sessions per key, straightforwardly: sort each key's times, cut where the gap > GAP;
    keep the sessions not past retention at the final stream time."""
    by_key: dict[bytes, list[int]] = defaultdict(list)
    for k, ts in events:
        by_key[k].append(ts)
    stream_time = max(ts for _, ts in events)
    out: dict[bytes, list[tuple[int, int, int]]] = {}
    for k, times in by_key.items():
        times.sort()
        sessions, start, prev, n = [], times[0], times[0], 1
        for t in times[1:]:
            if t - prev > GAP:
                sessions.append((start, prev, n))
                start, n = t, 0
            prev, n = t, n + 1
        sessions.append((start, prev, n))
        kept = [s for s in sessions if s[1] > stream_time - retention_ms]
        if kept:
            out[k] = sorted(kept, key=lambda s: (s[1], s[0]))
    return out


class Sessionizer:
    """The worker: one event at a time, Kafka Streams' session-merge rule."""

    def __init__(self, store: SessionStoreImpl) -> None:
        self.store = store
        self.observed = store.stream_time_ms  # the processor's stream time
        self.late = 0

    def process(self, key: bytes, ts: int) -> None:
        self.observed = max(self.observed, ts)
        overlapping = list(self.store.find_sessions(key, max(0, ts - GAP), ts + GAP))
        start, end, count = ts, ts, 1
        for s, e, v in overlapping:
            start, end, count = min(start, s), max(end, e), count + int(v)
        if end < self.observed - GRACE:
            self.late += 1
            return
        for s, e, _ in overlapping:
            self.store.remove(key, s, e)
        self.store.put(key, start, end, b"%d" % count)


def run(backend: Backend, events: list[Event], retention_ms: int, commit_every: int) -> Sessionizer:
    crash_at = {1_234, 2_345}
    worker = Sessionizer(backend.session(retention_ms))
    i = 0
    while i < len(events):
        if i in crash_at:
            crash_at.discard(i)
            worker.store.close()  # uncommitted work is lost; resume from the committed offset
            worker = Sessionizer(backend.session(retention_ms))
            i = worker.store.committed_offsets.get(OFFSET, 0)
            assert i < 2_345 and i % commit_every == 0
            continue
        worker.process(*events[i])
        i += 1
        if i % commit_every == 0:
            worker.store.commit({OFFSET: i})
    worker.store.commit({OFFSET: len(events)})
    return worker


@pytest.mark.parametrize("retention_ms", [10**12, 5_000], ids=["keep-all", "short-retention"])
def test_sessionization_matches_reference(backend: Backend, retention_ms: int) -> None:
    assert retention_ms > GAP + DISORDER  # sessions still being merged are never expired
    events = generate(seed=20240611 + retention_ms % 7, n=3_000)
    worker = run(backend, events, retention_ms, commit_every=200)
    if retention_ms == 10**12:  # the stream exercises merging: many sessions, many merged
        sessions = [s for v in reference(events, retention_ms).values() for s in v]
        assert len(sessions) > 200 and sum(1 for s in sessions if s[2] > 3) > 100
    assert worker.late == 0
    assert worker.store.dropped_records == 0
    want = reference(events, retention_ms)
    assert len(want) >= 3

    def read(store: SessionStoreImpl) -> dict[bytes, list[tuple[int, int, int]]]:
        got: dict[bytes, list[tuple[int, int, int]]] = defaultdict(list)
        for k, s, e, v in store.find_sessions_range(None, None, 0, wk.MAX_TIME):
            got[k].append((s, e, int(v)))
        return dict(got)

    assert read(worker.store) == want
    reopened = backend.session(retention_ms)
    assert reopened.committed_offsets == {OFFSET: len(events)}
    assert reopened.stream_time_ms == max(ts for _, ts in events)
    assert read(reopened) == want
    if retention_ms < 10**12:
        # expired sessions were physically removed at commits, not only hidden
        ends = [wk.session_times(k)[1] for k, _ in reopened.kv.range(wk.DATA_LO, wk.DATA_HI)]
        total = sum(len(v) for v in reference(events, 10**12).values())
        assert len(ends) < total / 2

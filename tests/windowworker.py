"""A stream-processing worker over a window store and a session store, and its reference.

The worker counts events per key in tumbling windows and in sessions (merged with an inactivity
gap the way Kafka Streams' SessionWindows do, as in tests/test_sessionization.py), commits both
stores with its input offset every `commit_every` events, and resumes from the committed offsets
after a crash: each store from its own offset (the two commits are not atomic together), so an
event is applied to a store exactly once. The reference computes the same windows and sessions
straight from the event list.
"""

from __future__ import annotations

import random
from collections import defaultdict

from tierstore import windowkeys as wk
from tierstore.client import SessionStoreImpl, WindowStoreImpl

OFFSET = "events:0"
SIZE = 10_000  # tumbling windows of 10 s
GAP = 5_000  # sessions end after 5 s without an event
RETENTION = 120_000  # both stores: 2 min, so segments of 1 min (the minimum)
DISORDER = 2_000  # an event is at most this much older than the newest one before it

Event = tuple[bytes, int]
Windows = dict[tuple[bytes, int], int]
Sessions = dict[bytes, list[tuple[int, int, int]]]


def generate(seed: int, n: int) -> list[Event]:
    """`n` events over ~6 keys (one with 0x00 bytes), ~0.4 s apart on average, out of order by
    up to DISORDER: about half an hour of event time, so about 30 one-minute segments."""
    rng = random.Random(seed)
    keys = [b"user-%d" % i for i in range(5)] + [b"\x00odd\x00"]
    base, out = 1_700_000_000_000, []
    for _ in range(n):
        base += rng.choice([0, 50, 100, 200, 400, 800, 1_500])
        out.append((rng.choice(keys), base - rng.randint(0, DISORDER)))
    return out


def reference_windows(events: list[Event]) -> Windows:
    stream_time = max(ts for _, ts in events)
    counts: Windows = defaultdict(int)
    for k, ts in events:
        counts[k, ts - ts % SIZE] += 1
    return {kt: n for kt, n in counts.items() if kt[1] > stream_time - RETENTION}


def reference_sessions(events: list[Event]) -> Sessions:
    by_key: dict[bytes, list[int]] = defaultdict(list)
    for k, ts in events:
        by_key[k].append(ts)
    stream_time = max(ts for _, ts in events)
    out: Sessions = {}
    for k, times in by_key.items():
        times.sort()
        sessions, start, prev, n = [], times[0], times[0], 1
        for t in times[1:]:
            if t - prev > GAP:
                sessions.append((start, prev, n))
                start, n = t, 0
            prev, n = t, n + 1
        sessions.append((start, prev, n))
        kept = [s for s in sessions if s[1] > stream_time - RETENTION]
        if kept:
            out[k] = sorted(kept, key=lambda s: (s[1], s[0]))
    return out


def read_windows(ws: WindowStoreImpl) -> Windows:
    return {(k, t): int(v) for k, t, v in ws.fetch_all(0, wk.MAX_TIME)}


def read_sessions(ss: SessionStoreImpl) -> Sessions:
    got: Sessions = defaultdict(list)
    for k, s, e, v in ss.find_sessions_range(None, None, 0, wk.MAX_TIME):
        got[k].append((s, e, int(v)))
    return dict(got)


def physical_segments(store: WindowStoreImpl | SessionStoreImpl) -> set[int]:
    """The segments that hold entries on disk (expired or not)."""
    return {wk.segment_of_key(k) for k, _ in store.kv.range(wk.DATA_LO, wk.DATA_HI)}


class Worker:
    """One worker's handles on the two stores, resuming from their committed offsets."""

    def __init__(self, ws: WindowStoreImpl, ss: SessionStoreImpl) -> None:
        self.ws, self.ss = ws, ss
        self.w_off = ws.committed_offsets.get(OFFSET, 0)
        self.s_off = ss.committed_offsets.get(OFFSET, 0)
        self.observed = ss.stream_time_ms
        self.late_sessions = 0

    @property
    def resume_at(self) -> int:
        return min(self.w_off, self.s_off)

    def process(self, i: int, key: bytes, ts: int) -> None:
        if i >= self.w_off:
            start = ts - ts % SIZE
            old = self.ws.fetch_window(key, start)
            self.ws.put(key, b"%d" % (int(old or b"0") + 1), start)
        if i >= self.s_off:
            self._session(key, ts)

    def _session(self, key: bytes, ts: int) -> None:
        self.observed = max(self.observed, ts)
        found = list(self.ss.find_sessions(key, max(0, ts - GAP), ts + GAP))
        start, end, count = ts, ts, 1
        for s, e, v in found:
            start, end, count = min(start, s), max(end, e), count + int(v)
        if end < self.observed - DISORDER:
            self.late_sessions += 1
            return
        for s, e, _ in found:
            self.ss.remove(key, s, e)
        self.ss.put(key, start, end, b"%d" % count)

    def commit(self, next_index: int) -> None:
        self.ws.commit({OFFSET: next_index})
        self.w_off = next_index
        self.ss.commit({OFFSET: next_index})
        self.s_off = next_index

    def run(self, events: list[Event], stop: int, commit_every: int) -> int:
        """Process events from `resume_at` up to `stop`, committing every `commit_every`;
        returns the index reached (the events after the last commit are uncommitted)."""
        i = self.resume_at
        while i < stop:
            self.process(i, *events[i])
            i += 1
            if i % commit_every == 0:
                self.commit(i)
        return i

"""Interactive queries on window and session stores: `client.window_reader(store)` and
`client.session_reader(store)`.

They read committed state across all partitions, like `client.reader` for key-value stores,
with the same options (`ReadOptions`: allow_stale, min_offsets, wait_s). A single-key query is
routed to the key's partition with Kafka's default partitioner over the USER key (murmur2, as
the producer that fed the worker partitioned it); key-range and all-key queries scatter over
every partition and merge the streams in (key, time) order.

Keys are decoded (tierstore.windowkeys) and retention is applied as the owner applies it: each
partition's committed stream time (windowkeys.STREAM_TIME_KEY, written by the same commit as
the data) hides the windows and sessions it has expired (time <= stream_time - retention,
window start for windows, session end for sessions), even while their segment is still on
disk. A partition never committed to has no stream time and shows nothing. Each query reads
the stream time of the partitions it touches once, then scans only their live segments, so a
result reflects each partition's committed state as of that query (not one snapshot across
partitions: commits may land between the scans).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator

from tierstore import windowkeys as wk
from tierstore.client.errors import InvalidArgumentError
from tierstore.client.queries import SessionQueries, WindowQueries
from tierstore.client.reader import StoreReader
from tierstore.client.retention import check_key_range, check_time, check_times, check_user_key

Raw = Iterator[tuple[bytes, bytes]]


class _TimedReader(StoreReader):
    """Stream time per partition and the merge of per-segment scans."""

    def stream_time_ms(self, partition: int) -> int:
        """The partition's committed stream time (-1 if nothing was ever committed)."""
        raw = self._get(partition, [wk.STREAM_TIME_KEY])[0]
        return -1 if raw is None else wk.decode_time(raw)

    @property
    def segment_interval_ms(self) -> int:
        return wk.segment_interval_ms(self.retention_ms)

    def _live(self, partition: int, time_from_ms: int, time_to_ms: int) -> tuple[range, int, int]:
        """The partition's segments that can hold live entries in [from, to], and the bounds
        clamped to what is live: after the expired times, up to the stream time."""
        st = self.stream_time_ms(partition)
        lo = max(time_from_ms, st - self.retention_ms + 1)
        hi = min(time_to_ms, st)
        return wk.live_segments(lo, hi, self.segment_interval_ms), lo, hi

    @staticmethod
    def _merge(scans: list[Raw], reverse: bool) -> Raw:
        """Scans of segments (of any partitions) merged into (key, time) order: the order of
        the bytes after the segment prefix (tierstore.windowkeys)."""
        if len(scans) == 1:
            return scans[0]
        n = wk.SEGMENT_PREFIX_LEN
        return heapq.merge(*scans, key=lambda kv: kv[0][n:], reverse=reverse)


class WindowReader(WindowQueries, _TimedReader):
    """Committed windows of a window store, across partitions (see the module docstring)."""

    kind = "window"

    def fetch_window(self, key: bytes, window_start_ms: int) -> bytes | None:
        """The value of window (key, start), or None (absent or expired)."""
        check_user_key(key, wk.WINDOW_OVERHEAD)
        t = check_time(window_start_ms, "window_start_ms")
        p = self.partition_for(key)
        if t <= self.stream_time_ms(p) - self.retention_ms:
            return None
        return self._get(p, [wk.window_key(key, t, self.segment_interval_ms)])[0]

    def _fetch(
        self, key: bytes, time_from_ms: int, time_to_ms: int, reverse: bool
    ) -> Iterator[tuple[int, bytes]]:
        check_user_key(key, wk.WINDOW_OVERHEAD)
        t0, t1 = check_times(time_from_ms, time_to_ms)
        return self._fetch_one(key, t0, t1, reverse)

    def _fetch_one(self, key: bytes, t0: int, t1: int, reverse: bool
                   ) -> Iterator[tuple[int, bytes]]:
        p = self.partition_for(key)
        segs, lo, hi = self._live(p, t0, t1)
        interval = self.segment_interval_ms
        for seg in (reversed(segs) if reverse else segs):
            first, last = wk.segment_span(seg, interval)
            a, b = wk.window_range(key, seg, max(lo, first), min(hi, last))
            for k, v in self._scan(p, a, b, None, reverse):
                yield wk.window_time(k), v

    def _fetch_keys(
        self, key_from: bytes | None, key_to: bytes | None, time_from_ms: int, time_to_ms: int,
        reverse: bool,
    ) -> Iterator[tuple[bytes, int, bytes]]:
        check_key_range(key_from, key_to, wk.WINDOW_OVERHEAD)
        t0, t1 = check_times(time_from_ms, time_to_ms)
        return self._fetch_keys_gen(key_from, key_to, t0, t1, reverse)

    def _fetch_keys_gen(
        self, key_from: bytes | None, key_to: bytes | None, t0: int, t1: int, reverse: bool
    ) -> Iterator[tuple[bytes, int, bytes]]:
        interval = self.segment_interval_ms
        ranges: list[tuple[int, bytes, bytes, int, int]] = []
        for p in range(self.num_partitions):
            segs, lo, hi = self._live(p, t0, t1)
            for seg in (reversed(segs) if reverse else segs):
                first, last = wk.segment_span(seg, interval)
                a, b = wk.window_key_range(key_from, key_to, seg, max(lo, first),
                                           min(hi, last))
                ranges.append((p, a, b, lo, hi))
        raws = self._merge_scans([(p, a, b) for p, a, b, _, _ in ranges], None, reverse)
        scans = [self._in_times(raw, lo, hi)
                 for raw, (_, _, _, lo, hi) in zip(raws, ranges, strict=True)]
        for k, v in self._merge(scans, reverse):
            key, t = wk.decode_window_key(k)
            yield key, t, v

    @staticmethod
    def _in_times(it: Raw, lo: int, hi: int) -> Raw:
        """Keys strictly inside a key range come with all their times: keep [lo, hi]."""
        return ((k, v) for k, v in it if lo <= wk.window_time(k) <= hi)


class SessionReader(SessionQueries, _TimedReader):
    """Committed sessions of a session store, across partitions (see the module docstring)."""

    kind = "session"

    def fetch_session(self, key: bytes, start_ms: int, end_ms: int) -> bytes | None:
        """The value of session [start, end] of `key`, or None (absent or expired)."""
        check_user_key(key, wk.SESSION_OVERHEAD)
        s, e = check_time(start_ms, "session start_ms"), check_time(end_ms, "session end_ms")
        if e < s:
            raise InvalidArgumentError(f"session end_ms {e} is before its start_ms {s}")
        p = self.partition_for(key)
        if e <= self.stream_time_ms(p) - self.retention_ms:
            return None
        return self._get(p, [wk.session_key(key, s, e, self.segment_interval_ms)])[0]

    def _find(
        self, key: bytes, earliest_end: int, latest_start: int, reverse: bool
    ) -> Iterator[tuple[int, int, bytes]]:
        check_user_key(key, wk.SESSION_OVERHEAD)
        e0 = check_time(earliest_end, "earliest_session_end_ms")
        s1 = check_time(latest_start, "latest_session_start_ms")
        return self._find_one(key, e0, s1, reverse)

    def _find_one(self, key: bytes, e0: int, s1: int, reverse: bool
                  ) -> Iterator[tuple[int, int, bytes]]:
        p = self.partition_for(key)
        segs, lo, _ = self._live(p, e0, wk.MAX_TIME)
        for seg in (reversed(segs) if reverse else segs):
            first = wk.segment_span(seg, self.segment_interval_ms)[0]
            a, b = wk.session_find_range(key, seg, max(lo, first))
            for k, v in self._scan(p, a, b, None, reverse):
                s, e = wk.session_times(k)
                if s <= s1:
                    yield s, e, v

    def _find_keys(
        self, key_from: bytes | None, key_to: bytes | None, earliest_end: int,
        latest_start: int, reverse: bool,
    ) -> Iterator[tuple[bytes, int, int, bytes]]:
        check_key_range(key_from, key_to, wk.SESSION_OVERHEAD)
        e0 = check_time(earliest_end, "earliest_session_end_ms")
        s1 = check_time(latest_start, "latest_session_start_ms")
        return self._find_keys_gen(key_from, key_to, e0, s1, reverse)

    def _find_keys_gen(
        self, key_from: bytes | None, key_to: bytes | None, e0: int, s1: int, reverse: bool
    ) -> Iterator[tuple[bytes, int, int, bytes]]:
        ranges: list[tuple[int, bytes, bytes, int]] = []
        for p in range(self.num_partitions):
            segs, lo, _ = self._live(p, e0, wk.MAX_TIME)
            for seg in (reversed(segs) if reverse else segs):
                first = wk.segment_span(seg, self.segment_interval_ms)[0]
                a, b = wk.session_key_range(key_from, key_to, seg, max(lo, first))
                ranges.append((p, a, b, lo))
        raws = self._merge_scans([(p, a, b) for p, a, b, _ in ranges], None, reverse)
        scans = [self._matching(raw, lo, s1)
                 for raw, (_, _, _, lo) in zip(raws, ranges, strict=True)]
        for k, v in self._merge(scans, reverse):
            key, s, e = wk.decode_session_key(k)
            yield key, s, e, v

    @staticmethod
    def _matching(it: Raw, earliest_end: int, latest_start: int) -> Raw:
        for k, v in it:
            s, e = wk.session_times(k)
            if e >= earliest_end and s <= latest_start:
                yield k, v

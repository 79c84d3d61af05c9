"""Window and session stores over any key-value store with a write-back buffer.

A window or session store shard is a key-value shard whose keys are encoded by
`tierstore.windowkeys`; these classes hold a `BufferedKeyValueStore` (remote, local or in-memory)
and translate, so everything the key-value layer guarantees carries over unchanged: writes are
visible to this handle at once and durable only at `commit`, together with the input offsets
and the store's stream time, all or nothing. Stream time and retention: see
`tierstore.client.retention`.

Windows need not be aligned to the window size: any non-negative start is accepted, so hopping
windows work (aligning is the processor's business, as in Kafka Streams).

Keys: the *encoded* key must fit the 64 KiB key limit. Encoding adds 19 bytes (window) or 27
(session) and doubles each 0x00 byte, so a key without 0x00 bytes may be up to 65517 / 65509
bytes, and any key of up to 32754 bytes fits; a longer one is refused with InvalidArgumentError
naming both sizes.

Reads visit only the live segments overlapping the query (see `tierstore.client.retention`):
one exact key range per segment for a single key (`fetch`, `find_sessions`), concatenated in
segment order, which for one key is time order; and one range per segment for key ranges
(`fetch_range`, `fetch_all`, `find_sessions_range`), merged with heapq into (key, time) order.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from tierstore import windowkeys as wk
from tierstore.client.buffered import BufferedKeyValueStore
from tierstore.client.errors import InvalidArgumentError
from tierstore.client.local import LocalKeyValueStore
from tierstore.client.memory import InMemoryKeyValueStore
from tierstore.client.queries import SessionQueries, WindowQueries
from tierstore.client.retention import (
    TimedStore,
    check_key_range,
    check_session_params,
    check_time,
    check_times,
    check_user_key,
    check_value,
    check_window_params,
)


class WindowStoreImpl(WindowQueries, TimedStore):
    """A window store: values per (key, window start), retained by stream time."""

    _overhead = wk.WINDOW_OVERHEAD

    def __init__(
        self, kv: BufferedKeyValueStore, window_size_ms: int, retention_ms: int
    ) -> None:
        check_window_params(window_size_ms, retention_ms)
        self.window_size_ms = window_size_ms
        spec = {"type": "window", "window_size_ms": window_size_ms, "retention_ms": retention_ms}
        super().__init__(kv, spec, retention_ms)

    def _key(self, key: bytes, t: int) -> bytes:
        return wk.window_key(key, t, self.segment_interval_ms)

    def put(self, key: bytes, value: bytes | None, window_start_ms: int) -> None:
        """Put the value of window (key, start); None deletes it. A put into an expired window
        is dropped and counted in `dropped_records`."""
        check_user_key(key, self._overhead)
        t = check_time(window_start_ms, "window_start_ms")
        check_value(value)
        if value is None:
            self._kv.put(self._key(key, t), None)
            return
        if t <= max(self._stream_time, t) - self.retention_ms:
            self.dropped_records += 1
            return
        self._kv.put(self._key(key, t), value)
        self._advance(t)

    def fetch_window(self, key: bytes, window_start_ms: int) -> bytes | None:
        """The value of window (key, start), or None (absent or expired)."""
        check_user_key(key, self._overhead)
        t = check_time(window_start_ms, "window_start_ms")
        if t <= self._expired_through():
            return None
        return self._kv.get(self._key(key, t))

    def _fetch(
        self, key: bytes, time_from_ms: int, time_to_ms: int, reverse: bool
    ) -> Iterator[tuple[int, bytes]]:
        check_user_key(key, self._overhead)
        segs, lo_t, hi_t = self._segments(*check_times(time_from_ms, time_to_ms))
        return ((wk.window_time(k), v) for k, v in self._per_segment(key, segs, lo_t, hi_t,
                                                                      reverse))

    def _per_segment(
        self, key: bytes, segs: range, lo_t: int, hi_t: int, reverse: bool
    ) -> Iterator[tuple[bytes, bytes]]:
        """One key's windows, segment after segment: for one key that is time order."""
        for seg in (reversed(segs) if reverse else segs):
            first, last = wk.segment_span(seg, self.segment_interval_ms)
            lo, hi = wk.window_range(key, seg, max(lo_t, first), min(hi_t, last))
            yield from self._scan(lo, hi, reverse)

    def _fetch_keys(
        self, key_from: bytes | None, key_to: bytes | None, time_from_ms: int, time_to_ms: int,
        reverse: bool,
    ) -> Iterator[tuple[bytes, int, bytes]]:
        check_key_range(key_from, key_to, self._overhead)
        segs, lo_t, hi_t = self._segments(*check_times(time_from_ms, time_to_ms))
        if not segs:
            return iter(())
        scans = []
        for seg in segs:
            first, last = wk.segment_span(seg, self.segment_interval_ms)
            lo, hi = wk.window_key_range(key_from, key_to, seg, max(lo_t, first),
                                         min(hi_t, last))
            scans.append(self._scan(lo, hi, reverse))
        return self._filter(self._merge(scans, reverse), lo_t, hi_t)

    @staticmethod
    def _filter(
        it: Iterator[tuple[bytes, bytes]], lo_t: int, hi_t: int
    ) -> Iterator[tuple[bytes, int, bytes]]:
        for k, v in it:
            if lo_t <= wk.window_time(k) <= hi_t:
                key, t = wk.decode_window_key(k)
                yield key, t, v

    def __enter__(self) -> WindowStoreImpl:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SessionStoreImpl(SessionQueries, TimedStore):
    """A session store: values per (key, session start, session end), retained by stream time
    measured on session ends."""

    _overhead = wk.SESSION_OVERHEAD

    def __init__(self, kv: BufferedKeyValueStore, retention_ms: int) -> None:
        check_session_params(retention_ms)
        spec = {"type": "session", "retention_ms": retention_ms}
        super().__init__(kv, spec, retention_ms)

    def _key(self, key: bytes, s: int, e: int) -> bytes:
        return wk.session_key(key, s, e, self.segment_interval_ms)

    def _session(self, key: bytes, start_ms: int, end_ms: int) -> tuple[int, int]:
        check_user_key(key, self._overhead)
        s, e = check_time(start_ms, "session start_ms"), check_time(end_ms, "session end_ms")
        if e < s:
            raise InvalidArgumentError(f"session end_ms {e} is before its start_ms {s}")
        return s, e

    def put(self, key: bytes, start_ms: int, end_ms: int, value: bytes | None) -> None:
        """Put session [start, end] of `key`; None removes it. A put of a session whose end is
        expired is dropped and counted in `dropped_records`."""
        s, e = self._session(key, start_ms, end_ms)
        check_value(value)
        if value is None:
            self._kv.put(self._key(key, s, e), None)
            return
        if e <= max(self._stream_time, e) - self.retention_ms:
            self.dropped_records += 1
            return
        self._kv.put(self._key(key, s, e), value)
        self._advance(e)

    def remove(self, key: bytes, start_ms: int, end_ms: int) -> None:
        """Remove session [start, end] of `key` (nothing happens if there is none)."""
        s, e = self._session(key, start_ms, end_ms)
        self._kv.put(self._key(key, s, e), None)

    def fetch_session(self, key: bytes, start_ms: int, end_ms: int) -> bytes | None:
        """The value of session [start, end] of `key`, or None (absent or expired)."""
        s, e = self._session(key, start_ms, end_ms)
        if e <= self._expired_through():
            return None
        return self._kv.get(self._key(key, s, e))

    def _find(
        self, key: bytes, earliest_end: int, latest_start: int, reverse: bool
    ) -> Iterator[tuple[int, int, bytes]]:
        check_user_key(key, self._overhead)
        e0 = check_time(earliest_end, "earliest_session_end_ms")
        s1 = check_time(latest_start, "latest_session_start_ms")
        segs, e0, _ = self._segments(e0, wk.MAX_TIME)
        return self._filter_one(self._per_segment(key, segs, e0, reverse), s1)

    def _per_segment(
        self, key: bytes, segs: range, e0: int, reverse: bool
    ) -> Iterator[tuple[bytes, bytes]]:
        """One key's sessions, segment after segment (by end): (end, start) order."""
        for seg in (reversed(segs) if reverse else segs):
            first = wk.segment_span(seg, self.segment_interval_ms)[0]
            lo, hi = wk.session_find_range(key, seg, max(e0, first))
            yield from self._scan(lo, hi, reverse)

    @staticmethod
    def _filter_one(
        it: Iterator[tuple[bytes, bytes]], latest_start: int
    ) -> Iterator[tuple[int, int, bytes]]:
        for k, v in it:
            s, e = wk.session_times(k)
            if s <= latest_start:
                yield s, e, v

    def _find_keys(
        self, key_from: bytes | None, key_to: bytes | None, earliest_end: int,
        latest_start: int, reverse: bool,
    ) -> Iterator[tuple[bytes, int, int, bytes]]:
        check_key_range(key_from, key_to, self._overhead)
        e0 = check_time(earliest_end, "earliest_session_end_ms")
        s1 = check_time(latest_start, "latest_session_start_ms")
        segs, e0, _ = self._segments(e0, wk.MAX_TIME)
        if not segs:
            return iter(())
        scans = []
        for seg in segs:
            first = wk.segment_span(seg, self.segment_interval_ms)[0]
            lo, hi = wk.session_key_range(key_from, key_to, seg, max(e0, first))
            scans.append(self._scan(lo, hi, reverse))
        return self._filter_keys(self._merge(scans, reverse), e0, s1)

    @staticmethod
    def _filter_keys(
        it: Iterator[tuple[bytes, bytes]], earliest_end: int, latest_start: int
    ) -> Iterator[tuple[bytes, int, int, bytes]]:
        for k, v in it:
            s, e = wk.session_times(k)
            if e >= earliest_end and s <= latest_start:
                key, _, _ = wk.decode_session_key(k)
                yield key, s, e, v

    def __enter__(self) -> SessionStoreImpl:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- local and in-memory constructors -----------------------------------------------------------
class InMemoryWindowStore(WindowStoreImpl):
    """A window store in process memory (nothing durable beyond the process)."""

    def __init__(
        self, window_size_ms: int, retention_ms: int, *, kv: InMemoryKeyValueStore | None = None
    ) -> None:
        self._mem = kv or InMemoryKeyValueStore()
        super().__init__(self._mem, window_size_ms, retention_ms)

    def reopen(self) -> InMemoryWindowStore:
        """A new handle on the same committed state, as after a worker restart: this handle's
        uncommitted writes and stream time are not carried over."""
        return InMemoryWindowStore(self.window_size_ms, self.retention_ms, kv=self._mem.reopen())


class InMemorySessionStore(SessionStoreImpl):
    """A session store in process memory (nothing durable beyond the process)."""

    def __init__(self, retention_ms: int, *, kv: InMemoryKeyValueStore | None = None) -> None:
        self._mem = kv or InMemoryKeyValueStore()
        super().__init__(self._mem, retention_ms)

    def reopen(self) -> InMemorySessionStore:
        """A new handle on the same committed state (see InMemoryWindowStore.reopen)."""
        return InMemorySessionStore(self.retention_ms, kv=self._mem.reopen())


class LocalWindowStore(WindowStoreImpl):
    """A window store in the directory `path` (in-process RocksDB, the embedded default)."""

    def __init__(self, path: str | Path, window_size_ms: int, retention_ms: int) -> None:
        check_window_params(window_size_ms, retention_ms)
        kv = LocalKeyValueStore(path)
        try:
            super().__init__(kv, window_size_ms, retention_ms)
        except BaseException:
            kv.close()
            raise


class LocalSessionStore(SessionStoreImpl):
    """A session store in the directory `path` (in-process RocksDB, the embedded default)."""

    def __init__(self, path: str | Path, retention_ms: int) -> None:
        check_session_params(retention_ms)
        kv = LocalKeyValueStore(path)
        try:
            super().__init__(kv, retention_ms)
        except BaseException:
            kv.close()
            raise

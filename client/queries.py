"""The public queries of window and session stores, shared by the owner's store
(tierstore.client.windowed) and the interactive-query readers (tierstore.client.readers).

Each is one call of two primitives that the class mixing these in defines: `_fetch` / `_find`
for one key, `_fetch_keys` / `_find_keys` for a key range, both with a `reverse` flag. The owner
sees its own uncommitted writes and every retained window or session; a reader sees committed
state with each partition's retention applied (see those modules).
"""

from __future__ import annotations

from collections.abc import Iterator

from tierstore import windowkeys as wk


class WindowQueries:
    def _fetch(
        self, key: bytes, time_from_ms: int, time_to_ms: int, reverse: bool
    ) -> Iterator[tuple[int, bytes]]:
        raise NotImplementedError

    def _fetch_keys(
        self, key_from: bytes | None, key_to: bytes | None, time_from_ms: int, time_to_ms: int,
        reverse: bool,
    ) -> Iterator[tuple[bytes, int, bytes]]:
        raise NotImplementedError

    def fetch(self, key: bytes, time_from_ms: int, time_to_ms: int) -> Iterator[tuple[int, bytes]]:
        """(window_start_ms, value) of `key`'s windows starting in [from, to], in time order."""
        return self._fetch(key, time_from_ms, time_to_ms, False)

    def backward_fetch(
        self, key: bytes, time_from_ms: int, time_to_ms: int
    ) -> Iterator[tuple[int, bytes]]:
        """`fetch` in reverse time order."""
        return self._fetch(key, time_from_ms, time_to_ms, True)

    def fetch_range(
        self, key_from: bytes | None, key_to: bytes | None, time_from_ms: int, time_to_ms: int
    ) -> Iterator[tuple[bytes, int, bytes]]:
        """(key, window_start_ms, value) of keys in [key_from, key_to] (None: unbounded) and
        starts in [from, to], in (key, start) order (across partitions, for a reader)."""
        return self._fetch_keys(key_from, key_to, time_from_ms, time_to_ms, False)

    def backward_fetch_range(
        self, key_from: bytes | None, key_to: bytes | None, time_from_ms: int, time_to_ms: int
    ) -> Iterator[tuple[bytes, int, bytes]]:
        return self._fetch_keys(key_from, key_to, time_from_ms, time_to_ms, True)

    def fetch_all(self, time_from_ms: int, time_to_ms: int) -> Iterator[tuple[bytes, int, bytes]]:
        """(key, window_start_ms, value) of every window starting in [from, to], in (key, start)
        order. This reads the live segments overlapping [from, to] whole and filters by time."""
        return self._fetch_keys(None, None, time_from_ms, time_to_ms, False)

    def backward_fetch_all(
        self, time_from_ms: int, time_to_ms: int
    ) -> Iterator[tuple[bytes, int, bytes]]:
        return self._fetch_keys(None, None, time_from_ms, time_to_ms, True)

    def all(self) -> Iterator[tuple[bytes, int, bytes]]:
        """Every window (retained; for a reader, live), in (key, start) order."""
        return self._fetch_keys(None, None, 0, wk.MAX_TIME, False)


class SessionQueries:
    def _find(
        self, key: bytes, earliest_end: int, latest_start: int, reverse: bool
    ) -> Iterator[tuple[int, int, bytes]]:
        raise NotImplementedError

    def _find_keys(
        self, key_from: bytes | None, key_to: bytes | None, earliest_end: int,
        latest_start: int, reverse: bool,
    ) -> Iterator[tuple[bytes, int, int, bytes]]:
        raise NotImplementedError

    def find_sessions(
        self, key: bytes, earliest_session_end_ms: int, latest_session_start_ms: int
    ) -> Iterator[tuple[int, int, bytes]]:
        """(start_ms, end_ms, value) of `key`'s sessions with end >= earliest_session_end_ms and
        start <= latest_session_start_ms, ordered by (end, start). earliest_end may exceed
        latest_start: that finds the sessions spanning [latest_start, earliest_end]."""
        return self._find(key, earliest_session_end_ms, latest_session_start_ms, False)

    def backward_find_sessions(
        self, key: bytes, earliest_session_end_ms: int, latest_session_start_ms: int
    ) -> Iterator[tuple[int, int, bytes]]:
        return self._find(key, earliest_session_end_ms, latest_session_start_ms, True)

    def fetch(self, key: bytes) -> Iterator[tuple[int, int, bytes]]:
        """Every session of `key` (retained; for a reader, live), ordered by (end, start)."""
        return self._find(key, 0, wk.MAX_TIME, False)

    def find_sessions_range(
        self, key_from: bytes | None, key_to: bytes | None, earliest_session_end_ms: int,
        latest_session_start_ms: int,
    ) -> Iterator[tuple[bytes, int, int, bytes]]:
        """(key, start_ms, end_ms, value) of the sessions of keys in [key_from, key_to] (None:
        unbounded) matching as in `find_sessions`, ordered by (key, end, start)."""
        return self._find_keys(
            key_from, key_to, earliest_session_end_ms, latest_session_start_ms, False
        )

    def backward_find_sessions_range(
        self, key_from: bytes | None, key_to: bytes | None, earliest_session_end_ms: int,
        latest_session_start_ms: int,
    ) -> Iterator[tuple[bytes, int, int, bytes]]:
        return self._find_keys(
            key_from, key_to, earliest_session_end_ms, latest_session_start_ms, True
        )

    def all(self) -> Iterator[tuple[bytes, int, int, bytes]]:
        """Every session (retained; for a reader, live), ordered by (key, end, start)."""
        return self._find_keys(None, None, 0, wk.MAX_TIME, False)

"""Stream time, retention and input validation shared by window and session stores.

A window or session store (client/windowed.py) holds a `BufferedKeyValueStore` and encodes its
keys with `tierstore.windowkeys`. `TimedStore` is what both have in common: the stream time,
the retention rule, the purge of expired entries at commit, and the delegation of `commit`,
`close`, `epoch` and `committed_offsets` to the key-value store.

Retention (the same rule as Kafka Streams' segmented stores)
-----------------------------------------------------------
Stream time is the largest timestamp the store has been given: the largest window start put
into a window store, the largest session end put into a session store (deletes and removes do
not move it). It never reads the wall clock. An entry with time `t` (window start, or session
end) is *expired* once ``t <= stream_time - retention_ms``; Kafka Streams hides records with
``t < observedStreamTime - retentionPeriod + 1``, which is the same bound.

- Expired entries are invisible to every read of this handle as soon as stream time passes them.
  Others see committed state only, so for them expiry takes effect with the commit that
  persists that stream time (`client.window_reader` / `client.session_reader` hide what each
  partition's committed stream time has expired: tierstore.client.readers).
- A put into an expired window or session is dropped and counted in `dropped_records` (a count
  for this handle since it was opened), like Kafka Streams' late records; it is not an error.
  Kafka drops late puts per segment; here the drop bound is exactly the read bound, so a put is
  either visible or dropped, never stored but hidden.
- Stream time is stored under a metadata key (`windowkeys.STREAM_TIME_KEY`) written in the same
  commit as the data, so it survives reopen, restore and failover together with the entries.
- Physical removal is by whole segments (``segment_interval_ms``, derived from the retention by
  `tierstore.windowkeys.segment_interval_ms`: ``max(retention_ms // 2, 60_000)`` as in Kafka
  Streams). Keys are segment-first, so a segment is one contiguous key range: when stream time
  has expired one or more whole segments since the last drop, the commit carries ONE range
  delete covering them (`BufferedKeyValueStore.delete_range`), atomic with the commit. No scan
  is involved. An entry in a segment that is only partly expired stays on disk, hidden, until
  its whole segment expires (at most one segment interval later), as in Kafka Streams.
- Range deletes are not written to the changelog (Kafka cannot express them): the server's
  restore re-derives them from the stream time, which is (server/segments.py,
  docs/protocol.md).
- Reads iterate only the live segments overlapping the query: segments expired by stream time
  are skipped, and no entry is newer than stream time, so a query touches at most
  ``retention / segment_interval + 2`` segments (3 with the default rule), whatever the
  history. Results across segments are merged back into (key, time) order.
"""

from __future__ import annotations

import heapq
import json
from collections.abc import Iterator
from typing import Any

from tierstore import windowkeys as wk
from tierstore.client.buffered import MAX_KEY_BYTES, BufferedKeyValueStore, check_key
from tierstore.client.errors import InvalidArgumentError


def check_time(t: int, what: str) -> int:
    try:
        return wk.check_time(t, what)
    except ValueError as exc:
        raise InvalidArgumentError(str(exc)) from None


def check_times(time_from_ms: int, time_to_ms: int) -> tuple[int, int]:
    lo, hi = check_time(time_from_ms, "time_from_ms"), check_time(time_to_ms, "time_to_ms")
    if lo > hi:
        raise InvalidArgumentError(
            f"inverted time range: time_from_ms {lo} is after time_to_ms {hi}"
        )
    return lo, hi


def check_user_key(key: bytes, overhead: int, what: str = "key") -> None:
    check_key(key, what)
    n = len(key) + key.count(0) + overhead
    if n > MAX_KEY_BYTES:
        raise InvalidArgumentError(
            f"{what} of {len(key)} bytes encodes to {n} bytes (each 0x00 byte takes two, plus "
            f"{overhead} bytes of framing and time), over the {MAX_KEY_BYTES}-byte key limit"
        )


def check_key_range(key_from: bytes | None, key_to: bytes | None, overhead: int) -> None:
    for k, what in ((key_from, "key_from"), (key_to, "key_to")):
        if k is not None:
            check_user_key(k, overhead, what)
    if key_from is not None and key_to is not None and key_from > key_to:
        raise InvalidArgumentError(
            f"inverted key range: key_from {key_from[:32]!r} is after key_to {key_to[:32]!r}"
        )


def check_value(value: bytes | None) -> None:
    if value is not None and not isinstance(value, bytes):
        raise InvalidArgumentError(f"value must be bytes or None, got {type(value).__name__}")


def check_window_params(window_size_ms: int, retention_ms: int) -> None:
    """Raise InvalidArgumentError unless 0 < window_size_ms <= retention_ms <= 2**63 - 1."""
    check_time(window_size_ms, "window_size_ms")
    check_time(retention_ms, "retention_ms")
    if window_size_ms <= 0:
        raise InvalidArgumentError(f"window_size_ms must be > 0, got {window_size_ms}")
    if retention_ms < window_size_ms:
        raise InvalidArgumentError(
            f"retention_ms {retention_ms} is smaller than window_size_ms {window_size_ms}: a "
            "window must be retained for at least its own size"
        )


def check_session_params(retention_ms: int) -> None:
    """Raise InvalidArgumentError unless 0 < retention_ms <= 2**63 - 1."""
    check_time(retention_ms, "retention_ms")
    if retention_ms <= 0:
        raise InvalidArgumentError(f"retention_ms must be > 0, got {retention_ms}")


def _describe(spec: dict[str, Any]) -> str:
    return f"a {spec.get('type')} store with " + ", ".join(
        f"{k} {v}" for k, v in sorted(spec.items()) if k != "type"
    )


class TimedStore:
    """What window and session stores share: stream time, retention, segments, purge, commit."""

    _overhead = 0

    def __init__(self, kv: BufferedKeyValueStore, spec: dict[str, Any], retention_ms: int) -> None:
        self._kv = kv
        self.retention_ms = retention_ms
        self.segment_interval_ms = wk.segment_interval_ms(retention_ms)
        self.dropped_records = 0
        st, stored_spec = kv.get_many([wk.STREAM_TIME_KEY, wk.SPEC_KEY])
        if stored_spec is None:
            kv.put(wk.SPEC_KEY, json.dumps(spec, sort_keys=True).encode())
        else:
            old = json.loads(stored_spec)
            if old != spec:
                raise InvalidArgumentError(
                    f"this store was created as {_describe(old)}, not {_describe(spec)}"
                )
        self._stream_time = -1 if st is None else wk.decode_time(st)
        self._committed_stream_time = self._stream_time
        # Every segment below this one was dropped by the commit that expired it.
        self._dropped_below = self._first_live()

    # --- shared surface -------------------------------------------------------------------
    @property
    def kv(self) -> BufferedKeyValueStore:
        """The key-value store holding the encoded entries."""
        return self._kv

    @property
    def epoch(self) -> int:
        """The claim's epoch (remote stores); 0 for local and in-memory stores."""
        return int(getattr(self._kv, "epoch", 0))

    @property
    def committed_offsets(self) -> dict[str, int]:
        return self._kv.committed_offsets

    @property
    def stream_time_ms(self) -> int:
        """The largest timestamp this store has been given (-1 before the first put)."""
        return self._stream_time

    def _expired_through(self) -> int:
        """Entries with time <= this are expired (negative: nothing is)."""
        return self._stream_time - self.retention_ms

    def _first_live(self) -> int:
        return wk.first_live_segment(self._stream_time, self.retention_ms,
                                     self.segment_interval_ms)

    def _advance(self, t: int) -> None:
        if t > self._stream_time:
            self._stream_time = t

    def _segments(self, time_from_ms: int, time_to_ms: int) -> tuple[range, int, int]:
        """The segments that can hold live entries with time in [from, to], and the time bounds
        clamped to what is live (empty when nothing is): not expired, not beyond stream time."""
        lo = max(time_from_ms, self._expired_through() + 1)
        hi = min(time_to_ms, self._stream_time)
        return wk.live_segments(lo, hi, self.segment_interval_ms), lo, hi

    def _merge(
        self, scans: list[Iterator[tuple[bytes, bytes]]], reverse: bool
    ) -> Iterator[tuple[bytes, bytes]]:
        """Scans of several segments, merged into the order of the bytes after the segment
        prefix, which is (key, time) order (tierstore.windowkeys)."""
        if len(scans) == 1:
            return scans[0]
        if reverse:
            scans = scans[::-1]
        n = wk.SEGMENT_PREFIX_LEN
        return heapq.merge(*scans, key=lambda kv: kv[0][n:], reverse=reverse)

    def _purge(self) -> int | None:
        """Stage ONE range delete of every segment expired since the last drop; return the new
        first live segment, or None if no segment expired."""
        new = self._first_live()
        if new <= self._dropped_below:
            return None
        self._kv.delete_range(wk.segment_prefix(self._dropped_below), wk.segment_prefix(new))
        return new

    def commit(self, offsets: dict[str, int] | None = None) -> dict[str, int]:
        """Make every write since the last commit, the stream time and `offsets` durable
        together, all or nothing, with the drop of the segments that expired since the last
        drop. Failures are those of the key-value store's commit (a remote UnavailableError
        leaves the outcome unknown: reopen and resume from `committed_offsets`)."""
        st = self._stream_time
        if st != self._committed_stream_time:
            self._kv.put(wk.STREAM_TIME_KEY, wk.encode_time(st))
        dropped = self._purge()
        result = self._kv.commit(offsets)
        self._committed_stream_time = st
        if dropped is not None:
            self._dropped_below = dropped
        return result

    def close(self) -> None:
        """Close the handle; uncommitted writes (and stream time advances) are discarded."""
        self._kv.close()

    def _scan(self, lo: bytes, hi: bytes, reverse: bool) -> Iterator[tuple[bytes, bytes]]:
        return self._kv.reverse_range(lo, hi) if reverse else self._kv.range(lo, hi)

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
  persists that stream time (a window/session reader for interactive queries is not built yet).
- A put into an expired window or session is dropped and counted in `dropped_records` (a count
  for this handle since it was opened), like Kafka Streams' late records; it is not an error.
  Kafka drops late puts per segment; here the drop bound is exactly the read bound, so a put is
  either visible or dropped, never stored but hidden.
- Stream time is stored under a metadata key (`windowkeys.STREAM_TIME_KEY`) written in the same
  commit as the data, so it survives reopen, restore and failover together with the entries.
- Physical removal happens at commit: when the expiry bound has moved into a new segment
  (``segment_interval_ms``, by default ``max(retention_ms // 2, 60_000)`` as in Kafka Streams),
  the commit also deletes every expired entry, so removal advances in segment steps and the
  tombstones go through the changelog like any other delete.

  TODO(issue 4): this purge scans the whole data range of the shard (the encoding is key-major,
  so expired entries are spread over all keys) and deletes key by key. The issue asks for whole
  segments dropped with one delete-range or column-family drop: that needs the server's hot
  tier to place keys into per-segment column families by the time suffix at a fixed offset from
  the end of each key (see windowkeys), plus a "segment dropped" record in the changelog
  protocol so that restore and compaction agree with the drop.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from tierstore import windowkeys as wk
from tierstore.client.buffered import MAX_KEY_BYTES, BufferedKeyValueStore, check_key
from tierstore.client.errors import InvalidArgumentError

MIN_SEGMENT_INTERVAL_MS = 60_000


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
    """What window and session stores share: stream time, retention, purge, commit."""

    _overhead = 0

    def __init__(
        self, kv: BufferedKeyValueStore, spec: dict[str, Any], retention_ms: int,
        segment_interval_ms: int | None,
    ) -> None:
        if segment_interval_ms is not None and segment_interval_ms <= 0:
            raise InvalidArgumentError(
                f"segment_interval_ms must be > 0, got {segment_interval_ms}"
            )
        self._kv = kv
        self.retention_ms = retention_ms
        self.segment_interval_ms = segment_interval_ms or max(
            retention_ms // 2, MIN_SEGMENT_INTERVAL_MS
        )
        self.dropped_records = 0
        st, purged, stored_spec = kv.get_many(
            [wk.STREAM_TIME_KEY, wk.PURGED_THROUGH_KEY, wk.SPEC_KEY]
        )
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
        self._purged_through = -1 if purged is None else wk.decode_time(purged)

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

    def _advance(self, t: int) -> None:
        if t > self._stream_time:
            self._stream_time = t

    def _entry_time(self, encoded: bytes) -> int:
        raise NotImplementedError

    def _purge(self) -> int | None:
        """Stage deletes of every expired entry if the expiry bound entered a new segment since
        the last purge; return the new purge mark, or None if no purge was due."""
        bound = self._expired_through()
        seg = self.segment_interval_ms
        if bound < 0 or bound // seg <= self._purged_through // seg:
            return None
        doomed = [k for k, _ in self._kv.range(wk.DATA_LO, wk.DATA_HI)
                  if self._entry_time(k) <= bound]
        for k in doomed:
            self._kv.put(k, None)  # put(None), not delete(): no read of the old value
        self._kv.put(wk.PURGED_THROUGH_KEY, wk.encode_time(bound))
        return bound

    def commit(self, offsets: dict[str, int] | None = None) -> dict[str, int]:
        """Make every write since the last commit, the stream time and `offsets` durable
        together, all or nothing, after staging the deletes of expired entries when a purge is
        due. Failures are those of the key-value store's commit (a remote UnavailableError
        leaves the outcome unknown: reopen and resume from `committed_offsets`)."""
        st = self._stream_time
        if st != self._committed_stream_time:
            self._kv.put(wk.STREAM_TIME_KEY, wk.encode_time(st))
        purged = self._purge()
        result = self._kv.commit(offsets)
        self._committed_stream_time = st
        if purged is not None:
            self._purged_through = purged
        return result

    def close(self) -> None:
        """Close the handle; uncommitted writes (and stream time advances) are discarded."""
        self._kv.close()

    def _scan(self, lo: bytes, hi: bytes, reverse: bool) -> Iterator[tuple[bytes, bytes]]:
        return self._kv.reverse_range(lo, hi) if reverse else self._kv.range(lo, hi)



"""Order-preserving, segment-first key encodings for window and session stores (client and
server share this module).

A window or session store shard *is* a key-value shard whose keys are encoded here, so every
tier below the client (write-back cache, hot tier, changelog, snapshots, restore) handles it as
plain bytes. The encodings are chosen so that expiry is one contiguous key range per segment
(dropped with one RocksDB delete-range, never a per-key scan) and every query is a few
contiguous scans.

Layout of the key space of one shard
------------------------------------
``0x00 ...``  metadata (stream time, spec): see the ``*_KEY`` constants. Every metadata key starts
              with ``0x00`` and every data key with ``0x01``, so no data key can ever collide with
              metadata, and ``[DATA_LO, DATA_HI]`` spans exactly the data.
``0x01 be64(segment) esc(key) 0x00 0x01 be64(start)``
              a window: segment of its start, user key, window start (ms).
``0x01 be64(segment) esc(key) 0x00 0x01 be64(end) be64(start)``
              a session: segment of its END, user key, session end, session start (ms).

Segments. ``segment = time // segment_interval_ms(retention_ms)``, where the interval is
``max(retention_ms // 2, 60_000)`` (Kafka Streams' rule), derived from the store spec alone so
that the client (which drops segments at commit) and the server (which re-derives the drops on
restore) always agree. Windows are segmented by window start, sessions by session end (as in
Kafka Streams: a session expires when its end does). All entries of one segment share the
9-byte prefix ``segment_prefix(segment)``, and segment ids are big-endian, so the segments
``[a, b)`` are exactly the key range ``[segment_prefix(a), segment_prefix(b))``: dropping every
expired segment is one ``delete_range``. A retained store spans at most
``retention / interval + 2`` (so at most 3) live segments, which is what a query iterates over.

``esc`` doubles every ``0x00`` byte of the user key as ``0x00 0xFF`` and ends it with the
terminator ``0x00 0x01``. Inside an escaped key a ``0x00`` is always followed by ``0xFF``, so the
first ``0x00 0x01`` is the end of the key: decoding is unambiguous and no key's encoding is a
prefix of another's. Order is preserved for arbitrary bytes, including a key that is a prefix of
another: where the shorter key ends (``0x00 0x01``) the longer one continues with either a byte
``> 0x00`` or an escaped ``0x00 0xFF``, and both sort after ``0x00 0x01``. So, within one
segment, ``encode(k1, t1) < encode(k2, t2)`` exactly when ``(k1, t1) < (k2, t2)``; across
segments, order is ``(segment, key, time)``, and the bytes after the segment prefix
(``key[SEGMENT_PREFIX_LEN:]``) sort in (key, time) order whatever the segment, which is the
merge key that restores (key, time) order across segments.

Times are 0 .. 2**63 - 1 ms (Kafka's non-negative ``long``), stored as 8-byte big-endian so that
byte order is numeric order. The time fields always form the last 8 (window) or 16 (session)
bytes of a key, and the segment id bytes 1..8: both are read without decoding the user key.

Why sessions are ordered (key, end, start), as in Kafka Streams
--------------------------------------------------------------
``find_sessions(key, earliest_end, latest_start)`` asks for sessions with ``end >= earliest_end``
and ``start <= latest_start``. With end first, the scan of each segment starts exactly at
``(key, earliest_end)``; only the start condition is filtered. In the common query of a
sessionizing worker (``earliest_end = t - gap``) that leaves just the key's newest sessions.

Query ranges (all bounds inclusive, as the key-value ``range`` takes them), one per segment
-----------------------------------------------------------------------------------------
- ``window_range(key, seg, t0, t1)``: exact, the windows of `key` in segment `seg` in [t0, t1].
- ``window_key_range(k0, k1, seg, t0, t1)``: the keys strictly between k0 and k1 come with all
  their times of that segment, which the caller filters.
- ``session_find_range(key, seg, e0)`` and ``session_key_range(k0, k1, seg, e0)``: likewise.
"""

from __future__ import annotations

import struct

MIN_TIME = 0
MAX_TIME = 2**63 - 1
MIN_SEGMENT_INTERVAL_MS = 60_000

META_PREFIX = b"\x00"
DATA_PREFIX = b"\x01"
DATA_LO = DATA_PREFIX
DATA_HI = b"\x02"  # inclusive upper bound of all data keys; itself never a key

STREAM_TIME_KEY = b"\x00stream_time"
SPEC_KEY = b"\x00spec"

_TERM = b"\x00\x01"
_U64 = struct.Struct(">Q")
_U64x2 = struct.Struct(">QQ")
_MAX8 = _U64.pack(MAX_TIME)
_ZERO8 = bytes(8)

SEGMENT_PREFIX_LEN = len(DATA_PREFIX) + 8
WINDOW_OVERHEAD = SEGMENT_PREFIX_LEN + len(_TERM) + 8
SESSION_OVERHEAD = SEGMENT_PREFIX_LEN + len(_TERM) + 16


def check_time(t: int, what: str = "time") -> int:
    """Return `t` if it is a valid time in ms (an int in 0 .. 2**63 - 1); raise ValueError."""
    if isinstance(t, bool) or not isinstance(t, int):
        raise ValueError(f"{what} must be an int of milliseconds, got {type(t).__name__}")
    if t < MIN_TIME:
        raise ValueError(f"{what} is negative ({t} ms): times are 0 .. 2**63 - 1 ms")
    if t > MAX_TIME:
        raise ValueError(f"{what} {t} ms is beyond 2**63 - 1 ms")
    return t


def encode_time(t: int) -> bytes:
    return _U64.pack(check_time(t))


def decode_time(data: bytes) -> int:
    (t,) = _U64.unpack(data)
    return int(t)


# --- segments -----------------------------------------------------------------------------------
def segment_interval_ms(retention_ms: int) -> int:
    """The segment length of a store with this retention: max(retention // 2, 60 s), as in
    Kafka Streams. Every client and server derives it from the store spec with this function."""
    return max(retention_ms // 2, MIN_SEGMENT_INTERVAL_MS)


def segment_prefix(segment: int) -> bytes:
    """The 9 bytes every key of `segment` starts with. segment_prefix(s + 1) is never a key, so
    ``[segment_prefix(s), segment_prefix(s + 1)]`` (inclusive or not) is exactly segment s."""
    return DATA_PREFIX + _U64.pack(segment)


def segment_of_key(data: bytes) -> int:
    """The segment id of an encoded data key (bytes 1..8), without decoding anything else."""
    return int(_U64.unpack_from(data, 1)[0])


def segment_span(segment: int, interval_ms: int) -> tuple[int, int]:
    """The first and last time (inclusive) of `segment`."""
    first = segment * interval_ms
    return first, min(first + interval_ms - 1, MAX_TIME)


def first_live_segment(stream_time_ms: int, retention_ms: int, interval_ms: int) -> int:
    """The lowest segment not wholly expired at this stream time (-1 before the first put: 0).
    An entry with time t is expired once ``t <= stream_time - retention``; every segment below
    the returned one holds only expired times and may be dropped whole."""
    bound = stream_time_ms - retention_ms
    if bound < 0:
        return 0
    return (bound + 1) // interval_ms


def live_segments(time_from_ms: int, time_to_ms: int, interval_ms: int) -> range:
    """The segments holding times in [from, to] (empty if from > to)."""
    if time_from_ms > time_to_ms:
        return range(0)
    return range(time_from_ms // interval_ms, time_to_ms // interval_ms + 1)


# --- user keys ----------------------------------------------------------------------------------
def key_part(key: bytes) -> bytes:
    """esc(key) + terminator: what follows the segment prefix; no other key's starts with it."""
    return key.replace(b"\x00", b"\x00\xff") + _TERM


def _decode_user_key(body: bytes) -> bytes:
    """Undo `key_part` on `body` = key_part(key)."""
    if not body.endswith(_TERM):
        raise ValueError(f"not an encoded data key: {body[:32]!r}")
    escaped = body[:-2]
    key = escaped.replace(b"\x00\xff", b"\x00")
    if key.replace(b"\x00", b"\x00\xff") != escaped:  # a bare 0x00 inside: not ours
        raise ValueError(f"malformed escaped key: {body[:32]!r}")
    return key


def _check_data(data: bytes, overhead: int, what: str) -> None:
    if len(data) < overhead or data[:1] != DATA_PREFIX:
        raise ValueError(f"not an encoded {what} key: {data[:32]!r}")


# --- windows ------------------------------------------------------------------------------------
def window_key(key: bytes, start_ms: int, interval_ms: int) -> bytes:
    t = encode_time(start_ms)
    return segment_prefix(start_ms // interval_ms) + key_part(key) + t


def decode_window_key(data: bytes) -> tuple[bytes, int]:
    """(key, window_start_ms) of an encoded window key."""
    _check_data(data, WINDOW_OVERHEAD, "window")
    return _decode_user_key(data[SEGMENT_PREFIX_LEN:-8]), decode_time(data[-8:])


def window_time(data: bytes) -> int:
    """The window start of an encoded window key, read without decoding the user key."""
    return decode_time(data[-8:])


def window_range(
    key: bytes, segment: int, time_from_ms: int, time_to_ms: int
) -> tuple[bytes, bytes]:
    """Inclusive bounds covering exactly the windows of `key` in `segment` starting in
    [from, to] (the caller clamps the times to the segment's span)."""
    p = segment_prefix(segment) + key_part(key)
    return p + encode_time(time_from_ms), p + encode_time(time_to_ms)


def window_key_range(
    key_from: bytes | None, key_to: bytes | None, segment: int, time_from_ms: int,
    time_to_ms: int,
) -> tuple[bytes, bytes]:
    """Inclusive bounds covering the windows of `segment` of keys in [key_from, key_to] (None:
    unbounded) starting in [from, to]; keys strictly inside also bring windows outside the
    times, which the caller filters."""
    seg = segment_prefix(segment)
    lo = seg if key_from is None else seg + key_part(key_from) + encode_time(time_from_ms)
    hi = (segment_prefix(segment + 1) if key_to is None
          else seg + key_part(key_to) + encode_time(time_to_ms))
    return lo, hi


# --- sessions -----------------------------------------------------------------------------------
def session_key(key: bytes, start_ms: int, end_ms: int, interval_ms: int) -> bytes:
    """Encode session [start, end] of `key`; segmented by end, ordered by (key, end, start)."""
    check_time(start_ms, "session start")
    check_time(end_ms, "session end")
    return segment_prefix(end_ms // interval_ms) + key_part(key) + _U64x2.pack(end_ms, start_ms)


def decode_session_key(data: bytes) -> tuple[bytes, int, int]:
    """(key, start_ms, end_ms) of an encoded session key."""
    _check_data(data, SESSION_OVERHEAD, "session")
    end, start = _U64x2.unpack(data[-16:])
    return _decode_user_key(data[SEGMENT_PREFIX_LEN:-16]), int(start), int(end)


def session_times(data: bytes) -> tuple[int, int]:
    """(start_ms, end_ms) of an encoded session key, read without decoding the user key."""
    end, start = _U64x2.unpack(data[-16:])
    return int(start), int(end)


def session_find_range(key: bytes, segment: int, earliest_end_ms: int) -> tuple[bytes, bytes]:
    """Inclusive bounds covering the sessions of `key` in `segment` ending at or after
    `earliest_end_ms`."""
    p = segment_prefix(segment) + key_part(key)
    return p + encode_time(earliest_end_ms) + _ZERO8, p + _MAX8 + _MAX8


def session_key_range(
    key_from: bytes | None, key_to: bytes | None, segment: int, earliest_end_ms: int
) -> tuple[bytes, bytes]:
    """Inclusive bounds covering the sessions of `segment` of keys in [key_from, key_to] (None:
    unbounded); only `key_from`'s sessions ending before `earliest_end_ms` are left out, the
    rest the caller filters."""
    seg = segment_prefix(segment)
    lo = (seg if key_from is None
          else seg + key_part(key_from) + encode_time(earliest_end_ms) + _ZERO8)
    hi = segment_prefix(segment + 1) if key_to is None else seg + key_part(key_to) + _MAX8 + _MAX8
    return lo, hi

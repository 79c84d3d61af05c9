"""Order-preserving key encodings for window and session stores (shared by client and server).

A window or session store shard *is* a key-value shard whose keys are encoded here, so every
tier below the client (write-back cache, hot tier, changelog, snapshots, restore) handles it as
plain bytes. The encodings are chosen so that byte order of encoded keys is the order reads
want, and one scan of a contiguous byte range answers each query.

Layout of the key space of one shard
------------------------------------
``0x00 ...``  metadata (stream time, purge mark, spec): see the ``*_KEY`` constants. Every
              metadata key starts with ``0x00`` and every data key with ``0x01``, so no data key
              can ever collide with metadata, and ``[DATA_LO, DATA_HI]`` spans exactly the data.
``0x01 esc(key) 0x00 0x01 be64(start)``
              a window: user key, then window start (ms).
``0x01 esc(key) 0x00 0x01 be64(end) be64(start)``
              a session: user key, then session end, then session start (ms).

``esc`` doubles every ``0x00`` byte of the user key as ``0x00 0xFF`` and ends it with the
terminator ``0x00 0x01``. Inside an escaped key a ``0x00`` is always followed by ``0xFF``, so the
first ``0x00 0x01`` is the end of the key: decoding is unambiguous and no key's encoding is a
prefix of another's. Order is preserved for arbitrary bytes, including a key that is a prefix of
another: where the shorter key ends (``0x00 0x01``) the longer one continues with either a byte
``> 0x00`` or an escaped ``0x00 0xFF``, and both sort after ``0x00 0x01``. So, for all keys and
times, ``encode(k1, t1) < encode(k2, t2)`` exactly when ``(k1, t1) < (k2, t2)``.

Times are 0 .. 2**63 - 1 ms (Kafka's non-negative ``long``), stored as 8-byte big-endian so that
byte order is numeric order. The time fields always form the last 8 (window) or 16 (session)
bytes of a key, at a fixed offset from its end: a server can read the time of any key without
decoding it, which is what segment-wise retention in the hot tier will need.

Why sessions are ordered (key, end, start), as in Kafka Streams
--------------------------------------------------------------
``find_sessions(key, earliest_end, latest_start)`` asks for sessions with ``end >= earliest_end``
and ``start <= latest_start``. With end first, the scan starts exactly at ``(key, earliest_end)``
and everything before it is skipped by one seek; only the start condition is filtered. In the
common query of a sessionizing worker (``earliest_end = t - gap``, ``latest_start = t + gap``
around the current time ``t``) that leaves just the key's newest sessions to read. With
(key, start, end) the lower bound would be start 0, and the scan would read the key's whole
retained history on every event. Retention is also by session end (a session expires when its
end falls out of retention), which end-first order keeps contiguous per key.

Query ranges (all bounds inclusive, as the key-value ``range`` takes them)
-------------------------------------------------------------------------
- ``fetch(key, t0, t1)``: ``window_range(key, t0, t1)``, exact: nothing outside it is read.
- ``fetch_range(k0, k1, t0, t1)``: ``window_key_range``; the keys strictly between k0 and k1
  come with all their times, which the caller filters.
- ``fetch_all(t0, t1)``: ``[DATA_LO, DATA_HI]``, i.e. every window of the shard, filtered by
  time. This encoding is key-major, so a time-bounded scan across all keys is a full scan.
- ``find_sessions(key, e, s)``: ``session_find_range(key, e)`` and filter ``start <= s``.
"""

from __future__ import annotations

import struct

MIN_TIME = 0
MAX_TIME = 2**63 - 1

META_PREFIX = b"\x00"
DATA_PREFIX = b"\x01"
DATA_LO = DATA_PREFIX
DATA_HI = b"\x02"  # inclusive upper bound of all data keys; itself never a key

STREAM_TIME_KEY = b"\x00stream_time"
PURGED_THROUGH_KEY = b"\x00purged_through"
SPEC_KEY = b"\x00spec"

_TERM = b"\x00\x01"
_U64 = struct.Struct(">Q")
_U64x2 = struct.Struct(">QQ")
_MAX8 = _U64.pack(MAX_TIME)

WINDOW_OVERHEAD = len(DATA_PREFIX) + len(_TERM) + 8
SESSION_OVERHEAD = len(DATA_PREFIX) + len(_TERM) + 16


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


def key_prefix(key: bytes) -> bytes:
    """The bytes every encoded entry of `key` starts with, and no other key's entries do."""
    return DATA_PREFIX + key.replace(b"\x00", b"\x00\xff") + _TERM


def _decode_user_key(body: bytes) -> bytes:
    """Undo `key_prefix` on `body` = key_prefix(key) (type byte included)."""
    if body[:1] != DATA_PREFIX or not body.endswith(_TERM):
        raise ValueError(f"not an encoded data key: {body[:32]!r}")
    escaped = body[1:-2]
    key = escaped.replace(b"\x00\xff", b"\x00")
    if key.replace(b"\x00", b"\x00\xff") != escaped:  # a bare 0x00 inside: not ours
        raise ValueError(f"malformed escaped key: {body[:32]!r}")
    return key


# --- windows ------------------------------------------------------------------------------------
def window_key(key: bytes, start_ms: int) -> bytes:
    return key_prefix(key) + encode_time(start_ms)


def decode_window_key(data: bytes) -> tuple[bytes, int]:
    """(key, window_start_ms) of an encoded window key."""
    if len(data) < WINDOW_OVERHEAD:
        raise ValueError(f"encoded window key too short: {data[:32]!r}")
    return _decode_user_key(data[:-8]), decode_time(data[-8:])


def window_time(data: bytes) -> int:
    """The window start of an encoded window key, read without decoding the user key."""
    return decode_time(data[-8:])


def window_range(key: bytes, time_from_ms: int, time_to_ms: int) -> tuple[bytes, bytes]:
    """Inclusive bounds covering exactly the windows of `key` starting in [from, to]."""
    p = key_prefix(key)
    return p + encode_time(time_from_ms), p + encode_time(time_to_ms)


def window_key_range(
    key_from: bytes | None, key_to: bytes | None, time_from_ms: int, time_to_ms: int
) -> tuple[bytes, bytes]:
    """Inclusive bounds covering the windows of keys in [key_from, key_to] (None: unbounded)
    starting in [from, to]; keys strictly inside also bring windows outside the times."""
    lo = DATA_LO if key_from is None else window_key(key_from, time_from_ms)
    hi = DATA_HI if key_to is None else window_key(key_to, time_to_ms)
    return lo, hi


# --- sessions -----------------------------------------------------------------------------------
def session_key(key: bytes, start_ms: int, end_ms: int) -> bytes:
    """Encode session [start, end] of `key`; ordered by (key, end, start)."""
    check_time(start_ms, "session start")
    check_time(end_ms, "session end")
    return key_prefix(key) + _U64x2.pack(end_ms, start_ms)


def decode_session_key(data: bytes) -> tuple[bytes, int, int]:
    """(key, start_ms, end_ms) of an encoded session key."""
    if len(data) < SESSION_OVERHEAD:
        raise ValueError(f"encoded session key too short: {data[:32]!r}")
    end, start = _U64x2.unpack(data[-16:])
    return _decode_user_key(data[:-16]), int(start), int(end)


def session_times(data: bytes) -> tuple[int, int]:
    """(start_ms, end_ms) of an encoded session key, read without decoding the user key."""
    end, start = _U64x2.unpack(data[-16:])
    return int(start), int(end)


def session_find_range(key: bytes, earliest_end_ms: int) -> tuple[bytes, bytes]:
    """Inclusive bounds covering the sessions of `key` ending at or after `earliest_end_ms`."""
    p = key_prefix(key)
    return p + encode_time(earliest_end_ms) + bytes(8), p + _MAX8 + _MAX8


def session_key_range(
    key_from: bytes | None, key_to: bytes | None, earliest_end_ms: int
) -> tuple[bytes, bytes]:
    """Inclusive bounds covering the sessions of keys in [key_from, key_to] (None: unbounded);
    only `key_from`'s sessions ending before `earliest_end_ms` are left out, the rest the caller
    filters."""
    lo = DATA_LO if key_from is None else session_find_range(key_from, earliest_end_ms)[0]
    hi = DATA_HI if key_to is None else session_find_range(key_to, 0)[1]
    return lo, hi

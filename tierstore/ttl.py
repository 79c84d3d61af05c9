"""Expiry headers of key-value stores with a TTL (shared by the client and the server's sweep).

A key-value store created with ``ttl_ms`` (a default TTL) is a *TTL store*: every value it
holds, on every tier (write-back cache, hot tier, changelog, snapshots), is

    be64(expires_at_ms) + payload

where ``expires_at_ms`` is wall-clock milliseconds since the Unix epoch, computed by the writer
(``now + ttl``; a put may give its own ``ttl_ms`` instead of the store's default). Readers strip
the header and treat an entry with ``expires_at_ms <= now`` as absent. Key-value stores have no
stream time, so, unlike window retention, TTL is measured against the wall clock: the client's
when it writes and reads, the server's when it sweeps (see docs/protocol.md, "TTL").

Stores without a TTL store values byte for byte, with no header.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Iterable, Iterator

HEADER_LEN = 8
MAX_EXPIRY = 2**63 - 1
_U64 = struct.Struct(">Q")


def now_ms() -> int:
    """Wall-clock milliseconds since the Unix epoch."""
    return time.time_ns() // 1_000_000


def check_ttl(ttl_ms: object, what: str = "ttl_ms") -> int:
    """Return `ttl_ms` if it is a positive int of milliseconds; raise ValueError."""
    if isinstance(ttl_ms, bool) or not isinstance(ttl_ms, int):
        raise ValueError(f"{what} must be an int of milliseconds, got {type(ttl_ms).__name__}")
    if not 0 < ttl_ms <= MAX_EXPIRY:
        raise ValueError(f"{what} must be 1 .. 2**63 - 1 ms, got {ttl_ms}")
    return ttl_ms


def encode(payload: bytes, ttl_ms: int, now: int) -> bytes:
    """The stored form of `payload` expiring `ttl_ms` after `now`."""
    return _U64.pack(min(now + ttl_ms, MAX_EXPIRY)) + payload


def expires_at(raw: bytes) -> int:
    """The expiry time of a stored value (0 for a value too short to carry a header, which
    then counts as expired: nothing but a foreign writer produces one)."""
    if len(raw) < HEADER_LEN:
        return 0
    return int(_U64.unpack_from(raw)[0])


def live_payload(raw: bytes, now: int) -> bytes | None:
    """The payload of a stored value, or None if it has expired at `now`."""
    if expires_at(raw) <= now:
        return None
    return raw[HEADER_LEN:]


def live_items(
    items: Iterable[tuple[bytes, bytes]], now: int
) -> Iterator[tuple[bytes, bytes]]:
    """(key, payload) of the entries of a TTL store that have not expired at `now`."""
    for k, raw in items:
        v = live_payload(raw, now)
        if v is not None:
            yield k, v

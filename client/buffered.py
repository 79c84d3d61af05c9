"""The write-back cache every key-value implementation shares.

Uncommitted writes live in `_writes` (None marks a delete) and are read back by this handle
(read-your-writes); `commit` hands them to the backend as one batch. Backends implement the
four `_backend_*` hooks over their committed state.

Range deletes (`delete_range`, used by window and session stores to drop expired segments)
are buffered too: a range delete drops the buffered writes inside the range at once and is
remembered until commit, and reads through this handle skip committed entries inside a pending
range. At commit **range deletes apply before the batch's puts and deletes**, so a write made
after a range delete survives it; the buffered writes it covered were already dropped.

TTL stores (`ttl_ms`, see `tierstore.ttl`): values carry an 8-byte expiry header, added at put
and stripped on read; an expired entry is invisible to every read at once, and is physically
removed later by a sweep that stages its delete like any other (`sweep_expired`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from tierstore import ttl as ttlcodec
from tierstore.client.errors import InvalidArgumentError, StoreClosedError
from tierstore.overlay import overlay_items, select_range

MAX_KEY_BYTES = 64 * 1024
DEFAULT_MAX_VALUE_BYTES = 8 * 1024 * 1024

Ranges = list[tuple[bytes, bytes]]  # [begin, end) pairs


def check_key(key: bytes, what: str = "key") -> None:
    if not isinstance(key, bytes):
        raise InvalidArgumentError(f"{what} must be bytes, got {type(key).__name__}")
    n = len(key)
    if n == 0:
        raise InvalidArgumentError(f"empty {what}: keys must be 1 byte to 64 KiB")
    if n > MAX_KEY_BYTES:
        raise InvalidArgumentError(f"{what} of {n} bytes exceeds the 65536-byte limit")


def check_bounds(from_key: bytes | None, to_key: bytes | None) -> None:
    if from_key is not None:
        check_key(from_key, "range bound")
    if to_key is not None:
        check_key(to_key, "range bound")
    if from_key is not None and to_key is not None and from_key > to_key:
        raise InvalidArgumentError(
            f"inverted range: from {from_key[:32]!r} is after to {to_key[:32]!r}"
        )


def check_ttl(ttl_ms: object) -> int:
    try:
        return ttlcodec.check_ttl(ttl_ms)
    except ValueError as exc:
        raise InvalidArgumentError(str(exc)) from None


def in_ranges(key: bytes, ranges: Ranges) -> bool:
    return any(b <= key < e for b, e in ranges)


class BufferedKeyValueStore:
    """KeyValueStore behaviour over a committed backend plus an uncommitted write buffer."""

    # Seconds between the automatic sweeps of expired entries at commit (TTL stores); None:
    # never automatic (the remote store: its server sweeps).
    sweep_interval_s: float | None = 10.0
    sweep_batch = 10_000  # entries examined per sweep

    def __init__(self, max_value_bytes: int = DEFAULT_MAX_VALUE_BYTES, ttl_ms: int = 0) -> None:
        self._writes: dict[bytes, bytes | None] = {}
        self._ranges: Ranges = []
        self._offsets: dict[str, int] = {}
        self._max_value = max_value_bytes
        self._closed = False
        self._closed_why = "this store handle is closed"
        self._ttl_ms = ttl_ms
        self.clock = ttlcodec.now_ms  # wall-clock ms, for TTL stores (replaceable in tests)
        self._sweep_from: bytes | None = None
        self._last_sweep = ttlcodec.now_ms()

    # --- backend hooks --------------------------------------------------------------------
    def _backend_get(self, keys: list[bytes]) -> list[bytes | None]:
        raise NotImplementedError

    def _backend_scan(
        self, from_key: bytes | None, to_key: bytes | None, prefix: bytes | None, reverse: bool
    ) -> Iterator[tuple[bytes, bytes]]:
        raise NotImplementedError

    def _backend_count(self) -> int:
        raise NotImplementedError

    def _backend_commit(
        self, writes: dict[bytes, bytes | None], offsets: dict[str, int], ranges: Ranges
    ) -> dict[str, int]:
        """Make `ranges` (deleted first), then `writes`, and `offsets` durable atomically;
        return the merged committed offsets."""
        raise NotImplementedError

    def _after_write(self, size: int) -> None:
        """Called after each buffered write of `size` bytes (key plus value; the remote store
        stages on overflow here)."""

    def _backend_close(self) -> None:
        pass

    # --- KeyValueStore --------------------------------------------------------------------
    @property
    def committed_offsets(self) -> dict[str, int]:
        return dict(self._offsets)

    @property
    def ttl_ms(self) -> int:
        """The store's default TTL in ms; 0 for a store without TTL."""
        return self._ttl_ms

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosedError(self._closed_why)

    def _visible(self, raw: bytes | None) -> bytes | None:
        if raw is None or not self._ttl_ms:
            return raw
        return ttlcodec.live_payload(raw, self.clock())

    def get(self, key: bytes) -> bytes | None:
        self._check_open()
        check_key(key)
        w = self._writes
        if key in w:
            return self._visible(w[key])
        if self._ranges and in_ranges(key, self._ranges):
            return None
        return self._visible(self._backend_get([key])[0])

    def get_many(self, keys: list[bytes]) -> list[bytes | None]:
        """Batched get: one round trip for the keys not in the write buffer."""
        self._check_open()
        for k in keys:
            check_key(k)
        w, ranges = self._writes, self._ranges
        if not w and not ranges:  # nothing buffered (a fresh handle): one call, as it answers
            if not keys:
                return []
            values = self._backend_get(list(keys))
            return [self._visible(v) for v in values] if self._ttl_ms else values
        missing = [k for k in keys if k not in w and not (ranges and in_ranges(k, ranges))]
        fetched = dict(zip(missing, self._backend_get(missing), strict=True)) if missing else {}
        return [self._visible(w[k] if k in w else fetched.get(k)) for k in keys]

    def put(self, key: bytes, value: bytes | None, ttl_ms: int | None = None) -> None:
        """Buffer a write of `key` (None deletes it). On a TTL store `ttl_ms` overrides the
        store's default TTL for this value; a store without TTL refuses it."""
        if (type(key) is bytes and type(value) is bytes and ttl_ms is None
                and not self._closed and not self._ttl_ms and 0 < (nk := len(key)) <= MAX_KEY_BYTES
                and (nv := len(value)) <= self._max_value):
            # The common case, all of its checks in one test (a put is the per-record hot
            # path of every worker); everything else takes the checked path below.
            self._writes[key] = value
            self._after_write(nk + nv)
            return
        self._check_write(key, value, ttl_ms)
        self._buffer(key, value, ttl_ms)

    def _buffer(self, key: bytes, value: bytes | None, ttl_ms: int | None = None) -> None:
        """Buffer a write that `_check_write` accepted."""
        if value is not None and self._ttl_ms:
            value = ttlcodec.encode(value, ttl_ms or self._ttl_ms, self.clock())
        self._writes[key] = value
        self._after_write(len(key) + (len(value) if value is not None else 0))

    def _check_write(self, key: bytes, value: bytes | None, ttl_ms: int | None = None) -> None:
        """Raise what `put(key, value, ttl_ms)` would refuse, buffering nothing."""
        self._check_open()
        check_key(key)
        if ttl_ms is not None:
            check_ttl(ttl_ms)
            if not self._ttl_ms:
                raise InvalidArgumentError(
                    "this store has no TTL, so a put cannot take ttl_ms: create the store "
                    "with a default ttl_ms to make it a TTL store"
                )
        if value is not None:
            if not isinstance(value, bytes):
                raise InvalidArgumentError(f"value must be bytes, got {type(value).__name__}")
            limit = self._max_value - (ttlcodec.HEADER_LEN if self._ttl_ms else 0)
            if len(value) > limit:
                raise InvalidArgumentError(
                    f"value of {len(value)} bytes exceeds the maximum of {limit}"
                    + (" (the maximum less the 8-byte expiry header)" if self._ttl_ms else "")
                )

    def put_all(self, entries: Iterable[tuple[bytes, bytes | None]]) -> None:
        """Buffer every entry, or none: a bad entry anywhere is refused before any is
        buffered (a later commit must not carry part of a refused put_all)."""
        batch = list(entries)
        for k, v in batch:
            self._check_write(k, v)
        for k, v in batch:
            self._buffer(k, v)

    def put_if_absent(self, key: bytes, value: bytes, ttl_ms: int | None = None) -> bytes | None:
        old = self.get(key)
        if old is None:
            self.put(key, value, ttl_ms)
        return old

    def delete(self, key: bytes) -> bytes | None:
        old = self.get(key)
        self._writes[key] = None
        self._after_write(len(key))
        return old

    def delete_range(self, begin: bytes, end: bytes) -> None:
        """Delete every key in [begin, end) (end exclusive): buffered writes in the range at
        once, committed ones at commit, where range deletes apply before the batch's writes.
        Window and session stores drop expired segments with it. Refused by the server on a
        key-value store (its changelog could not carry it, see docs/protocol.md)."""
        self._check_open()
        check_key(begin, "range begin")
        check_key(end, "range end")
        if begin >= end:
            raise InvalidArgumentError(
                f"empty or inverted range: begin {begin[:32]!r} is not before end {end[:32]!r}"
            )
        w = self._writes
        for k in [k for k in w if begin <= k < end]:
            del w[k]
        self._ranges.append((begin, end))

    def _scan(
        self, from_key: bytes | None, to_key: bytes | None, prefix: bytes | None, reverse: bool
    ) -> Iterator[tuple[bytes, bytes]]:
        self._check_open()
        if prefix is not None:
            check_key(prefix, "prefix")
        else:
            check_bounds(from_key, to_key)
        base = self._backend_scan(from_key, to_key, prefix, reverse)
        if self._ranges:
            ranges = list(self._ranges)
            base = ((k, v) for k, v in base if not in_ranges(k, ranges))
        over = select_range(self._writes, from_key, to_key, prefix, reverse)
        items = overlay_items(base, over, reverse)
        if not self._ttl_ms:
            return items
        return self._live(items)

    def _live(self, items: Iterator[tuple[bytes, bytes]]) -> Iterator[tuple[bytes, bytes]]:
        return ttlcodec.live_items(items, self.clock())

    def range(self, from_key: bytes | None, to_key: bytes | None) -> Iterator[tuple[bytes, bytes]]:
        """Keys from `from_key` to `to_key`, both inclusive (None: unbounded), in key order."""
        return self._scan(from_key, to_key, None, False)

    def reverse_range(
        self, from_key: bytes | None, to_key: bytes | None
    ) -> Iterator[tuple[bytes, bytes]]:
        return self._scan(from_key, to_key, None, True)

    def prefix_scan(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        return self._scan(None, None, prefix, False)

    def all(self) -> Iterator[tuple[bytes, bytes]]:
        return self._scan(None, None, None, False)

    def reverse_all(self) -> Iterator[tuple[bytes, bytes]]:
        return self._scan(None, None, None, True)

    def approximate_num_entries(self) -> int:
        """An estimate: committed entries (expired and range-deleted ones included until they
        are physically removed) plus buffered puts."""
        self._check_open()
        return self._backend_count() + sum(1 for v in self._writes.values() if v is not None)

    def sweep_expired(self, max_entries: int | None = None) -> int:
        """TTL stores: examine up to `max_entries` (default `sweep_batch`) committed entries,
        continuing where the last sweep stopped, and buffer a delete of each expired one, so
        that the next commit removes them everywhere (hot tier, changelog, snapshots). Returns
        the number of deletes buffered; 0 on a store without TTL."""
        self._check_open()
        if not self._ttl_ms:
            return 0
        budget = max_entries or self.sweep_batch
        now = self.clock()
        self._last_sweep = now
        w, ranges = self._writes, self._ranges
        found = size = 0
        resume: bytes | None = None
        scan = self._backend_scan(self._sweep_from, None, None, False)
        for seen, (k, raw) in enumerate(scan, 1):
            if k not in w and ttlcodec.expires_at(raw) <= now and not in_ranges(k, ranges):
                w[k] = None
                found += 1
                size += len(k)
            if seen >= budget:
                resume = k + b"\x00"
                break
        self._sweep_from = resume
        if found:
            self._after_write(size)
        return found

    def commit(self, offsets: dict[str, int] | None = None) -> dict[str, int]:
        """Make every write since the last commit, and `offsets`, durable together.

        On success the buffer is empty and `committed_offsets` includes `offsets`. On failure
        nothing is applied (see each backend for when the outcome can be unknown). A TTL store
        with an automatic sweep (`sweep_interval_s`) sweeps first when one is due.
        """
        self._check_open()
        offs = dict(offsets or {})
        for name, off in offs.items():
            if not isinstance(name, str) or not name or not isinstance(off, int) or off < 0:
                raise InvalidArgumentError(
                    f"bad input offset {name!r}: {off!r} (names are non-empty strings, offsets "
                    "non-negative ints)"
                )
        every = self.sweep_interval_s
        if self._ttl_ms and every is not None and self.clock() - self._last_sweep >= every * 1e3:
            self.sweep_expired()
        self._offsets = self._backend_commit(self._writes, offs, self._ranges)
        self._writes = {}
        self._ranges = []
        return dict(self._offsets)

    def close(self) -> None:
        """Close the handle. Uncommitted writes are discarded."""
        if not self._closed:
            self._closed = True
            self._writes = {}
            self._ranges = []
            self._backend_close()

    def __enter__(self) -> BufferedKeyValueStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

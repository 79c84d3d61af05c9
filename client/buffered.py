"""The write-back cache every key-value implementation shares.

Uncommitted writes live in `_writes` (None marks a delete) and are read back by this handle
(read-your-writes); `commit` hands them to the backend as one batch. Backends implement the
four `_backend_*` hooks over their committed state.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from tierstore.client.errors import InvalidArgumentError, StoreClosedError
from tierstore.overlay import overlay_items, select_range

MAX_KEY_BYTES = 64 * 1024
DEFAULT_MAX_VALUE_BYTES = 8 * 1024 * 1024


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


class BufferedKeyValueStore:
    """KeyValueStore behaviour over a committed backend plus an uncommitted write buffer."""

    def __init__(self, max_value_bytes: int = DEFAULT_MAX_VALUE_BYTES) -> None:
        self._writes: dict[bytes, bytes | None] = {}
        self._offsets: dict[str, int] = {}
        self._max_value = max_value_bytes
        self._closed = False

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
        self, writes: dict[bytes, bytes | None], offsets: dict[str, int]
    ) -> dict[str, int]:
        """Make `writes` and `offsets` durable atomically; return the merged committed offsets."""
        raise NotImplementedError

    def _after_write(self) -> None:
        """Called after each buffered write (the remote store stages on overflow here)."""

    def _backend_close(self) -> None:
        pass

    # --- KeyValueStore --------------------------------------------------------------------
    @property
    def committed_offsets(self) -> dict[str, int]:
        return dict(self._offsets)

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosedError("this store handle is closed")

    def get(self, key: bytes) -> bytes | None:
        self._check_open()
        check_key(key)
        w = self._writes
        if key in w:
            return w[key]
        return self._backend_get([key])[0]

    def get_many(self, keys: list[bytes]) -> list[bytes | None]:
        """Batched get: one round trip for the keys not in the write buffer."""
        self._check_open()
        for k in keys:
            check_key(k)
        w = self._writes
        missing = [k for k in keys if k not in w]
        fetched = dict(zip(missing, self._backend_get(missing), strict=True)) if missing else {}
        return [w[k] if k in w else fetched[k] for k in keys]

    def put(self, key: bytes, value: bytes | None) -> None:
        self._check_open()
        check_key(key)
        if value is not None:
            if not isinstance(value, bytes):
                raise InvalidArgumentError(f"value must be bytes, got {type(value).__name__}")
            if len(value) > self._max_value:
                raise InvalidArgumentError(
                    f"value of {len(value)} bytes exceeds the maximum of {self._max_value}"
                )
        self._writes[key] = value
        self._after_write()

    def put_all(self, entries: Iterable[tuple[bytes, bytes | None]]) -> None:
        for k, v in entries:
            self.put(k, v)

    def put_if_absent(self, key: bytes, value: bytes) -> bytes | None:
        old = self.get(key)
        if old is None:
            self.put(key, value)
        return old

    def delete(self, key: bytes) -> bytes | None:
        old = self.get(key)
        self._writes[key] = None
        self._after_write()
        return old

    def _scan(
        self, from_key: bytes | None, to_key: bytes | None, prefix: bytes | None, reverse: bool
    ) -> Iterator[tuple[bytes, bytes]]:
        self._check_open()
        if prefix is not None:
            check_key(prefix, "prefix")
        else:
            check_bounds(from_key, to_key)
        over = select_range(self._writes, from_key, to_key, prefix, reverse)
        return overlay_items(self._backend_scan(from_key, to_key, prefix, reverse), over, reverse)

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
        self._check_open()
        return self._backend_count() + sum(1 for v in self._writes.values() if v is not None)

    def commit(self, offsets: dict[str, int] | None = None) -> dict[str, int]:
        """Make every write since the last commit, and `offsets`, durable together.

        On success the buffer is empty and `committed_offsets` includes `offsets`. On failure
        nothing is applied (see each backend for when the outcome can be unknown).
        """
        self._check_open()
        offs = dict(offsets or {})
        for name, off in offs.items():
            if not isinstance(name, str) or not name or not isinstance(off, int) or off < 0:
                raise InvalidArgumentError(
                    f"bad input offset {name!r}: {off!r} (names are non-empty strings, offsets "
                    "non-negative ints)"
                )
        self._offsets = self._backend_commit(self._writes, offs)
        self._writes = {}
        return dict(self._offsets)

    def close(self) -> None:
        """Close the handle. Uncommitted writes are discarded."""
        if not self._closed:
            self._closed = True
            self._writes = {}
            self._backend_close()

    def __enter__(self) -> BufferedKeyValueStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

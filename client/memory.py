"""In-memory key-value store: the same contract, nothing durable beyond the process."""

from __future__ import annotations

import bisect
from collections.abc import Iterator

from tierstore.client.buffered import BufferedKeyValueStore, Ranges, check_ttl
from tierstore.client.errors import InvalidArgumentError


class InMemoryKeyValueStore(BufferedKeyValueStore):
    """Committed state in a dict plus a sorted key list; commit swaps in the batch at once.

    `ttl_ms` makes it a TTL store with that default TTL (see `BufferedKeyValueStore`)."""

    def __init__(self, *, ttl_ms: int | None = None) -> None:
        super().__init__(ttl_ms=0 if ttl_ms is None else check_ttl(ttl_ms))
        self._data: dict[bytes, bytes] = {}
        self._sorted: list[bytes] = []

    def reopen(self, *, ttl_ms: int | None = None) -> InMemoryKeyValueStore:
        """A new handle on the same committed state, as after a worker restart: this handle's
        uncommitted writes are not carried over. `ttl_ms`, if given, must be the store's."""
        if ttl_ms is not None and check_ttl(ttl_ms) != self._ttl_ms:
            raise InvalidArgumentError(
                f"this store has ttl_ms {self._ttl_ms} (0: no TTL), not {ttl_ms}"
            )
        other = InMemoryKeyValueStore(ttl_ms=self._ttl_ms or None)
        other._data = self._data
        other._sorted = self._sorted
        other._offsets = dict(self._offsets)
        other.clock = self.clock
        return other

    def _backend_get(self, keys: list[bytes]) -> list[bytes | None]:
        d = self._data
        return [d.get(k) for k in keys]

    def _backend_scan(
        self, from_key: bytes | None, to_key: bytes | None, prefix: bytes | None, reverse: bool
    ) -> Iterator[tuple[bytes, bytes]]:
        keys = self._sorted
        if prefix is not None:
            lo = bisect.bisect_left(keys, prefix)
            chosen = []
            for k in keys[lo:]:
                if not k.startswith(prefix):
                    break
                chosen.append((k, self._data[k]))
        else:
            lo = 0 if from_key is None else bisect.bisect_left(keys, from_key)
            hi = len(keys) if to_key is None else bisect.bisect_right(keys, to_key)
            chosen = [(k, self._data[k]) for k in keys[lo:hi]]
        if reverse:
            chosen.reverse()
        return iter(chosen)

    def _backend_count(self) -> int:
        return len(self._data)

    def _backend_commit(
        self, writes: dict[bytes, bytes | None], offsets: dict[str, int], ranges: Ranges
    ) -> dict[str, int]:
        data, keys = self._data, self._sorted
        for begin, end in ranges:  # first, as everywhere: a bisected slice per range
            lo, hi = bisect.bisect_left(keys, begin), bisect.bisect_left(keys, end)
            for k in keys[lo:hi]:
                del data[k]
            del keys[lo:hi]  # in place: handles from reopen() share the list
        for k, v in writes.items():
            if v is None:
                data.pop(k, None)
            else:
                data[k] = v
        if writes:
            keys[:] = sorted(data)
        merged = dict(self._offsets)
        merged.update(offsets)
        return merged

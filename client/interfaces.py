"""Store interfaces, mirroring Kafka Streams' names in snake_case.

Every implementation (remote, local, in-memory) passes the same contract suite
(tests/test_contract_kv.py). Range bounds are inclusive, as in Kafka Streams.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Protocol, runtime_checkable


@runtime_checkable
class KeyValueStore(Protocol):
    """A key-value store shard with commit semantics.

    Writes are visible to this handle at once and become durable only at `commit`, all of them
    together with the input offsets, or none of them.
    """

    @property
    def committed_offsets(self) -> dict[str, int]: ...

    def get(self, key: bytes) -> bytes | None: ...

    def put(self, key: bytes, value: bytes | None) -> None: ...

    def put_if_absent(self, key: bytes, value: bytes) -> bytes | None: ...

    def put_all(self, entries: Iterable[tuple[bytes, bytes | None]]) -> None: ...

    def delete(self, key: bytes) -> bytes | None: ...

    def range(self, from_key: bytes | None, to_key: bytes | None) -> Iterator[tuple[bytes, bytes]]:
        ...

    def reverse_range(
        self, from_key: bytes | None, to_key: bytes | None
    ) -> Iterator[tuple[bytes, bytes]]: ...

    def prefix_scan(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]: ...

    def all(self) -> Iterator[tuple[bytes, bytes]]: ...

    def approximate_num_entries(self) -> int: ...

    def commit(self, offsets: dict[str, int] | None = None) -> dict[str, int]: ...

    def close(self) -> None: ...


@runtime_checkable
class WindowStore(Protocol):
    """A window store shard: values per (key, window start), retained by stream time.

    Windows past retention are invisible at once and a put into one is dropped (see
    `tierstore.client.retention`). Time ranges are inclusive.
    """

    @property
    def committed_offsets(self) -> dict[str, int]: ...

    def put(self, key: bytes, value: bytes | None, window_start_ms: int) -> None: ...

    def fetch(self, key: bytes, time_from_ms: int, time_to_ms: int) -> Iterator[tuple[int, bytes]]:
        ...

    def backward_fetch(
        self, key: bytes, time_from_ms: int, time_to_ms: int
    ) -> Iterator[tuple[int, bytes]]: ...

    def fetch_all(self, time_from_ms: int, time_to_ms: int) -> Iterator[tuple[bytes, int, bytes]]:
        ...

    def fetch_range(
        self, key_from: bytes | None, key_to: bytes | None, time_from_ms: int, time_to_ms: int
    ) -> Iterator[tuple[bytes, int, bytes]]: ...

    def commit(self, offsets: dict[str, int] | None = None) -> dict[str, int]: ...

    def close(self) -> None: ...


@runtime_checkable
class SessionStore(Protocol):
    """A session store shard: values per (key, start, end), retained by stream time measured
    on session ends. `find_sessions` finds [s, e] when e >= earliest_end and s <= latest_start.
    """

    @property
    def committed_offsets(self) -> dict[str, int]: ...

    def put(self, key: bytes, start_ms: int, end_ms: int, value: bytes) -> None: ...

    def remove(self, key: bytes, start_ms: int, end_ms: int) -> None: ...

    def fetch_session(self, key: bytes, start_ms: int, end_ms: int) -> bytes | None: ...

    def find_sessions(
        self, key: bytes, earliest_session_end_ms: int, latest_session_start_ms: int
    ) -> Iterator[tuple[int, int, bytes]]: ...

    def find_sessions_range(
        self, key_from: bytes | None, key_to: bytes | None, earliest_session_end_ms: int,
        latest_session_start_ms: int,
    ) -> Iterator[tuple[bytes, int, int, bytes]]: ...

    def commit(self, offsets: dict[str, int] | None = None) -> dict[str, int]: ...

    def close(self) -> None: ...

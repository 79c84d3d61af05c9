"""The narrow seams storage code depends on: a changelog and an object store.

Storage modules import these protocols, never confluent_kafka or boto3. The Kafka adapter lives in
``changelog_kafka``, the object-store adapters in ``objectstore``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

Header = tuple[str, bytes]


@dataclass(frozen=True, slots=True)
class ChangelogRecord:
    offset: int
    key: bytes
    value: bytes | None  # None is a tombstone
    headers: tuple[Header, ...]


class Changelog(Protocol):
    """One compacted topic per store, one partition per store partition."""

    def ensure_topic(
        self, store: str, num_partitions: int, retention_ms: int | None = None
    ) -> None:
        """Create the store's topic (compacted; with `retention_ms` also deleting records older
        than that, for window and session stores) if missing; raise ChangelogError if it exists
        with a different partition count."""

    def append_batch(
        self,
        store: str,
        partition: int,
        keys: Sequence[bytes],
        values: Sequence[bytes | None],
        headers: Sequence[Header],
        marker_value: bytes,
        marker_headers: Sequence[Header],
        while_waiting: Callable[[], None] | None = None,
    ) -> int:
        """Append records (each with `headers`) in order, then, only once all of them are
        acknowledged, a marker record (key b"") carrying `marker_headers`. Returns the marker's
        offset, or -1 if the broker did not report a usable one (after a retry taken for a
        duplicate). Raises ChangelogError if anything failed; the marker is then not written, though
        some data records may be. `while_waiting`, if given, runs while the broker acknowledges
        the data records (the caller overlaps its own work with the round trip)."""

    def read(
        self, store: str, partition: int, start_offset: int
    ) -> Iterator[list[ChangelogRecord]]:
        """Yield the records from `start_offset` to the end of the partition, in pages. The end is
        found with partition-EOF events, never the (unreliable) high watermark."""

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    key: str
    size: int
    last_modified: float  # unix seconds


class ObjectStore(Protocol):
    """A flat key space of immutable objects (S3 or a local directory)."""

    def put_bytes(self, key: str, data: bytes) -> None: ...

    def put_file(self, key: str, path: Path) -> None: ...

    def get_bytes(self, key: str) -> bytes:
        """Raises ObjectNotFoundError."""

    def get_file(self, key: str, path: Path) -> None:
        """Download to `path` (written whole or not at all). Raises ObjectNotFoundError."""

    def exists(self, key: str) -> bool: ...

    def list(self, prefix: str) -> Iterator[ObjectInfo]: ...

    def delete_many(self, keys: Sequence[str]) -> None: ...

    def describe(self) -> str:
        """A human-readable location, e.g. s3://bucket/prefix."""


@runtime_checkable
class HashingDownload(Protocol):
    """An object store that can hash a download as it streams it (both adapters can; a
    wrapper that cannot is still an ObjectStore: snapshots then hash the file afterwards)."""

    def get_file_sha256(self, key: str, path: Path) -> str:
        """get_file, returning the sha256 (hex) of the bytes written to `path`, computed while
        they were written (no second read of the file). Raises ObjectNotFoundError."""

"""The server's error hierarchy. Storage raises these; the servicer maps them to gRPC codes.

No module that raises these imports grpc: the one table that turns them into status codes lives
in ``tierstore.server.servicer``.
"""

from __future__ import annotations


class StateStoreError(Exception):
    """Root of every error the server raises on purpose."""


class InvalidArgumentError(StateStoreError):
    """The request is malformed: empty or oversized key, inverted range, wrong store type..."""


class StoreNotFoundError(StateStoreError):
    """The named store does not exist."""


class FencedError(StateStoreError):
    """The caller's epoch is not the shard's current epoch: a newer owner has claimed it."""


class AbortedError(StateStoreError):
    """The commit cannot be applied as sent (e.g. its staged writes were lost); retry the batch."""


class UnavailableError(StateStoreError):
    """A dependency (changelog, object store, disk) failed; nothing was applied."""


class WrongServerError(UnavailableError):
    """The shard is placed on another server; `owner` is its address (clients redirect)."""

    def __init__(self, message: str, owner: str) -> None:
        super().__init__(message)
        self.owner = owner


class OffsetsNotReachedError(StateStoreError):
    """A read's min_offsets were not reached by the shard's committed input offsets before the
    read's deadline (DEADLINE_EXCEEDED on the wire)."""


class ResourceExhaustedError(StateStoreError):
    """A configured limit was reached (staging bytes, disk space, ...)."""


class WaitsFullError(ResourceExhaustedError):
    """Every slot for reads waiting on min_offsets is taken: retry (the client does)."""


class ChangelogError(UnavailableError):
    """Appending to or reading from the changelog failed."""


class ObjectStoreError(UnavailableError):
    """A call to the object store failed after its retries."""


class ObjectNotFoundError(ObjectStoreError):
    """The object does not exist."""


class SnapshotCorruptError(StateStoreError):
    """A snapshot's manifest or one of its files failed verification (size or checksum)."""

"""The client's error hierarchy. Every failure a store call raises is a StateStoreError.

gRPC status codes map onto these classes in one table (``tierstore.client._grpc``); the
original ``grpc.RpcError`` is kept as ``__cause__``.
"""

from __future__ import annotations


class StateStoreError(Exception):
    """Root of every tierstore client error."""


class FencedError(StateStoreError):
    """This handle's epoch was fenced: another owner claimed the shard. Reopen to continue;
    nothing of the refused batch was applied."""


class StoreNotFoundError(StateStoreError):
    """The store does not exist."""


class InvalidArgumentError(StateStoreError):
    """Bad input: empty or oversized key or value, inverted range, wrong store type..."""


class UnavailableError(StateStoreError):
    """The server or one of its dependencies is unreachable or failing. A commit that raises
    this may or may not have been applied, and its handle is closed: reopen the store and resume
    from `committed_offsets`."""


class OffsetsNotReachedError(UnavailableError):
    """A reader's `min_offsets` were not reached in time: the shard's committed input offsets
    stayed below the required ones until the reader's `wait_s` ran out (DEADLINE_EXCEEDED on
    the wire; the message names the shard, where its offsets are, and what was required).
    Nothing is wrong with the store: the writer has not committed that far yet. Retry later,
    wait longer, or read without min_offsets."""


class AbortedError(StateStoreError):
    """The commit could not be applied as sent (for example the server lost the writes staged
    for it in a restart). Nothing was applied and the handle is closed: reopen and reprocess
    from committed_offsets."""


class ResourceExhaustedError(StateStoreError):
    """A server limit was reached (staged bytes, message size...)."""


class DataLossError(StateStoreError):
    """Every snapshot of the shard failed verification."""


class PermissionDeniedError(StateStoreError):
    """The token does not allow this operation on this store."""


class UnauthenticatedError(StateStoreError):
    """No token, or an unknown token, was presented."""


class StoreClosedError(StateStoreError):
    """The store handle was closed (or fenced) and cannot be used."""

"""gRPC plumbing for the client: the status-code table and the call wrapper."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from typing import ParamSpec, TypeVar

import grpc

from tierstore.client import errors

ERROR_OF: dict[grpc.StatusCode, type[errors.StateStoreError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: errors.InvalidArgumentError,
    grpc.StatusCode.OUT_OF_RANGE: errors.InvalidArgumentError,
    grpc.StatusCode.NOT_FOUND: errors.StoreNotFoundError,
    grpc.StatusCode.FAILED_PRECONDITION: errors.FencedError,
    grpc.StatusCode.ABORTED: errors.AbortedError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: errors.ResourceExhaustedError,
    grpc.StatusCode.UNAVAILABLE: errors.UnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: errors.UnavailableError,
    grpc.StatusCode.DATA_LOSS: errors.DataLossError,
    grpc.StatusCode.PERMISSION_DENIED: errors.PermissionDeniedError,
    grpc.StatusCode.UNAUTHENTICATED: errors.UnauthenticatedError,
}


# Trailing metadata the server sets on a min_offsets timeout (tierstore.server.servicer).
ERROR_KEY = "tierstore-error"
OFFSETS_NOT_REACHED = "offsets-not-reached"
WAITS_FULL = "waits-full"  # RESOURCE_EXHAUSTED: the server's min_offsets wait slots are taken


def waits_full(exc: grpc.RpcError) -> bool:
    """True if the server refused a min_offsets read only because too many reads wait there."""
    code = exc.code() if hasattr(exc, "code") else None
    return code is grpc.StatusCode.RESOURCE_EXHAUSTED and _reason(exc) == WAITS_FULL


def _reason(exc: grpc.RpcError) -> str | None:
    try:
        trailing = exc.trailing_metadata() if hasattr(exc, "trailing_metadata") else None
    except Exception:  # an error raised before the call had any metadata
        return None
    for key, value in trailing or ():
        if key == ERROR_KEY:
            return str(value)
    return None


def translate(exc: grpc.RpcError) -> errors.StateStoreError:
    code = exc.code() if hasattr(exc, "code") else None
    detail = exc.details() if hasattr(exc, "details") else str(exc)
    cls = ERROR_OF.get(code, errors.StateStoreError) if code is not None else errors.StateStoreError
    if code is grpc.StatusCode.DEADLINE_EXCEEDED and _reason(exc) == OFFSETS_NOT_REACHED:
        cls = errors.OffsetsNotReachedError
    name = code.name if code is not None else "UNKNOWN"
    err = cls(f"{name}: {detail}")
    err.code = code  # type: ignore[attr-defined]
    return err


P = ParamSpec("P")
R = TypeVar("R")


def rpc(fn: Callable[P, R]) -> Callable[P, R]:
    """Turn grpc.RpcError raised by `fn` into the client's error classes, keeping the cause."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except grpc.RpcError as exc:
            raise translate(exc) from exc

    return wrapper


T = TypeVar("T")


def stream(it: Iterator[T]) -> Iterator[T]:
    """The same translation for a server-streaming call, applied while it is consumed."""
    try:
        yield from it
    except grpc.RpcError as exc:
        raise translate(exc) from exc

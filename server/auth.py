"""Token authentication and per-store-prefix authorization, as one gRPC server interceptor.

The token file (``--auth-tokens FILE``) is TOML, or JSON when its name ends in ``.json``::

    [[tokens]]
    name = "orders-worker"            # a label for logs and error messages (not a secret)
    token_sha256 = "9f86d081884c..."  # sha256 hex of the token, so the file holds no secret
    # token = "s3cr3t"                # ...or the token itself, in plain text
    permissions = [
      { store_prefix = "orders-", access = "read-write" },
      { store_prefix = "", access = "read" },    # "" matches every store
    ]

A client sends ``authorization: Bearer <token>`` metadata. Every StateStore call needs a known
token; health checks and reflection stay open. Open, Stage, Commit, Close and Snapshot need
"read-write" on the store they name, Get, GetStream, Scan, Count, DescribeStore and Inspect
need "read" (GetStream checks the token when it starts and the store of every request in it;
a refused request is answered in the stream); "read-write" includes "read"; Inspect of every
store needs a permission with prefix "". A
call is allowed when any permission of its token whose prefix starts the store name grants the
access it needs.

Presented tokens are hashed and compared with every known digest in constant time
(hmac.compare_digest). No token, digest or Authorization value is ever logged or echoed in a
status message; tokens are referred to by their `name`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc
from google.protobuf.message import Message

from tierstore import secretfile
from tierstore.server.config import ConfigError
from tierstore.v1 import store_pb2 as pb

log = logging.getLogger(__name__)

SERVICE_NAME = "tierstore.v1.StateStore"
READ = "read"
READ_WRITE = "read-write"
ACCESS_LEVELS = (READ, READ_WRITE)

# The access each StateStore method needs on the store named in its request. A method missing
# here is refused (fail closed), so a new RPC cannot slip through unchecked.
ACCESS_OF: Mapping[str, str] = {
    "Open": READ_WRITE,
    "Stage": READ_WRITE,
    "Commit": READ_WRITE,
    "Close": READ_WRITE,
    "Snapshot": READ_WRITE,
    "Get": READ,
    "GetStream": READ,  # checked at the stream's start (the token) and per request (the store)
    "Scan": READ,
    "Count": READ,
    "DescribeStore": READ,
    # Operator status. Its empty store ("every store") is only matched by the prefix "", so
    # inspecting everything takes read access to every store.
    "Inspect": READ,
}

# Every request message of the service has `string store = 1`, so a DescribeStoreRequest parse
# of any request's bytes yields the same `store` as the full parse would (other fields are kept
# as unknown fields and ignored).
_StoreOnly = pb.DescribeStoreRequest


@dataclass(frozen=True)
class Refusal:
    """A request of a client stream that the interceptor refused: the handler answers it with
    this status in the stream instead of serving it."""

    code: grpc.StatusCode
    message: str


_HEX64 = re.compile(r"[0-9a-f]{64}")
_ENTRY_KEYS = {"name", "token", "token_sha256", "permissions"}
_PERMISSION_KEYS = {"store_prefix", "access"}


class AuthConfigError(ConfigError):
    """The token file is unreadable or malformed; the message names the file and entry (never
    a token)."""


@dataclass(frozen=True)
class Permission:
    store_prefix: str
    access: str  # READ or READ_WRITE

    def allows(self, store: str, access: str) -> bool:
        return store.startswith(self.store_prefix) and (
            access == READ or self.access == READ_WRITE
        )


@dataclass(frozen=True)
class Grant:
    """What one token may do. `digest` is the sha256 of the token; `name` is safe to log."""

    name: str
    digest: bytes
    permissions: tuple[Permission, ...]

    def allows(self, store: str, access: str) -> bool:
        return any(p.allows(store, access) for p in self.permissions)


class TokenTable:
    """The known tokens. `authenticate` is constant-time in the presented token."""

    def __init__(self, grants: Sequence[Grant]) -> None:
        digests = [g.digest for g in grants]
        if len(set(digests)) != len(digests):
            raise AuthConfigError("the same token appears in more than one entry")
        self.grants = tuple(grants)

    def authenticate(self, token: str) -> Grant | None:
        """The grant of `token`, or None. Compares against every digest, so the time taken
        does not depend on which entry (if any) matched."""
        presented = hashlib.sha256(token.encode()).digest()
        found: Grant | None = None
        for g in self.grants:
            if hmac.compare_digest(presented, g.digest):
                found = g
        return found

    @classmethod
    def load(cls, path: str | Path) -> TokenTable:
        """Read a token file (TOML, or JSON for *.json).

        Raises AuthConfigError naming the file and the entry at fault when the file cannot be
        read or parsed, an entry has unknown keys, no token or both token forms, a digest that
        is not 64 hex digits, or an access other than "read" / "read-write"."""
        p = Path(path)
        try:
            raw = p.read_bytes()
            doc = json.loads(raw) if p.suffix == ".json" else tomllib.loads(raw.decode())
        except (OSError, ValueError) as exc:  # JSONDecodeError, TOMLDecodeError: ValueError
            raise AuthConfigError(f"auth tokens file {p}: {type(exc).__name__}: "
                                  f"{_safe_reason(exc)}") from None
        entries = doc.get("tokens") if isinstance(doc, dict) else None
        if not isinstance(entries, list):
            raise AuthConfigError(f"auth tokens file {p}: expected a list `tokens`")
        table = cls([_grant(p, i, e) for i, e in enumerate(entries)])
        # Plain tokens are secrets; a file of token_sha256 digests only is not.
        if any(isinstance(e, dict) and "token" in e for e in entries):
            secretfile.warn(p, "auth tokens file", log,
                            " (or store token_sha256 digests instead of tokens)")
        return table


def _safe_reason(exc: BaseException) -> str:
    # Parser messages can quote the offending line, which may hold a token: keep only the
    # position-free gist for parse errors.
    if isinstance(exc, OSError):
        return exc.strerror or "cannot read"
    return "not valid " + ("JSON" if isinstance(exc, json.JSONDecodeError) else "TOML")


def _grant(path: Path, i: int, entry: Any) -> Grant:
    where = f"auth tokens file {path}: tokens[{i}]"
    if not isinstance(entry, dict):
        raise AuthConfigError(f"{where}: expected a table/object")
    unknown = set(entry) - _ENTRY_KEYS
    if unknown:
        raise AuthConfigError(f"{where}: unknown keys {sorted(unknown)}")
    name = str(entry.get("name") or f"tokens[{i}]")
    token, hexdigest = entry.get("token"), entry.get("token_sha256")
    if (token is None) == (hexdigest is None):
        raise AuthConfigError(f"{where} ({name}): give exactly one of token, token_sha256")
    if token is not None:
        if not isinstance(token, str) or not token:
            raise AuthConfigError(f"{where} ({name}): token must be a non-empty string")
        digest = hashlib.sha256(token.encode()).digest()
    else:
        if not isinstance(hexdigest, str) or not _HEX64.fullmatch(hexdigest.lower()):
            raise AuthConfigError(f"{where} ({name}): token_sha256 must be 64 hex digits")
        digest = bytes.fromhex(hexdigest)
    perms = entry.get("permissions", [])
    if not isinstance(perms, list):
        raise AuthConfigError(f"{where} ({name}): permissions must be a list")
    out = []
    for j, perm in enumerate(perms):
        pwhere = f"{where} ({name}).permissions[{j}]"
        if not isinstance(perm, dict) or set(perm) - _PERMISSION_KEYS:
            raise AuthConfigError(f"{pwhere}: expected {{store_prefix, access}}")
        prefix, access = perm.get("store_prefix", ""), perm.get("access")
        if not isinstance(prefix, str):
            raise AuthConfigError(f"{pwhere}: store_prefix must be a string")
        if access not in ACCESS_LEVELS:
            raise AuthConfigError(f"{pwhere}: access must be 'read' or 'read-write', "
                                  f"got {access!r}")
        out.append(Permission(prefix, str(access)))
    return Grant(name, digest, tuple(out))


def bearer_token(metadata: Sequence[tuple[str, str | bytes]] | None) -> str | None:
    """The token of the single `authorization: Bearer <token>` header, or None when there is
    none, more than one, or it is not a Bearer credential."""
    values = [v for k, v in (metadata or ()) if k.lower() == "authorization"]
    if len(values) != 1:
        return None
    value = values[0].decode("latin-1") if isinstance(values[0], bytes) else values[0]
    scheme, _, token = value.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token


M = TypeVar("M", bound=Message)


def _parsed(cls: type[M], data: bytes) -> M:
    """`data` parsed as a `cls`; ValueError naming only the kind of failure."""
    msg = cls()
    try:
        msg.ParseFromString(data)
    except Exception as exc:  # DecodeError, or RuntimeError/ValueError for bad UTF-8
        raise ValueError(f"malformed request: {type(exc).__name__}") from None
    return msg


def store_of(request: object) -> str:
    """The store a request names. Raises ValueError when the bytes are not a request."""
    if isinstance(request, bytes):
        return str(_parsed(_StoreOnly, request).store)
    return str(getattr(request, "store", ""))


def store_of_stream_request(request: object) -> str:
    """The store a GetStream request (a StreamRequest: a get or a scan) names. Raises
    ValueError when the bytes are not one."""
    if not isinstance(request, bytes):
        raise ValueError("malformed request: not bytes")
    msg = _parsed(pb.StreamRequest, request)
    kind = msg.WhichOneof("read")
    if kind is None:
        raise ValueError("malformed request: a StreamRequest needs `get` or `scan`")
    return str(msg.get.store if kind == "get" else msg.scan.store)


def _denying(handler: grpc.RpcMethodHandler, code: grpc.StatusCode,
             message: str) -> grpc.RpcMethodHandler:
    """A handler of the same kind as `handler` that refuses every call with `code`."""

    def refuse(request: object, context: grpc.ServicerContext) -> Any:
        context.abort(code, message)

    return _with_behavior(handler, refuse)


def _with_behavior(handler: grpc.RpcMethodHandler,
                   fn: Callable[[Any, grpc.ServicerContext], Any]) -> grpc.RpcMethodHandler:
    kw = {"request_deserializer": handler.request_deserializer,
          "response_serializer": handler.response_serializer}
    if handler.request_streaming:
        if not handler.stream_stream:
            raise TypeError("auth interceptor: client-streaming calls are not supported")
        return grpc.stream_stream_rpc_method_handler(fn, **kw)
    if not handler.unary_unary and not handler.unary_stream:
        raise TypeError("auth interceptor: a handler without a behavior")
    if handler.response_streaming:
        def stream(request: object, context: grpc.ServicerContext) -> Any:
            result = fn(request, context)
            yield from result if result is not None else ()
        return grpc.unary_stream_rpc_method_handler(stream, **kw)
    return grpc.unary_unary_rpc_method_handler(fn, **kw)


class AuthInterceptor(grpc.ServerInterceptor):
    """Authenticates every StateStore call and checks its access to the store it names.

    Failures: no or malformed Authorization -> UNAUTHENTICATED "missing bearer token"; a token
    not in the table -> UNAUTHENTICATED "unknown token"; a token without the access needed ->
    PERMISSION_DENIED naming the method, the store and the access; a request whose store cannot
    be read -> INVALID_ARGUMENT. A refused call never reaches the servicer, so nothing of it is
    applied. Other services (health, reflection) pass through untouched.
    """

    def __init__(self, tokens: TokenTable) -> None:
        self.tokens = tokens

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(details)
        service, _, method = details.method.lstrip("/").rpartition("/")
        if service != SERVICE_NAME or handler is None:
            return handler
        token = bearer_token(details.invocation_metadata)
        if token is None:
            log.info("refused %s: missing bearer token", method)
            return _denying(handler, grpc.StatusCode.UNAUTHENTICATED, "missing bearer token")
        grant = self.tokens.authenticate(token)
        if grant is None:
            log.info("refused %s: unknown token", method)
            return _denying(handler, grpc.StatusCode.UNAUTHENTICATED, "unknown token")
        access = ACCESS_OF.get(method)
        if access is None:
            return _denying(handler, grpc.StatusCode.PERMISSION_DENIED,
                            f"method {method} has no access rule")
        return _with_behavior(handler, self._checked(handler, grant, method, access))

    @staticmethod
    def _checked(handler: grpc.RpcMethodHandler, grant: Grant, method: str, access: str
                 ) -> Callable[[Any, grpc.ServicerContext], Any]:
        if handler.stream_stream:
            return AuthInterceptor._checked_stream(handler.stream_stream, grant, method, access)
        inner = handler.unary_stream if handler.response_streaming else handler.unary_unary

        def behavior(request: object, context: grpc.ServicerContext) -> Any:
            try:
                store = store_of(request)
            except ValueError as exc:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            if not grant.allows(store, access):
                log.info("refused %s on store %r for token %s: needs %s",
                         method, store, grant.name, access)
                context.abort(
                    grpc.StatusCode.PERMISSION_DENIED,
                    f"token {grant.name!r} lacks {access} access to store {store!r} "
                    f"(needed by {method})",
                )
            return inner(request, context)

        return behavior

    @staticmethod
    def _checked_stream(inner: Callable[[Any, grpc.ServicerContext], Any], grant: Grant,
                        method: str, access: str
                        ) -> Callable[[Any, grpc.ServicerContext], Any]:
        """The token was checked when the stream started; each request's store is checked as
        it arrives, and a refused one reaches the handler as a Refusal (the stream goes on)."""

        def checked(requests: Any) -> Any:
            for request in requests:
                try:
                    store = store_of_stream_request(request)
                except ValueError as exc:
                    yield Refusal(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
                    continue
                if not grant.allows(store, access):
                    log.info("refused %s on store %r for token %s: needs %s",
                             method, store, grant.name, access)
                    yield Refusal(grpc.StatusCode.PERMISSION_DENIED,
                                  f"token {grant.name!r} lacks {access} access to store "
                                  f"{store!r} (needed by {method})")
                    continue
                yield request

        def behavior(requests: Any, context: grpc.ServicerContext) -> Any:
            return inner(checked(requests), context)

        return behavior

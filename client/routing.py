"""Routing calls to the server that owns a shard, with one channel per server.

The client starts from its seed addresses. A server that does not own a shard answers
UNAVAILABLE with the owner's address in the trailing metadata (`tierstore-owner`); the router
caches that placement and retries there. When a server cannot be reached, the router tries the
other known servers (one of them owns the shard now, or knows who does) until the deadline.

Stale reads (`stale=True`: the request carries allow_stale) go to the owner as usual; when it
cannot be reached, the other servers are tried in turn, and a standby of the shard answers at
once from its copy instead of redirecting. A server that redirects to a server that just
failed is skipped for the rest of that call, so a stale read does not bounce between a live
server and the dead owner until the failover.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from tierstore.client._grpc import waits_full
from tierstore.client.errors import UnavailableError
from tierstore.client.getstream import GetStreams
from tierstore.client.streamwatch import StreamWatch
from tierstore.v1 import store_pb2 as pb
from tierstore.v1 import store_pb2_grpc

OWNER_KEY = "tierstore-owner"


def owner_of(exc: grpc.RpcError) -> str | None:
    """The owner's address if `exc` is a wrong-server answer, else None."""
    trailing = exc.trailing_metadata() if hasattr(exc, "trailing_metadata") else None
    for key, value in trailing or ():
        if key == OWNER_KEY:
            return str(value)
    return None


class RetriedRpcError(grpc.RpcError):
    """The deadline ran out in a call that was retrying another error: the deadline's status,
    with the retried error in its details, so that the cause a caller can act on (e.g. the
    server's "disk full") is not replaced by a bare "Deadline Exceeded"."""

    def __init__(self, final: grpc.RpcError, retried: grpc.RpcError, seconds: float) -> None:
        super().__init__()
        self._final, self._retried, self._seconds = final, retried, seconds

    def code(self) -> grpc.StatusCode:
        code: grpc.StatusCode = self._final.code()
        return code

    def details(self) -> str:
        final = self._final.details()
        retried = self._retried
        return (f"{final} after retrying for {self._seconds:.1f}s; the last error was "
                f"{retried.code().name}: {retried.details()}")

    def trailing_metadata(self) -> Any:
        return self._final.trailing_metadata()

    def __str__(self) -> str:
        return f"{self.code().name}: {self.details()}"


def _explained(exc: grpc.RpcError, retried: grpc.RpcError | None,
               started: float) -> grpc.RpcError:
    """`exc`, or, when it is the deadline cutting short a retry of `retried`, both together."""
    deadline = grpc.StatusCode.DEADLINE_EXCEEDED
    if retried is None or exc.code() is not deadline or retried.code() is deadline:
        return exc
    return RetriedRpcError(exc, retried, time.monotonic() - started)


class Router:
    def __init__(
        self,
        seeds: list[str],
        make_channel: Callable[[str], grpc.Channel],
        metadata: tuple[tuple[str, str], ...],
    ) -> None:
        self.seeds = list(dict.fromkeys(seeds))
        self._make_channel = make_channel
        self.metadata = metadata
        self._lock = threading.Lock()
        self._channels: dict[str, grpc.Channel] = {}
        self._stubs: dict[str, store_pb2_grpc.StateStoreStub] = {}
        # (address, method) -> the stub's callable: read without the lock on the hot path (a
        # dict lookup is atomic), filled and cleared under it.
        self._calls: dict[tuple[str, str], Any] = {}
        self._placement: dict[tuple[str, int], str] = {}
        self._known: list[str] = list(self.seeds)
        self.redirects = 0
        self._watch = StreamWatch()
        self._gets = GetStreams(self._watch)

    @property
    def stream_reads(self) -> int:
        """Reads answered on a GetStream so far (the rest went through unary calls)."""
        return self._gets.answered

    def stub(self, address: str) -> store_pb2_grpc.StateStoreStub:
        with self._lock:
            stub = self._stubs.get(address)
            if stub is None:
                channel = self._make_channel(address)
                self._channels[address] = channel
                stub = self._stubs[address] = store_pb2_grpc.StateStoreStub(channel)
                if address not in self._known:
                    self._known.append(address)
            return stub

    def channel(self, address: str) -> grpc.Channel:
        self.stub(address)
        return self._channels[address]

    def address_for(self, shard: tuple[str, int] | None) -> str:
        if shard is not None:
            placed = self._placement.get(shard)  # atomic; written under the lock
            if placed is not None:
                return placed
        return self._known[0]

    def _callable(self, address: str, method: str) -> Any:
        fn = self._calls.get((address, method))
        if fn is None:
            fn = getattr(self.stub(address), method)
            with self._lock:
                if address in self._stubs:  # not closed meanwhile
                    self._calls[(address, method)] = fn
        return fn

    def _candidates(self, shard: tuple[str, int] | None) -> list[str]:
        first = self.address_for(shard)
        with self._lock:
            return [first, *(a for a in self._known if a != first)]

    def call(
        self, shard: tuple[str, int] | None, method: str, request: Any, timeout: float | None,
        retry_unavailable: bool = False, stale: bool = False,
    ) -> Any:
        """A unary call to the shard's owner, following redirects. An unreachable server is
        retried (on the other known servers first) until the deadline when there are several
        servers, or when `retry_unavailable` says the call is safe to repeat; with one server
        and no such promise, UNAVAILABLE is raised at once."""
        budget = timeout if timeout is not None else 30.0
        started = time.monotonic()
        deadline = started + budget
        tried_down: set[str] = set()
        address = self.address_for(shard)
        delay = 0.02
        remaining = max(budget, 0.05)  # the first attempt: the whole budget
        retried: grpc.RpcError | None = None  # the error the attempts so far are retrying
        while True:
            try:
                return self._callable(address, method)(request, timeout=remaining,
                                                       metadata=self.metadata)
            except grpc.RpcError as exc:
                if (owner_of(exc) is None and exc.code() is grpc.StatusCode.UNAVAILABLE
                        and not retry_unavailable and len(self._known) < 2):
                    raise
                nxt = self._next_address(exc, shard, address, tried_down, stale)
                if nxt is None or time.monotonic() >= deadline:
                    if (why := _explained(exc, retried, started)) is not exc:
                        raise why from exc
                    raise
                retried = exc
                if nxt == address:
                    time.sleep(delay)
                    delay = min(delay * 2, 0.5)
                address = nxt
                remaining = max(deadline - time.monotonic(), 0.05)

    def get(self, shard: tuple[str, int], request: Any, timeout: float,
            stale: bool = False) -> Any:
        """A Get: on the server's GetStream when it can answer there (see
        client/getstream.py), else the unary call with its redirects and retries."""
        if not request.min_offsets:  # a wait for offsets holds the stream: unary
            resp = self._ask(shard, pb.StreamRequest(get=request), timeout)
            if resp is not None:
                return resp.result
        return self.call(shard, "Get", request, timeout, stale=stale)

    def scan_page(self, shard: tuple[str, int], request: Any, timeout: float
                  ) -> tuple[Any, bool] | None:
        """The first page of a Scan's range and whether the range goes on, answered on a
        GetStream; None when it was not (the caller then makes the Scan call)."""
        if request.min_offsets:
            return None
        resp = self._ask(shard, pb.StreamRequest(scan=request), timeout)
        return (resp.page, resp.more) if resp is not None else None

    def _ask(self, shard: tuple[str, int], request: Any, timeout: float) -> Any:
        address = self.address_for(shard)
        return self._gets.ask(address, self._callable(address, "GetStream"), self.metadata,
                              request, timeout)

    def stream(
        self, shard: tuple[str, int] | None, method: str, request: Any, stale: bool = False,
        timeout: float = 30.0, idle_s: float | None = None,
    ) -> Iterator[Any]:
        """A server-streaming call; redirects are followed before the first message. With
        `idle_s`, a wait of more than that for any message cancels the call (UnavailableError):
        see client/streamwatch.py."""
        deadline = time.monotonic() + timeout
        tried_down: set[str] = set()
        address = self.address_for(shard)
        while True:
            it = getattr(self.stub(address), method)(request, metadata=self.metadata)
            try:
                first = self._next(it, idle_s, address)
            except StopIteration:
                return
            except grpc.RpcError as exc:
                if (owner_of(exc) is None and exc.code() is grpc.StatusCode.UNAVAILABLE
                        and len(self._known) < 2):
                    raise
                nxt = self._next_address(exc, shard, address, tried_down, stale)
                if nxt is None or time.monotonic() >= deadline:
                    raise
                if nxt == address:
                    time.sleep(0.05)
                address = nxt
                continue
            yield first
            while True:
                try:
                    msg = self._next(it, idle_s, address)
                except StopIteration:
                    return
                yield msg

    def _next(self, it: Any, idle_s: float | None, address: str) -> Any:
        if idle_s is None:
            return next(it)
        token = self._watch.waiting(it, idle_s)
        try:
            msg = next(it)
        except BaseException as exc:
            if self._watch.done(token) and isinstance(exc, grpc.RpcError):
                raise _idle(address, idle_s) from exc
            raise
        if self._watch.done(token):  # cancelled just as the message came: the call is over
            raise _idle(address, idle_s)
        return msg

    def _next_address(
        self, exc: grpc.RpcError, shard: tuple[str, int] | None, address: str,
        tried_down: set[str], stale: bool = False,
    ) -> str | None:
        if waits_full(exc):
            return address  # the server's wait slots are taken: ask it again after a pause
        owner = owner_of(exc)
        if owner is not None and stale and owner in tried_down:
            # This server has no standby copy and names an owner that just failed: skip it
            # too, and keep looking for a standby.
            self.redirects += 1
            tried_down.add(address)
            return self._untried(shard, tried_down, pause=True)
        if owner is not None:
            self.redirects += 1
            if shard is not None:
                with self._lock:
                    self._placement[shard] = owner
            return owner
        if exc.code() is not grpc.StatusCode.UNAVAILABLE:
            return None
        # The server is unreachable or shutting down: forget the placement, try another.
        tried_down.add(address)
        with self._lock:
            if shard is not None and self._placement.get(shard) == address:
                del self._placement[shard]
        return self._untried(shard, tried_down, pause=stale)

    def _untried(self, shard: tuple[str, int] | None, tried_down: set[str],
                 pause: bool = False) -> str:
        for candidate in self._candidates(shard):
            if candidate not in tried_down:
                return candidate
        tried_down.clear()  # every server failed once: start over (a restart may be under way)
        if pause:
            time.sleep(0.05)  # a whole round failed: do not spin while a failover runs
        return self._candidates(shard)[0]

    def close(self) -> None:
        self._gets.close()
        self._watch.close()
        with self._lock:
            for channel in self._channels.values():
                channel.close()
            self._channels.clear()
            self._stubs.clear()
            self._calls.clear()


def _idle(address: str, idle_s: float) -> UnavailableError:
    return UnavailableError(
        f"UNAVAILABLE: {address} sent nothing on the stream for {idle_s:g}s (the client's "
        "timeout): the server is stuck or unreachable; the call was cancelled")

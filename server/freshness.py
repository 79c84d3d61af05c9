"""Reader options on the server: stale reads from a standby copy, and waits for input offsets.

allow_stale
    A reader (epoch 0) may be answered by a server that follows the shard as a standby
    (server/standby.py) instead of by its owner. The standby's copy holds committed batches
    only, up to its last catch-up (its lag: `Standbys.lag_seconds`, shown by inspect and the
    `tierstore_standby_lag_seconds` gauge). A server that is neither the owner nor a standby of
    the shard redirects as usual: it never loads or restores a shard for a stale read. On the
    owner, allow_stale changes nothing. An owner's own reads (epoch > 0) may not ask for it.

min_offsets
    The read is answered only once the shard's committed input offsets (`shard.meta.offsets`,
    merged by every commit) reach each named offset: ``committed.get(name, -1) >= required``,
    so a name the shard has never committed counts as -1 and is never reached by a
    requirement of 0 or more. The server polls (2 ms, doubling to 50 ms) for up to the
    request's `min_offsets_wait_ms` (capped at MAX_WAIT_MS and at the call's own deadline; 0
    checks once; a cancelled call stops waiting), then raises
    OffsetsNotReachedError, which goes on the wire as DEADLINE_EXCEEDED with the message
    ``state of STORE/P is at {...}, below the required {...} after N s``. A standby being
    waited on is caught up from the changelog every STANDBY_CATCH_UP_S instead of at its
    next round. The shard is looked up again on every poll, so a wait that spans a hand-over
    follows the shard: a standby promoted here keeps serving, a shard placed elsewhere is
    answered with a redirect (the client resends the read there).

Each waiting read holds one of the server's gRPC worker threads (`grpc_workers`) while it
waits, so at most half of them (`max_waiting`) may wait at once: the others would be left for
commits and plain reads. A read that would wait beyond that is answered at once with
WaitsFullError (RESOURCE_EXHAUSTED, `tierstore-error: waits-full` in the trailing metadata),
which the client retries with back-off until its own deadline.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from tierstore.server.errors import (
    InvalidArgumentError,
    OffsetsNotReachedError,
    UnavailableError,
    WaitsFullError,
)
from tierstore.server.shard import Shard

if TYPE_CHECKING:
    from tierstore.server.service import StoreService

MAX_WAIT_MS = 300_000
STANDBY_CATCH_UP_S = 0.1
_FIRST_POLL_S = 0.002
_MAX_POLL_S = 0.05


@dataclass(frozen=True)
class ReadFreshness:
    """A read's options, as the request carries them."""

    allow_stale: bool = False
    min_offsets: Mapping[str, int] = field(default_factory=dict)
    wait_ms: int = 0
    # The caller's own deadline, if it has one (seconds left): the wait never outlasts it.
    deadline_s: float | None = None
    # False once the caller has gone away (a cancelled call): the wait stops.
    active: Callable[[], bool] | None = None

    @property
    def plain(self) -> bool:
        return not self.allow_stale and not self.min_offsets

    def check(self, epoch: int) -> None:
        if self.allow_stale and epoch:
            raise InvalidArgumentError(
                "allow_stale is for readers (epoch 0); an owner reads its own shard"
            )
        for name, off in self.min_offsets.items():
            if not name:
                raise InvalidArgumentError("min_offsets: offset names must be non-empty")
            if off < 0:
                raise InvalidArgumentError(f"min_offsets: offset {name!r} is negative ({off})")


def behind(committed: Mapping[str, int], required: Mapping[str, int]) -> dict[str, int]:
    """The required offsets not reached yet (a name never committed counts as -1)."""
    return {n: off for n, off in required.items() if committed.get(n, -1) < off}


def _fmt(offsets: Mapping[str, int]) -> str:
    return "{" + ", ".join(f"{n!r}: {o}" for n, o in sorted(offsets.items())) + "}"


class ReadRouter:
    """Finds the shard that answers a read, honouring its options."""

    def __init__(self, svc: StoreService, max_waiting: int) -> None:
        self.svc = svc
        self.max_waiting = max(1, max_waiting)
        self._slots = threading.BoundedSemaphore(self.max_waiting)

    def shard(self, store: str, partition: int, epoch: int,
              fresh: ReadFreshness | None) -> Shard:
        if fresh is None or fresh.plain:
            return self.svc._owned(store, partition)
        fresh.check(epoch)
        shard = self._resolve(store, partition, fresh.allow_stale)
        if not fresh.min_offsets:
            return shard
        if not behind(shard.meta.offsets, fresh.min_offsets):
            return shard  # already there: no wait, no slot
        if not self._slots.acquire(blocking=False):
            raise WaitsFullError(
                f"{self.max_waiting} reads already wait for min_offsets on this server (at most "
                "half of --grpc-workers may): retry, or raise --grpc-workers"
            )
        try:
            return self._wait(store, partition, shard, fresh)
        finally:
            self._slots.release()

    def standby_copy(self, store: str, partition: int) -> Shard | None:
        """The shard if this server follows it as a standby and does not own it."""
        svc = self.svc
        svc._check_open()
        m = svc.membership
        if m is None or not m.enabled or svc.standbys is None:
            return None
        if m.owner(store, partition) == m.cfg.advertise:
            return None  # the owner answers as the owner (promoting its standby copy)
        shard = svc.registry.peek(store, partition)
        return shard if shard is not None and shard.standby else None

    def _resolve(self, store: str, partition: int, allow_stale: bool) -> Shard:
        if allow_stale:
            copy = self.standby_copy(store, partition)
            if copy is not None:
                return copy
        return self.svc._owned(store, partition)

    def _wait(self, store: str, partition: int, shard: Shard, fresh: ReadFreshness) -> Shard:
        started = time.monotonic()
        deadline = started + min(fresh.wait_ms, MAX_WAIT_MS) / 1000
        if fresh.deadline_s is not None:  # answer before the caller gives up, not after
            deadline = min(deadline, started + max(fresh.deadline_s - 0.05, 0.0))
        delay = _FIRST_POLL_S
        caught_up_at = 0.0
        while True:
            committed = dict(shard.meta.offsets)
            missing = behind(committed, fresh.min_offsets)
            if not missing:
                return shard
            now = time.monotonic()
            if now >= deadline:
                at = {n: committed.get(n, -1) for n in fresh.min_offsets}
                copy = " (standby copy)" if shard.standby else ""
                raise OffsetsNotReachedError(
                    f"state of {shard.name}{copy} is at {_fmt(at)}, below the required "
                    f"{_fmt(fresh.min_offsets)} after {round(deadline - started, 1):g} s"
                )
            if fresh.active is not None and not fresh.active():
                raise UnavailableError(f"read of {shard.name} cancelled while waiting for "
                                       f"min_offsets")
            standbys = self.svc.standbys
            if shard.standby and standbys is not None and now - caught_up_at >= STANDBY_CATCH_UP_S:
                caught_up_at = now
                standbys.catch_up(shard)
                continue
            time.sleep(min(delay, max(deadline - now, 0.0)))
            delay = min(delay * 2, _MAX_POLL_S)
            shard = self._resolve(store, partition, fresh.allow_stale)

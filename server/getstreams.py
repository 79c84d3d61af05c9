"""The bookkeeping of GetStream calls: how many are open, and which sit idle.

A GetStream keeps one of the server's worker threads for as long as it is open (gRPC's sync
server runs a call's handler on one thread), so open streams are capped (`max_get_streams`;
the server's thread pool has that many threads on top of `grpc_workers`, so unary calls never
wait for them), and a stream that has not carried a request for `idle_s` is cancelled, which
frees its thread and its slot: a client that reads rarely costs the server nothing. The client
reopens a stream at its next read (tierstore.client.getstream).

One reaper thread runs while any stream is open and checks them every `check_s`.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from typing import Protocol

from tierstore.server.errors import ResourceExhaustedError, UnavailableError

log = logging.getLogger(__name__)


class Cancellable(Protocol):
    def cancel(self) -> None: ...


class Slot:
    """One open stream: `busy` while a request is being answered, `last` its last activity."""

    __slots__ = ("busy", "call", "last", "token")

    def __init__(self, token: int, call: Cancellable) -> None:
        self.token = token
        self.call = call
        self.busy = False
        self.last = time.monotonic()

    def start(self) -> None:
        self.busy = True

    def finish(self) -> None:
        self.last = time.monotonic()
        self.busy = False


class GetStreams:
    def __init__(self, max_streams: int, idle_s: float, check_s: float | None = None) -> None:
        self.limit = max_streams  # streams open at once
        self.idle_s = idle_s
        self._check_s = check_s if check_s is not None else min(5.0, max(idle_s / 4, 0.05))
        self._lock = threading.Lock()
        self._open: dict[int, Slot] = {}
        self._tokens = itertools.count()
        self._reaper: threading.Thread | None = None
        self.reaped = 0  # streams cancelled for idleness (metrics, tests)
        self.closed = False

    def open_count(self) -> int:
        return len(self._open)

    def enter(self, call: Cancellable) -> Slot:
        """A new stream takes a slot; ResourceExhaustedError when all are taken."""
        with self._lock:
            if self.closed:
                raise UnavailableError("the server is shutting down")
            if len(self._open) >= self.limit:
                raise ResourceExhaustedError(
                    f"all {self.limit} GetStream slots of this server are taken "
                    "(--max-get-streams): use unary Get calls")
            slot = Slot(next(self._tokens), call)
            self._open[slot.token] = slot
            if self._reaper is None:
                self._reaper = threading.Thread(target=self._reap, name="getstream-reaper",
                                                daemon=True)
                self._reaper.start()
            return slot

    def leave(self, slot: Slot) -> None:
        with self._lock:
            self._open.pop(slot.token, None)

    def close(self) -> None:
        """Shutdown: no new stream; the idle ones are cancelled now, and a stream answering a
        request ends after that answer (the handler checks `closed`), so that a graceful stop
        does not wait its whole grace period for streams that would stay open."""
        with self._lock:
            self.closed = True
            idle = [s for s in self._open.values() if not s.busy]
            for s in idle:
                del self._open[s.token]
        for s in idle:
            try:
                s.call.cancel()
            except Exception:
                log.debug("cancelling a GetStream at shutdown failed", exc_info=True)

    def _reap(self) -> None:
        while True:
            time.sleep(self._check_s)
            now = time.monotonic()
            with self._lock:
                idle = [s for s in self._open.values()
                        if not s.busy and now - s.last >= self.idle_s]
                for s in idle:
                    del self._open[s.token]  # its slot is free from now on
                if not self._open and not idle:
                    self._reaper = None  # the next stream starts a new reaper
                    return
            for s in idle:
                self.reaped += 1
                try:
                    s.call.cancel()
                except Exception:  # a call that ended meanwhile
                    log.debug("cancelling an idle GetStream failed", exc_info=True)

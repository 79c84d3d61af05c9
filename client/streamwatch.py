"""A bound on how long a server-streaming call (a scan) may wait for its next message.

A unary call has a deadline. A scan can legitimately run for minutes, so it has none; instead
each wait for the next page is bounded: a server that stops sending (stuck, or a host gone
without closing the connection) would otherwise hang the worker's iteration forever. Only the
time spent waiting inside `next()` counts, so a slow consumer of the pages is never cut off.

One watcher thread per client checks the waiting calls a few times a second and cancels those
past their limit; it runs only while some call is waiting, so an idle client has no thread.
"""

from __future__ import annotations

import itertools
import threading
import time
from typing import Any

CHECK_EVERY_S = 0.2


class StreamWatch:
    def __init__(self, check_every_s: float = CHECK_EVERY_S) -> None:
        self._every = check_every_s
        self._lock = threading.Lock()
        self._waiting: dict[int, tuple[Any, float]] = {}  # token -> (call, give up at)
        self._expired: set[int] = set()
        self._tokens = itertools.count()
        self._thread: threading.Thread | None = None
        self._closed = False

    def waiting(self, call: Any, limit_s: float) -> int:
        """`call` (a grpc call with `cancel()`) starts waiting for a message; returns a token
        for `done`."""
        token = next(self._tokens)
        with self._lock:
            self._waiting[token] = (call, time.monotonic() + limit_s)
            if self._thread is None and not self._closed:
                self._thread = threading.Thread(target=self._run, name="tierstore-stream-watch",
                                                daemon=True)
                self._thread.start()
        return token

    def done(self, token: int) -> bool:
        """The wait is over; True if the watch gave up on it (and cancelled the call)."""
        with self._lock:
            self._waiting.pop(token, None)
            if token in self._expired:
                self._expired.discard(token)
                return True
        return False

    def close(self) -> None:
        with self._lock:
            self._closed = True

    def _run(self) -> None:
        while True:
            time.sleep(self._every)
            now = time.monotonic()
            with self._lock:
                late = [(t, call) for t, (call, at) in self._waiting.items() if now >= at]
                for t, _ in late:
                    del self._waiting[t]
                    self._expired.add(t)
                if not self._waiting and not late:
                    self._thread = None  # nothing waits: the next wait starts a new thread
                    return
            for _, call in late:
                call.cancel()

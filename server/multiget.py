"""Large multi-gets in two halves, one of them on an idle helper thread.

rocksdict runs RocksDB's MultiGet without holding the GIL, so the two halves of one request
look up their keys on two cores at once. On the 2-core test machine, a 100-key multi-get of
random keys from the block cache took p50 0.80 -> 0.50 ms this way (bench/RESULTS.md, seventh
session). A helper is used only when one is idle: under load each request runs whole on its
own thread, as before, and nothing waits in a queue for a helper.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

SPLIT_AT = 64  # keys: smaller multi-gets are not worth a thread hand-off (about 50 us)

_Values = list[bytes | None]


class MultiGetHelpers:
    """`helpers` threads that each take the second half of a large multi-get."""

    def __init__(self, helpers: int = 2, split_at: int = SPLIT_AT) -> None:
        self.split_at = split_at
        self._idle = threading.Semaphore(helpers)
        self._pool = ThreadPoolExecutor(max_workers=helpers, thread_name_prefix="multiget")

    def get_many(self, get: Callable[[list[bytes]], _Values], keys: list[bytes]) -> _Values:
        """`get(keys)`, in two halves on two threads when `keys` is large and a helper is idle.
        Errors of either half propagate (the other half's result is then dropped)."""
        if len(keys) < self.split_at or not self._idle.acquire(blocking=False):
            return get(keys)
        half = len(keys) // 2
        try:
            later: Future[_Values] = self._pool.submit(get, keys[half:])
        except RuntimeError:  # the pool is shut down (interpreter exit): no helper
            self._idle.release()
            return get(keys)
        later.add_done_callback(lambda _: self._idle.release())
        first = get(keys[:half])
        return first + later.result()

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False)


_helpers: MultiGetHelpers | None = None
_helpers_lock = threading.Lock()


def helpers() -> MultiGetHelpers:
    """The process's helpers (shared by every shard database), created on first use."""
    global _helpers
    if _helpers is None:
        with _helpers_lock:
            if _helpers is None:
                _helpers = MultiGetHelpers()
    return _helpers


def _forget_after_fork() -> None:
    """A forked child has none of the parent's helper threads: it makes its own on first use."""
    global _helpers
    _helpers = None


os.register_at_fork(after_in_child=_forget_after_fork)

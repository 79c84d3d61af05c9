"""Read a shard's changelog tail while its snapshot downloads.

A restore from a snapshot used to download the snapshot, then read the changelog from the
snapshot's offset. `Prefetch` starts that read on a thread as soon as the snapshot is chosen
(`start`, called with its changelog offset) and keeps up to `max_pages` pages in a queue; the
replay then takes them from the queue (`read` with the same start offset), so the download and
the broker's round trips overlap. Memory stays bounded by the queue.

The prefetch never changes what the replay sees: pages come in log order, exactly as the inner
read yields them. If the prefetch fails, or the replay asks for another offset (an older
snapshot was used after a corrupt one), the read falls back to a direct read of the inner
changelog from the first record not yet handed out.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Iterator

from tierstore.server.ports import Changelog, ChangelogRecord
from tierstore.server.restore import ReadOnlyView

log = logging.getLogger(__name__)

_END = object()  # the inner read reached the end of the partition
_PUT_WAIT_S = 0.1  # how often a blocked producer thread checks for cancellation
_CANCEL_WAIT_S = 1.0  # how long cancel() waits for the thread (it was 30 s: a restore stalled)


class _Failed:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


class Prefetch(ReadOnlyView):
    """A read-only view of `inner` that can read one shard's log ahead on a thread."""

    def __init__(self, inner: Changelog, store: str, partition: int, max_pages: int = 64) -> None:
        super().__init__(inner)
        self.store, self.partition = store, partition
        self.max_pages = max_pages
        self.started_at: int | None = None
        self._queue: queue.Queue[object] = queue.Queue(max_pages)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, offset: int) -> None:
        """Begin reading from `offset` (replacing any read ahead from another offset)."""
        self.cancel()
        self.started_at = offset
        self._queue = queue.Queue(self.max_pages)
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(offset, self._queue, self._stop), daemon=True,
            name=f"prefetch-{self.store}/{self.partition}",
        )
        self._thread.start()

    def _run(self, offset: int, q: queue.Queue[object], stop: threading.Event) -> None:
        pages: Iterator[list[ChangelogRecord]] | None = None
        item: object = _END
        try:
            # The read may fail at once (e.g. the topic is not created yet: the restore creates
            # it after the download), or later: either way the reader reads directly instead.
            pages = self.inner.read(self.store, self.partition, offset)
            for page in pages:
                if not self._put(q, stop, page):
                    return
        except BaseException as exc:
            item = _Failed(exc)
        finally:
            close = getattr(pages, "close", None)
            if close is not None:
                close()  # closes the inner read's consumer when stopped early
        self._put(q, stop, item)

    @staticmethod
    def _put(q: queue.Queue[object], stop: threading.Event, item: object) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=_PUT_WAIT_S)
                return True
            except queue.Full:
                continue
        return False

    def cancel(self) -> None:
        """Stop the read ahead (if any) and drop what it read. Waits up to _CANCEL_WAIT_S for
        its thread: one stuck in a read (a broker that went quiet) ends with that read's own
        idle timeout, in the background, and hands nothing to anyone."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._stop.set()
        thread.join(timeout=_CANCEL_WAIT_S)
        if thread.is_alive():
            log.info("the changelog read ahead of %s/%d is still in a read; it ends in the "
                     "background", self.store, self.partition)
        self.started_at = None

    def read(self, store: str, partition: int, start_offset: int
             ) -> Iterator[list[ChangelogRecord]]:
        if (self._thread is None or self.started_at != start_offset
                or (store, partition) != (self.store, self.partition)):
            self.cancel()
            yield from self.inner.read(store, partition, start_offset)
            return
        q, thread, next_offset = self._queue, self._thread, start_offset
        try:
            while True:
                try:
                    item = q.get(timeout=_PUT_WAIT_S)
                except queue.Empty:
                    if thread.is_alive():
                        continue
                    try:  # it may have put its last item just before it ended
                        item = q.get_nowait()
                    except queue.Empty:
                        item = _Failed(RuntimeError("the read-ahead thread ended"))
                if item is _END:
                    return
                if isinstance(item, _Failed):
                    log.info("%s/%d: reading the changelog ahead failed (%s); reading it "
                             "directly from offset %d", store, partition, item.exc, next_offset)
                    yield from self.inner.read(store, partition, next_offset)
                    return
                page: list[ChangelogRecord] = item  # type: ignore[assignment]
                if page:
                    next_offset = page[-1].offset + 1
                yield page
        finally:
            self.cancel()

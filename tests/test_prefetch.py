"""server/prefetch.py: the changelog tail read ahead while a snapshot downloads hands the replay
exactly the pages a direct read would, falls back to a direct read (from the first record not yet
handed out) when the read ahead fails or was started at another offset, and stops its thread
when the replay stops early. The inner changelog is the in-memory one (tests/memlog.py), cut
into small pages; the restore path itself runs on Kafka and S3 in tests/test_durability.py."""

from __future__ import annotations

import threading
from collections.abc import Iterator

from tests.memlog import MemoryChangelog
from tierstore.server.cluster import wait_until
from tierstore.server.ports import ChangelogRecord
from tierstore.server.prefetch import Prefetch


class PagedLog(MemoryChangelog):
    """Pages of 7 records; optionally fails after `fail_after` pages (once), counts reads."""

    def __init__(self) -> None:
        super().__init__()
        self.fail_after: int | None = None
        self.reads: list[int] = []

    def read(self, store: str, partition: int, start_offset: int
             ) -> Iterator[list[ChangelogRecord]]:
        self.reads.append(start_offset)
        records = [r for page in super().read(store, partition, start_offset) for r in page]
        fail, self.fail_after = self.fail_after, None
        for n, i in enumerate(range(0, len(records), 7)):
            if fail is not None and n == fail:
                raise ConnectionError("broker went away")
            yield records[i:i + 7]


def _log(records: int = 100) -> PagedLog:
    log = PagedLog()
    log.ensure_topic("s", 1)
    keys = [b"k%03d" % i for i in range(records)]
    log.append_batch("s", 0, keys, keys, [], b"m", [])
    return log


def _offsets(pages: Iterator[list[ChangelogRecord]]) -> list[int]:
    return [r.offset for page in pages for r in page]


def test_read_ahead_hands_over_exactly_the_direct_read() -> None:
    log = _log()
    direct = _offsets(log.read("s", 0, 30))
    ahead = Prefetch(log, "s", 0, max_pages=2)  # a small queue: the thread waits for the reader
    ahead.start(30)
    assert wait_until(ahead._queue.full, 5.0)  # read ahead, and now waiting for the reader
    assert _offsets(ahead.read("s", 0, 30)) == direct
    assert log.reads == [30, 30]  # the direct read above, then the read ahead: no other


def test_a_failed_read_ahead_falls_back_from_the_first_record_not_handed_out() -> None:
    log = _log()
    direct = _offsets(log.read("s", 0, 10))
    log.fail_after = 3  # three pages (21 records) arrive, then the broker goes away
    ahead = Prefetch(log, "s", 0)
    ahead.start(10)
    assert _offsets(ahead.read("s", 0, 10)) == direct
    assert log.reads == [10, 10, 31]


def test_another_offset_reads_directly_and_stops_the_read_ahead() -> None:
    log = _log()
    ahead = Prefetch(log, "s", 0)
    ahead.start(50)  # a snapshot that then turned out corrupt; the older one starts at 20
    assert _offsets(ahead.read("s", 0, 20)) == list(range(20, 101))
    assert not any(t.name.startswith("prefetch-") for t in threading.enumerate())


def test_a_replay_that_stops_early_stops_the_thread() -> None:
    log = _log(2000)
    ahead = Prefetch(log, "s", 0, max_pages=1)
    ahead.start(0)
    pages = ahead.read("s", 0, 0)
    assert next(pages)[0].offset == 0
    pages.close()  # e.g. a fork's replay stopping at its point
    assert not any(t.name.startswith("prefetch-") for t in threading.enumerate())


class NoTopicYet(PagedLog):
    """A read that fails at once, before yielding a generator (Kafka: a topic not yet created,
    which the restore creates only after the download)."""

    def __init__(self) -> None:
        super().__init__()
        self.created = False

    def read(self, store: str, partition: int, start_offset: int
             ) -> Iterator[list[ChangelogRecord]]:
        if not self.created:
            raise ConnectionError("unknown topic")
        return super().read(store, partition, start_offset)


def test_a_read_ahead_that_fails_at_once_falls_back() -> None:
    log = NoTopicYet()
    log.ensure_topic("s", 1)
    log.append_batch("s", 0, [b"a", b"b"], [b"1", b"2"], [], b"m", [])
    ahead = Prefetch(log, "s", 0)
    ahead.start(0)
    assert wait_until(lambda: not ahead._queue.empty(), 5.0)  # its failure is queued
    log.created = True  # the restore creates the topic, then replays
    assert _offsets(ahead.read("s", 0, 0)) == [0, 1, 2]


class StalledLog(PagedLog):
    """A read ahead whose broker goes quiet after the first page (the read blocks until
    `release`, as a Kafka read does until its idle timeout)."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()

    def read(self, store: str, partition: int, start_offset: int
             ) -> Iterator[list[ChangelogRecord]]:
        pages = super().read(store, partition, start_offset)
        yield next(pages)
        if len(self.reads) == 1:  # only the read ahead stalls, not the direct read after it
            self.release.wait(60)
        yield from pages


def test_cancelling_a_stalled_read_ahead_does_not_wait_for_it() -> None:
    import time

    log = StalledLog()
    log.ensure_topic("s", 1)
    keys = [b"k%03d" % i for i in range(100)]
    log.append_batch("s", 0, keys, keys, [], b"m", [])
    ahead = Prefetch(log, "s", 0)
    ahead.start(50)
    assert wait_until(lambda: len(log.reads) == 1, 5)
    started = time.monotonic()
    # A replay from another offset (an older snapshot): the read ahead is cancelled, and the
    # direct read goes on without waiting for the stalled thread.
    assert _offsets(ahead.read("s", 0, 20)) == list(range(20, 101))
    assert time.monotonic() - started < 5
    log.release.set()
    assert wait_until(lambda: not any(t.name.startswith("prefetch-")
                                      for t in threading.enumerate()), 5)

"""An in-memory Changelog (server/ports.py) for restore tests that need no broker, with the two
things Kafka may do to a log behind our back: compaction and time-based retention."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence

from tierstore.server.ports import ChangelogRecord, Header


class MemoryChangelog:
    def __init__(self) -> None:
        self.logs: dict[tuple[str, int], list[ChangelogRecord]] = {}
        self.topics: dict[str, tuple[int, int | None]] = {}
        self._lock = threading.Lock()

    def ensure_topic(self, store: str, num_partitions: int, retention_ms: int | None = None
                     ) -> None:
        with self._lock:
            self.topics.setdefault(store, (num_partitions, retention_ms))

    def append_batch(
        self, store: str, partition: int, keys: Sequence[bytes],
        values: Sequence[bytes | None], headers: Sequence[Header], marker_value: bytes,
        marker_headers: Sequence[Header], while_waiting: Callable[[], None] | None = None,
    ) -> int:
        if while_waiting is not None:
            while_waiting()
        with self._lock:
            log = self.logs.setdefault((store, partition), [])
            nxt = log[-1].offset + 1 if log else 0
            for k, v in zip(keys, values, strict=True):
                log.append(ChangelogRecord(nxt, k, v, tuple(headers)))
                nxt += 1
            log.append(ChangelogRecord(nxt, b"", marker_value, tuple(marker_headers)))
            return nxt

    def read(self, store: str, partition: int, start_offset: int
             ) -> Iterator[list[ChangelogRecord]]:
        with self._lock:
            recs = [r for r in self.logs.get((store, partition), []) if r.offset >= start_offset]
        for i in range(0, len(recs), 500):
            yield recs[i:i + 500]

    def close(self) -> None:
        pass

    def compact(self) -> None:
        """What Kafka's log cleaner may do at most: keep only the newest record of each key
        (markers share the empty key, so only the newest marker survives). Offsets are kept."""
        with self._lock:
            for part, log in self.logs.items():
                newest = {r.key: r.offset for r in log}
                self.logs[part] = [r for r in log if newest[r.key] == r.offset]

    def truncate_before(self, store: str, partition: int, offset: int) -> None:
        """What topic retention does: delete the head of the log up to `offset`."""
        with self._lock:
            log = self.logs[(store, partition)]
            self.logs[(store, partition)] = [r for r in log if r.offset >= offset]

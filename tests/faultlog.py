"""A Changelog wrapper (the ports.Changelog seam) over the real Kafka changelog that fails one
chosen call: the thing under test (the shard, the fence, restore) runs unchanged over a real
broker, and the fault lands exactly where a test wants it."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

from tierstore.server.errors import ChangelogError
from tierstore.server.logproto import H_MARKER
from tierstore.server.ports import Changelog, ChangelogRecord, Header

# (marker kind, keys) -> True to fail this append AFTER the inner append succeeded (the records
# and the marker are in the log, but the delivery report is "lost": an in-doubt append).
AppendFault = Callable[[bytes, Sequence[bytes]], bool]


class FaultyChangelog:
    def __init__(self, inner: Changelog) -> None:
        self.inner = inner
        self.fail_append_after: AppendFault | None = None
        self.fail_append_before: AppendFault | None = None
        self.fail_reads = 0  # this many next reads raise at once
        self.appends = 0
        self.reads = 0

    def ensure_topic(self, store: str, num_partitions: int,
                     retention_ms: int | None = None) -> None:
        self.inner.ensure_topic(store, num_partitions, retention_ms)

    def append_batch(self, store: str, partition: int, keys: Sequence[bytes],
                     values: Sequence[bytes | None], headers: Sequence[Header],
                     marker_value: bytes, marker_headers: Sequence[Header],
                     while_waiting: Callable[[], None] | None = None) -> int:
        self.appends += 1
        kind = next((v for n, v in marker_headers if n == H_MARKER), b"")
        if self.fail_append_before is not None and self.fail_append_before(kind, keys):
            self.fail_append_before = None
            raise ChangelogError("injected: the broker is unreachable")
        offset = self.inner.append_batch(store, partition, keys, values, headers, marker_value,
                                         marker_headers, while_waiting)
        if self.fail_append_after is not None and self.fail_append_after(kind, keys):
            self.fail_append_after = None
            raise ChangelogError("injected: no delivery report for the commit marker")
        return offset

    def read(self, store: str, partition: int, start_offset: int
             ) -> Iterator[list[ChangelogRecord]]:
        self.reads += 1
        if self.fail_reads:
            self.fail_reads -= 1
            raise ChangelogError("injected: reading the changelog failed")
        return self.inner.read(store, partition, start_offset)

    def close(self) -> None:
        self.inner.close()

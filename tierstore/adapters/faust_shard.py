"""One claimed tierstore shard behind a Faust table partition, and its offset bookkeeping.

Faust-free on purpose (tierstore.adapters.faust holds everything that touches faust), so
the rules that make a Faust table effectively-once can be read and tested on their own:

- **What a commit says.** A commit carries the table partition's buffered writes plus, per input
  partition ("topic:partition"), the offset after the last input record whose writes are in the
  batch, plus the Faust changelog marker ("<changelog topic>:<partition>" -> the next changelog
  offset already reflected). The state in tierstore is therefore exactly "every input record
  before these offsets", nothing more, nothing less.
- **When a commit may happen.** Only when every input record that wrote into the buffer has
  been acknowledged by all Faust streams reading it (``message.acked``): an agent suspended in
  the middle of a record would otherwise commit half of that record's writes with an offset
  that says the record is done. `committable()` says so.
- **Replays are dropped.** A write made while processing an input record below the shard's
  committed offset for that input partition is a replay of a record whose writes are already
  committed (the consumer resumed behind tierstore), so `is_replay()` tells the store to drop
  it. The same input record therefore never counts twice, whichever of Kafka's consumer-group
  offset and tierstore's is ahead.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Protocol

from tierstore.client.interfaces import KeyValueStore

_MISSING = object()


class AckedMessage(Protocol):
    """What the shard needs from a Faust message: whether every stream is done with it."""

    acked: bool


def source_name(topic: str, partition: int) -> str:
    """The committed-offsets name of an input (or changelog) partition: "topic:partition"."""
    return f"{topic}:{partition}"


def parse_source(name: str) -> tuple[str, int] | None:
    """"topic:partition" -> (topic, partition); None for a name of another shape."""
    topic, sep, part = name.rpartition(":")
    if not sep or not topic or not part.isdigit():
        return None
    return topic, int(part)


class ReadCache:
    """An LRU of this shard's values as this owner sees them (committed or buffered).

    Safe because the owner holds the shard's epoch: no one else can change the shard while the
    claim lasts, so a value read or written once stays right until the claim ends. `None` is
    cached too (a known-missing key)."""

    def __init__(self, max_entries: int) -> None:
        self._max = max_entries
        self._d: OrderedDict[bytes, bytes | None] = OrderedDict()

    def get(self, key: bytes) -> Any:
        v = self._d.get(key, _MISSING)
        if v is not _MISSING:
            self._d.move_to_end(key)
        return v

    def put(self, key: bytes, value: bytes | None) -> None:
        self._d[key] = value
        self._d.move_to_end(key)
        if len(self._d) > self._max:
            self._d.popitem(last=False)

    def clear(self) -> None:
        self._d.clear()


@dataclass
class FaustShard:
    """A claimed shard: the store handle, the committed offsets it was opened with (and each
    commit's), and what the uncommitted buffer holds."""

    kv: KeyValueStore
    changelog_name: str  # source_name(changelog topic, partition)
    cache_entries: int = 100_000
    committed: dict[str, int] = field(default_factory=dict)
    # input partition -> offset after the last record whose writes are buffered
    pending: dict[str, int] = field(default_factory=dict)
    # the messages of the records whose writes are buffered and that were not acked yet when
    # last looked at (a commit waits until every one is acked: Faust may ack out of order)
    # (by id: the dict holds each message, so its id stays unique while it is here)
    writers: dict[int, AckedMessage] = field(default_factory=dict)
    changelog_next: int | None = None
    dirty: bool = False
    replays_dropped: int = 0
    changelog_discarded: int = 0
    cache: ReadCache = field(init=False)
    importing: bool = field(init=False)

    def __post_init__(self) -> None:
        self.committed = dict(self.kv.committed_offsets)
        self.cache = ReadCache(self.cache_entries)
        # A shard that has never recorded a changelog marker has never been written through
        # this adapter: the table's Faust changelog is imported into it once
        # (see tierstore.adapters.faust).
        self.importing = self.changelog_name not in self.committed

    def committed_changelog_offset(self) -> int | None:
        """The last Faust changelog offset the committed state reflects (Faust's
        "persisted offset"), or None when there is none."""
        nxt = self.committed.get(self.changelog_name)
        return nxt - 1 if nxt is not None and nxt > 0 else None

    def input_offsets(self) -> dict[str, int]:
        """Committed input offsets (the changelog marker left out)."""
        return {k: v for k, v in self.committed.items() if k != self.changelog_name}

    def is_replay(self, source: str, offset: int) -> bool:
        """True when input record `offset` of `source` is already in the committed state."""
        done = self.committed.get(source)
        return done is not None and offset < done

    def note_write(self, source: str | None, offset: int | None,
                   message: AckedMessage | None) -> None:
        """Record that a write from input record `offset` of `source` is now buffered
        (source None: a write made outside any tracked input record)."""
        self.dirty = True
        if source is None or offset is None:
            return
        if offset + 1 > self.pending.get(source, -1):
            self.pending[source] = offset + 1
        if message is not None and id(message) not in self.writers:
            if len(self.writers) >= 64:
                self._drop_acked()
            self.writers[id(message)] = message

    def note_changelog(self, offset: int) -> None:
        """Faust's changelog record at `offset` (for this partition) is acknowledged."""
        if self.changelog_next is None or offset + 1 > self.changelog_next:
            self.changelog_next = offset + 1
            self.dirty = True

    def committable(self) -> bool:
        """True when no input record that wrote into the buffer is still being processed
        (every one of them, not only each partition's last: Faust acks out of order when an
        agent runs with concurrency > 1)."""
        self._drop_acked()
        return not self.writers

    def _drop_acked(self) -> None:
        self.writers = {k: m for k, m in self.writers.items() if not m.acked}

    def needs_floor(self, source: str) -> bool:
        """True when no offset of `source` is committed or pending: its first record to write
        here must first make its own offset durable (see `commit`'s `floor`)."""
        return source not in self.committed and source not in self.pending

    def commit(self, floor: dict[str, int] | None = None) -> dict[str, int]:
        """Commit the buffer with its input offsets and the changelog marker, atomically (all
        or nothing, see KeyValueStore.commit). The caller checks `committable()` first.

        `floor`: offsets of input partitions that have not written here yet, committed before
        their first record writes: without it, Faust's consumer group could commit past that
        record before tierstore knows the partition feeds this shard, and a crash would then
        resume after writes that were never committed."""
        offsets = dict(floor or {})
        offsets.update(self.pending)
        if self.changelog_next is not None:
            offsets[self.changelog_name] = self.changelog_next
        elif self.importing:
            offsets[self.changelog_name] = 0
        self.committed = self.kv.commit(offsets)
        self.pending.clear()
        self.writers.clear()
        self.changelog_next = None
        self.dirty = False
        self.importing = False
        return self.committed

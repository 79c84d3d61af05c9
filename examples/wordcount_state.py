"""State backends of the word-count example (examples/wordcount.py): where the counts live.

Each input partition P has its own state: a key-value store of total counts per word and a
window store of counts per (word, window start), both committed together with the input offset
they were computed from, under the offset name ``"<topic>:P"``.

- `TierstoreBackend` (``--state tierstore``): both stores are shards of a tierstore server. The
  worker keeps nothing on disk; a fresh worker claims the shards (fencing the old owner) and
  reads the committed offsets, so its first record is processed as soon as the claim answers.
- `LocalBackend` (``--state local``): the baseline, the way Kafka Streams does it by default. The
  stores are RocksDB directories of this process (`tierstore.client.LocalKeyValueStore`), and
  every commit first appends its changed entries to a Kafka changelog topic of this worker,
  ``<app>-changelog``. A worker whose state directory is empty (a new machine, a lost disk)
  restores by replaying that changelog into the local stores before it processes anything.

Two stores, two commits: how they stay consistent
-------------------------------------------------
A commit of one store is atomic, but two commits are not atomic together: the worker can die
between them. So the window store is committed first and the totals store second, each with
its own input offset, and on resume the worker seeks to the SMALLER of the two offsets and
adds a record to a store only if the record's offset is at or past that store's own committed
offset (`PartitionState.totals_from`, `windows_from`). Every record is counted exactly once
in each store, whichever commit the crash fell between.

The baseline's changelog carries its own evidence in the same spirit (Tansu, the test broker,
has no transactions): every record of one commit carries the commit's random batch id in a
``batch`` header, and the commit ends with a marker record (no key; value: the input offsets
as JSON). Restore applies a batch only when its marker is there, so the records of a commit the
worker died in the middle of are ignored, and it applies it to each store only past that
store's own committed offset. Simplifications, said plainly: restore always replays the whole
changelog (Kafka Streams would start at its checkpoint file when the directory survived; with
an empty directory, the case measured, both replay everything); the topic is not compacted on
Tansu; window segments dropped by retention are not written to the changelog (restored
expired windows stay hidden by the restored stream time); and a zombie worker is not fenced.
"""

from __future__ import annotations

import json
import logging
import os
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from tierstore import windowkeys as wk
from tierstore.client import Client, LocalKeyValueStore, WindowStoreImpl
from tierstore.client.buffered import BufferedKeyValueStore
from tierstore.client.windowed import LocalWindowStore

log = logging.getLogger("wordcount")

# Fault injection for tests/test_example_worker.py: once this file exists, the process dies
# (os._exit, as hard as SIGKILL) between the window store's commit and the totals store's.
CRASH_FILE = os.environ.get("WORDCOUNT_TEST_CRASH_FILE")

Totals = dict[bytes, int]  # word -> increment
Windows = dict[tuple[bytes, int], int]  # (word, window start ms) -> increment


class PartitionState(Protocol):
    """The two stores of one input partition, claimed (or opened) by this worker."""

    partition: int
    totals_from: int  # the first input offset the totals store has not counted
    windows_from: int  # the same for the window store

    def add(self, totals: Totals, windows: Windows) -> None:
        """Add increments (buffered: nothing is durable before `commit`)."""

    def commit(self, next_offset: int) -> None:
        """Make everything added so far durable with the input offset `next_offset`: the window
        store first, then the totals store (see the module docstring)."""

    def close(self) -> None:
        """Release the stores; anything not committed is discarded."""


class Backend(Protocol):
    def open(self, partitions: list[int], num_partitions: int) -> dict[int, PartitionState]:
        """Claim (or open and restore) the state of each partition."""


    def close(self) -> None: ...


def between_commits() -> None:
    if CRASH_FILE and os.path.exists(CRASH_FILE):
        log.error("crash file %s exists: exiting between the two stores' commits", CRASH_FILE)
        logging.shutdown()
        os._exit(9)


def add_counts(kv: BufferedKeyValueStore, ws: WindowStoreImpl, totals: Totals,
               windows: Windows) -> tuple[list[tuple[bytes, bytes]],
                                          list[tuple[bytes, int, bytes]]]:
    """Read the current counts with ONE batched get per store (the write-back buffer answers
    keys written since the last commit), add the increments, put the new counts. Returns the
    new (word, count) and (word, window start, count) entries."""
    new_totals: list[tuple[bytes, bytes]] = []
    if totals:
        words = list(totals)
        old = kv.get_many(words)
        new_totals = [(w, b"%d" % (int(o or 0) + totals[w])) for w, o in zip(words, old,
                                                                             strict=True)]
        kv.put_all(new_totals)
    new_windows: list[tuple[bytes, int, bytes]] = []
    if windows:
        pairs = list(windows)
        seg = ws.segment_interval_ms
        old = ws.kv.get_many([wk.window_key(w, start, seg) for w, start in pairs])
        for (w, start), o in zip(pairs, old, strict=True):
            value = b"%d" % (int(o or 0) + windows[w, start])
            ws.put(w, value, start)
            new_windows.append((w, start, value))
    return new_totals, new_windows


# --- tierstore ----------------------------------------------------------------------------------
class RemoteState:
    def __init__(self, client: Client, app: str, source: str, partition: int,
                 num_partitions: int, window_ms: int, retention_ms: int) -> None:
        self.partition = partition
        self.source = source
        self.ws = client.window_store(f"{app}-windows", partition, window_size_ms=window_ms,
                                      retention_ms=retention_ms, num_partitions=num_partitions)
        try:
            self.kv = client.key_value_store(f"{app}-totals", partition, num_partitions)
        except BaseException:
            self.ws.close()
            raise
        self.windows_from = self.ws.committed_offsets.get(source, 0)
        self.totals_from = self.kv.committed_offsets.get(source, 0)

    def add(self, totals: Totals, windows: Windows) -> None:
        add_counts(self.kv, self.ws, totals, windows)

    def commit(self, next_offset: int) -> None:
        # A store already past next_offset (the other one is catching up after a crash between
        # the two commits) has nothing new, and must not have its offset moved back.
        if next_offset > self.windows_from:
            self.ws.commit({self.source: next_offset})
            self.windows_from = next_offset
        between_commits()
        if next_offset > self.totals_from:
            self.kv.commit({self.source: next_offset})
            self.totals_from = next_offset

    def close(self) -> None:
        self.ws.close()
        self.kv.close()


class TierstoreBackend:
    """Stores ``<app>-totals`` and ``<app>-windows`` on a tierstore server."""

    def __init__(self, target: str, app: str, topic: str, window_ms: int,
                 retention_ms: int) -> None:
        from tierstore.client import connect

        self.client = connect(target)
        self.client.wait_ready(timeout_s=30)
        self.app, self.topic = app, topic
        self.window_ms, self.retention_ms = window_ms, retention_ms

    def open(self, partitions: list[int], num_partitions: int) -> dict[int, PartitionState]:
        out: dict[int, PartitionState] = {}
        try:
            for p in partitions:
                out[p] = RemoteState(self.client, self.app, f"{self.topic}:{p}", p,
                                     num_partitions, self.window_ms, self.retention_ms)
        except BaseException:
            for st in out.values():
                st.close()
            raise
        return out

    def close(self) -> None:
        self.client.close()


# --- the baseline: local RocksDB + a Kafka changelog --------------------------------------------
TOTAL, WINDOW = b"T", b"W"


def _changelog_key(kind: bytes, word: bytes, start: int = 0) -> bytes:
    return kind + word if kind == TOTAL else kind + struct.pack(">q", start) + word


class LocalState:
    def __init__(self, backend: LocalBackend, partition: int) -> None:
        self.b = backend
        self.partition = partition
        self.source = f"{backend.topic}:{partition}"
        base = backend.state_dir / f"p{partition}"
        base.mkdir(parents=True, exist_ok=True)
        self.kv = LocalKeyValueStore(base / "totals")
        try:
            self.ws = LocalWindowStore(base / "windows", backend.window_ms, backend.retention_ms)
        except BaseException:
            self.kv.close()
            raise
        self.totals_from = self.kv.committed_offsets.get(self.source, 0)
        self.windows_from = self.ws.committed_offsets.get(self.source, 0)
        self.dirty: dict[bytes, bytes] = {}  # changelog key -> value, since the last commit
        self.applied = 0
        self.restored_to = {"totals": self.totals_from, "windows": self.windows_from}

    def add(self, totals: Totals, windows: Windows) -> None:
        new_totals, new_windows = add_counts(self.kv, self.ws, totals, windows)
        for w, v in new_totals:
            self.dirty[_changelog_key(TOTAL, w)] = v
        for w, start, v in new_windows:
            self.dirty[_changelog_key(WINDOW, w, start)] = v

    def commit(self, next_offset: int) -> None:
        offsets = {self.source: next_offset}
        self.b.append(self.partition, self.dirty, offsets)  # acknowledged by the broker
        self.dirty = {}
        if next_offset > self.windows_from:  # (as in RemoteState.commit)
            self.ws.commit(offsets)
            self.windows_from = next_offset
        between_commits()
        if next_offset > self.totals_from:
            self.kv.commit(offsets)
            self.totals_from = next_offset

    def apply(self, offsets: dict[str, int], batch: list[tuple[bytes, bytes]]) -> None:
        """Restore: apply one complete changelog batch to each store it is new to."""
        end = offsets.get(self.source, 0)
        for key, value in batch:
            if key[:1] == TOTAL and end > self.totals_from:
                self.kv.put(key[1:], value)
                self.applied += 1
            elif key[:1] == WINDOW and end > self.windows_from:
                (start,) = struct.unpack_from(">q", key, 1)
                self.ws.put(key[9:], value, start)
                self.applied += 1
        self.restored_to["totals"] = max(self.restored_to["totals"], end)
        self.restored_to["windows"] = max(self.restored_to["windows"], end)

    def finish_restore(self) -> None:
        """Commit what restore applied, locally, with the offsets of the last batch."""
        if self.restored_to["windows"] > self.windows_from:
            self.ws.commit({self.source: self.restored_to["windows"]})
            self.windows_from = self.restored_to["windows"]
        if self.restored_to["totals"] > self.totals_from:
            self.kv.commit({self.source: self.restored_to["totals"]})
            self.totals_from = self.restored_to["totals"]

    def close(self) -> None:
        self.ws.close()
        self.kv.close()


class LocalBackend:
    """Stores in ``<state_dir>/p<partition>/{totals,windows}``, changelog ``<app>-changelog``."""

    def __init__(self, bootstrap: str, state_dir: Path, app: str, topic: str,
                 num_partitions: int, window_ms: int, retention_ms: int) -> None:
        self.bootstrap = bootstrap
        self.state_dir = state_dir
        self.topic = topic
        self.changelog = f"{app}-changelog"
        self.window_ms, self.retention_ms = window_ms, retention_ms
        self._create_topic(num_partitions)
        self.producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True,
                                  "linger.ms": 5, "compression.type": "none"})
        self._errors: list[str] = []

    def _create_topic(self, partitions: int) -> None:
        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        topic = NewTopic(self.changelog, num_partitions=partitions, replication_factor=1,
                         config={"cleanup.policy": "compact"})
        try:
            admin.create_topics([topic])[self.changelog].result(timeout=30)
            log.info("created changelog topic %s (%d partitions)", self.changelog, partitions)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise

    def open(self, partitions: list[int], num_partitions: int) -> dict[int, PartitionState]:
        """Open the local stores of each partition and restore them from the changelog, all
        partitions with one consumer (as Kafka Streams' restore consumer does)."""
        states: dict[int, LocalState] = {}
        try:
            for p in partitions:
                states[p] = LocalState(self, p)
            t0 = time.monotonic()
            records = 0
            for p, offsets, batch in self.read_batches(partitions):
                records += len(batch) + 1
                states[p].apply(offsets, batch)
            for st in states.values():
                st.finish_restore()
        except BaseException:
            for st in states.values():
                st.close()
            raise
        log.info("restored %d entries of partitions %s from %d changelog records in %.2f s",
                 sum(st.applied for st in states.values()), partitions, records,
                 time.monotonic() - t0)
        return dict(states)

    def _delivered(self, err: Any, msg: Any) -> None:
        if err is not None:
            self._errors.append(str(err))

    def append(self, partition: int, entries: dict[bytes, bytes], offsets: dict[str, int],
               timeout_s: float = 60.0) -> None:
        """Append one batch and its marker to the changelog and wait for the broker to
        acknowledge all of it. If any record failed this raises, and the local stores are not
        committed; restore ignores a batch whose marker landed without all its records (the
        marker gives their number)."""
        headers: list[tuple[str, str | bytes | None]] = [("batch", os.urandom(8))]
        produce = self.producer.produce
        for key, value in entries.items():
            while True:
                try:
                    produce(self.changelog, value, key, partition, on_delivery=self._delivered,
                            headers=headers)
                    break
                except BufferError:  # the local queue is full: let it drain
                    self.producer.poll(0.05)
        marker = json.dumps({"offsets": offsets, "records": len(entries)}).encode()
        produce(self.changelog, marker, None, partition, on_delivery=self._delivered,
                headers=headers)
        if self.producer.flush(timeout_s) or self._errors:
            errs, self._errors = self._errors, []
            raise RuntimeError(f"changelog {self.changelog}[{partition}] append failed: "
                               f"{errs[:3] or 'not acknowledged in time'}")

    def read_batches(self, partitions: list[int], timeout_s: float = 300.0
                     ) -> Iterator[tuple[int, dict[str, int], list[tuple[bytes, bytes]]]]:
        """Yield (partition, input offsets, [(key, value)]) for each complete batch of these
        changelog partitions, from their beginning to their end (the partition-EOF event:
        Tansu's high watermark is not the end of the log)."""
        consumer = Consumer({"bootstrap.servers": self.bootstrap, "group.id": self.changelog,
                             "enable.auto.commit": False, "enable.partition.eof": True,
                             "fetch.max.bytes": 64 << 20})
        consumer.assign([TopicPartition(self.changelog, p, 0) for p in partitions])
        open_batch: dict[int, tuple[str | bytes | None, list[tuple[bytes, bytes]]]] = {}
        reading = set(partitions)
        deadline = time.monotonic() + timeout_s
        try:
            while reading:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"changelog {self.changelog} partitions {sorted(reading)} "
                                       f"not read to their end in {timeout_s}s")
                for msg in consumer.consume(10_000, 0.2):
                    p = msg.partition()
                    assert p is not None
                    err = msg.error()
                    if err is not None:
                        if err.code() != KafkaError._PARTITION_EOF:
                            raise KafkaException(err)
                        reading.discard(p)
                        continue
                    bid = dict(msg.headers() or []).get("batch")
                    batch_id, batch = open_batch.get(p, (None, []))
                    if bid != batch_id:  # a new batch: one without its marker is abandoned
                        batch_id, batch = bid, []
                        open_batch[p] = (bid, batch)
                    key = msg.key()
                    if key is not None:
                        batch.append((key, msg.value() or b""))
                        continue
                    marker = json.loads(msg.value() or b"{}")
                    open_batch.pop(p, None)
                    if marker.get("records") == len(batch):
                        yield p, marker["offsets"], batch
                    else:
                        log.warning("changelog %s[%d]: batch at offset %s has %d of its %s "
                                    "records; ignored", self.changelog, p, msg.offset(),
                                    len(batch), marker.get("records"))
        finally:
            consumer.close()

    def close(self) -> None:
        self.producer.flush(30)

"""A stateless word-count worker: a plain confluent-kafka consumer whose state is in tierstore.

    python examples/wordcount.py --bootstrap 127.0.0.1:9092 --input words \\
        --tierstore 127.0.0.1:7070

It reads the input topic (each record's value is text; every whitespace-separated token is a
word), and for each input partition P keeps two stores (examples/wordcount_state.py):
``<app>-totals`` (word -> total count) and ``<app>-windows`` (word, 60 s tumbling window by
record timestamp -> count). Every `--commit-every` records or `--commit-interval-ms` it commits
both stores with the input offset ``"<topic>:P"``; after any crash a new worker resumes from the
stores' committed offsets, so every record is counted exactly once (effectively-once, no Kafka
transactions). Input offsets are never committed to Kafka: the stores are the source of truth.

Reading a word's total with `client.reader("<app>-totals").get(word)` finds it when the
producer partitioned the input by word with Kafka's default partitioner (murmur2: librdkafka's
``partitioner=murmur2_random``), one word per record.

Partitions: `--partitions 0,1,2` assigns them to this worker (no consumer group). Without it the
worker joins the consumer group `--group` and follows rebalances: on assignment it claims each
partition's stores and seeks to their committed offsets, on revocation it commits and closes
them. Tansu (the test broker) joins groups slowly and a killed member holds its partitions until
its session times out, so the tests use `--partitions`.

`--state local --state-dir DIR` runs the same worker on the baseline instead: local RocksDB
stores backed by a Kafka changelog topic, replayed on startup (see wordcount_state.py).

SIGTERM or SIGINT: the worker stops polling, commits what it has processed, and exits 0.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import time
from collections import defaultdict
from functools import partial
from pathlib import Path
from types import FrameType
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

sys.path.insert(0, str(Path(__file__).resolve().parent))
from wordcount_state import (
    Backend,
    LocalBackend,
    PartitionState,
    TierstoreBackend,
    Totals,
    Windows,
)

from tierstore.client import errors

log = logging.getLogger("wordcount")
MAX_WORD = 1000  # bytes; longer tokens are skipped (and counted in the log)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Count words from a Kafka topic into tierstore: totals per word and per "
                    "word per tumbling window, committed with the input offsets.")
    p.add_argument("--bootstrap", required=True, help="Kafka bootstrap servers, HOST:PORT[,...]")
    p.add_argument("--input", default="words", help="input topic (default: words)")
    p.add_argument("--tierstore", default="127.0.0.1:7070",
                   help="tierstore server(s), HOST:PORT[,...] (default: 127.0.0.1:7070)")
    p.add_argument("--app", default="wordcount",
                   help="application id: store names <app>-totals, <app>-windows, the group id "
                        "and the baseline's changelog <app>-changelog (default: wordcount)")
    p.add_argument("--state", choices=["tierstore", "local"], default="tierstore",
                   help="where the state lives: a tierstore server, or the baseline of local "
                        "RocksDB plus a Kafka changelog (default: tierstore)")
    p.add_argument("--state-dir", type=Path, help="the baseline's local state directory")
    p.add_argument("--partitions", help="assign these input partitions (comma-separated) "
                                        "instead of joining a consumer group")
    p.add_argument("--group", help="consumer group id (default: the --app)")
    p.add_argument("--window-ms", type=int, default=60_000, help="window size (default 60000)")
    p.add_argument("--retention-ms", type=int, default=7 * 24 * 3600 * 1000,
                   help="how long windows are kept, by stream time (default 7 days)")
    p.add_argument("--commit-every", type=int, default=10_000,
                   help="commit after this many records (default 10000)")
    p.add_argument("--commit-interval-ms", type=int, default=1_000,
                   help="or after this much time (default 1000)")
    p.add_argument("--batch", type=int, default=2_000, help="records per poll (default 2000)")
    p.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING (default INFO)")
    args = p.parse_args(argv)
    if args.state == "local" and args.state_dir is None:
        p.error("--state local needs --state-dir")
    if args.window_ms <= 0 or args.retention_ms < args.window_ms:
        p.error("need 0 < --window-ms <= --retention-ms")
    if args.commit_every <= 0 or args.commit_interval_ms <= 0 or args.batch <= 0:
        p.error("--commit-every, --commit-interval-ms and --batch must be > 0")
    return args


class Worker:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.topic: str = args.input
        self.started = time.monotonic()
        self.stopping = False
        self.states: dict[int, PartitionState] = {}
        self.pending: dict[int, int] = {}  # partition -> next offset, processed not committed
        self.uncommitted = 0
        self.last_commit = time.monotonic()
        self.processed = 0
        self.first_logged = False
        self.skipped = 0
        group = args.group or args.app
        self.consumer = Consumer({
            "bootstrap.servers": args.bootstrap, "group.id": group,
            "enable.auto.commit": False, "auto.offset.reset": "earliest",
            "session.timeout.ms": 6000, "heartbeat.interval.ms": 1000,
            "fetch.max.bytes": 32 << 20,
        })
        self.num_partitions = self._partition_count()
        self.backend = self._backend()

    def _partition_count(self) -> int:
        deadline = time.monotonic() + 30
        while True:
            md = self.consumer.list_topics(self.topic, timeout=10).topics.get(self.topic)
            if md is not None and md.error is None and md.partitions:
                return len(md.partitions)
            if time.monotonic() > deadline:
                raise SystemExit(f"input topic {self.topic!r} not found on {self.args.bootstrap}")
            time.sleep(0.5)

    def _backend(self) -> Backend:
        a = self.args
        if a.state == "local":
            return LocalBackend(a.bootstrap, a.state_dir, a.app, self.topic,
                                self.num_partitions, a.window_ms, a.retention_ms)
        return TierstoreBackend(a.tierstore, a.app, self.topic, a.window_ms, a.retention_ms)

    # --- partitions ---------------------------------------------------------------------------
    def claim(self, partitions: list[int]) -> list[TopicPartition]:
        """Open (claim) each partition's stores; return where to start consuming each."""
        t0 = time.monotonic()
        opened = self.backend.open(partitions, self.num_partitions)
        took = time.monotonic() - t0
        out = []
        for p, st in sorted(opened.items()):
            self.states[p] = st
            start = min(st.totals_from, st.windows_from)
            log.info("partition %d: claimed in %.3f s, resuming at offset %d (totals from %d, "
                     "windows from %d)", p, took, start, st.totals_from, st.windows_from)
            out.append(TopicPartition(self.topic, p, start))
        return out

    def release(self, partitions: list[int]) -> None:
        for p in partitions:
            self.commit_partition(p, reopen=False)  # never reclaim what is being revoked
            st = self.states.pop(p, None)
            if st is not None:
                st.close()
                log.info("partition %d: released", p)

    def on_assign(self, consumer: Any, tps: list[TopicPartition]) -> None:
        consumer.assign(self.claim([tp.partition for tp in tps]))

    def on_revoke(self, consumer: Any, tps: list[TopicPartition]) -> None:
        self.release([tp.partition for tp in tps])

    # --- processing ---------------------------------------------------------------------------
    def process(self, msgs: list[Any]) -> None:
        by_part: dict[int, list[Any]] = defaultdict(list)
        for m in msgs:
            err = m.error()
            if err is not None:
                if err.code() != KafkaError._PARTITION_EOF:
                    log.warning("consumer error: %s", err)
                continue
            by_part[m.partition()].append(m)
        window = self.args.window_ms
        for p, records in by_part.items():
            st = self.states.get(p)
            if st is None:  # revoked, or dropped after an error
                continue
            totals: Totals = defaultdict(int)
            windows: Windows = defaultdict(int)
            t_from, w_from = st.totals_from, st.windows_from
            for m in records:
                off = m.offset()
                words = [w for w in (m.value() or b"").split() if len(w) <= MAX_WORD]
                if off >= t_from:
                    for w in words:
                        totals[w] += 1
                if off >= w_from:
                    _, ts = m.timestamp()
                    if ts is None or ts < 0:
                        self.skipped += 1
                        continue
                    start = ts - ts % window
                    for w in words:
                        windows[w, start] += 1
            self.guarded(p, partial(st.add, totals, windows))
            if self.states.get(p) is st:  # (not dropped or reopened by a failure)
                self.pending[p] = records[-1].offset() + 1
                self.uncommitted += len(records)
                self.processed += len(records)
            if not self.first_logged:
                self.first_logged = True
                log.info("first record processed: partition %d offset %d, %.3f s after start "
                         "(at=%.6f)", p, records[0].offset(), time.monotonic() - self.started,
                         time.time())

    def guarded(self, p: int, action: Any, reopen: bool = True) -> None:
        """Run a store action of partition p; on failure, give the partition up cleanly.

        Fenced: another worker owns it now; stop consuming it. Anything else (an unanswered
        commit, an unreachable server): reopen the stores and seek back to their committed
        offsets, which is exactly the restart procedure, so nothing is counted twice. With
        `reopen=False` (the partition is being revoked) it is only dropped: reclaiming it would
        fence its next owner; that owner resumes from the committed offsets."""
        try:
            action()
        except errors.FencedError as exc:
            log.error("partition %d: fenced, another worker owns it now (%s)", p, exc)
            self.drop(p)
            if reopen:
                self.consumer.pause([TopicPartition(self.topic, p)])
        except errors.StateStoreError as exc:
            self.drop(p)
            if not reopen:
                log.warning("partition %d: %s: %s; released without its last commit (its next "
                            "owner resumes from the committed offsets)", p, type(exc).__name__,
                            exc)
                return
            log.warning("partition %d: %s: %s; reopening its stores", p, type(exc).__name__, exc)
            self.reopen(p)

    def drop(self, p: int) -> None:
        st = self.states.pop(p, None)
        self.pending.pop(p, None)
        if st is not None:
            try:
                st.close()
            except errors.StateStoreError as exc:
                log.debug("partition %d: close failed: %s", p, exc)

    def reopen(self, p: int, attempts: int = 30) -> None:
        for i in range(attempts):
            try:
                (tp,) = self.claim([p])
            except errors.FencedError:
                raise
            except errors.StateStoreError as exc:
                log.warning("partition %d: reopen failed (%s), retrying", p, exc)
                time.sleep(min(0.1 * 2 ** i, 2.0))
                continue
            self.consumer.seek(tp)
            return
        raise SystemExit(f"partition {p}: could not reopen its stores")

    def commit_partition(self, p: int, reopen: bool = True) -> None:
        nxt = self.pending.pop(p, None)
        st = self.states.get(p)
        if nxt is None or st is None:
            return
        self.guarded(p, partial(st.commit, nxt), reopen)

    def commit_all(self) -> None:
        if not self.pending:
            self.last_commit = time.monotonic()
            return
        done = dict(self.pending)
        t0 = time.monotonic()
        for p in list(self.pending):
            self.commit_partition(p)
        committed = {f"{self.topic}:{p}": o for p, o in sorted(done.items()) if p in self.states}
        log.info("committed %s: %d records in %.3f s (%d processed in all)",
                 " ".join(f"{k}={v}" for k, v in committed.items()), self.uncommitted,
                 time.monotonic() - t0, self.processed)
        self.uncommitted = 0
        self.last_commit = time.monotonic()

    # --- the loop -----------------------------------------------------------------------------
    def run(self) -> int:
        a = self.args
        if a.partitions:
            parts = sorted({int(x) for x in a.partitions.split(",") if x.strip()})
            bad = [p for p in parts if not 0 <= p < self.num_partitions]
            if bad:
                raise SystemExit(f"--partitions {bad}: {self.topic} has partitions "
                                 f"0..{self.num_partitions - 1}")
            self.consumer.assign(self.claim(parts))
        else:
            self.consumer.subscribe([self.topic], on_assign=self.on_assign,
                                    on_revoke=self.on_revoke)
        interval = a.commit_interval_ms / 1000
        try:
            while not self.stopping:
                msgs = self.consumer.consume(a.batch, 0.2)
                if msgs:
                    self.process(msgs)
                if (self.uncommitted >= a.commit_every
                        or time.monotonic() - self.last_commit >= interval):
                    self.commit_all()
            log.info("stopping: committing and closing")
            self.commit_all()
            self.release(sorted(self.states))
        finally:
            self.consumer.close()
            self.backend.close()
        if self.skipped:
            log.warning("%d records had no timestamp and were left out of the windows",
                        self.skipped)
        log.info("stopped after %d records", self.processed)
        return 0

    def stop(self, signum: int, frame: FrameType | None) -> None:
        log.info("signal %d: stopping after this batch", signum)
        self.stopping = True


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stdout,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        worker = Worker(args)
    except (KafkaException, errors.StateStoreError) as exc:
        log.error("cannot start: %s", exc)
        return 2
    signal.signal(signal.SIGTERM, worker.stop)
    signal.signal(signal.SIGINT, worker.stop)
    return worker.run()


if __name__ == "__main__":
    sys.exit(main())

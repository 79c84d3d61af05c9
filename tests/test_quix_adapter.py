"""Quix Streams with its state in tierstore, against Quix's own RocksDB store, end to end.

Real Tansu broker, real moto S3 server, real `tierstore serve` subprocess (Kafka changelog, S3
snapshots), and the Quix word-count worker of tests/quix_worker.py as a subprocess. A worker is
killed with SIGKILL half way through, a fresh one starts on an EMPTY state directory, and the
final counts (the highest count the worker sent per word) must equal the counts computed here
from the generated input: nothing lost, nothing counted twice. The time from the fresh worker's
start to its first processed record is printed for both backends with their ratio.
"""

from __future__ import annotations

import json
import os
import queue
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from tests.infra import Broker, S3Server, kill9, terminate
from tests.serverproc import ServerProc
from tests.words import PacedWords
from tierstore.server.cluster import wait_until

pytestmark = [pytest.mark.kafka, pytest.mark.s3]
pytest.importorskip("quixstreams", reason="the Quix tests run in .venv-quix (make test)")

RECORDS = 6000
WORDS = 150
PARTITIONS = 2
ROOT = Path(__file__).resolve().parent.parent


def create_topics(bootstrap: str, *names: str) -> None:
    """Topics with retention.ms set explicitly: Tansu's DescribeConfigs lists only explicit
    configs, and Quix's `derive_topic_config` needs retention.ms (KeyError otherwise)."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    new = [NewTopic(n, PARTITIONS, 1, config={"retention.ms": "-1"}) for n in names]
    for fut in admin.create_topics(new).values():
        fut.result(timeout=30)


def produce_words(bootstrap: str, topic: str, seed: int) -> tuple[Counter[str], dict[int, int]]:
    """RECORDS words with a skewed distribution; returns the reference counts and each
    partition's end offset (from delivery reports: Tansu's high watermark is wrong)."""
    rng = random.Random(seed)
    words = [f"w{i:03d}" for i in range(WORDS)]
    weights = [1.0 / (i + 1) for i in range(WORDS)]
    reference: Counter[str] = Counter()
    ends: dict[int, int] = {}

    def delivered(err: KafkaError | None, msg: object) -> None:
        assert err is None, err
        part, off = msg.partition(), msg.offset()  # type: ignore[attr-defined]
        ends[part] = max(ends.get(part, 0), off + 1)

    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    for i, word in enumerate(rng.choices(words, weights, k=RECORDS)):
        reference[word] += 1
        producer.produce(topic, key=word, value=json.dumps({"i": i}), on_delivery=delivered)
        producer.poll(0)
    assert producer.flush(30) == 0
    return reference, ends


def read_max_counts(bootstrap: str, topic: str) -> dict[str, int]:
    """The highest count sent per word, reading every partition to its end (partition EOF)."""
    consumer = Consumer({
        "bootstrap.servers": bootstrap, "group.id": f"check-{topic}",
        "enable.partition.eof": True, "enable.auto.commit": False,
    })
    consumer.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
    best: dict[str, int] = {}
    at_end: set[int] = set()
    deadline = time.monotonic() + 30
    try:
        while len(at_end) < PARTITIONS:
            assert time.monotonic() < deadline, "output topic not read to its end in 30 s"
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            if msg.error():
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    at_end.add(msg.partition())
                    continue
                raise AssertionError(msg.error())
            at_end.discard(msg.partition())
            out = json.loads(msg.value())
            best[out["word"]] = max(best.get(out["word"], 0), out["count"])
    finally:
        consumer.close()
    return best


def committed(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        tps = consumer.committed([TopicPartition(topic, p) for p in range(PARTITIONS)], 10)
        return {tp.partition: tp.offset for tp in tps}
    finally:
        consumer.close()


class Worker:
    """tests/quix_worker.py as a subprocess; its stdout lines are collected by a thread."""

    def __init__(self, log: Path, *args: str) -> None:
        self.started = time.time()
        self._log = open(log, "ab")  # noqa: SIM115
        self.log_path = log
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.quix_worker", *args],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=self._log,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.first: float | None = None
        self.progress = 0
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.decode().strip()
            if line.startswith("FIRST "):
                self.first = float(line.split()[1])
            elif line.startswith("PROGRESS "):
                self.progress = int(line.split()[1])
            self.lines.put(line)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait(self, predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
        def check() -> bool:
            if predicate():
                return True
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited {self.proc.returncode} before {what}: "
                                     f"{self.log()}")
            return False

        if not wait_until(check, timeout_s):
            raise TimeoutError(f"{what}: not within {timeout_s}s")

    def log(self, tail: int = 3000) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")[-tail:]

    def kill9(self) -> None:
        kill9(self.proc)

    def stop(self) -> None:
        terminate(self.proc, 20.0)
        self._log.close()


@dataclass
class Outcome:
    reference: Counter[str]
    counts: dict[str, int]
    first_record_s: float
    fresh_log: str


def run_kill9_scenario(
    backend: str, broker: Broker, tmp_path: Path, tierstore_addr: str = "",
    kill_at_flush: int = 0,
) -> Outcome:
    """Worker 1 until half the input (or its own kill in a flush), SIGKILL, then a fresh
    worker on an empty state dir until its consumer offsets reach the end of the input."""
    name = f"{backend}{'-flushkill' if kill_at_flush else ''}"
    words, counts, group = f"words-{name}", f"counts-{name}", f"wc-{name}"
    create_topics(broker.bootstrap, words, counts)
    reference, ends = produce_words(broker.bootstrap, words, seed=len(name))

    def args(state_dir: Path) -> list[str]:
        a = ["--backend", backend, "--bootstrap", broker.bootstrap, "--group", group,
             "--input", words, "--output", counts, "--state-dir", str(state_dir)]
        return [*a, "--tierstore", tierstore_addr] if tierstore_addr else a

    extra = ["--kill-at-flush", str(kill_at_flush)] if kill_at_flush else []
    first = Worker(tmp_path / f"{name}-1.log", *args(tmp_path / f"{name}-state-1"), *extra)
    try:
        if kill_at_flush:
            assert wait_until(lambda: not first.alive(), 60), \
                "the worker killing itself in a flush: not within 60s"
            assert first.proc.returncode == -signal.SIGKILL, first.log()
        else:
            first.wait(lambda: first.progress >= RECORDS // 2, 60, "half the input processed")
            first.kill9()
    finally:
        first.kill9()
        first.stop()

    fresh_dir = tmp_path / f"{name}-state-2"
    assert not fresh_dir.exists()
    fresh = Worker(tmp_path / f"{name}-2.log", *args(fresh_dir))
    try:
        fresh.wait(lambda: fresh.first is not None, 60, "the fresh worker's first record")
        fresh.wait(lambda: committed(broker.bootstrap, group, words) == ends, 60,
                   "the fresh worker's consumer offsets reaching the end of the input")
    finally:
        fresh.stop()
    assert fresh.first is not None
    return Outcome(reference, read_max_counts(broker.bootstrap, counts),
                   fresh.first - fresh.started, fresh.log(tail=10**7))


def assert_counts(outcome: Outcome, backend: str) -> None:
    ref = dict(outcome.reference)
    twice = {w: (c, ref.get(w)) for w, c in outcome.counts.items() if c > ref.get(w, 0)}
    lost = {w: (outcome.counts.get(w), c) for w, c in ref.items() if outcome.counts.get(w, 0) < c}
    assert not twice, f"{backend}: counted twice (got, expected): {twice}"
    assert not lost, f"{backend}: lost counts (got, expected): {lost}"


def tierstore_server(tmp_path: Path, broker: Broker, s3: S3Server, bucket: str) -> ServerProc:
    return ServerProc(tmp_path / "ts-data", kafka=broker.bootstrap,
                      object_store=f"s3://{bucket}/ts", s3_endpoint=s3.endpoint)


def read_tierstore_counts(server: ServerProc, store: str) -> dict[str, int]:
    """The committed Quix state, read by an interactive query: key = json(message key) + b"|"
    + json(state key), value = json(count)."""
    with server.client() as client:
        reader = client.reader(store)
        out: dict[str, int] = {}
        for key, value in reader.all():
            word, state_key = key.split(b"|", 1)
            assert json.loads(state_key) == "count"
            out[json.loads(word)] = json.loads(value)
        return out


def test_quix_kill9_fresh_worker_tierstore_vs_rocksdb(
    broker: Broker, s3_server: S3Server, s3_bucket: str, tmp_path: Path
) -> None:
    from tierstore.adapters.quix import shard_store_name

    server = tierstore_server(tmp_path, broker, s3_server, s3_bucket)
    try:
        rocks = run_kill9_scenario("rocksdb", broker, tmp_path)
        tier = run_kill9_scenario("tierstore", broker, tmp_path, server.address)
        assert_counts(rocks, "rocksdb")
        assert_counts(tier, "tierstore")
        state = read_tierstore_counts(
            server, shard_store_name("quix.", "wc-tierstore", "words-tierstore", "default"))
        assert state == dict(tier.reference)
    finally:
        server.close()
    ratio = rocks.first_record_s / tier.first_record_s
    print(f"\nQUIX fresh worker, start to first processed record ({RECORDS} records, {WORDS} "
          f"words, killed half way, empty state dir): rocksdb+changelog "
          f"{rocks.first_record_s:.2f} s, tierstore {tier.first_record_s:.2f} s, "
          f"ratio rocksdb/tierstore {ratio:.2f}x", flush=True)


def test_quix_kill_between_consumer_commit_and_store_flush(
    broker: Broker, s3_server: S3Server, s3_bucket: str, tmp_path: Path
) -> None:
    """The worker dies after Quix committed its consumer offsets and before the tierstore
    commit: Kafka is ahead of the state, and the fresh worker must seek back to tierstore's
    offsets (without that, the records of that checkpoint would be lost)."""
    server = tierstore_server(tmp_path, broker, s3_server, s3_bucket)
    try:
        outcome = run_kill9_scenario("tierstore", broker, tmp_path, server.address,
                                     kill_at_flush=3)
    finally:
        server.close()
    assert "resumes at tierstore's committed offset" in outcome.fresh_log
    assert_counts(outcome, "tierstore, killed inside the store flush")


def test_quix_live_rebalance_two_workers_count_every_record_once(
    broker: Broker, s3_server: S3Server, s3_bucket: str, tmp_path: Path
) -> None:
    """Input keeps arriving while worker 1 runs alone, worker 2 joins the group (one partition
    each: worker 1's store flushes and releases the shard it loses, worker 2 claims it and
    resumes at tierstore's offset), and worker 1 then stops with SIGTERM (worker 2 takes both).
    tierstore's committed state and the highest count sent per word must equal the reference
    exactly: nothing lost and nothing counted twice across either handover."""
    from tierstore.adapters.quix import shard_store_name

    words, counts, group = "words-live", "counts-live", "wc-live"
    create_topics(broker.bootstrap, words, counts)
    server = tierstore_server(tmp_path, broker, s3_server, s3_bucket)
    feed = PacedWords(broker.bootstrap, words, PARTITIONS, WORDS, seed=3,
                      value_of=lambda w: json.dumps({"w": w}).encode())

    def worker(n: int) -> Worker:
        return Worker(tmp_path / f"live-{n}.log", "--backend", "tierstore", "--bootstrap",
                      broker.bootstrap, "--group", group, "--input", words, "--output", counts,
                      "--state-dir", str(tmp_path / f"live-state-{n}"),
                      "--tierstore", server.address)

    w1 = worker(1)
    w2: Worker | None = None
    try:
        w1.wait(lambda: w1.progress >= 400, 60, "worker 1's first 400 records")
        w2 = worker(2)
        second = w2
        second.wait(lambda: second.progress >= 200, 60, "worker 2's first 200 records")
        before = w1.progress
        w1.wait(lambda: w1.progress >= before + 200, 60, "worker 1 going on beside worker 2")
        split_at = (w1.progress, second.progress)
        w1.stop()  # SIGTERM: Quix stops, flushes its checkpoint and revokes both partitions
        after = second.progress
        second.wait(lambda: second.progress >= after + 400, 60, "worker 2 alone")
        feed.stop()
        ends = dict(enumerate(feed.ends))
        second.wait(lambda: committed(broker.bootstrap, group, words) == ends, 60,
                    "worker 2's consumer offsets reaching the end of the input")
        state = read_tierstore_counts(server, shard_store_name("quix.", group, words, "default"))
    finally:
        feed.stop()
        w1.stop()
        if w2 is not None:
            w2.stop()
        server.close()
    sent = read_max_counts(broker.bootstrap, counts)
    print(f"\nQUIX live rebalance: {feed.produced} records; both workers counting side by "
          f"side (worker 1 at {split_at[0]} records, worker 2 at {split_at[1]}) until worker 1 "
          f"left", flush=True)
    assert state == dict(feed.ref)
    assert_counts(Outcome(feed.ref, sent, 0.0, ""), "tierstore, live rebalance")

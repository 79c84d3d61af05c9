"""The README's second example, examples/wordcount.py, run for real: a real Tansu broker, a real
moto S3 server, a real tierstore server subprocess (changelog on the broker, snapshots in S3),
and the worker as a subprocess.

The input topic (3 partitions, partitioned by word with Kafka's murmur2, known timestamps) is
generated here; the worker is killed with SIGKILL about halfway (when its committed offsets
pass half the input), a fresh worker (a new process, nothing local) finishes the input, and
the final totals and windowed counts equal a reference computed here from the input alone: no
record lost, none counted twice.

The same run is repeated with the baseline state backend (`--state local`: local RocksDB plus
a Kafka changelog, restored by replaying the changelog on an empty state directory), and the
time from the fresh worker's start to its first processed record is printed for both, with
the ratio. The state (tens of thousands of words, each in several windows) makes the
baseline's restore visible.
"""

from __future__ import annotations

import importlib
import os
import queue
import random
import re
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from tests.infra import Broker, S3Server, kill9, terminate
from tests.serverproc import ServerProc
from tierstore import windowkeys as wk
from tierstore.client import LocalKeyValueStore, partition_for
from tierstore.client.windowed import LocalWindowStore

pytestmark = [pytest.mark.kafka, pytest.mark.s3]

ROOT = Path(__file__).resolve().parent.parent
WORKER = ROOT / "examples" / "wordcount.py"
PARTITIONS = 3
RECORDS = int(os.environ.get("WORDCOUNT_RECORDS", "150000"))
VOCABULARY = int(os.environ.get("WORDCOUNT_VOCABULARY", "120000"))
WINDOW_MS = 60_000
RETENTION_MS = 24 * 3600 * 1000
T0 = 1_700_000_000_000
SPAN_MS = 12 * WINDOW_MS  # the input covers 12 minutes of event time, so ~13 windows

Record = tuple[int, bytes, int]  # partition, word, timestamp ms


def generate(seed: int) -> list[Record]:
    """Words: a few hundred frequent ones and a long tail; timestamps rising across SPAN_MS,
    out of order by up to 5 s (so windows are revisited)."""
    rng = random.Random(seed)
    hot = [b"the%d" % i for i in range(300)]
    out = []
    for i in range(RECORDS):
        word = rng.choice(hot) if rng.random() < 0.3 else b"w%06d" % rng.randrange(VOCABULARY)
        ts = T0 + i * SPAN_MS // RECORDS - rng.randrange(5_000)
        out.append((partition_for(word, PARTITIONS), word, ts))
    return out


def reference(records: list[Record]) -> tuple[dict[bytes, int], dict[tuple[bytes, int], int]]:
    totals = Counter(w for _, w, _ in records)
    windows = Counter((w, ts - ts % WINDOW_MS) for _, w, ts in records)
    return dict(totals), dict(windows)


def create_topic(bootstrap: str, topic: str) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, num_partitions=PARTITIONS,
                                  replication_factor=1)])[topic].result(timeout=30)


def produce(bootstrap: str, topic: str, records: list[Record],
            per_second: float | None = None) -> dict[int, int]:
    """Produce every record (at most `per_second`); returns the end offset of each partition
    (the topic is new: offsets run from 0)."""
    started = time.monotonic()
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True,
                         "linger.ms": 20, "batch.num.messages": 10_000})
    failed: list[str] = []
    ends: dict[int, int] = Counter()

    def delivered(err: object, msg: object) -> None:
        if err is not None:
            failed.append(str(err))

    for i, (p, word, ts) in enumerate(records):
        if per_second is not None and i % 100 == 0:
            ahead = started + i / per_second - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
            producer.poll(0)
        while True:
            try:
                producer.produce(topic, word, word, p, timestamp=ts, on_delivery=delivered)
                break
            except BufferError:
                producer.poll(0.05)
        ends[p] += 1
    assert producer.flush(60) == 0 and not failed, failed[:3]
    return dict(ends)


@dataclass
class WorkerProc:
    """examples/wordcount.py as a subprocess; its log lines are collected as they come."""

    cmd: list[str]
    env: dict[str, str] = field(default_factory=dict)
    started_at: float = field(default_factory=time.time)
    lines: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     cwd=ROOT, env={**os.environ, **self.env})
        self._q: queue.Queue[str] = queue.Queue()
        out = self.proc.stdout
        assert out is not None

        def pump() -> None:
            for line in out:
                self._q.put(line.decode(errors="replace").rstrip())

        threading.Thread(target=pump, daemon=True).start()

    def drain(self) -> None:
        while True:
            try:
                self.lines.append(self._q.get_nowait())
            except queue.Empty:
                return

    def has(self, text: str) -> bool:
        self.drain()
        return any(text in line for line in self.lines)

    def committed(self) -> dict[int, int]:
        """The highest committed offset of each partition seen in the worker's log: where it
        resumed, and its commit lines (offsets only grow, whoever committed them)."""
        self.drain()
        out: dict[int, int] = {}
        for line in self.lines:
            found = re.findall(r":(\d+)=(\d+)", line) if " committed " in line else (
                re.findall(r"partition (\d+): claimed .* resuming at offset (\d+)", line))
            for p, off in found:
                out[int(p)] = max(out.get(int(p), 0), int(off))
        return out

    def wait(self, predicate: object, timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while not predicate():  # type: ignore[operator]
            if self.proc.poll() is not None:
                self.drain()
                raise AssertionError(f"worker exited {self.proc.returncode} before {what}:\n"
                                     + "\n".join(self.lines[-30:]))
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what}: not within {timeout_s}s:\n"
                                   + "\n".join(self.lines[-30:]))
            time.sleep(0.02)

    def first_record_s(self) -> tuple[float, float]:
        """Seconds to the first processed record (from its log): from the process's start
        (interpreter and imports included), and from the worker's own start."""
        self.drain()
        for line in self.lines:
            if m := re.search(r"first record processed: .*, ([\d.]+) s after start "
                              r"\(at=([\d.]+)\)", line):
                return float(m.group(2)) - self.started_at, float(m.group(1))
        raise AssertionError("the worker never logged its first record")

    def claims(self) -> list[tuple[int, int, int]]:
        """(partition, totals from, windows from) of each claim in the worker's log."""
        self.drain()
        return [(int(p), int(t), int(w)) for p, t, w in re.findall(
            r"partition (\d+): claimed .* \(totals from (\d+), windows from (\d+)\)",
            "\n".join(self.lines))]

    def resumed_at(self) -> dict[int, int]:
        return {p: min(t, w) for p, t, w in self.claims()}

    def kill9(self) -> None:
        kill9(self.proc)

    def terminate(self) -> int:
        rc = terminate(self.proc, 60.0, then_kill=False)
        self.drain()
        return rc

    def close(self) -> None:
        if self.proc.poll() is None:
            self.kill9()


def run_with_kill(base_cmd: list[str], state_dirs: tuple[list[str], list[str]],
                  ends: dict[int, int]) -> tuple[tuple[float, float], WorkerProc]:
    """Run a worker, SIGKILL it once half the input is committed, run a fresh one to the end
    and stop it with SIGTERM. Returns the fresh worker's start-to-first-record time."""
    total = sum(ends.values())
    first = WorkerProc(base_cmd + state_dirs[0])
    try:
        first.wait(lambda: sum(first.committed().values()) >= total // 2, 60,
                   "half the input committed")
    finally:
        first.kill9()
    done_before = sum(first.committed().values())
    assert done_before < total, "the first worker finished before the kill: make the input larger"
    second = WorkerProc(base_cmd + state_dirs[1])
    try:
        second.wait(lambda: second.committed() == ends, 90, "the fresh worker reaching the end")
        resumed = second.resumed_at()
        assert set(resumed) == set(range(PARTITIONS))
        assert total // 2 <= sum(resumed.values()) < total, resumed  # it resumed, not restarted
        assert second.terminate() == 0, "\n".join(second.lines[-20:])
        if os.environ.get("WORDCOUNT_DEBUG"):
            print("\n".join(first.lines[-5:] + second.lines[:8]))
        assert any("stopped after" in line for line in second.lines)
    finally:
        second.close()
    return second.first_record_s(), second


def test_wordcount_worker_kill9_resumes_exactly_once_tierstore_vs_local_baseline(
    tmp_path: Path, broker: Broker, s3_server: S3Server, s3_bucket: str
) -> None:
    records = generate(seed=8)
    want_totals, want_windows = reference(records)
    create_topic(broker.bootstrap, "words")
    ends = produce(broker.bootstrap, "words", records)
    assert len(ends) == PARTITIONS
    common = [sys.executable, str(WORKER), "--bootstrap", broker.bootstrap, "--input", "words",
              "--partitions", ",".join(map(str, range(PARTITIONS))), "--window-ms",
              str(WINDOW_MS), "--retention-ms", str(RETENTION_MS), "--commit-every", "5000"]

    server = ServerProc(tmp_path / "server", kafka=broker.bootstrap,
                        object_store=f"s3://{s3_bucket}/ts", s3_endpoint=s3_server.endpoint)
    try:
        ts_first, _ = run_with_kill(
            [*common, "--app", "wc", "--state", "tierstore", "--tierstore", server.address],
            ([], []), ends)
        client = server.client()
        got_totals = {k: int(v) for k, v in client.reader("wc-totals").all()}
        got_windows = {(k, t): int(v) for k, t, v in
                       client.window_reader("wc-windows").fetch_all(0, wk.MAX_TIME)}
        client.close()
    finally:
        server.close()
    assert len(got_totals) == len(want_totals) and got_totals == want_totals
    assert len(got_windows) == len(want_windows) and got_windows == want_windows

    local_cmd = [*common, "--app", "wcl", "--state", "local"]
    dirs = (["--state-dir", str(tmp_path / "local-a")], ["--state-dir", str(tmp_path / "local-b")])
    base_first, fresh = run_with_kill(local_cmd, dirs, ends)
    restored = [line.split("wordcount: ")[-1] for line in fresh.lines if " restored " in line]
    assert len(restored) == 1, fresh.lines[-20:]
    got_totals, got_windows = {}, {}
    for p in range(PARTITIONS):
        with LocalKeyValueStore(tmp_path / "local-b" / f"p{p}" / "totals") as kv:
            got_totals.update((k, int(v)) for k, v in kv.all())
        with LocalWindowStore(tmp_path / "local-b" / f"p{p}" / "windows", WINDOW_MS,
                              RETENTION_MS) as ws:
            got_windows.update(((k, t), int(v)) for k, t, v in ws.all())
    assert got_totals == want_totals
    assert got_windows == want_windows

    print(f"\nWORDCOUNT records={len(records)} words={len(want_totals)} "
          f"windows={len(want_windows)}; fresh worker, process start -> first record: "
          f"tierstore {ts_first[0]:.2f} s, local RocksDB + changelog {base_first[0]:.2f} s "
          f"(baseline/tierstore = {base_first[0] / ts_first[0]:.1f}x); from the worker's own "
          f"start (imports excluded): {ts_first[1]:.3f} s vs {base_first[1]:.3f} s "
          f"({base_first[1] / ts_first[1]:.1f}x); baseline {restored[0]}", flush=True)


def test_wordcount_consumer_group_rebalance_and_crash_between_the_two_commits(
    tmp_path: Path, broker: Broker
) -> None:
    """Group mode: worker A starts alone; B joins (A's partitions are revoked: A commits and
    closes them; the two split them); then A dies between the window store's commit and the
    totals store's; after A's session times out B takes A's partitions over, resumes each
    store from its own offset, and the counts equal the reference while input keeps coming."""
    records = generate(seed=9)[:24_000]
    want_totals, want_windows = reference(records)
    create_topic(broker.bootstrap, "words")
    server = ServerProc(tmp_path / "server")
    crash = tmp_path / "crash-now"
    cmd = [sys.executable, str(WORKER), "--bootstrap", broker.bootstrap, "--input", "words",
           "--tierstore", server.address, "--app", "grp", "--commit-every", "1000",
           "--commit-interval-ms", "300"]
    ends: dict[int, int] = {}
    producer = threading.Thread(
        target=lambda: ends.update(produce(broker.bootstrap, "words", records, 1_000)))
    a = WorkerProc(cmd, env={"WORDCOUNT_TEST_CRASH_FILE": str(crash)})
    b: WorkerProc | None = None
    try:
        producer.start()
        a.wait(lambda: a.has(" committed "), 60, "A committing")
        b = WorkerProc(cmd)
        w = b
        w.wait(lambda: w.has(" claimed "), 60, "B joining the group")
        assert a.has("released"), "A's partitions were not revoked"
        assert {p for p, _, _ in a.claims()} | {p for p, _, _ in b.claims()} == {0, 1, 2}
        crash.touch()
        a.proc.wait(timeout=30)
        assert a.proc.returncode == 9, a.lines[-10:]
        producer.join(timeout=60)
        assert sum(ends.values()) == len(records)
        w.wait(lambda: w.committed() == ends, 90, "B reaching the end of every partition")
        takeover = [c for c in w.claims() if c[1] != c[2]]
        assert takeover and all(t < w_ for _, t, w_ in takeover), w.claims()  # skip logic used
        assert w.terminate() == 0, w.lines[-20:]
        if os.environ.get("WORDCOUNT_DEBUG"):
            print("\n".join(["A:", *a.lines, "B:", *w.lines]))
        client = server.client()
        got_totals = {k: int(v) for k, v in client.reader("grp-totals").all()}
        got_windows = {(k, t): int(v) for k, t, v in
                       client.window_reader("grp-windows").fetch_all(0, wk.MAX_TIME)}
        client.close()
    finally:
        a.close()
        if b is not None:
            b.close()
        server.close()
    assert got_totals == want_totals
    assert got_windows == want_windows


def test_wordcount_state_resumes_each_store_from_its_own_offset(tmp_path: Path) -> None:
    """The two-store rule, step by step on a real server: after a crash between the window
    store's commit and the totals store's, a new claim resumes each store from its own offset,
    and a commit below the window store's offset leaves that offset where it was (moving it
    back would count those records twice in the windows after the next crash)."""
    sys.path.insert(0, str(WORKER.parent))
    remote_state = importlib.import_module("wordcount_state").RemoteState

    server = ServerProc(tmp_path / "server")
    try:
        client = server.client()

        def claim() -> Any:
            return remote_state(client, "unit", "words:0", 0, 1, WINDOW_MS, RETENTION_MS)

        st = claim()
        st.add({b"a": 2}, {(b"a", 0): 2})
        st.commit(10)
        st.add({b"a": 2}, {(b"a", 0): 2})  # records 10..19: "a" at 12 and 17
        st.ws.commit({"words:0": 20})  # the crash: windows committed, totals not
        st.close()
        st = claim()
        assert (st.totals_from, st.windows_from) == (10, 20)
        st.add({b"a": 1}, {})  # records 10..14 again ("a" at 12): totals only
        st.commit(15)
        assert st.ws.committed_offsets == {"words:0": 20}
        assert st.kv.committed_offsets == {"words:0": 15}
        st.add({b"a": 1}, {})  # 15..19 ("a" at 17)
        st.commit(20)
        st.close()
        st = claim()
        assert (st.totals_from, st.windows_from) == (20, 20)
        assert st.kv.get(b"a") == b"4"
        assert st.ws.fetch_window(b"a", 0) == b"4"  # each record counted once in each store
        st.close()
        client.close()
    finally:
        server.close()

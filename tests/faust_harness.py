"""Runs tests/faust_wordcount.py as real worker processes: spawn, watch its stdout lines,
kill -9, and the input generator with its reference counts."""

from __future__ import annotations

import json
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
from datetime import datetime
from pathlib import Path

from tests.infra import kill9, terminate
from tests.words import word_partition

ROOT = Path(__file__).resolve().parent.parent


def create_topic(bootstrap: str, topic: str, partitions: int) -> None:
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    for fut in admin.create_topics([NewTopic(topic, partitions, 1)]).values():
        fut.result(timeout=30)


def produce_words(bootstrap: str, topic: str, partitions: int, records: int, vocabulary: int,
                  seed: int) -> tuple[Counter[str], list[int]]:
    """Create `topic` and write `records` random words to it; returns the reference counts
    and the end offset of each partition."""
    from confluent_kafka import Producer

    create_topic(bootstrap, topic, partitions)
    rng = random.Random(seed)
    vocab = [f"w{i:04d}" for i in range(vocabulary)]
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    ref: Counter[str] = Counter()
    ends = [0] * partitions
    for _ in range(records):
        word = rng.choice(vocab)
        p = word_partition(word, partitions)
        producer.produce(topic, key=word.encode(), value=word.encode(), partition=p)
        ref[word] += 1
        ends[p] += 1
    if producer.flush(30) != 0:
        raise RuntimeError("input records were not all delivered")
    return ref, ends


@dataclass
class Worker:
    """One `python -m tests.faust_wordcount worker` process and the lines it printed."""

    env: dict[str, str]
    log_path: Path
    started: float = field(default_factory=time.time)
    lines: queue.Queue[tuple[float, str]] = field(default_factory=queue.Queue)
    seen: int = 0
    first_at: float | None = None
    done_at: float | None = None
    done: bool = False

    def __post_init__(self) -> None:
        self._log = open(self.log_path, "wb")  # noqa: SIM115
        self.started = time.time()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.faust_wordcount", "worker", "-l", "info"],
            cwd=ROOT, env={**os.environ, **self.env}, stdout=subprocess.PIPE,
            stderr=self._log,
        )
        out = self.proc.stdout
        assert out is not None

        def pump() -> None:
            for raw in out:
                self.lines.put((time.time(), raw.decode().strip()))

        threading.Thread(target=pump, daemon=True).start()

    def _take(self, timeout: float) -> bool:
        try:
            at, line = self.lines.get(timeout=timeout)
        except queue.Empty:
            return False
        if line.startswith("FIRST "):
            self.first_at = at
        elif line.startswith("SEEN "):
            self.seen = int(line.split()[1])
        elif line == "DONE":
            self.done = True
            self.done_at = at
        return True

    def wait(self, what: str, predicate: object, timeout_s: float) -> None:
        """Read lines until `predicate()` holds; fail with the worker's log tail otherwise."""
        check = predicate if callable(predicate) else (lambda: bool(predicate))
        deadline = time.monotonic() + timeout_s
        while not check():
            if self.proc.poll() is not None and self.lines.empty():
                raise AssertionError(f"worker exited {self.proc.returncode} before {what}:\n"
                                     f"{self.log_tail()}")
            if time.monotonic() >= deadline:
                raise AssertionError(f"worker: no {what} within {timeout_s}s:\n"
                                     f"{self.log_tail()}")
            self._take(0.05)

    def log_tail(self, n: int = 4000) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")[-n:]

    def log_times(self) -> dict[str, float]:
        """Seconds from the process start to the last group join and to Faust's last "Worker
        ready" (recovery done), read from the worker's log."""
        found: dict[str, float] = {}
        for line in self.log_tail(10**7).splitlines():
            m = _LOG_TIME.match(line)
            if m is None:
                continue
            for name, marker in (("joined", "Joined group"), ("ready", "Worker ready")):
                if marker in line:
                    found[name] = _parse_log_time(m.group(1)) - self.started
        return found

    def kill9(self) -> None:
        kill9(self.proc)

    def stop(self, timeout_s: float = 30.0) -> None:
        terminate(self.proc, timeout_s)
        self._log.close()


_LOG_TIME = re.compile(r"\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\]")


def _parse_log_time(text: str) -> float:
    # Faust's log lines carry local wall-clock time with milliseconds.
    stamp = datetime.strptime(text, "%Y-%m-%d %H:%M:%S,%f")
    return time.mktime(stamp.timetuple()) + stamp.microsecond / 1e6


def read_dump(path: Path) -> dict[str, int]:
    return {str(k): int(v) for k, v in json.loads(path.read_text()).items()}

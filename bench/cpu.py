"""CPU time of processes, split by the kind of thread that spent it (Linux /proc).

A benchmark samples `ThreadCpu` before and after a phase and divides the difference by the
work done, e.g. milliseconds of CPU per commit, for each process it started. Thread kinds come
from the thread names the libraries give their threads: `rdk:*` (librdkafka), `rocksdb:*`
(RocksDB's flushes and compactions), every other name is counted under it ("python" for the
interpreter's threads, gRPC's own C threads under theirs). CPU time is what was spent, not
what was waited: it shows which process and which library a path's work lands in, and, summed
over the processes, the least wall time that work can take on the machine's cores.
"""

from __future__ import annotations

import os
from pathlib import Path

_HZ = os.sysconf("SC_CLK_TCK")


def kind(thread_name: str) -> str:
    """'rdk:broker111' -> 'librdkafka', 'rocksdb:high' -> 'rocksdb', others unchanged."""
    if thread_name.startswith("rdk:"):
        return "librdkafka"
    if thread_name.startswith("rocksdb:"):
        return "rocksdb"
    return thread_name


def thread_cpu(pid: int) -> dict[int, tuple[str, float]]:
    """{thread id: (kind, CPU seconds so far)} for every live thread of `pid`."""
    out: dict[int, tuple[str, float]] = {}
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return out
    for task in tasks:
        try:
            stat = (task / "stat").read_text()
        except OSError:  # the thread ended meanwhile
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        out[int(task.name)] = (kind(name), (int(fields[11]) + int(fields[12])) / _HZ)
    return out


class ThreadCpu:
    """CPU seconds per thread kind spent by some processes between `start()` and `stop()`,
    added up over several phases (threads that ended meanwhile are not counted)."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids  # label -> pid
        self.spent: dict[tuple[str, str], float] = {}  # (label, kind) -> seconds
        self._at_start: dict[str, dict[int, tuple[str, float]]] = {}

    def start(self) -> None:
        self._at_start = {label: thread_cpu(pid) for label, pid in self.pids.items()}

    def stop(self) -> None:
        for label, pid in self.pids.items():
            before = self._at_start.get(label, {})
            for tid, (k, secs) in thread_cpu(pid).items():
                spent = secs - before.get(tid, (k, 0.0))[1]
                self.spent[(label, k)] = self.spent.get((label, k), 0.0) + spent

    def per_unit_ms(self, units: int) -> dict[str, float]:
        """'label kind' -> milliseconds per unit of work, largest first; kinds below 0.05 ms
        per unit are left out."""
        rows = sorted(((f"{label} {k}", secs * 1000 / max(units, 1))
                       for (label, k), secs in self.spent.items()), key=lambda r: -r[1])
        return {name: round(ms, 2) for name, ms in rows if ms >= 0.05}

    def total_ms(self, units: int) -> float:
        return sum(self.spent.values()) * 1000 / max(units, 1)

"""Shared benchmark plumbing: machine facts and load, percentiles, deterministic data, and the
report (a plain-text table on stdout plus JSON in the output directory).

Every judged figure is a ratio against a baseline measured in the same run on the same machine;
absolute numbers are printed and recorded, never judged on their own (except where the issue
states an absolute goal, e.g. a latency bound, which is then reported next to its ratio).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

KEY_BYTES = 16
VALUE_BYTES = 100
DEFAULT_OUT = Path(__file__).resolve().parent / "out"
SIZES = ("small", "full")


# --- machine -------------------------------------------------------------------------------
def machine() -> dict[str, Any]:
    """nproc, CPU model (from /proc/cpuinfo), memory, Python and platform."""
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_kb = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
                break
    except OSError:
        pass
    return {
        "nproc": os.cpu_count() or 0,
        "cpu_model": cpu,
        "mem_total_mb": mem_kb // 1024,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
    }


def revision() -> dict[str, Any]:
    """The git commit measured, and whether server/ client/ or tierstore/ had local changes."""
    import subprocess

    root = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True,
                                  timeout=10).stdout
        except (OSError, subprocess.SubprocessError):
            return ""

    dirty = git("status", "--porcelain", "--", "server", "client", "tierstore")
    return {"commit": git("rev-parse", "--short", "HEAD").strip(),
            "uncommitted_changes": [ln[3:] for ln in dirty.splitlines() if ln.strip()]}


# --- data ----------------------------------------------------------------------------------
def batch_keys(seed: int, index: int, n: int) -> list[bytes]:
    """`n` random 16-byte keys for batch `index`; the same arguments give the same keys."""
    raw = random.Random(seed * 1_000_003 + index).randbytes(KEY_BYTES * n)
    return [raw[i : i + KEY_BYTES] for i in range(0, len(raw), KEY_BYTES)]


def batch_values(seed: int, index: int, n: int) -> list[bytes]:
    """`n` random (incompressible) 100-byte values for batch `index`."""
    raw = random.Random(~(seed * 1_000_003 + index)).randbytes(VALUE_BYTES * n)
    return [raw[i : i + VALUE_BYTES] for i in range(0, len(raw), VALUE_BYTES)]


def batches(
    seed: int, total: int, per_batch: int, start: int = 0
) -> Iterable[tuple[list[bytes], list[bytes]]]:
    """`total` key/value pairs in batches of `per_batch`, generated lazily."""
    for i, first in enumerate(range(0, total, per_batch)):
        n = min(per_batch, total - first)
        yield batch_keys(seed, start + i, n), batch_values(seed, start + i, n)


# --- timing --------------------------------------------------------------------------------
def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted sequence (q in 0..100)."""
    if not sorted_values:
        return 0.0
    rank = max(1, min(len(sorted_values), round(q / 100 * len(sorted_values) + 0.5)))
    return float(sorted_values[rank - 1])


def latency_summary(ns: Sequence[int]) -> dict[str, float]:
    """p50/p90/p99/max/mean in milliseconds from samples in nanoseconds."""
    ms = sorted(x / 1e6 for x in ns)
    return {
        "samples": float(len(ms)),
        "p50_ms": percentile(ms, 50),
        "p90_ms": percentile(ms, 90),
        "p99_ms": percentile(ms, 99),
        "max_ms": ms[-1] if ms else 0.0,
        "mean_ms": statistics.fmean(ms) if ms else 0.0,
    }


def proc_status_kb(pid: int, field_name: str) -> int:
    """A kB field (VmRSS, VmHWM, ...) of /proc/PID/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1])
    raise KeyError(f"{field_name} not in /proc/{pid}/status")


def loadavg() -> str:
    """/proc/loadavg's 1/5/15-minute load averages: other work on the machine skews results."""
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return ""


def _cpu_seconds() -> tuple[float, float]:
    """(CPU seconds the whole machine has been busy, CPU seconds of this process plus its
    reaped children) — sampled at the start and end of a benchmark to tell how much of the
    machine other work took meanwhile."""
    hz = os.sysconf("SC_CLK_TCK")
    busy = 0.0
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        busy = (sum(fields[:8]) - fields[3] - fields[4]) / hz  # minus idle and iowait
    except (OSError, ValueError, IndexError):
        pass
    t = os.times()
    return busy, t.user + t.system + t.children_user + t.children_system


# --- report --------------------------------------------------------------------------------
@dataclass
class Goal:
    name: str
    target: str  # e.g. ">= 0.8"
    value: float | None  # None: the measurement failed (see the report's notes)
    met: bool
    unit: str = "x"


@dataclass
class Report:
    """One benchmark run: table rows (absolute numbers), ratios and goals."""

    name: str
    size: str
    params: dict[str, Any] = field(default_factory=dict)
    columns: list[str] = field(default_factory=list)
    rows: list[list[Any]] = field(default_factory=list)
    results: dict[str, Any] = field(default_factory=dict)
    ratios: dict[str, float] = field(default_factory=dict)
    goals: list[Goal] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.time)
    load_at_start: str = field(default_factory=loadavg)
    cpu_at_start: tuple[float, float] = field(default_factory=_cpu_seconds)

    def goal(self, name: str, value: float, target: str, unit: str = "x") -> None:
        op, _, bound = target.partition(" ")
        limit = float(bound)
        met = value >= limit if op == ">=" else value <= limit
        self.goals.append(Goal(name, target, value, met, unit))

    def machine_load(self) -> dict[str, Any]:
        """Average cores busy during the run: all, this benchmark's processes (once reaped),
        and the rest (other work on the machine, which skews the figures)."""
        wall = max(time.time() - self.started, 1e-9)
        busy, own = _cpu_seconds()
        all_cores = (busy - self.cpu_at_start[0]) / wall
        own_cores = (own - self.cpu_at_start[1]) / wall
        return {"loadavg_start": self.load_at_start, "loadavg_end": loadavg(),
                "busy_cores": round(all_cores, 2), "benchmark_cores": round(own_cores, 2),
                "other_cores": round(max(0.0, all_cores - own_cores), 2)}

    def failed_goal(self, name: str, target: str, unit: str = "x") -> None:
        """A goal whose measurement failed: not met, with no value."""
        self.goals.append(Goal(name, target, None, False, unit))

    def to_json(self) -> dict[str, Any]:
        return {
            "benchmark": self.name,
            "size": self.size,
            "date": _dt.datetime.fromtimestamp(self.started, _dt.UTC).isoformat(
                timespec="seconds"),
            "duration_s": round(time.time() - self.started, 2),
            "machine": machine(),
            "revision": revision(),
            "machine_load": self.machine_load(),
            "params": self.params,
            "results": self.results,
            "ratios": self.ratios,
            "goals": [g.__dict__ for g in self.goals],
            "notes": self.notes,
        }

    def write(self, out_dir: Path) -> Path:
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / f"{self.name}.json"
        path.write_text(json.dumps(self.to_json(), indent=2, sort_keys=False) + "\n")
        return path

    def render(self) -> str:
        lines = [f"== {self.name} ({self.size}) =="]
        if self.params:
            lines.append("params: " + ", ".join(f"{k}={v}" for k, v in self.params.items()))
        if self.columns:
            lines.extend(_table(self.columns, self.rows))
        for k, v in self.ratios.items():
            lines.append(f"ratio {k}: {v:.3f}")
        for g in self.goals:
            state = "MET" if g.met else "NOT MET"
            value = "FAILED" if g.value is None else f"{g.value:.3f}{g.unit}"
            lines.append(f"goal {g.name}: {value} (target {g.target}{g.unit}) {state}")
        lines.extend(f"note: {n}" for n in self.notes)
        ld = self.machine_load()
        lines.append(f"machine load: {ld['busy_cores']} cores busy on average, "
                     f"{ld['other_cores']} of them by other processes (loadavg "
                     f"{ld['loadavg_start']} -> {ld['loadavg_end']})")
        return "\n".join(lines)


def fmt(v: Any) -> str:
    if isinstance(v, float):
        if v == 0 or abs(v) >= 1000:
            return f"{v:,.0f}"
        if abs(v) >= 10:
            return f"{v:.1f}"
        return f"{v:.3f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def _table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    cells = [list(columns), *[[fmt(c) for c in r] for r in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    out = []
    for n, r in enumerate(cells):
        out.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                             for i, (c, w) in enumerate(zip(r, widths, strict=True))))
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return out

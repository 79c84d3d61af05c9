"""Smoke test of the benchmark suite: every benchmark runs at --size small and writes a complete
JSON report with positive numbers. It checks that the benchmarks WORK, not how fast anything is
(bench/RESULTS.md has the full-size figures)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from bench import run_one
from bench.__main__ import main

# The results each benchmark must report (besides its ratios and goals).
REQUIRED = {
    "write": ["embedded_keys_per_s", "embedded_quix_keys_per_s", "remote_keys_per_s",
              "cpu_ms_per_commit"],
    "read": ["latency"],
    "scan": ["embedded_keys_per_s", "remote_keys_per_s", "remote_reader_keys_per_s"],
    "restore": ["replay_s", "snapshot_plus_tail_s", "raw_download_s", "snapshot_bytes"],
    "memory": ["baseline_bytes", "budget_bytes", "peak_rss_bytes"],
}


def _numbers(value: Any) -> list[float]:
    if isinstance(value, bool):
        return []
    if isinstance(value, int | float):
        return [float(value)]
    if isinstance(value, dict):
        return [n for v in value.values() for n in _numbers(v)]
    if isinstance(value, list):
        return [n for v in value for n in _numbers(v)]
    return []


def _check(doc: dict[str, Any], name: str) -> None:
    assert doc["benchmark"] == name
    assert doc["size"] == "small"
    assert doc["date"]
    m = doc["machine"]
    assert m["nproc"] > 0 and m["cpu_model"] and m["python"]
    for key in REQUIRED[name]:
        nums = _numbers(doc["results"][key])
        assert nums and all(math.isfinite(n) and n > 0 for n in nums), (key, nums)
    assert doc["ratios"] and all(math.isfinite(v) and v > 0 for v in doc["ratios"].values())
    assert doc["goals"]
    for g in doc["goals"]:
        assert g["value"] is not None, f"{g['name']}: measurement failed: {doc['notes']}"
        assert g["value"] > 0 and isinstance(g["met"], bool) and g["target"]


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("write", marks=pytest.mark.kafka),
        "read",
        "scan",
        pytest.param("restore", marks=[pytest.mark.kafka, pytest.mark.s3]),
        pytest.param("memory", marks=pytest.mark.kafka),
    ],
)
def test_benchmark_small_writes_complete_json(name: str, tmp_path: Path) -> None:
    rep = run_one(name, "small", tmp_path)
    doc = json.loads((tmp_path / f"{name}.json").read_text())
    _check(doc, name)
    assert rep.render().startswith(f"== {name} (small) ==")


def test_thread_cpu_counts_a_busy_thread_by_kind() -> None:
    """bench.cpu: CPU a thread of this process burns between start() and stop() is counted
    under its thread's kind."""
    import os
    import threading
    import time

    from bench.cpu import ThreadCpu, kind

    assert (kind("rdk:broker1"), kind("rocksdb:high"), kind("python")) == (
        "librdkafka", "rocksdb", "python")
    cpu = ThreadCpu({"me": os.getpid()})

    def burn() -> None:
        end = time.process_time() + 0.3
        while time.process_time() < end:
            pass

    cpu.start()
    t = threading.Thread(target=burn)
    t.start()
    t.join()
    cpu.stop()  # the thread has ended: its CPU is gone from /proc, so only this thread counts
    cpu.start()
    burn()
    cpu.stop()
    mine = kind(Path(f"/proc/self/task/{threading.get_native_id()}/comm").read_text().strip())
    busy = cpu.spent[("me", mine)]
    assert 0.2 <= busy <= 1.0, cpu.spent
    assert cpu.per_unit_ms(1)[f"me {mine}"] == round(busy * 1000, 2)


def test_cli_rejects_unknown_benchmark(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["nope", "--size", "small"])
    assert "invalid choice" in capsys.readouterr().err


@pytest.mark.kafka
def test_ab_write_runs_both_trees(capsys: pytest.CaptureFixture[str]) -> None:
    """The write A/B tool (bench.ab_write): this tree against itself, one small round."""
    from bench.ab_write import main as ab_write

    root = str(Path(__file__).resolve().parent.parent)
    assert ab_write(["--old", root, "--new", root, "--rounds", "1", "--keys", "2000"]) == 0
    out = capsys.readouterr().out
    assert "round 0: old" in out and "median per-round new/old" in out


def test_ab_read_runs_both_trees(tmp_path: Path) -> None:
    """The read A/B tool (bench.ab_read): this tree against itself and the echo floor."""
    from bench.ab_read import main as ab_read

    root = str(Path(__file__).resolve().parent.parent)
    out = tmp_path / "ab.json"
    assert ab_read(["--old", root, "--new", root, "--keys", "2000", "--rounds", "1",
                    "--per-round", "20", "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc and all(math.isfinite(n) and n > 0 for n in _numbers(doc))

"""tierstore benchmarks (issue 3): `python -m bench <name|all> [--size small|full]`.

Each benchmark compares tierstore against a baseline measured in the same run on the same
machine, prints a table, and writes `<out>/<name>.json` (default `bench/out/`, git-ignored).
Full-size results are kept in `bench/RESULTS.md`.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from bench.harness import DEFAULT_OUT, Report

BENCHMARKS = ("write", "read", "scan", "restore", "memory")


def run_one(
    name: str, size: str = "small", out_dir: Path = DEFAULT_OUT, profile_dir: Path | None = None
) -> Report:
    """Run benchmark `name` (a module bench.<name> with `run(size, profile_dir) -> Report`),
    write its JSON to `out_dir`, and return the report."""
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; expected one of {', '.join(BENCHMARKS)}")
    module = importlib.import_module(f"bench.{name}")
    rep: Report = module.run(size, profile_dir)
    rep.write(out_dir)
    return rep

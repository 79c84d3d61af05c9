"""`python -m bench <name> [--size small|full] [--out DIR] [--profile DIR]`."""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from bench import BENCHMARKS, run_one
from bench.harness import DEFAULT_OUT, SIZES


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="tierstore benchmarks: every figure is a ratio against a baseline measured "
        "in the same run. Each prints a table and writes OUT/<name>.json.",
    )
    parser.add_argument("name", choices=[*BENCHMARKS, "all"])
    parser.add_argument("--size", choices=SIZES, default="full",
                        help="small: a few seconds each (the smoke test); full: the judged size")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON output directory")
    parser.add_argument("--profile", type=Path, default=None, metavar="DIR",
                        help="record py-spy profiles (collapsed stacks) of the timed phases into "
                        "DIR; summarise with `python -m bench.profile DIR/FILE.txt`")
    args = parser.parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so the brokers and servers a benchmark started are stopped.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    names = list(BENCHMARKS) if args.name == "all" else [args.name]
    failed = 0
    for name in names:
        rep = run_one(name, args.size, args.out, args.profile)
        print(rep.render(), flush=True)
        print(f"wrote {args.out / (name + '.json')}\n", flush=True)
        failed += sum(not g.met for g in rep.goals)
    print(f"{failed} goal(s) not met" if failed else "all goals met")
    return 0


if __name__ == "__main__":
    sys.exit(main())

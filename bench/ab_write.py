"""A/B of write throughput between two source trees, in one run, alternating rounds.

    python -m bench.ab_write --old DIR --new DIR [--rounds R] [--keys N] [--per-commit N]
                             [--buffer-entries N]

One Tansu broker for the whole run. Each round runs both trees (the order alternates, so a
drift in the machine's load falls on both alike); each run is a child process started in the
tree's directory (its `tierstore` package and `bench` come first on sys.path) that starts that
tree's `tierstore serve` with a changelog, commits `--keys` puts of 16-byte keys and 100-byte
values in commits of `--per-commit` and prints keys/s. `--buffer-entries` bounds the client's
write buffer (a smaller bound than `--per-commit` makes it stage parts of each commit on the
server). Prints each round and the median of the per-round new/old ratios. `DIR` is a checkout
(`git worktree add --detach /tmp/base REV`).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

SEED = 11


def _child(bootstrap: str, keys: int, per_commit: int, buffer_entries: int, store: str) -> None:
    """One run, in the tree of the current directory: print keys/s on the last line."""
    import tempfile
    import time

    sys.path.insert(0, os.getcwd())
    sys.modules.pop("bench", None)  # the tree's, not this file's
    import tierstore
    from bench.harness import batches
    from bench.procs import Server

    print(f"tree {os.getcwd()}: tierstore from {Path(tierstore.__file__).parent}",
          file=sys.stderr)

    with tempfile.TemporaryDirectory(prefix="ab-write-") as tmp:
        server = Server.serve(Path(tmp) / "server", "--kafka-bootstrap", bootstrap,
                              "--snapshot-every-commits", "1000000000")
        try:
            client = server.client()
            kv = client.key_value_store(store, 0, 1, buffer_max_entries=buffer_entries)
            data = list(batches(SEED, keys, per_commit))
            put = kv.put
            started = time.perf_counter()
            for offset, (ks, vs) in enumerate(data, 1):
                for k, v in zip(ks, vs, strict=True):
                    put(k, v)
                kv.commit({"input:0": offset})
            print(keys / (time.perf_counter() - started), flush=True)
            kv.close()
            client.close()
        finally:
            server.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ab_write", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--old", type=Path, required=True)
    parser.add_argument("--new", type=Path, required=True)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--per-commit", type=int, default=1000)
    parser.add_argument("--buffer-entries", type=int, default=100_000)
    parser.add_argument("--child", nargs=2, metavar=("BOOTSTRAP", "STORE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child(args.child[0], args.keys, args.per_commit, args.buffer_entries, args.child[1])
        return 0

    from tests.infra import tansu

    trees = {"old": args.old.resolve(), "new": args.new.resolve()}
    rates: dict[str, list[float]] = {name: [] for name in trees}
    with tansu() as broker:
        for r in range(args.rounds):
            for name in (list(trees) if r % 2 == 0 else list(trees)[::-1]):
                # This file as a script (an old tree may not have it), run in the tree's
                # directory: the child puts that first on sys.path.
                cmd = [sys.executable, str(Path(__file__).resolve()), "--old", ".", "--new", ".",
                       "--keys", str(args.keys), "--per-commit", str(args.per_commit),
                       "--buffer-entries", str(args.buffer_entries),
                       "--child", broker.bootstrap, f"ab-{name}-{r}"]
                out = subprocess.run(cmd, cwd=trees[name], capture_output=True, text=True,
                                     check=False)
                if out.returncode != 0:
                    print(out.stderr[-3000:], file=sys.stderr)
                    return 1
                rates[name].append(float(out.stdout.strip().splitlines()[-1]))
            print(f"round {r}: old {rates['old'][-1]:,.0f} keys/s, new {rates['new'][-1]:,.0f} "
                  f"keys/s, new/old {rates['new'][-1] / rates['old'][-1]:.2f}", flush=True)
    ratios = [n / o for n, o in zip(rates["new"], rates["old"], strict=True)]
    print(f"median: old {statistics.median(rates['old']):,.0f} keys/s, new "
          f"{statistics.median(rates['new']):,.0f} keys/s; median per-round new/old "
          f"{statistics.median(ratios):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A/B of read latency between two source trees, in one run, alternating rounds.

    python -m bench.ab_read --old DIR --new DIR [--keys N] [--rounds R] [--per-round N]

Each tree gets its own `tierstore serve` subprocess and its own client worker process (both
with PYTHONPATH=tree, so old client talks to old server and new to new), loaded with the same
keys; a bare gRPC echo (bench.echo, sized like a Get) runs as a third variant: the floor. The
driver then asks each variant in turn, round after round, for a slice of point gets, 100-key
get_many (fresh handle), reader.get and reader.multi_get, so that the noise of a shared machine
falls on all of them alike. Prints p50/p90/p99 per variant and operation, and each tree's
ratio to the echo floor. `DIR` is a checkout (e.g. `git worktree add --detach /tmp/base REV`
or `git archive REV | tar -x -C DIR`).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.harness import latency_summary

OPS = ("get", "get_many", "reader.get", "reader.multi_get")
STORE = "ab-read"
SEED = 21
MULTI = 100
MULTI_OPS = ("get_many", "reader.multi_get")


def _worker(address: str, keys_total: int, load: bool) -> None:
    """A client process: load the keys (once per server), then answer `OP N` lines on stdin
    with the JSON list of N latencies (ns)."""
    import time

    from bench.loaders import load_remote, sample_keys
    from tierstore.client import connect

    client = connect(address)
    client.wait_ready(30.0)
    if load:
        load_remote(client.key_value_store(STORE, 0, 1), SEED, keys_total, 1000)
    kv = client.key_value_store(STORE, 0)
    reader = client.reader(STORE)
    singles = sample_keys(SEED, keys_total, 1000, 20_000)
    flat = sample_keys(SEED, keys_total, 1000, 200 * MULTI, rng_seed=8)
    multis = [flat[i : i + MULTI] for i in range(0, len(flat), MULTI)]
    fns: dict[str, tuple[Any, list[Any]]] = {
        "get": (kv.get, singles), "get_many": (kv.get_many, multis),
        "reader.get": (reader.get, singles), "reader.multi_get": (reader.multi_get, multis),
    }
    pos = dict.fromkeys(fns, 0)
    clock = time.perf_counter_ns
    print("ready", flush=True)
    for line in sys.stdin:
        op, n = line.split()
        fn, args = fns[op]
        out = []
        for _ in range(int(n)):
            a = args[pos[op] % len(args)]
            pos[op] += 1
            t0 = clock()
            fn(a)
            out.append(clock() - t0)
        print(json.dumps(out), flush=True)


def _echo_worker(address: str) -> None:
    """The floor: the same protocol over a bare echo, request and response sized like ours."""
    from bench.echo import EchoClient
    from tierstore.v1 import store_pb2 as pb

    one = pb.GetRequest(store=STORE, partition=0, epoch=1, keys=[bytes(16)])
    many = pb.GetRequest(store=STORE, partition=0, epoch=1, keys=[bytes(16)] * MULTI)
    r_one = pb.GetResponse(values=[bytes(100)], found=[True]).ByteSize()
    r_many = pb.GetResponse(values=[bytes(100)] * MULTI, found=[True] * MULTI).ByteSize()
    sizes = {"get": (one.SerializeToString(), r_one),
             "get_many": (many.SerializeToString(), r_many)}
    sizes["reader.get"], sizes["reader.multi_get"] = sizes["get"], sizes["get_many"]
    client = EchoClient(address)
    print("ready", flush=True)
    for line in sys.stdin:
        op, n = line.split()
        req, size = sizes[op]
        print(json.dumps(client.latencies(req, size, int(n))), flush=True)


class _Proc:
    """A worker subprocess speaking the line protocol."""

    def __init__(self, args: Sequence[str], tree: Path) -> None:
        env = {**os.environ, "PYTHONPATH": str(tree)}
        self.p = subprocess.Popen([sys.executable, __file__, *args], cwd=tree, env=env,
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        if self._line() != "ready":
            raise RuntimeError(f"worker {args} did not start")

    def _line(self) -> str:
        assert self.p.stdout is not None
        line = self.p.stdout.readline()
        if not line:
            raise RuntimeError("worker exited")
        return line.strip()

    def run(self, op: str, n: int) -> list[int]:
        assert self.p.stdin is not None
        self.p.stdin.write(f"{op} {n}\n")
        self.p.stdin.flush()
        out: list[int] = json.loads(self._line())
        return out

    def close(self) -> None:
        if self.p.stdin is not None:
            self.p.stdin.close()
        self.p.wait(timeout=30)


def _server(tree: Path, data: Path) -> Any:
    from bench.procs import Server

    cmd = [sys.executable, "-m", "tierstore", "serve", "--listen", "127.0.0.1:0",
           "--data-dir", str(data), "--snapshot-every-commits", "1000000000"]
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = str(tree)
    try:
        # Started in the tree: `-m tierstore` finds the current directory's package first.
        where = subprocess.run(
            [sys.executable, "-c", "import tierstore; print(tierstore.__file__)"], cwd=tree,
            capture_output=True, text=True, check=True).stdout.strip()
        print(f"server of {tree}: tierstore from {Path(where).parent}", flush=True)
        return Server(cmd, data.parent / f"{data.name}.log", cwd=tree)
    finally:
        if old is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = old


def run(old: Path, new: Path, keys: int, rounds: int, per_round: int) -> dict[str, Any]:
    from bench.procs import Server

    here = Path(__file__).resolve().parent.parent
    with tempfile.TemporaryDirectory(prefix="ab-read-") as tmp:
        root = Path(tmp)
        servers = {"old": _server(old, root / "old"), "new": _server(new, root / "new")}
        echo = Server([sys.executable, "-m", "bench.echo", "serve"], root / "echo.log")
        workers: dict[str, _Proc] = {}
        try:
            for name, tree in (("old", old), ("new", new)):
                workers[name] = _Proc(["worker", servers[name].address, str(keys)], tree)
            workers["echo"] = _Proc(["echo", echo.address], here)
            lat: dict[str, dict[str, list[int]]] = {v: {op: [] for op in OPS} for v in workers}
            for op in OPS:  # warm-up, not recorded
                for w in workers.values():
                    w.run(op, 30 if op in MULTI_OPS else 300)
            for r in range(rounds):
                order = list(workers) if r % 2 == 0 else list(reversed(workers))
                for op in OPS:
                    n = max(per_round // 10, 10) if op in MULTI_OPS else per_round
                    for v in order:
                        lat[v][op] += workers[v].run(op, n)
        finally:
            for w in workers.values():
                w.close()
            echo.close()
            for s in servers.values():
                s.close()
    return {v: {op: latency_summary(ns) for op, ns in ops.items()} for v, ops in lat.items()}


def render(res: dict[str, Any]) -> str:
    lines = [f"{'operation':<18} {'variant':<6} {'p50 ms':>7} {'p90 ms':>7} {'p99 ms':>7} "
             f"{'n':>6}  {'p50/echo':>8} {'p99/echo':>8}"]
    for op in OPS:
        floor = res["echo"][op]
        for v in ("old", "new", "echo"):
            s = res[v][op]
            lines.append(f"{op:<18} {v:<6} {s['p50_ms']:7.3f} {s['p90_ms']:7.3f} "
                         f"{s['p99_ms']:7.3f} {int(s['samples']):6d}  "
                         f"{s['p50_ms'] / floor['p50_ms']:8.2f} "
                         f"{s['p99_ms'] / floor['p99_ms']:8.2f}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["worker"]:
        _worker(args[1], int(args[2]), load=True)
        return 0
    if args[:1] == ["echo"]:
        _echo_worker(args[1])
        return 0
    parser = argparse.ArgumentParser(prog="python -m bench.ab_read", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--old", type=Path, required=True)
    parser.add_argument("--new", type=Path, default=Path(__file__).resolve().parent.parent)
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--per-round", type=int, default=500)
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    a = parser.parse_args(args)
    res = run(a.old.resolve(), a.new.resolve(), a.keys, a.rounds, a.per_round)
    print(render(res))
    if a.json is not None:
        a.json.write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""scan: a range over N keys, keys/s, remote against in-process rocksdict iteration.

N keys are committed to a tierstore shard (server subprocess) and written to an in-process
rocksdict set up like the server's hot tier. Each round iterates every key once:
- remote: `kv.range(None, None)` on a fresh handle (pages streamed by the server's Scan);
- remote reader: `client.reader(store).range(None, None)` (merged over partitions; one here);
- embedded: `for k, v in db.items()` on the rocksdict.
The order alternates each round; the judged ratio is the median over rounds of remote/embedded
(each round's runs are adjacent in time; this machine is shared and noisy).
Goal: remote >= 0.5x embedded.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from bench.harness import Report
from bench.loaders import EMBEDDED_OPTIONS, load_remote, load_rocksdict
from bench.procs import Server, prof_path, profiled

SIZES = {"small": {"keys": 50_000, "rounds": 2}, "full": {"keys": 1_000_000, "rounds": 5}}
PER_COMMIT = 1000
SEED = 31
STORE = "bench-scan"


def _rate(make: Callable[[], Iterable[Any]], expected: int) -> float:
    t0 = time.perf_counter()
    n = 0
    for _ in make():
        n += 1
    secs = time.perf_counter() - t0
    if n != expected:
        raise AssertionError(f"scan returned {n} keys, expected {expected}")
    return n / secs


def run(size: str = "small", profile_dir: Path | None = None) -> Report:
    p = SIZES[size]
    total, rounds = p["keys"], p["rounds"]
    rep = Report("scan", size, params={
        "keys": total, "rounds": rounds,
        "server": "subprocess, no changelog, default scan page size",
        "embedded": EMBEDDED_OPTIONS + "; db.items()",
    })
    rates: dict[str, list[float]] = {"embedded": [], "remote": [], "remote reader": []}
    with tempfile.TemporaryDirectory(prefix="bench-scan-") as tmp:
        root = Path(tmp)
        db = load_rocksdict(root / "embedded", SEED, total, PER_COMMIT)
        with Server.serve(root / "server", "--snapshot-every-commits", "1000000000") as server:
            with server.client() as loader:
                load_remote(loader.key_value_store(STORE, 0, 1), SEED, total, PER_COMMIT)
            with server.client() as client:
                kv = client.key_value_store(STORE, 0)
                reader = client.reader(STORE)
                for r in range(rounds):
                    if r % 2 == 0:
                        rates["embedded"].append(_rate(db.items, total))
                    with profiled(server.pid, prof_path(profile_dir, f"scan-server-r{r}")), \
                            profiled(os.getpid(), prof_path(profile_dir, f"scan-client-r{r}")):
                        rates["remote"].append(_rate(lambda: kv.range(None, None), total))
                    rates["remote reader"].append(
                        _rate(lambda: reader.range(None, None), total))
                    if r % 2 == 1:
                        rates["embedded"].append(_rate(db.items, total))
                kv.close()
        db.close()
    med = {k: statistics.median(v) for k, v in rates.items()}
    rep.columns = ["path", "keys/s (median)", "min", "max", "rounds"]
    rep.rows = [[k, med[k], min(v), max(v), rounds] for k, v in rates.items()]
    rep.results = {f"{k.replace(' ', '_')}_keys_per_s": med[k] for k in rates}
    rep.results["rounds_keys_per_s"] = rates
    def per_round(path: str) -> float:
        return statistics.median(
            r / e for r, e in zip(rates[path], rates["embedded"], strict=True))

    rep.ratios = {
        "remote_vs_embedded": per_round("remote"),
        "remote_reader_vs_embedded": per_round("remote reader"),
        "median_remote_vs_median_embedded": med["remote"] / med["embedded"],
    }
    rep.goal("remote/embedded scan throughput", rep.ratios["remote_vs_embedded"], ">= 0.5")
    return rep

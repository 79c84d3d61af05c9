"""memory: peak RSS of a server with 100 shards open under a steady write load (20 at --size
small, to keep the smoke test short), against its configured memory budget plus the process's
fixed baseline.

The server runs as a subprocess (a `python -c` script calling `serve()` with a custom
HotTierConfig, which has no command-line flags yet) with a Tansu changelog. Its fixed baseline is
its RSS when idle with 0 shards (measured right after it starts listening). Then one client
claims the partitions of one store and, round after round, commits 1,000 puts (16-byte keys,
100-byte values) to every shard and reads 100 committed keys back from each with `get_many`.
Peak RSS is VmHWM from /proc/PID/status, or the highest VmRSS sampled every 50 ms if that is
higher (the kernel updates VmHWM lazily).

budget = block_cache_bytes + write_buffer_bytes. Goal: peak <= 1.15 x (budget + baseline).
"""

from __future__ import annotations

import random
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench.harness import Report, batch_keys, batch_values, proc_status_kb
from bench.procs import Server, prof_path, profiled
from tests.infra import tansu

MiB = 1024 * 1024
SIZES = {
    "small": {"shards": 20, "rounds": 3, "keys": 500, "cache": 8 * MiB, "wbuf": 8 * MiB},
    "full": {"shards": 100, "rounds": 30, "keys": 1000, "cache": 64 * MiB, "wbuf": 64 * MiB},
}
READS = 100
SEED = 51
STORE = "bench-memory"

SERVER_SCRIPT = """
import sys
from pathlib import Path
from tierstore.server.app import serve
from tierstore.server.config import ServerConfig
from tierstore.server.hottier import HotTierConfig
data_dir, kafka, cache, wbuf = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
cfg = ServerConfig(listen="127.0.0.1:0", data_dir=Path(data_dir), kafka_bootstrap=kafka,
                   hot=HotTierConfig(block_cache_bytes=cache, write_buffer_bytes=wbuf))
sys.exit(serve(cfg.validate()))
"""


class RssSampler:
    """Samples a process's VmRSS (kB) on a thread until stopped."""

    def __init__(self, pid: int, every_s: float = 0.05) -> None:
        self.pid = pid
        self.every_s = every_s
        self.max_kb = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="rss-sampler")
        self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                self.max_kb = max(self.max_kb, proc_status_kb(self.pid, "VmRSS"))
                self.samples += 1
            except (OSError, KeyError):
                return
            if self._stop.wait(self.every_s):
                return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def run(size: str = "small", profile_dir: Path | None = None) -> Report:
    p = SIZES[size]
    shards, rounds, per_commit = p["shards"], p["rounds"], p["keys"]
    budget = p["cache"] + p["wbuf"]
    rep = Report("memory", size, params={
        "shards": shards, "rounds": rounds, "puts_per_commit": per_commit,
        "gets_per_shard_per_round": READS, "block_cache_bytes": p["cache"],
        "write_buffer_bytes": p["wbuf"], "data_written_mb": round(
            shards * rounds * per_commit * 116 / 1e6, 1),
        "changelog": "Tansu (in-memory)",
    })
    rng = random.Random(SEED)
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp, tansu() as broker:
        root = Path(tmp)
        cmd = [sys.executable, "-c", SERVER_SCRIPT, str(root / "server"), broker.bootstrap,
               str(p["cache"]), str(p["wbuf"])]
        with Server(cmd, root / "server.log") as server, server.client() as client:
            baseline_kb = proc_status_kb(server.pid, "VmRSS")
            sampler = RssSampler(server.pid)
            t0 = time.perf_counter()
            kvs = [client.key_value_store(STORE, i, shards) for i in range(shards)]
            open_s = time.perf_counter() - t0
            opened_kb = proc_status_kb(server.pid, "VmRSS")
            t1 = time.perf_counter()
            with profiled(server.pid, prof_path(profile_dir, "memory-server")):
                for r in range(rounds):
                    for i, kv in enumerate(kvs):
                        b = r * shards + i
                        keys = batch_keys(SEED, b, per_commit)
                        for k, v in zip(keys, batch_values(SEED, b, per_commit), strict=True):
                            kv.put(k, v)
                        kv.commit({"input:0": r + 1})
                        old = batch_keys(SEED, rng.randrange(r + 1) * shards + i, per_commit)
                        got = kv.get_many(rng.sample(old, min(READS, per_commit)))
                        if any(v is None for v in got):
                            raise AssertionError("a committed key was not found")
            load_s = time.perf_counter() - t1
            sampler.stop()
            end_kb = proc_status_kb(server.pid, "VmRSS")
            peak_kb = proc_status_kb(server.pid, "VmHWM")
            for kv in kvs:
                kv.close()
    baseline, peak = baseline_kb * 1024, max(peak_kb, sampler.max_kb) * 1024
    allowed = budget + baseline
    ratio = peak / allowed
    rep.columns = ["measure", "MiB"]
    rep.rows = [
        ["fixed baseline (idle, 0 shards)", baseline / MiB],
        ["budget (block cache + write buffers)", budget / MiB],
        ["budget + baseline", allowed / MiB],
        [f"after opening {shards} shards", opened_kb * 1024 / MiB],
        ["at the end of the load", end_kb * 1024 / MiB],
        ["peak RSS (VmHWM)", peak_kb * 1024 / MiB],
        ["peak RSS sampled (VmRSS)", sampler.max_kb * 1024 / MiB],
    ]
    rep.rows.append(["peak RSS used for the ratio", peak / MiB])
    rep.results = {
        "baseline_bytes": baseline, "budget_bytes": budget, "peak_rss_bytes": peak,
        "vmhwm_bytes": peak_kb * 1024,
        "sampled_peak_rss_bytes": sampler.max_kb * 1024, "rss_after_open_bytes": opened_kb * 1024,
        "rss_end_bytes": end_kb * 1024, "rss_samples": sampler.samples,
        "per_shard_open_overhead_bytes": (opened_kb - baseline_kb) * 1024 / shards,
        "open_s": open_s, "load_s": load_s,
        "load_keys_per_s": shards * rounds * per_commit / load_s,
    }
    rep.ratios = {"peak_vs_budget_plus_baseline": ratio}
    rep.goal("peak RSS / (budget + baseline)", ratio, "<= 1.15")
    return rep

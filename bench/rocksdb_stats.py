"""What RocksDB statistics cost: hot-tier throughput with `rocksdb_statistics` on against off.

`python -m bench.rocksdb_stats [--keys N] [--rounds R]`. Each round runs every workload once with
statistics off and once on, in alternating order, each on a fresh shard database; the figure is
the median per-round ratio (on / off), so noise from other work on the machine mostly cancels.
Workloads go through the hot tier the server uses (HotTier, ShardDB): batched random reads
(multi-get of 1,000) and single random reads, both from SST files through the block cache, once
with a cache that holds the data and once with one far smaller (mostly misses); and batched
writes as a commit applies them (WAL off, as with a changelog), into the memtable only (100,000
keys) and with their flushes (all keys), each as two whole runs per round in both orders.
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from tierstore.server.hottier import HotTier, HotTierConfig, ShardDB, ShardMeta

BATCH = 1_000


def _keys(n: int) -> list[bytes]:
    return [b"%016d" % i for i in range(n)]


class _Pair:
    """The same shard database twice, statistics off and on, each under its own HotTier (and
    so its own block cache). Every workload runs in slices alternating between the two, and
    the time of each side is summed, so a burst of other work hits both about equally."""

    def __init__(self, root: Path, cache_bytes: int) -> None:
        self.dbs = {
            on: HotTier(root / str(on), HotTierConfig(block_cache_bytes=cache_bytes,
                                                       rocksdb_statistics=on,
                                                       disable_wal=True)).open(root / f"db-{on}")
            for on in (False, True)
        }
        self.seconds = {False: 0.0, True: 0.0}

    def timed(self, slices: Sequence[Callable[[ShardDB], object]]) -> dict[bool, float]:
        """Run each slice on both databases (alternating which goes first); seconds per side."""
        seconds = {False: 0.0, True: 0.0}
        for i, work in enumerate(slices):
            for on in ((False, True) if i % 2 == 0 else (True, False)):
                started = time.perf_counter()
                work(self.dbs[on])
                seconds[on] += time.perf_counter() - started
        return seconds

    def close(self) -> None:
        for db in self.dbs.values():
            db.close()


def _write_slice(chunk: Sequence[bytes], seq: int) -> Callable[[ShardDB], object]:
    values = [b"v" * 100] * len(chunk)

    def work(db: ShardDB) -> None:
        db.apply(chunk, values, [], ShardMeta(commit_seq=seq), sync=False)
    return work


Timings = dict[str, tuple[int, dict[bool, float]]]  # workload -> (ops, seconds per side)


def _workloads(pair: _Pair, keys: list[bytes], reads: int) -> Timings:
    out: Timings = {}
    pair.timed([_write_slice(keys[i:i + BATCH], i) for i in range(0, len(keys), BATCH)])
    for db in pair.dbs.values():
        db.flush()
        db.compact()  # reads come from SST files through the block cache, not the memtable
    rng = random.Random(7)
    batches = [rng.sample(keys, BATCH) for _ in range(max(1, reads // BATCH))]

    def mget(ks: list[bytes]) -> Callable[[ShardDB], object]:
        return lambda db: db.get_many(ks)

    pair.timed([mget(b) for b in batches[: len(batches) // 4]])  # warm the caches
    out["multi_get"] = (len(batches) * BATCH, pair.timed([mget(b) for b in batches]))
    singles = [rng.sample(keys, 100) for _ in range(max(1, reads // 200))]

    def gets(ks: list[bytes]) -> Callable[[ShardDB], object]:
        return lambda db: [db.get(k) for k in ks]

    out["get"] = (len(singles) * 100, pair.timed([gets(ks) for ks in singles]))
    return out


def _write_ratio(root: Path, keys: list[bytes], flush: bool, reverse: bool) -> tuple[float, float]:
    """Batched writes of `keys` into a fresh database, statistics off then on (or the reverse);
    with `flush`, until the data is on disk (flushes and compactions included). Returns the
    throughput (keys/s) with statistics off and the ratio on / off. Whole runs, not slices:
    background flushes of one database would otherwise be timed against the other."""
    rate = {}
    for on in ((True, False) if reverse else (False, True)):
        cfg = HotTierConfig(rocksdb_statistics=on, disable_wal=True)
        db = HotTier(root / f"w{on}", cfg).open(root / f"w-{on}")
        started = time.perf_counter()
        for i in range(0, len(keys), BATCH):
            _write_slice(keys[i:i + BATCH], i)(db)
        if flush:
            db.flush()
        rate[on] = len(keys) / (time.perf_counter() - started)
        db.close()
    return rate[False], rate[True] / rate[False]


def run(n_keys: int, rounds: int, out: Callable[[str], None] = print) -> dict[str, float]:
    """Median ratio (statistics on / off) per workload; also prints a table."""
    keys = _keys(n_keys)
    big, small = 256 << 20, 1 << 20  # the data set is ~n_keys * 120 bytes
    ratios: dict[str, list[float]] = {}
    absolute: dict[str, list[float]] = {}
    for _ in range(rounds):
        for cache_name, cache in (("cache holds data", big), ("1 MiB cache", small)):
            with tempfile.TemporaryDirectory(prefix="bench-stats-") as tmp:
                pair = _Pair(Path(tmp), cache)
                try:
                    res = _workloads(pair, keys, n_keys)
                finally:
                    pair.close()
            for name, (ops, secs) in res.items():
                label = f"{name} ({cache_name})"
                ratios.setdefault(label, []).append(secs[False] / secs[True])
                absolute.setdefault(label, []).append(ops / secs[False])
        for label, ks, flush in (("write, memtable only", keys[:100_000], False),
                                 ("write, with flushes", keys, True)):
            for rev in (False, True):
                with tempfile.TemporaryDirectory(prefix="bench-stats-") as tmp:
                    off, ratio = _write_ratio(Path(tmp), ks, flush, rev)
                ratios.setdefault(label, []).append(ratio)
                absolute.setdefault(label, []).append(off)
    out(f"RocksDB statistics cost: {n_keys:,} keys of 16 B + 100 B values, {rounds} rounds; "
        "ratio = throughput with statistics / without (median of rounds)")
    out(f"{'workload':<34} {'off, ops/s':>12} {'on/off':>8} {'min':>6} {'max':>6}")
    medians = {}
    for label, rs in ratios.items():
        medians[label] = statistics.median(rs)
        out(f"{label:<34} {statistics.median(absolute[label]):>12,.0f} "
            f"{medians[label]:>8.3f} {min(rs):>6.3f} {max(rs):>6.3f}")
    return medians


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.rocksdb_stats", description=__doc__)
    parser.add_argument("--keys", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    run(args.keys, args.rounds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

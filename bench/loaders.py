"""Loading the same N keys into a tierstore shard and into an in-process rocksdict."""

from __future__ import annotations

import random
from pathlib import Path

from rocksdict import BlockBasedOptions, Cache, Options, Rdict, WriteBatch

from bench.harness import batch_keys, batches
from tierstore.client import RemoteKeyValueStore


def load_remote(kv: RemoteKeyValueStore, seed: int, total: int, per_commit: int,
                start: int = 0, offset: int = 0) -> int:
    """Commit `total` keys in commits of `per_commit`; returns the last input offset committed."""
    put = kv.put
    for keys, values in batches(seed, total, per_commit, start=start):
        for k, v in zip(keys, values, strict=True):
            put(k, v)
        offset += 1
        kv.commit({"input:0": offset})
    return offset


EMBEDDED_BLOCK_CACHE = 256 * 1024 * 1024  # the server's default HotTierConfig.block_cache_bytes
EMBEDDED_OPTIONS = ("rocksdict raw mode; 256 MiB LRU block cache, bloom filter 10 bits/key, "
                    "index and filter blocks cached (as the server's hot tier)")


def embedded_options() -> Options:
    """rocksdict options matching the server's hot tier (same cache size and table options), so
    that the remote/embedded ratio measures the remote path, not a different RocksDB setup."""
    opts = Options(raw_mode=True)
    opts.create_if_missing(True)
    table = BlockBasedOptions()
    table.set_block_cache(Cache(EMBEDDED_BLOCK_CACHE))
    table.set_bloom_filter(10, False)
    table.set_cache_index_and_filter_blocks(True)
    opts.set_block_based_table_factory(table)
    return opts


def load_rocksdict(path: Path, seed: int, total: int, per_batch: int) -> Rdict:
    """An in-process rocksdict (`embedded_options()`) with the same keys, written in
    WriteBatches of `per_batch`. Returns the open database."""
    db = Rdict(str(path), embedded_options())
    for keys, values in batches(seed, total, per_batch):
        wb = WriteBatch(raw_mode=True)
        for k, v in zip(keys, values, strict=True):
            wb.put(k, v)
        db.write(wb)
    return db


def sample_keys(seed: int, total: int, per_batch: int, n: int, rng_seed: int = 7
                ) -> list[bytes]:
    """`n` keys drawn uniformly (with replacement) from the `total` keys `batches` generates."""
    rng = random.Random(rng_seed)
    nb = (total + per_batch - 1) // per_batch
    cache: dict[int, list[bytes]] = {}
    out = []
    for _ in range(n):
        b = rng.randrange(nb)
        size = min(per_batch, total - b * per_batch)
        if b not in cache:
            cache[b] = batch_keys(seed, b, size)
        out.append(cache[b][rng.randrange(size)])
    return out

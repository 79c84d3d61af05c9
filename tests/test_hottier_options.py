"""The memtable bloom filter (`memtable_bloom_ratio`): off by default, and when set it reaches
RocksDB, answers reads correctly, and costs its size up front in every memtable."""

from __future__ import annotations

from pathlib import Path

from tierstore.server.hottier import HotTier, HotTierConfig, ShardMeta

MiB = 1024 * 1024


def rocksdb_option(shard_dir: Path, name: str) -> str:
    """The value of `name` in the newest OPTIONS file RocksDB wrote for the database."""
    newest = max(shard_dir.glob("OPTIONS-*"), key=lambda p: int(p.name.split("-")[1]))
    for line in newest.read_text().splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and key == name:
            return value
    raise AssertionError(f"{name} not in {newest}")


def test_memtable_bloom_is_off_by_default_and_reaches_rocksdb_when_set(tmp_path: Path) -> None:
    usage = {}
    for ratio in (0.0, 0.1):
        tier = HotTier(tmp_path / f"t{ratio}", HotTierConfig(memtable_bloom_ratio=ratio))
        shard_dir = tmp_path / f"shard{ratio}"
        db = tier.open(shard_dir)
        try:
            keys = [b"k%06d" % i for i in range(2000)]
            db.apply(keys, [k[::-1] for k in keys], [], ShardMeta(1, 1, 0, {}), sync=False)
            absent = [b"x%06d" % i for i in range(100)]
            assert db.get_many(keys[:100] + absent) == [k[::-1] for k in keys[:100]] + [None] * 100
            assert db.get(keys[7]) == keys[7][::-1] and db.get(absent[0]) is None
            filtering = rocksdb_option(shard_dir, "memtable_whole_key_filtering")
            bloom = float(rocksdb_option(shard_dir, "memtable_prefix_bloom_size_ratio"))
            assert (filtering, bloom) == (("true", 0.1) if ratio else ("false", 0.0))
            usage[ratio] = tier.memtable_usage()
        finally:
            db.close()
    # The filter is allocated whole with the memtable (0.1 x 16 MiB), whatever it holds: the
    # cost docs/operations.md warns about for servers with many shards.
    assert usage[0.1] - usage[0.0] >= 0.1 * 16 * MiB * 0.9, usage

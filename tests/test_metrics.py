"""Prometheus /metrics after a real workload: a server subprocess with a Tansu changelog and a
moto S3 object store, scraped over HTTP, every listed metric found with a sane value."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.infra import Broker, S3Server, free_port
from tests.serverproc import ServerProc
from tierstore.client import connect, errors
from tierstore.server.app import RunningServer, create_server
from tierstore.server.config import ServerConfig

MiB = 1024 * 1024
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = resp.read().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text) for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def total(samples: Samples, name: str, **labels: str) -> float:
    """Sum over every sample of `name` whose labels include `labels`."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


@pytest.fixture
def cluster(broker: Broker, s3_server: S3Server, s3_bucket: str) -> Iterator[dict[str, str]]:
    yield {"kafka": broker.bootstrap, "object_store": f"s3://{s3_bucket}/m",
           "s3_endpoint": s3_server.endpoint}


@pytest.mark.kafka
@pytest.mark.s3
def test_metrics_after_a_workload(tmp_path: Path, cluster: dict[str, str]) -> None:
    port = free_port()
    a = ServerProc(tmp_path / "a", extra=["--metrics-listen", f"127.0.0.1:{port}",
                                          "--block-cache-bytes", "32MiB"], **cluster)
    try:
        client = a.client()
        kv = client.key_value_store("counts", partition=1, num_partitions=2)
        for i in range(5):
            kv.put_all([(b"k%03d-%d" % (j, i), b"v" * 100) for j in range(10)])
            kv.commit({"in:1": i})
        [(partition, snapshot_id, _)] = client.snapshot("counts", 1)
        assert (partition, snapshot_id) == (1, 1)
        assert kv.get(b"k000-0") == b"v" * 100
        for _ in range(3):  # scans on the server, of the SST files the snapshot flushed
            assert len(list(kv.range(b"k", b"l"))) == 50
        zombie = kv
        kv = client.key_value_store("counts", partition=1)  # fences the first handle
        zombie.put(b"late", b"x")
        with pytest.raises(errors.FencedError):
            zombie.commit({"in:1": 99})
        with pytest.raises(errors.StoreNotFoundError):
            client.reader("missing").get(b"k")

        m = scrape(port)
        # requests and latency, per method and status code
        assert value(m, "tierstore_rpc_requests_total", method="Commit", code="OK") == 5
        assert value(m, "tierstore_rpc_duration_seconds_count", method="Commit", code="OK") == 5
        assert value(m, "tierstore_rpc_duration_seconds_sum", method="Commit", code="OK") > 0
        assert value(m, "tierstore_rpc_requests_total", method="Open", code="OK") == 2
        assert value(m, "tierstore_rpc_requests_total", method="Snapshot", code="OK") == 1
        assert value(m, "tierstore_rpc_requests_total", method="Commit",
                     code="FAILED_PRECONDITION") == 1
        assert total(m, "tierstore_rpc_requests_total", code="NOT_FOUND") >= 1
        assert value(m, "tierstore_fenced_requests_total", method="Commit") == 1
        # commit batches: 5 commits of 10 puts
        assert value(m, "tierstore_commit_batch_records_count") == 5
        assert value(m, "tierstore_commit_batch_records_sum") == 50
        assert value(m, "tierstore_commit_batch_bytes_sum") == 5 * 10 * (len(b"k000-0") + 100)
        # changelog appends: 5 commits and 2 claims, all acknowledged
        assert value(m, "tierstore_changelog_append_seconds_count", outcome="ok") == 7
        assert value(m, "tierstore_changelog_append_seconds_sum", outcome="ok") > 0
        # the forced snapshot
        assert value(m, "tierstore_snapshot_duration_seconds_count") == 1
        assert value(m, "tierstore_snapshot_bytes_sum") > 0
        assert value(m, "tierstore_snapshot_uploaded_bytes_total") > 0
        assert value(m, "tierstore_snapshots_taken_total") == 1
        assert value(m, "tierstore_shard_last_snapshot_bytes", store="counts",
                     partition="1") == value(m, "tierstore_snapshot_bytes_sum")
        # hot tier, memory, shards
        assert value(m, "tierstore_open_shards") == 1
        shard_bytes = value(m, "tierstore_hot_tier_shard_bytes", store="counts", partition="1")
        assert shard_bytes > 0 and value(m, "tierstore_hot_tier_bytes") == shard_bytes
        assert value(m, "tierstore_block_cache_capacity_bytes") == 32 * MiB
        assert 0 <= value(m, "tierstore_block_cache_usage_bytes") <= 32 * MiB
        assert value(m, "tierstore_memtable_usage_bytes") >= 0
        # block-cache lookups (RocksDB statistics): the reads above went through the cache
        hits = value(m, "tierstore_block_cache_hits_total")
        misses = value(m, "tierstore_block_cache_misses_total")
        assert misses > 0 and hits > 0  # first reads of a block miss, later ones hit
        assert value(m, "tierstore_block_cache_hit_ratio") == pytest.approx(
            hits / (hits + misses))
        assert value(m, "tierstore_shard_epoch", store="counts", partition="1") == 2
        assert value(m, "tierstore_shard_commits_since_snapshot", store="counts",
                     partition="1") == 0
        assert value(m, "process_resident_memory_bytes") > 10 * MiB
        # the shard was new here: its load took no download and replayed the empty changelog
        assert value(m, "tierstore_restore_in_progress", store="counts", partition="1") == 0
        assert value(m, "tierstore_restore_seconds", store="counts", partition="1") > 0
        kv.put(b"after-snapshot", b"1")
        kv.commit({"in:1": 10})
        client.close()
    finally:
        a.kill9()

    # A second server restores the shard: snapshot download plus changelog replay, measured.
    port_b = free_port()
    b = ServerProc(tmp_path / "b", extra=["--metrics-listen", f"127.0.0.1:{port_b}"], **cluster)
    try:
        with b.client() as client:
            kv = client.key_value_store("counts", partition=1)
            assert kv.get(b"after-snapshot") == b"1"
            m = scrape(port_b)
        labels = {"store": "counts", "partition": "1"}
        assert value(m, "tierstore_restore_in_progress", **labels) == 0
        downloaded = value(m, "tierstore_restore_downloaded_bytes", **labels)
        assert downloaded > 0
        assert downloaded == value(m, "tierstore_restore_snapshot_bytes", **labels)
        assert value(m, "tierstore_restore_download_eta_seconds", **labels) == 0
        # after the snapshot: the second claim, the last commit (1 record + marker)
        assert value(m, "tierstore_restore_replayed_records", **labels) >= 3
        assert value(m, "tierstore_restore_seconds", **labels) > 0
        assert value(m, "tierstore_rpc_requests_total", method="Open", code="OK") == 1
    finally:
        b.close()


def test_each_server_in_a_process_has_its_own_registry(tmp_path: Path) -> None:
    def start(name: str) -> RunningServer:
        return create_server(ServerConfig(listen="127.0.0.1:0", data_dir=tmp_path / name,
                                          metrics_listen="127.0.0.1:0"))

    one, two = start("one"), start("two")
    try:
        assert one.metrics is not None and two.metrics is not None
        with connect(f"127.0.0.1:{one.port}") as client:
            kv = client.key_value_store("s", partition=0)
            kv.put(b"k", b"v")
            kv.commit({"in:0": 1})
        m1, m2 = scrape(one.metrics.port), scrape(two.metrics.port)
        assert value(m1, "tierstore_rpc_requests_total", method="Commit", code="OK") == 1
        assert ("tierstore_rpc_requests_total",
                frozenset({("method", "Commit"), ("code", "OK")})) not in m2
        assert value(m1, "tierstore_open_shards") == 1 and value(m2, "tierstore_open_shards") == 0
        # without a changelog there are no appends to time
        assert total(m1, "tierstore_changelog_append_seconds_count") == 0
    finally:
        one.stop(grace=0, snapshot=False)
        two.stop(grace=0, snapshot=False)


def test_metrics_are_off_by_default(tmp_path: Path) -> None:
    running = create_server(ServerConfig(listen="127.0.0.1:0", data_dir=tmp_path))
    try:
        assert running.metrics is None
    finally:
        running.stop(grace=0, snapshot=False)


def test_block_cache_counts_survive_closed_shards_and_can_be_turned_off(tmp_path: Path) -> None:
    """The hit and miss counters are per server and never go down when a shard closes; with
    rocksdb_statistics off they are not exported."""
    from tierstore.server.hottier import HotTier, HotTierConfig, ShardMeta

    tier = HotTier(tmp_path / "on", HotTierConfig(block_cache_bytes=1 << 20))
    db = tier.open(tmp_path / "on" / "a")
    keys = [b"%08d" % i for i in range(5000)]
    db.apply(keys, [b"x" * 100] * len(keys), [], ShardMeta(), sync=False)
    db.flush()
    assert tier.block_cache_counts() is not None
    before = tier.block_cache_counts()
    db.get_many(keys)
    db.get_many(keys[:100])
    after = tier.block_cache_counts()
    assert after is not None and before is not None
    assert after.misses > before.misses and after.hits > before.hits
    assert 0 < after.hit_ratio < 1
    db.close()
    assert tier.block_cache_counts() == after  # retired, not forgotten
    again = tier.open(tmp_path / "on" / "a")
    again.get_many(keys[:10])
    final = tier.block_cache_counts()
    assert final is not None and final.hits + final.misses > after.hits + after.misses
    again.close()

    running = create_server(ServerConfig(
        listen="127.0.0.1:0", data_dir=tmp_path / "off", metrics_listen="127.0.0.1:0",
        hot=HotTierConfig(rocksdb_statistics=False)))
    try:
        assert running.metrics is not None and running.service.hot.block_cache_counts() is None
        m = scrape(running.metrics.port)
        assert "tierstore_block_cache_usage_bytes" in {n for n, _ in m}
        assert not {n for n, _ in m} & {"tierstore_block_cache_hits_total",
                                        "tierstore_block_cache_hit_ratio"}
    finally:
        running.stop(grace=0, snapshot=False)

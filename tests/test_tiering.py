"""Tiering: a server holds more state than its disk budget. Idle shards are snapshotted and
evicted; their next use restores them. Real server subprocess, real S3 server (moto)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.infra import S3Server
from tests.serverproc import ServerProc
from tierstore.client import connect, partition_for
from tierstore.server.cluster import wait_until
from tierstore.server.tiering import dir_bytes

pytestmark = pytest.mark.s3

PARTITIONS = 8


def test_max_local_bytes_keeps_disk_under_budget_and_every_key_readable(
    tmp_path: Path, s3_server: S3Server, s3_bucket: str
) -> None:
    data = tmp_path / "data"
    # First learn the full size with no budget, then run again with a quarter of it.
    reference: dict[bytes, bytes] = {}
    by_part: dict[int, list[tuple[bytes, bytes]]] = {}
    for i in range(16_000):
        k = b"key-%06d" % i
        v = os.urandom(200)  # incompressible
        reference[k] = v
        by_part.setdefault(partition_for(k, PARTITIONS), []).append((k, v))
    total_state = sum(len(k) + len(v) for k, v in reference.items())
    budget = total_state // 4
    srv = ServerProc(
        data, object_store=f"s3://{s3_bucket}/tier", s3_endpoint=s3_server.endpoint,
        extra=["--max-local-bytes", str(budget), "--evict-idle-s", "0.3",
               "--snapshot-interval-s", "1"],
    )
    try:
        client = connect(srv.address)
        for p in range(PARTITIONS):
            kv = client.key_value_store("big", partition=p, num_partitions=PARTITIONS)
            kv.put_all(by_part[p])
            kv.commit({f"in:{p}": len(by_part[p])})
            kv.close()
        shards = data / "shards"
        wait_until(lambda: dir_bytes(shards) <= budget, 60, 0.1)
        settled = dir_bytes(shards)
        assert settled <= budget, f"local bytes {settled} never fell under the budget {budget}"
        assert "evicted" in srv.log()
        # Every key stays readable: evicted shards are restored on use.
        reader = client.reader("big")
        peak = 0
        for p in range(PARTITIONS):
            keys = [k for k, _ in by_part[p][::50]]
            assert reader.multi_get(keys) == [reference[k] for k in keys]
            peak = max(peak, dir_bytes(shards))
        assert dict(reader.all()) == reference
        wait_until(lambda: dir_bytes(shards) <= budget, 60, 0.1)
        final = dir_bytes(shards)
        print(f"\nstate {total_state} bytes in {PARTITIONS} shards, budget {budget} bytes: "
              f"local {settled} bytes after loading, peak {peak} while reading every shard "
              f"back, {final} bytes at rest")
        assert final <= budget
        # A worker reopening an evicted shard gets its committed offsets back.
        kv = client.key_value_store("big", partition=3)
        assert kv.committed_offsets == {"in:3": len(by_part[3])}
    finally:
        srv.close()

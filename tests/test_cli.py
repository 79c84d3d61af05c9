"""Every `tierstore` command against real servers: a server subprocess with a Tansu changelog and
a moto S3 object store; the CLI runs as a subprocess, its output and exit code checked."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.infra import S3_ENV, Broker, S3Server, free_port
from tests.serverproc import ServerProc
from tierstore.server.hottier import HotTier

ROOT = Path(__file__).resolve().parent.parent


def tierstore(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("TIERSTORE_")}, **S3_ENV}
    return subprocess.run([sys.executable, "-m", "tierstore", *args], capture_output=True,
                          text=True, timeout=120, env=env, cwd=cwd)


def ok(*args: str) -> str:
    result = tierstore(*args)
    assert result.returncode == 0, f"{args}: {result.stderr}"
    return result.stdout


@pytest.fixture
def cluster(broker: Broker, s3_server: S3Server, s3_bucket: str) -> Iterator[dict[str, str]]:
    yield {"kafka": broker.bootstrap, "object_store": f"s3://{s3_bucket}/cli",
           "s3_endpoint": s3_server.endpoint}


@pytest.mark.kafka
@pytest.mark.s3
def test_inspect_snapshot_restore_against_real_servers(
    tmp_path: Path, cluster: dict[str, str]
) -> None:
    srv = ServerProc(tmp_path / "a", **cluster)
    store_args = ["--object-store", cluster["object_store"], "--s3-endpoint",
                  cluster["s3_endpoint"]]
    state: dict[bytes, bytes] = {}
    try:
        client = srv.client()
        kvs = [client.key_value_store("orders", partition=p, num_partitions=2) for p in (0, 1)]
        for i in range(5):
            for p, kv in enumerate(kvs):
                puts = [(b"p%d-key-%02d" % (p, j), b"v%d" % i) for j in range(20)]
                kv.put_all(puts)
                kv.commit({f"orders-in:{p}": i})
                if p == 0:
                    state.update(puts)

        # inspect a running server: table and JSON
        table = ok("inspect", "--server", srv.address)
        assert "orders" in table and "changelog:" in table and cluster["kafka"] in table
        doc = json.loads(ok("inspect", "--server", srv.address, "--json"))
        assert doc["changelog"] == cluster["kafka"] and doc["stores"] == ["orders"]
        shards = {s["partition"]: s for s in doc["shards"]}
        assert set(shards) == {0, 1}
        s0 = shards[0]
        assert (s0["store"], s0["type"], s0["epoch"], s0["commit_seq"]) == ("orders", "kv", 1, 5)
        assert s0["committed_offsets"] == {"orders-in:0": 4}
        assert s0["commits_since_snapshot"] == 5 and s0["local_bytes"] > 0
        assert s0["changelog_offset"] > 5 and s0["load_source"] == "changelog"
        assert doc["hot_tier_bytes"] == sum(s["local_bytes"] for s in doc["shards"])
        assert doc["block_cache_capacity_bytes"] == 256 * 1024 * 1024

        # force snapshots: one shard, then the whole store
        out = ok("snapshot", "orders/0", "--server", srv.address)
        assert out.splitlines()[0].split() == ["STORE", "PARTITION", "SNAPSHOT",
                                               "CHANGELOG_OFFSET", "SIZE"]
        assert out.splitlines()[1].split()[:3] == ["orders", "0", "1"]
        doc = json.loads(ok("snapshot", "orders", "--server", srv.address, "--json"))
        assert [(s["partition"], s["snapshot_id"]) for s in doc["snapshots"]] == [(0, 2), (1, 1)]
        assert all(s["bytes_total"] > 0 for s in doc["snapshots"])
        snap_offset = doc["snapshots"][0]["changelog_offset"]
        after = json.loads(ok("inspect", "--server", srv.address, "--json", "--store", "orders"))
        assert all(s["commits_since_snapshot"] == 0 for s in after["shards"])
        assert after["snapshots_taken"] == 3

        # commits after the last snapshot: the restore must replay them from the changelog
        for i in range(5, 8):
            puts = [(b"p0-key-%02d" % j, b"w%d" % i) for j in range(0, 20, 2)]
            kvs[0].put_all(puts)
            kvs[0].delete(b"p0-key-01")
            kvs[0].commit({"orders-in:0": i})
            state.update(puts)
            state.pop(b"p0-key-01", None)
        client.close()
    finally:
        srv.kill9()

    # inspect the object store offline: stores, shards, snapshots with ids, ages, sizes, offsets
    doc = json.loads(ok("inspect", *store_args, "--json"))
    [orders] = doc["stores"]
    assert (orders["name"], orders["type"], orders["num_partitions"]) == ("orders", "kv", 2)
    p0 = orders["partitions"][0]["snapshots"]
    assert [m["snapshot_id"] for m in p0] == [2, 1]  # newest first
    assert p0[0]["changelog_offset"] == snap_offset and p0[0]["bytes"] > 0
    assert p0[0]["committed_offsets"] == {"orders-in:0": 4}
    assert all(0 <= m["age_seconds"] < 300 for m in p0)
    table = ok("inspect", *store_args)
    assert "orders" in table and "SNAPSHOT" in table and "ago" in table

    # restore partition 0 offline: snapshot 2 plus the three later commits from the changelog
    dest = tmp_path / "restored"
    result = tierstore("restore", "orders/0", "--to", str(dest), *store_args,
                       "--kafka-bootstrap", cluster["kafka"], "--json", "--progress")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["snapshot_id"] == 2 and summary["snapshot_changelog_offset"] == snap_offset
    assert (summary["epoch"], summary["commit_seq"]) == (1, 8)
    assert summary["committed_offsets"] == {"orders-in:0": 7}
    assert summary["keys"] == len(state) == 19
    assert summary["replayed_batches"] == 3 and summary["replayed_records"] > 3
    assert summary["changelog_offset"] > snap_offset
    # progress bars went to stderr: bytes of the download, records of the replay
    assert "download orders/0" in result.stderr and "replay orders/0" in result.stderr
    db = HotTier(tmp_path / "check").open(dest)
    try:
        assert dict(db.iterate(None, None)) == state
    finally:
        db.close()

    # the human-readable form, snapshot only (no changelog)
    out = ok("restore", "orders/1", "--to", str(tmp_path / "r1"), *store_args)
    assert "restored orders/1" in out and "snapshot 1" in out and "keys 20" in out
    assert "commit_seq 5" in out and "orders-in:1=4" in out


@pytest.mark.s3
def test_cli_failures_exit_1_and_usage_errors_exit_2(
    tmp_path: Path, s3_server: S3Server, s3_bucket: str
) -> None:
    store_args = ["--object-store", f"s3://{s3_bucket}/x", "--s3-endpoint", s3_server.endpoint]
    srv = ServerProc(tmp_path / "a")
    try:
        missing = tierstore("snapshot", "nosuch", "--server", srv.address)
        assert missing.returncode == 1 and "NOT_FOUND" in missing.stderr
        missing = tierstore("inspect", "--server", srv.address, "--store", "nosuch")
        assert missing.returncode == 1 and "nosuch" in missing.stderr
        empty = json.loads(ok("inspect", "--server", srv.address, "--json"))
        assert empty["shards"] == [] and empty["changelog"] == ""
        assert "no open shards" in ok("inspect", "--server", srv.address)
    finally:
        srv.close()
    down = tierstore("inspect", "--server", f"127.0.0.1:{free_port()}", "--timeout", "2")
    assert down.returncode == 1 and "UNAVAILABLE" in down.stderr

    nonempty = tmp_path / "nonempty"
    nonempty.mkdir()
    (nonempty / "x").write_text("x")
    cases: list[tuple[list[str], int, str]] = [
        (["restore", "orders", "--to", str(tmp_path / "r"), *store_args], 2, "STORE/PARTITION"),
        (["restore", "orders/0", "--to", str(nonempty), *store_args], 2, "not an empty"),
        (["restore", "nosuch/0", "--to", str(tmp_path / "r"), *store_args], 1, "not found"),
        (["restore", "orders/0", *store_args], 2, "--to"),
        (["snapshot", "orders/x", "--server", "127.0.0.1:1"], 2, "STORE[/PARTITION]"),
        (["snapshot", "orders"], 2, "--server"),
        (["inspect"], 2, "exactly one of"),
        (["inspect", "--server", "h:1", *store_args], 2, "exactly one of"),
        (["inspect", *store_args, "--store", "nosuch"], 1, "not found"),
        (["nosuchcommand"], 2, "invalid choice"),
    ]
    for args, code, message in cases:
        result = tierstore(*args)
        assert result.returncode == code, (args, result.stderr)
        assert message in result.stderr, (args, result.stderr)
    assert not (tmp_path / "r").exists()  # a failed restore leaves nothing behind
    assert json.loads(ok("inspect", *store_args, "--json"))["stores"] == []


def test_every_command_has_help() -> None:
    for command in (["serve"], ["config", "show"], ["inspect"], ["snapshot"], ["restore"],
                    ["fork"]):
        out = ok(*command, "--help")
        assert out.startswith("usage: tierstore " + " ".join(command))
    assert "--block-cache-bytes" in ok("serve", "--help")
    assert "--metrics-listen" in ok("config", "show", "--help")
    for name in ("inspect", "snapshot", "restore", "fork", "bench", "config"):
        assert name in ok("--help")


def test_bench_is_forwarded_to_python_m_bench(tmp_path: Path) -> None:
    result = tierstore("bench", "--help", cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert "python -m bench" in result.stdout and "--size" in result.stdout
    usage = tierstore("bench", "nosuchbenchmark", cwd=ROOT)
    assert usage.returncode == 2 and "invalid choice" in usage.stderr
    elsewhere = tierstore("bench", "write", cwd=tmp_path)
    assert elsewhere.returncode == 1
    assert "bench/ of the source checkout" in elsewhere.stderr

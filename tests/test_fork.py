"""`tierstore fork` against real servers (a server subprocess, a Tansu changelog, a moto S3 object
store), checked against a reference model of every commit; plus the refusals, and an offset gap
in the changelog (an in-memory changelog with retention: Tansu never removes records)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.infra import Broker, S3Server
from tests.memlog import MemoryChangelog
from tests.serverproc import ServerProc
from tests.test_cli import ok, tierstore
from tierstore.server import fork
from tierstore.server.hottier import HotTier, ShardMeta
from tierstore.server.logproto import COMMIT, data_headers, marker
from tierstore.server.objectstore import LocalObjectStore
from tierstore.server.snapshots import SnapshotStore
from tierstore.server.specs import StoreSpec

COMMITS = 10


def _offset(i: int) -> int:
    return 10 * (i + 1)  # the input offset committed by commit i


@pytest.mark.kafka
@pytest.mark.s3
def test_fork_at_offsets_against_real_servers(
    tmp_path: Path, broker: Broker, s3_server: S3Server, s3_bucket: str
) -> None:
    url = f"s3://{s3_bucket}/fork"
    store_args = ["--object-store", url, "--s3-endpoint", s3_server.endpoint]
    kafka_args = ["--kafka-bootstrap", broker.bootstrap]
    srv = ServerProc(tmp_path / "a", kafka=broker.bootstrap, object_store=url,
                     s3_endpoint=s3_server.endpoint)
    # history[p][i]: the committed state of partition p after commit i
    history: list[list[dict[bytes, bytes]]] = [[], []]
    try:
        client = srv.client()
        kvs = [client.key_value_store("orders", partition=p, num_partitions=2) for p in (0, 1)]
        state: list[dict[bytes, bytes]] = [{}, {}]
        for i in range(COMMITS):
            for p, kv in enumerate(kvs):
                puts = [(b"k%02d" % ((i * 3 + j) % 25), b"p%d-c%d-%d" % (p, i, j))
                        for j in range(6)]
                kv.put_all(puts)
                state[p].update(puts)
                if i % 3 == 2:
                    kv.delete(b"k%02d" % i)
                    state[p].pop(b"k%02d" % i, None)
                kv.commit({f"orders:{p}": _offset(i)})
                history[p].append(dict(state[p]))
            if i == 4:
                ok("snapshot", "orders", "--server", srv.address)  # offsets 50 in both

        # partition 0 between two commits after the snapshot, partition 1 exactly on a commit
        # before it (so replayed from the changelog's start)
        result = tierstore("fork", "orders", "--at-offsets", "orders:0=75,orders:1=30",
                           "--to", "orders-fork", *store_args, *kafka_args, "--json",
                           "--progress")
        assert result.returncode == 0, result.stderr
        doc = json.loads(result.stdout)
        assert "fork orders" in result.stderr and "upload orders-fork" in result.stderr
        parts = {s["partition"]: s for s in doc["partitions"]}
        assert parts[0]["committed_offsets"] == {"orders:0": 70}
        assert parts[0]["next_commit_offsets"] == {"orders:0": 80}
        assert parts[0]["base_snapshot_id"] == 1 and parts[0]["exact"] is False
        assert parts[0]["commit_seq"] == 7 and parts[0]["replayed_commits"] == 2
        assert parts[1]["committed_offsets"] == {"orders:1": 30}
        assert parts[1]["base_snapshot_id"] is None and parts[1]["exact"] is True
        assert parts[1]["commit_seq"] == 3
        assert (parts[0]["keys"], parts[1]["keys"]) == (len(history[0][6]), len(history[1][2]))

        # a server claims the fork: the state of those commits, and their offsets
        forked = [client.key_value_store("orders-fork", partition=p) for p in (0, 1)]
        assert forked[0].committed_offsets == {"orders:0": 70}
        assert forked[1].committed_offsets == {"orders:1": 30}
        assert dict(forked[0].all()) == history[0][6]
        assert dict(forked[1].all()) == history[1][2]
        # the fork lives on by itself; the source is untouched
        forked[0].put(b"new", b"x")
        forked[0].commit({"orders:0": 71})
        assert kvs[0].get(b"new") is None and dict(kvs[0].all()) == history[0][-1]

        # latest, human-readable
        out = ok("fork", "orders", "--at-offsets", "latest", "--to", "orders-latest",
                 *store_args, *kafka_args)
        assert "forked orders at latest into orders-latest" in out
        assert f"orders:0={_offset(COMMITS - 1)}" in out and "BASE_SNAPSHOT" in out
        latest = client.key_value_store("orders-latest", partition=1)
        assert dict(latest.all()) == history[1][-1]

        # without the changelog only snapshots are points: 50 is one, 70 is not
        out = ok("fork", "orders", "--at-offsets", "orders:0=50,orders:1=50", "--to",
                 "orders-snap", *store_args)
        assert dict(client.key_value_store("orders-snap", partition=0).all()) == history[0][4]
        refusals: list[tuple[list[str], int, str]] = [
            (["--at-offsets", "orders:0=70,orders:1=50", "--to", "x1"], 1,
             "must be a snapshot"),
            (["--at-offsets", "orders:0=75,orders:1=30", "--to", "orders-fork", *kafka_args],
             1, "already exists"),
            (["--at-offsets", "orders:0=1000,orders:1=30", "--to", "x2", *kafka_args], 1,
             "never committed"),
            (["--at-offsets", "orders:0=70,orders:1=30,orderz:7=1", "--to", "x3",
              *kafka_args], 1, "ever committed offsets of orderz:7"),
            (["--at-offsets", "orders:0=70", "--to", "x4", *kafka_args], 1,
             "which the point does not name"),
            (["--at-offsets", "orders:0=75,orders:1=30", "--to", "x5", "--exact",
              *kafka_args], 1, "--exact"),
            (["--at-offsets", "orders:0=seventy", "--to", "x6"], 2, "INPUT=OFFSET"),
            (["--at-offsets", "latest", "--to", "orders"], 1, "another name"),
            (["--at-offsets", "latest"], 2, "--to"),
        ]
        for args, code, message in refusals:
            r = tierstore("fork", "orders", *args, *store_args)
            assert r.returncode == code, (args, r.stderr)
            assert message in r.stderr, (args, r.stderr)
        missing = tierstore("fork", "nosuch", "--at-offsets", "latest", "--to", "y",
                            *store_args)
        assert missing.returncode == 1 and "not found" in missing.stderr
        inspect = json.loads(ok("inspect", *store_args, "--json"))
        assert sorted(s["name"] for s in inspect["stores"]) == [
            "orders", "orders-fork", "orders-latest", "orders-snap"]  # refusals left nothing
        client.close()
    finally:
        srv.close()
    assert "fork" in ok("--help")
    assert ok("fork", "--help").startswith("usage: tierstore fork")


def test_fork_refuses_a_point_behind_a_changelog_gap(tmp_path: Path) -> None:
    """Records between the snapshot and the point are gone (retention): refused, not guessed."""
    log = MemoryChangelog()
    spec = StoreSpec("s", "kv", 1)
    objects = LocalObjectStore(tmp_path / "objects")
    objects.put_bytes("stores/s.json", spec.to_json())
    for i in range(6):
        mval, mh = marker(COMMIT, 1, i + 1, {"in:0": i})
        log.append_batch("s", 0, [b"k%d" % i], [b"v%d" % i], data_headers(1, i + 1), mval, mh)
    hot = HotTier(tmp_path / "hot")
    snapshots = SnapshotStore(objects)

    got = fork.build_shard(spec, 0, {"in:0": 3}, snapshots, log, hot, tmp_path / "w1")
    assert got.meta.offsets == {"in:0": 3} and got.keys == 4 and got.exact
    db = hot.open(tmp_path / "w1" / "checkpoint")
    assert db.read_meta() == ShardMeta(1, 4, 0, {"in:0": 3})  # offset 0 of the new changelog
    db.close()

    log.truncate_before("s", 0, 4)  # commits 0 and 1 are gone
    with pytest.raises(fork.ForkError, match="from offset 0 to 3 are gone"):
        fork.build_shard(spec, 0, {"in:0": 3}, snapshots, log, hot, tmp_path / "w2")

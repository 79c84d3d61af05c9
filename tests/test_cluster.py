"""Three servers on loopback sharing a real Tansu broker and a real S3 server (moto): placement,
redirects, interactive queries across servers, and a kill -9 of one server under a read loop."""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.infra import Broker, S3Server, free_port
from tests.serverproc import ServerProc
from tierstore.client import connect, errors, partition_for
from tierstore.server.cluster import placement

pytestmark = [pytest.mark.kafka, pytest.mark.s3]

PARTITIONS = 8


class Cluster:
    def __init__(self, tmp: Path, broker: Broker, s3: S3Server, bucket: str) -> None:
        self.ports = [free_port() for _ in range(3)]
        self.addresses = [f"127.0.0.1:{p}" for p in self.ports]
        self.tmp = tmp
        self.common = {
            "kafka": broker.bootstrap,
            "object_store": f"s3://{bucket}/ts",
            "s3_endpoint": s3.endpoint,
        }
        self.procs: dict[str, ServerProc] = {}

    def start(self, address: str, *extra: str) -> ServerProc:
        port = address.rsplit(":", 1)[1]
        name = f"srv-{port}-{len(self.procs)}"
        proc = ServerProc(
            self.tmp / name,
            extra=["--listen", address, "--peers", ",".join(self.addresses),
                   "--snapshot-interval-s", "1", *extra],
            **self.common,
        )
        self.procs[address] = proc
        return proc

    def wait_formed(self, timeout_s: float = 30.0) -> None:
        """Until every server sees all three (each logs its live set when it changes)."""
        want = "live servers: " + ", ".join(sorted(self.addresses))
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if all(want in p.log() for p in self.procs.values()):
                return
            time.sleep(0.05)
        raise TimeoutError("the servers never all saw each other")

    def close(self) -> None:
        for p in self.procs.values():
            p.close()


@pytest.fixture
def cluster(
    tmp_path: Path, broker: Broker, s3_server: S3Server, s3_bucket: str
) -> Iterator[Cluster]:
    c = Cluster(tmp_path, broker, s3_server, s3_bucket)
    try:
        for a in c.addresses:
            c.start(a)
        c.wait_formed()
        yield c
    finally:
        c.close()


def _load(client_target: str, n: int, seed: int) -> dict[bytes, bytes]:
    """Write n keys to their murmur2 partitions through owned shards; return the reference."""
    rng = random.Random(seed)
    client = connect(client_target)
    reference: dict[bytes, bytes] = {}
    by_part: dict[int, list[tuple[bytes, bytes]]] = {}
    for i in range(n):
        k = b"user-%06d" % i
        v = b"v-" + rng.randbytes(8).hex().encode()
        reference[k] = v
        by_part.setdefault(partition_for(k, PARTITIONS), []).append((k, v))
    for p in range(PARTITIONS):
        kv = client.key_value_store("profiles", partition=p, num_partitions=PARTITIONS)
        kv.put_all(by_part.get(p, []))
        kv.commit({f"users:{p}": len(by_part.get(p, []))})
        kv.close()
    client.close()
    return reference


def _check_reader(target: str, reference: dict[bytes, bytes]) -> None:
    client = connect(target)
    reader = client.reader("profiles")
    assert reader.num_partitions == PARTITIONS
    sample = list(reference)[::37]
    assert reader.multi_get(sample) == [reference[k] for k in sample]
    assert reader.get(b"user-000001") == reference[b"user-000001"]
    assert list(reader.all()) == sorted(reference.items())
    lo, hi = b"user-000100", b"user-000200"
    assert list(reader.range(lo, hi)) == [(k, v) for k, v in sorted(reference.items())
                                          if lo <= k <= hi]
    client.close()


def test_three_servers_place_redirect_and_answer_queries(cluster: Cluster) -> None:
    target = ",".join(cluster.addresses)
    reference = _load(target, 2000, seed=1)
    # Every shard is open on exactly the server rendezvous hashing names.
    owners = {p: placement(cluster.addresses, "profiles", p)[0] for p in range(PARTITIONS)}
    assert len(set(owners.values())) >= 2, owners
    for address in cluster.addresses:
        _check_reader(address, reference)  # any server as the entry point: redirects work
    # A server that is not the owner answers with the owner's address.
    p0_owner = owners[0]
    other = next(a for a in cluster.addresses if a != p0_owner)
    single = connect(other)
    from tierstore.v1 import store_pb2 as pb

    with pytest.raises(Exception) as info:
        single.stub.Get(pb.GetRequest(store="profiles", partition=0, keys=[b"user-000001"]))
    trailing = dict(info.value.trailing_metadata())  # type: ignore[attr-defined]
    assert trailing["tierstore-owner"] == p0_owner


def test_kill9_of_one_server_keeps_reads_and_writes_going(cluster: Cluster) -> None:
    target = ",".join(cluster.addresses)
    reference = _load(target, 1500, seed=2)
    owners = {p: placement(cluster.addresses, "profiles", p)[0] for p in range(PARTITIONS)}
    victim = max(set(owners.values()), key=lambda a: sum(1 for o in owners.values() if o == a))
    moved = [p for p, o in owners.items() if o == victim]
    client = connect(target, timeout_s=20)
    reader = client.reader("profiles")
    probe_keys = [next(k for k in reference if partition_for(k, PARTITIONS) == p) for p in moved]
    for k in probe_keys:
        assert reader.get(k) == reference[k]
    cluster.procs[victim].kill9()
    killed_at = time.monotonic()
    longest_outage = 0.0
    outage_started: float | None = None
    first_success_after_kill: float | None = None
    errors_seen = 0
    reads = 0
    deadline = killed_at + 30
    ok_streak = 0
    while time.monotonic() < deadline and ok_streak < 50:
        k = probe_keys[reads % len(probe_keys)]
        reads += 1
        try:
            value = reader.get(k)
        except errors.StateStoreError:
            errors_seen += 1
            if outage_started is None:
                outage_started = time.monotonic()
            ok_streak = 0
            continue
        assert value == reference[k]
        now = time.monotonic()
        if first_success_after_kill is None:
            first_success_after_kill = now - killed_at
        if outage_started is not None:
            longest_outage = max(longest_outage, now - outage_started)
            outage_started = None
        ok_streak += 1
    assert ok_streak >= 50, f"reads did not recover within 30 s ({errors_seen} errors)"
    print(f"\nkill -9 of {victim} (owner of partitions {moved}): {reads} reads, "
          f"{errors_seen} failed, longest read outage {longest_outage:.2f} s, first read of a "
          f"moved shard {first_success_after_kill:.2f} s after the kill "
          f"(client deadline 20 s, so no call failed for longer than that)")
    survivors = [a for a in cluster.addresses if a != victim]
    _check_reader(",".join(survivors), reference)
    # Writers carry on: the next owner restored the shard (snapshot + changelog).
    extra = connect(",".join(survivors))
    for p in moved:
        kv = extra.key_value_store("profiles", partition=p)
        assert kv.committed_offsets[f"users:{p}"] > 0
        kv.put(b"new-key", b"after")
        kv.commit({f"users:{p}": 10_000})
        kv.close()
        again = extra.key_value_store("profiles", partition=p)
        assert again.get(b"new-key") == b"after"
        assert again.committed_offsets[f"users:{p}"] == 10_000
        again.close()
    extra.close()


def _time_failover(
    tmp: Path, broker: Broker, s3: S3Server, bucket: str, replicas: int, keys: int
) -> tuple[float, int]:
    """Load one shard, kill its owner, and time the first read served by the next server."""
    c = Cluster(tmp / f"replicas-{replicas}", broker, s3, bucket)
    (tmp / f"replicas-{replicas}").mkdir()
    store = f"standby-{replicas}"
    no_snapshots = ["--snapshot-every-commits", "100000000", "--snapshot-interval-s", "100000",
                    "--standby-replicas", str(replicas)]
    try:
        for a in c.addresses:
            c.start(a, *no_snapshots)
        c.wait_formed()
        target = ",".join(c.addresses)
        client = connect(target, timeout_s=60)
        kv = client.key_value_store(store, partition=0, num_partitions=1)
        for start in range(0, keys, 5000):
            kv.put_all((b"k%07d" % i, b"v" * 50) for i in range(start, min(start + 5000, keys)))
            kv.commit({"in:0": start})
        kv.close()
        owner, successor = placement(c.addresses, store, 0)[:2]
        commits = len(range(0, keys, 5000))
        if replicas:
            # Wait until the successor follows the shard and has applied every commit.
            line = f"standby {store}/0 at commit {commits} "
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and line not in c.procs[successor].log():
                time.sleep(0.1)
            assert line in c.procs[successor].log(), "the standby never caught up"
        reader = connect(successor, timeout_s=60).reader(store)
        c.procs[owner].kill9()
        killed = time.monotonic()
        assert reader.get(b"k0000001") == b"v" * 50
        return time.monotonic() - killed, keys
    finally:
        c.close()


def test_standby_replicas_make_failover_faster(
    tmp_path: Path, broker: Broker, s3_server: S3Server, s3_bucket: str
) -> None:
    without, n = _time_failover(tmp_path, broker, s3_server, s3_bucket, 0, 60_000)
    with_standby, _ = _time_failover(tmp_path, broker, s3_server, s3_bucket, 1, 60_000)
    print(f"\nfailover of a {n}-key shard with no snapshot: first read {without:.2f} s after "
          f"the kill without standbys, {with_standby:.2f} s with --standby-replicas 1")
    assert with_standby < without

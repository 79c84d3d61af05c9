"""Three servers on loopback sharing a real Tansu broker and a real S3 server (moto): placement,
redirects, interactive queries across servers, a kill -9 of one server under a read loop,
standby replicas, and reads from a standby (allow_stale, min_offsets, standby lag)."""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.infra import Broker, S3Server, free_port
from tests.serverproc import ServerProc
from tierstore.client import connect, errors, partition_for
from tierstore.server.cluster import placement, wait_until
from tierstore.v1 import store_pb2 as pb

pytestmark = [pytest.mark.kafka, pytest.mark.s3]

PARTITIONS = 8


class Cluster:
    def __init__(self, tmp: Path, broker: Broker, s3: S3Server, bucket: str) -> None:
        self.ports = [free_port() for _ in range(3)]
        self.addresses = [f"127.0.0.1:{p}" for p in self.ports]
        self.tmp = tmp
        self.common = {
            "kafka": broker.bootstrap,
            "object_store": f"s3://{bucket}/{tmp.name}",  # one prefix per cluster
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
        if not wait_until(lambda: all(want in p.log() for p in self.procs.values()), timeout_s):
            raise TimeoutError("the servers never all saw each other")

    def close(self) -> None:
        for p in self.procs.values():
            p.close()


def inspect_shard(address: str, store: str, partition: int) -> pb.ShardStatus | None:
    """The shard as `address` reports it in Inspect (None: not open there)."""
    with connect(address) as c:
        resp = c.stub.Inspect(pb.InspectRequest(store=store), timeout=10)
    return next((s for s in resp.shards if s.partition == partition), None)


def wait_standby(address: str, store: str, partition: int, offsets: dict[str, int],
                 timeout_s: float = 60.0) -> pb.ShardStatus:
    """Until `address` follows the shard as a standby with these committed offsets applied."""
    deadline = time.monotonic() + timeout_s
    st = None
    while time.monotonic() < deadline:
        st = inspect_shard(address, store, partition)
        if (st is not None and st.standby
                and all(st.committed_offsets.get(n, -1) >= o for n, o in offsets.items())):
            return st
        time.sleep(0.1)
    raise AssertionError(f"{address} never caught up as a standby of {store}/{partition}: {st}")


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
            # Wait until the successor follows the shard and has applied every commit (its
            # Inspect answer; a log line would miss a standby loaded after the last commit).
            st = wait_standby(successor, store, 0, {"in:0": (commits - 1) * 5000})
            assert st.commit_seq == commits
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
    without, n = _time_failover(tmp_path, broker, s3_server, s3_bucket, 0, 150_000)
    with_standby, _ = _time_failover(tmp_path, broker, s3_server, s3_bucket, 1, 150_000)
    print(f"\nfailover of a {n}-key shard with no snapshot: first read {without:.2f} s after "
          f"the kill without standbys, {with_standby:.2f} s with --standby-replicas 1")
    assert with_standby < without


def _metrics_port(proc: ServerProc) -> int:
    found = re.search(r"metrics on http://[\d.]+:(\d+)/metrics", proc.log_path.read_text())
    assert found, "the server did not log its metrics address"
    return int(found.group(1))


def test_stale_reads_from_a_standby_while_the_owner_is_down(
    tmp_path: Path, broker: Broker, s3_server: S3Server, s3_bucket: str
) -> None:
    """allow_stale: a standby answers at once while the owner is down, long before the
    failover; min_offsets answered by a standby catching up; standby lag in inspect and
    metrics."""
    c = Cluster(tmp_path, broker, s3_server, s3_bucket)
    store = "stale"
    try:
        for a in c.addresses:
            c.start(a, "--standby-replicas", "1", "--metrics-listen", "127.0.0.1:0")
        c.wait_formed()
        target = ",".join(c.addresses)
        owner, standby, third = placement(c.addresses, store, 0)
        writer = connect(target, timeout_s=30)
        kv = writer.key_value_store(store, partition=0, num_partitions=1)
        reference: dict[bytes, bytes] = {}
        for batch in range(3):
            items = [(b"k%05d" % i, b"v%d-%d" % (batch, i)) for i in range(batch, 3000, 3)]
            kv.put_all(items)
            reference.update(items)
            kv.commit({"in:0": (batch + 1) * 1000})

        # Standby lag per shard: Inspect, `tierstore inspect --server`, and the metrics gauge.
        st = wait_standby(standby, store, 0, {"in:0": 3000})
        assert 0 <= st.standby_lag_seconds < 5, st.standby_lag_seconds
        own = inspect_shard(owner, store, 0)
        assert own is not None and not own.standby
        assert inspect_shard(third, store, 0) is None  # neither owner nor standby: nothing open
        cli = [sys.executable, "-m", "tierstore", "inspect", "--server", standby, "--store", store]
        text = subprocess.run(cli, capture_output=True, text=True, timeout=60, check=True).stdout
        role = re.search(r"standby \(lag \d+\.\ds\)", text)
        assert role, text
        doc = json.loads(subprocess.run([*cli, "--json"], capture_output=True, text=True,
                                        timeout=60, check=True).stdout)
        (shard_doc,) = doc["shards"]
        assert shard_doc["standby"] is True and shard_doc["standby_lag_seconds"] < 5
        port = _metrics_port(c.procs[standby])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
            metrics = resp.read().decode()
        gauge = re.search(r'tierstore_standby_lag_seconds\{partition="0",store="stale"\} '
                          r"([\d.e+-]+)", metrics)
        assert gauge and float(gauge.group(1)) < 5, metrics[-2000:]

        # min_offsets on a standby (no redirect to the owner): at once, then after a commit
        # that lands during the wait (the standby catches up on demand).
        at_standby = connect(standby, timeout_s=30)
        fresh = at_standby.reader(store, allow_stale=True, min_offsets={"in:0": 3000})
        assert fresh.get(b"k00001") == reference[b"k00001"]

        def commit_later() -> None:
            time.sleep(1.0)
            kv.put(b"k00001", b"newer")
            kv.commit({"in:0": 3001})

        t = threading.Thread(target=commit_later)
        t.start()
        started = time.monotonic()
        newer = at_standby.reader(store, allow_stale=True, min_offsets={"in:0": 3001})
        assert newer.get(b"k00001") == b"newer"
        standby_wait = time.monotonic() - started
        t.join()
        reference[b"k00001"] = b"newer"
        with pytest.raises(errors.OffsetsNotReachedError, match=r"stale/0 \(standby copy\) is at "
                           r"\{'in:0': 3001\}, below the required \{'in:0': 9999\} after 0.5 s"):
            at_standby.reader(store, allow_stale=True, min_offsets={"in:0": 9999},
                              wait_s=0.5).get(b"k00001")
        assert at_standby.router.redirects == 0  # all answered by the standby itself
        kv.close()

        # kill -9 of the owner: a stale read is answered by the standby at once; a plain
        # read waits for the failover (detection, promotion of the standby, a new epoch).
        stale = connect(target, timeout_s=30).reader(store, allow_stale=True)
        plain = connect(target, timeout_s=30).reader(store)
        assert stale.get(b"k00002") == plain.get(b"k00002") == reference[b"k00002"]
        c.procs[owner].kill9()
        killed = time.monotonic()
        assert stale.get(b"k00001") == b"newer"
        stale_s = time.monotonic() - killed
        promoted_before = "promoted standby" in c.procs[standby].log_path.read_text()
        assert dict(stale.all()) == reference  # scans too
        stale_scan_s = time.monotonic() - killed
        failover: list[float] = []

        def plain_read() -> None:
            assert plain.get(b"k00001") == b"newer"
            failover.append(time.monotonic() - killed)

        waiter = threading.Thread(target=plain_read)
        waiter.start()
        # Stale reads in a loop through the failover (promotion of the standby included):
        # the longest single read is the longest time a stale reader goes unanswered.
        longest, reads = 0.0, 0
        while waiter.is_alive() or time.monotonic() - killed < (failover or [0])[0] + 1.0:
            started = time.monotonic()
            assert stale.get(b"k%05d" % (reads % 3000)) == reference[b"k%05d" % (reads % 3000)]
            longest = max(longest, time.monotonic() - started)
            reads += 1
            if time.monotonic() - killed > 60:
                raise AssertionError("the plain read never came back")
        waiter.join()
        assert failover, "the plain read failed (see the thread's exception above)"
        failover_s = failover[0]
        print(f"\nstandby {standby} of {store}/0: inspect says {role.group(0)!r} (lag "
              f"{st.standby_lag_seconds:.2f} s), gauge {float(gauge.group(1)):.2f} s; a "
              f"min_offsets read on the standby waited {standby_wait:.2f} s for a commit "
              f"landing 1 s in\nkill -9 of the owner {owner}: stale read answered by the "
              f"standby {stale_s * 1000:.0f} ms after the kill (a stale scan of "
              f"{len(reference)} keys done at {stale_scan_s:.2f} s); plain read after the "
              f"failover {failover_s:.2f} s after the kill; {reads} stale reads through the "
              f"failover, the longest {longest * 1000:.0f} ms")
        assert not promoted_before, "the stale read came after the failover"
        assert stale_s < failover_s
        assert dict(plain.all()) == reference
    finally:
        c.close()

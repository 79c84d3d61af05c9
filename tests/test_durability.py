"""Kill anything, get the committed state back: real Tansu broker, real S3 server (moto),
the store server as a subprocess killed with SIGKILL, and restores on EMPTY data dirs."""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaError, TopicPartition

from tests.infra import Broker, S3Server
from tests.serverproc import ServerProc
from tierstore.client import KeyValueStore, errors
from tierstore.server.cluster import wait_until

pytestmark = [pytest.mark.kafka, pytest.mark.s3]


class Model:
    """What every acknowledged commit says the state is."""

    def __init__(self) -> None:
        self.state: dict[bytes, bytes] = {}
        self.offsets: dict[str, int] = {}

    def commit_random(self, kv: KeyValueStore, rng: random.Random, n: int, offset: int) -> None:
        pending = dict(self.state)
        for _ in range(n):
            k = b"key-%04d" % rng.randrange(400)
            if rng.random() < 0.2:
                kv.delete(k)
                pending.pop(k, None)
            else:
                v = b"v%d-" % offset + rng.randbytes(rng.randrange(1, 60))
                kv.put(k, v)
                pending[k] = v
        kv.commit({"input:0": offset})
        self.state = pending
        self.offsets["input:0"] = offset

    def check(self, kv: KeyValueStore) -> None:
        assert dict(kv.all()) == self.state
        assert kv.committed_offsets == self.offsets


@pytest.fixture
def cluster(
    broker: Broker, s3_server: S3Server, s3_bucket: str, tmp_path: Path
) -> Iterator[dict[str, str]]:
    yield {
        "kafka": broker.bootstrap,
        "object_store": f"s3://{s3_bucket}/ts",
        "s3_endpoint": s3_server.endpoint,
    }


def start(tmp_path: Path, name: str, cluster: dict[str, str], *extra: str) -> ServerProc:
    return ServerProc(tmp_path / name, extra=list(extra), **cluster)


def _wait_for_manifest(
    s3_server: S3Server, cluster: dict[str, str], store: str, partition: int
) -> bool:
    bucket, _, prefix = cluster["object_store"].removeprefix("s3://").partition("/")
    s3 = s3_server.client()
    key_prefix = f"{prefix}/shards/{store}/{partition}/manifests/"
    return wait_until(
        lambda: bool(s3.list_objects_v2(Bucket=bucket, Prefix=key_prefix).get("KeyCount", 0)), 60
    )


def test_kill9_between_commits_restores_on_empty_data_dir(
    tmp_path: Path, cluster: dict[str, str], s3_server: S3Server
) -> None:
    rng = random.Random(1)
    model = Model()
    a = start(tmp_path, "a", cluster, "--snapshot-every-commits", "5")
    try:
        kv = a.client().key_value_store("orders", partition=1, num_partitions=3)
        for i in range(1, 13):
            model.commit_random(kv, rng, 50, offset=i * 10)
        kv.put(b"uncommitted", b"never")  # buffered, never committed
        kv.delete(b"key-0001")
        # Snapshots are uploaded in the background: wait for the periodic one to land.
        assert _wait_for_manifest(s3_server, cluster, "orders", 1), "no periodic snapshot"
    finally:
        a.kill9()
    b = start(tmp_path, "b", cluster)  # a fresh, empty data dir
    try:
        kv2 = b.client().key_value_store("orders", partition=1)
        assert kv2.epoch == 2
        model.check(kv2)
        # a periodic snapshot (every 5 commits) was the base, plus the changelog tail
        assert "restored orders/1 from snapshot" in b.log()
        assert kv2.get(b"uncommitted") is None
        # and the new owner carries on from there
        model.commit_random(kv2, rng, 50, offset=200)
        model.check(kv2)
    finally:
        b.kill9()
    c = start(tmp_path, "c", cluster)
    try:
        model.check(c.client().key_value_store("orders", partition=1))
    finally:
        c.close()


class ChangelogProbe:
    """Follows a changelog partition, to kill the server at a chosen point of a commit."""

    def __init__(self, bootstrap: str, topic: str, partition: int) -> None:
        self.consumer = Consumer({
            "bootstrap.servers": bootstrap, "group.id": "probe", "enable.auto.commit": False,
            "enable.partition.eof": True,
        })
        self.consumer.assign([TopicPartition(topic, partition, 0)])
        self.drain()

    def drain(self) -> None:
        """Read up to the current end of the partition."""
        import time

        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            for msg in self.consumer.consume(1000, 0.2):
                if msg.error() is not None and msg.error().code() == KafkaError._PARTITION_EOF:
                    return
        raise TimeoutError("probe could not reach the end of the changelog")

    def wait_for_record_of(self, seq: int) -> None:
        """Block until a data record of commit `seq` arrives (the commit is under way)."""
        import time

        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            for msg in self.consumer.consume(100, 0.05):
                if msg.error() or not msg.key():
                    continue
                headers = dict(msg.headers() or [])
                if int.from_bytes(headers.get("ts.s", b"\0"), "big") == seq:
                    return
        raise TimeoutError("the in-flight commit never reached the changelog")

    def close(self) -> None:
        self.consumer.close()


def test_kill9_during_a_commit_applies_all_or_nothing(
    tmp_path: Path, cluster: dict[str, str]
) -> None:
    rng = random.Random(2)
    model = Model()
    a = start(tmp_path, "a", cluster)
    big_batch: dict[bytes, bytes] = {}
    try:
        # A short client deadline: the commit retries UNAVAILABLE until it, then gives up.
        kv = a.client(timeout_s=3).key_value_store("clicks", partition=0, num_partitions=1)
        for i in range(1, 4):
            model.commit_random(kv, rng, 100, offset=i)
        probe = ChangelogProbe(cluster["kafka"], "tierstore-clicks-changelog", 0)
        # A large commit: kill the server once its first records are in the log, long before
        # all of them (and the commit marker) can be.
        for i in range(60_000):
            big_batch[b"big-%06d" % i] = b"x" * 20
        kv.put_all(big_batch.items())
        outcome: list[BaseException | None] = []

        def commit() -> None:
            try:
                kv.commit({"input:0": 999})
                outcome.append(None)
            except BaseException as exc:
                outcome.append(exc)

        t = threading.Thread(target=commit)
        t.start()
        probe.wait_for_record_of(seq=4)
        a.kill9()
        t.join(timeout=60)
        probe.close()
    finally:
        a.close()
    assert outcome and isinstance(outcome[0], errors.StateStoreError), outcome
    b = start(tmp_path, "b", cluster)
    try:
        kv2 = b.client().key_value_store("clicks", partition=0)
        state = dict(kv2.all())
        # The commit was never acknowledged and its marker never written: the state is
        # exactly the previous commit, none of the 60,000 records it had begun to append.
        assert state == model.state
        assert kv2.committed_offsets == model.offsets
        model.commit_random(kv2, rng, 100, offset=1000)
        model.check(kv2)
    finally:
        b.kill9()
    # The repair: the half-written batch's keys were overwritten in the log, so a third server
    # restoring everything from scratch still sees the right state.
    c = start(tmp_path, "c", cluster)
    try:
        model.check(c.client().key_value_store("clicks", partition=0))
    finally:
        c.close()


def test_second_claimant_fences_the_first_and_zombie_writes_never_restore(
    tmp_path: Path, cluster: dict[str, str]
) -> None:
    rng = random.Random(3)
    model = Model()
    a = start(tmp_path, "a", cluster)
    try:
        client = a.client()
        w1 = client.key_value_store("sessions", partition=0, num_partitions=2)
        model.commit_random(w1, rng, 30, offset=1)
        w2 = client.key_value_store("sessions", partition=0)  # a new owner: fences w1
        assert w2.epoch == w1.epoch + 1
        assert w2.committed_offsets == model.offsets
        w1.put(b"zombie", b"z")
        with pytest.raises(errors.FencedError):
            w1.commit({"input:0": 5000})
        with pytest.raises(errors.StoreClosedError):
            w1.put(b"zombie2", b"z")
        model.commit_random(w2, rng, 30, offset=2)
        model.check(w2)
    finally:
        a.kill9()
    b = start(tmp_path, "b", cluster)
    try:
        kv = b.client().key_value_store("sessions", partition=0)
        model.check(kv)
        assert kv.get(b"zombie") is None
    finally:
        b.close()


def test_corrupt_snapshot_falls_back_to_previous_plus_longer_tail(
    tmp_path: Path, cluster: dict[str, str], s3_server: S3Server
) -> None:
    rng = random.Random(4)
    model = Model()
    bucket = cluster["object_store"].removeprefix("s3://").split("/")[0]
    a = start(tmp_path, "a", cluster)
    try:
        client = a.client()
        kv = client.key_value_store("totals", partition=0, num_partitions=1)
        for i in range(1, 4):
            model.commit_random(kv, rng, 200, offset=i)
        [(_, first_id, _)] = client.snapshot("totals", 0)
        s3 = s3_server.client()
        first_files = {
            o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="ts/shards/totals/0/files/")
            .get("Contents", [])
        }
        for i in range(4, 8):
            model.commit_random(kv, rng, 200, offset=i)
        [(_, second_id, _)] = client.snapshot("totals", 0)
        assert second_id == first_id + 1
        for i in range(8, 10):
            model.commit_random(kv, rng, 200, offset=i)
    finally:
        a.kill9()
    listing = s3.list_objects_v2(Bucket=bucket, Prefix="ts/shards/totals/0/files/")["Contents"]
    new_files = sorted(o["Key"] for o in listing if o["Key"] not in first_files)
    assert new_files, "the second snapshot uploaded no new file"
    s3.put_object(Bucket=bucket, Key=new_files[0], Body=b"garbage, not an SST")
    b = start(tmp_path, "b", cluster)
    try:
        kv2 = b.client().key_value_store("totals", partition=0)
        model.check(kv2)
        assert f"from snapshot {first_id}" in b.log()
    finally:
        b.close()


def test_graceful_shutdown_snapshots_then_restores_without_replaying_everything(
    tmp_path: Path, cluster: dict[str, str]
) -> None:
    rng = random.Random(5)
    model = Model()
    a = start(tmp_path, "a", cluster)
    kv = a.client().key_value_store("graceful", partition=0, num_partitions=1)
    for i in range(1, 6):
        model.commit_random(kv, rng, 100, offset=i)
    assert a.terminate() == 0
    a.close()
    b = start(tmp_path, "b", cluster)
    try:
        model.check(b.client().key_value_store("graceful", partition=0))
        assert "restored graceful/0 from snapshot" in b.log()
    finally:
        b.close()


def test_kill9_and_restart_on_the_same_data_dir_catches_up_from_the_changelog(
    tmp_path: Path, cluster: dict[str, str]
) -> None:
    """With a changelog, RocksDB's WAL is off: after kill -9 the local state is an older,
    consistent flush, and the replay from its changelog offset restores every commit."""
    rng = random.Random(7)
    model = Model()
    for round_ in range(3):
        a = start(tmp_path, "same", cluster)
        try:
            kv = a.client().key_value_store("wal", partition=0, num_partitions=1)
            model.check(kv)
            for i in range(5):
                model.commit_random(kv, rng, 200, offset=round_ * 10 + i + 1)
        finally:
            a.kill9()
            a.close()
    b = start(tmp_path, "same", cluster)
    try:
        model.check(b.client().key_value_store("wal", partition=0))
    finally:
        b.close()


def test_embedded_default_survives_kill9_on_the_same_data_dir(tmp_path: Path) -> None:
    rng = random.Random(6)
    model = Model()
    a = ServerProc(tmp_path / "data")
    try:
        kv = a.client().key_value_store("local", partition=0)
        for i in range(1, 4):
            model.commit_random(kv, rng, 100, offset=i)
        kv.put(b"uncommitted", b"x")
    finally:
        a.kill9()
        a.close()
    b = ServerProc(tmp_path / "data")
    try:
        kv2 = b.client().key_value_store("local", partition=0)
        model.check(kv2)
        assert kv2.epoch == 2
    finally:
        b.close()

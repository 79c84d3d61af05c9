"""The worker test: a tumbling-window count and a session count over a generated stream,
committed with their input offsets through a real server (a subprocess) with a real broker
(Tansu) and S3 server (moto); the server is killed with SIGKILL midway and the stores restored
on an EMPTY data dir; the worker resumes from the committed offsets, and the final windows and
sessions equal a reference computed from the same stream. Plus the changelog side of TTL: an
expired key swept by the server is a tombstone in the log and never comes back on restore.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaError, TopicPartition

from tests.infra import Broker, S3Server
from tests.serverproc import ServerProc
from tests.windowworker import (
    RETENTION,
    SIZE,
    Worker,
    generate,
    physical_segments,
    read_sessions,
    read_windows,
    reference_sessions,
    reference_windows,
)
from tierstore import windowkeys as wk
from tierstore.client import Client, SessionStoreImpl, WindowStoreImpl
from tierstore.server.cluster import wait_until

pytestmark = [pytest.mark.kafka, pytest.mark.s3]

COMMIT_EVERY = 100


def start(tmp_path: Path, name: str, broker: Broker, s3: S3Server, bucket: str) -> ServerProc:
    return ServerProc(
        tmp_path / name, kafka=broker.bootstrap, object_store=f"s3://{bucket}/ts",
        s3_endpoint=s3.endpoint,
        # snapshots now and then (so restores start from one), and a 1 s ticker for TTL sweeps
        extra=["--snapshot-every-commits", "7", "--snapshot-interval-s", "1"],
    )


def open_stores(client: Client) -> tuple[WindowStoreImpl, SessionStoreImpl]:
    return (client.window_store("clicks", window_size_ms=SIZE, retention_ms=RETENTION),
            client.session_store("visits", retention_ms=RETENTION))


def check_live_segments_only(*stores: WindowStoreImpl | SessionStoreImpl) -> None:
    for store in stores:
        first_live = wk.first_live_segment(store.stream_time_ms, RETENTION,
                                           store.segment_interval_ms)
        assert min(physical_segments(store)) >= first_live


def last_values(bootstrap: str, topic: str) -> dict[bytes, bytes | None]:
    """The newest value of each key in partition 0 of a changelog topic (read to its end)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "worker-test",
                         "enable.auto.commit": False, "enable.partition.eof": True})
    consumer.assign([TopicPartition(topic, 0, 0)])
    out: dict[bytes, bytes | None] = {}
    deadline = time.monotonic() + 30
    try:
        while time.monotonic() < deadline:
            for msg in consumer.consume(1000, 0.2):
                if (err := msg.error()) is not None:
                    assert err.code() == KafkaError._PARTITION_EOF, err
                    return out
                out[msg.key() or b""] = msg.value()
    finally:
        consumer.close()
    raise TimeoutError(f"could not read {topic} to its end")


def test_window_and_session_counts_survive_kill9_and_restore_on_empty_dir(
    tmp_path: Path, broker: Broker, s3_server: S3Server, s3_bucket: str
) -> None:
    events = generate(seed=4242, n=3_000)
    kill_at = 1_650  # mid-stream, 50 events past a commit: those are lost with the server
    a = start(tmp_path, "a", broker, s3_server, s3_bucket)
    try:
        client = a.client()
        worker = Worker(*open_stores(client))
        assert worker.resume_at == 0
        assert worker.run(events, kill_at, COMMIT_EVERY) == kill_at
        # a TTL store on the same server: short-lived keys the server will sweep
        kv = client.key_value_store("sessions-ttl", ttl_ms=300)
        kv.put_all((b"short-%d" % i, b"x") for i in range(20))
        kv.put(b"long", b"kept", ttl_ms=3_600_000)
        kv.commit({"events:0": kill_at})
        # expiry 0.3 s + the sweep's 5 s grace + 1 s ticks
        assert wait_until(lambda: all(v is None for k, v in last_values(
            broker.bootstrap, "tierstore-sessions-ttl-changelog").items()
            if k.startswith(b"short-")), 60, 0.2), "the server never swept the expired keys"
    finally:
        a.kill9()
        a.close()

    b = start(tmp_path, "b", broker, s3_server, s3_bucket)  # an empty data dir
    try:
        client = b.client()
        worker = Worker(*open_stores(client))
        resumed = worker.resume_at
        assert resumed == kill_at - kill_at % COMMIT_EVERY  # the last commit before the kill
        assert "restored clicks/0 from snapshot" in b.log()
        check_live_segments_only(worker.ws, worker.ss)
        worker.run(events, len(events), COMMIT_EVERY)
        worker.commit(len(events))
        assert worker.ws.dropped_records == worker.ss.dropped_records == worker.late_sessions == 0
        want_windows, want_sessions = reference_windows(events), reference_sessions(events)
        assert len(want_windows) > 30 and sum(len(v) for v in want_sessions.values()) > 20
        assert read_windows(worker.ws) == want_windows
        assert read_sessions(worker.ss) == want_sessions
        kv = client.key_value_store("sessions-ttl")
        assert list(kv.all()) == [(b"long", b"kept")]
    finally:
        b.kill9()
        b.close()

    c = start(tmp_path, "c", broker, s3_server, s3_bucket)  # restore everything once more
    try:
        client = c.client()
        ws, ss = open_stores(client)
        assert ws.committed_offsets == ss.committed_offsets == {"events:0": len(events)}
        assert read_windows(ws) == reference_windows(events)
        assert read_sessions(ss) == reference_sessions(events)
        check_live_segments_only(ws, ss)
        kv = client.key_value_store("sessions-ttl")
        assert [k for k, _ in kv._backend_scan(None, None, None, False)] == [b"long"]
    finally:
        c.close()

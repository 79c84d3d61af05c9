"""Drill 3: the object store misbehaves. Every S3 request of the store server goes through
tests/drills/s3proxy.py, which injects 503s, connection resets (before and after the request was
done), slow answers and truncated bodies at seeded random, and outages long enough to exhaust
the client's retries.

The server runs in this process (a real gRPC server on loopback, with a real Tansu changelog)
so that it can be given S3 retries of 3 attempts: botocore's backoff would otherwise make the
drill slow, not different. While a counting worker commits, snapshots are taken in the
background and on demand; each one must succeed or fail with a clear UnavailableError. Then
every manifest in the bucket is audited straight on moto: each file it references exists, with
its size and sha256. Finally the shard is restored through the faulty proxy on empty data dirs:
each attempt gets the right state or a clear error.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from tests.drills.common import (
    LONG,
    Figures,
    InputStream,
    Model,
    audit_manifests,
    batches,
    process,
    size,
)
from tests.drills.s3proxy import FaultyS3Proxy
from tests.infra import S3_ENV, Broker, S3Server
from tierstore.client import connect, errors
from tierstore.client.remote import RemoteKeyValueStore
from tierstore.server.app import RunningServer, create_server
from tierstore.server.changelog_kafka import KafkaChangelog, KafkaConfig
from tierstore.server.config import ServerConfig
from tierstore.server.errors import ObjectStoreError
from tierstore.server.objectstore import S3Config, S3ObjectStore
from tierstore.server.service import StoreService

pytestmark = [pytest.mark.kafka, pytest.mark.s3, pytest.mark.timeout(3600 if LONG else 300)]

STORE = "drill-s3"
RATES = {"503": 0.03, "reset before": 0.02, "reset after": 0.02, "slow": 0.02,
         "truncated": 0.04}
CLEAR = ("bucket", "snapshot", "object store", "S3")  # a clear error names what failed


def _server(data: Path, bucket: str, proxy: FaultyS3Proxy, kafka: str) -> RunningServer:
    cfg = ServerConfig(
        listen="127.0.0.1:0", data_dir=data, object_store=f"s3://{bucket}/ts",
        s3_endpoint=proxy.endpoint, kafka_bootstrap=kafka, snapshot_every_commits=40,
        snapshot_keep=2, snapshot_gc_grace_s=1.0,
    )
    objects = S3ObjectStore(bucket, "ts", endpoint_url=proxy.endpoint,
                            config=S3Config(max_attempts=3, connect_timeout_s=2,
                                            read_timeout_s=5))
    return create_server(cfg, StoreService(cfg, objects, KafkaChangelog(KafkaConfig(kafka))))


def _clear(exc: errors.StateStoreError) -> bool:
    return (isinstance(exc, (errors.UnavailableError, errors.DataLossError))
            and any(word in str(exc) for word in CLEAR))


def _open(server: RunningServer) -> RemoteKeyValueStore:
    return connect(f"127.0.0.1:{server.port}", timeout_s=60).key_value_store(
        STORE, partition=0, num_partitions=1)


def test_s3_faults_never_leave_a_manifest_pointing_at_a_bad_file(
    tmp_path: Path, broker: Broker, s3_server: S3Server, s3_bucket: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, value in S3_ENV.items():  # the server runs in this process
        monkeypatch.setenv(name, value)
    commits, restores = size(120, 2000), size(2, 25)
    fig = Figures("s3-faults")
    rng = random.Random(3003)
    model = Model(InputStream(seed=3003))
    proxy = FaultyS3Proxy(s3_server.endpoint, seed=3003, rates=RATES)
    snaps = {"ok": 0, "failed cleanly": 0}
    errors_seen: dict[str, int] = {}

    def failed(exc: errors.StateStoreError) -> None:
        assert _clear(exc), f"not a clear error: {exc!r}"
        name = type(exc).__name__
        errors_seen[name] = errors_seen.get(name, 0) + 1

    s3 = s3_server.client()
    audited: dict[str, int] = {"audits": 0, "manifests": 0, "files": 0}

    def audit(s3: Any, bucket: str) -> None:
        found = audit_manifests(s3, bucket, f"ts/shards/{STORE}/")
        assert not found.bad, found.bad
        audited["audits"] += 1
        audited["manifests"] += found.manifests
        audited["files"] += found.files

    server = _server(tmp_path / "writer", s3_bucket, proxy, broker.bootstrap)
    try:
        kv: RemoteKeyValueStore | None = None
        for _ in range(10):  # creating the store writes its spec through the proxy
            try:
                kv = _open(server)
                break
            except errors.StateStoreError as exc:
                failed(exc)
        assert kv is not None, f"the store could not be opened in 10 attempts: {errors_seen}"
        sizes = batches(rng, 5)
        while model.acked < commits:
            process(kv, model, model.pos + next(sizes))
            fig.operations += 1
            if model.acked % 20 == 0:
                if model.acked % 60 == 0:
                    proxy.outage(4)  # as long as the client's retries
                try:
                    kv._c.snapshot(STORE, 0)
                    snaps["ok"] += 1
                except errors.StateStoreError as exc:
                    failed(exc)
                    snaps["failed cleanly"] += 1
                fig.operations += 1
                audit(s3, s3_bucket)  # after every attempt: gc may remove a bad one later
        model.check(kv, fig)
        kv._c.close()
    finally:
        server.stop(grace=1)  # a final snapshot, through the faults too
    background = server.service.snapshotter
    audit(s3, s3_bucket)  # and after the final snapshot of the graceful stop
    assert audited["manifests"] > 0

    outcomes = {"right state": 0, "clear error": 0}
    for i in range(restores):
        if i == 0:
            proxy.outage(4)  # the first restore starts in an outage
        reader = _server(tmp_path / f"restore-{i}", s3_bucket, proxy, broker.bootstrap)
        try:
            for _ in range(10):
                fig.operations += 1
                try:
                    kv = _open(reader)
                except errors.StateStoreError as exc:
                    failed(exc)
                    outcomes["clear error"] += 1
                    continue
                model.check(kv, fig)
                outcomes["right state"] += 1
                kv._c.close()
                break
            else:
                raise AssertionError("no restore succeeded in 10 attempts")
        finally:
            reader.stop(grace=1, snapshot=False)
    for kind, n in proxy.faults.items():
        fig.fault(kind, n)
    fig.notes.update(
        s3_requests=proxy.requests, commits=model.acked, snapshots_on_demand=snaps,
        snapshots_background={"ok": background.taken - snaps["ok"], "failed": background.failed},
        audits=audited["audits"], manifests_audited=audited["manifests"],
        files_verified=audited["files"], bad_manifests=0,
        restore_attempts=outcomes, errors=errors_seen,
    )
    proxy.close()
    fig.report()
    assert fig.lost == 0 and fig.uncommitted_visible == 0 and fig.duplicated == 0
    assert snaps["ok"] > 0 and outcomes["right state"] == restores


def test_a_body_cut_short_is_read_again(
    s3_server: S3Server, s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression for a gap the drill found: botocore retries a request but not the reading of
    its body, so one cut-short manifest (get_bytes) failed a whole restore."""
    for name, value in S3_ENV.items():
        monkeypatch.setenv(name, value)
    proxy = FaultyS3Proxy(s3_server.endpoint, seed=0, rates={})
    try:
        store = S3ObjectStore(s3_bucket, "t", endpoint_url=proxy.endpoint,
                              config=S3Config(max_attempts=3))
        store.put_bytes("m.json", b"x" * 5000)
        proxy.force("truncated", "truncated")
        assert store.get_bytes("m.json") == b"x" * 5000
        assert proxy.faults["truncated"] == 2
        proxy.force("truncated", "truncated", "truncated")
        with pytest.raises(ObjectStoreError, match=r"m\.json"):
            store.get_bytes("m.json")
    finally:
        proxy.close()

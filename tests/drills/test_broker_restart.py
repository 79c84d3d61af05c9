"""Drill 4: the Kafka broker restarts in the middle of a stream of commits.

Tansu keeps its log in S3 (moto), so the log survives the restart. The broker is stopped
(alternately SIGTERM and kill -9) and started again at random moments while a counting worker
commits through a store server (a subprocess). A commit may stall while the broker is down and
then succeed, or fail with UnavailableError: then the worker does what a real one does, reopens
the store (retrying while the broker is still away) and resumes from `committed_offsets`, which
say whether the commit in doubt landed. At the end a server on an EMPTY data dir restores from
the snapshots and the restarted broker's log: nothing lost, nothing duplicated.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from pathlib import Path

import pytest

from tests.drills.common import (
    LONG,
    SOURCE,
    Cluster,
    Figures,
    InDoubt,
    InputStream,
    Model,
    batches,
    process,
    shutdown,
    size,
)
from tests.infra import S3_ENV, Broker, S3Server, tansu
from tierstore.client import Client, errors
from tierstore.client.remote import RemoteKeyValueStore

pytestmark = [pytest.mark.kafka, pytest.mark.s3, pytest.mark.timeout(3600 if LONG else 300)]

STORE = "drill-broker"


def _reopen(client: Client, deadline_s: float = 120.0) -> RemoteKeyValueStore:
    """Open the store, retrying while the broker is still away (as a worker's restart loop)."""
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            return client.key_value_store(STORE, partition=0, num_partitions=1,
                                          buffer_max_entries=3)
        except errors.UnavailableError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.2)  # the worker's back-off between attempts


def test_broker_restart_mid_stream(tmp_path: Path, s3_server: S3Server, s3_bucket: str) -> None:
    commits, restarts = size(60, 3000), size(3, 30)
    fig = Figures("broker-restart")
    rng = random.Random(4004)
    model = Model(InputStream(seed=4004))
    log_bucket = f"tansu-{uuid.uuid4().hex[:12]}"
    s3_server.create_bucket(log_bucket)
    env = {**S3_ENV, "AWS_ENDPOINT": s3_server.endpoint, "AWS_ALLOW_HTTP": "true"}
    gap = commits // (restarts + 1)  # Tansu on S3 commits slowly: spread the restarts evenly
    restart_at = [gap * (i + 1) + rng.randrange(-gap // 4, gap // 4) for i in range(restarts)]
    with tansu(storage=f"s3://{log_bucket}/", env=env) as broker:
        cluster = Cluster(broker.bootstrap, f"s3://{s3_bucket}/ts", s3_server.endpoint)
        server = cluster.start(tmp_path / "a", "--snapshot-every-commits", "100")
        client = server.client(timeout_s=2)  # a commit stalled longer than this is in doubt
        kv = _reopen(client)
        sizes = batches(rng, 6)
        bouncer: threading.Thread | None = None
        reopened = 0
        resume_until = 0  # commits must resume after each restart: 20 more at least
        try:
            while model.acked < max(commits, resume_until) or restart_at or bouncer is not None:
                if bouncer is not None and not bouncer.is_alive():
                    bouncer.join()
                    bouncer = None
                    resume_until = model.acked + 20
                if bouncer is None and restart_at and model.acked >= restart_at[0]:
                    restart_at.pop(0)
                    kind = BOUNCES[len(restart_at) % len(BOUNCES)]
                    fig.fault(kind)
                    bouncer = threading.Thread(target=_bounce, args=(
                        broker, kind, rng.uniform(0, 0.01), rng.uniform(2.5, 4.0)))
                    bouncer.start()
                try:
                    process(kv, model, model.pos + next(sizes))
                    fig.operations += 1
                except (InDoubt, errors.UnavailableError, errors.AbortedError) as exc:
                    fig.fault(f"worker saw {type(exc).__name__}", 1)
                    kv = _reopen(client)
                    reopened += 1
                    model.resolve(kv.committed_offsets.get(SOURCE, 0))
                    model.check(kv, fig)
            model.check(kv, fig)
        finally:
            client.close()
            shutdown(server)
        # A server on an empty data dir: the snapshots plus the restarted broker's log.
        final = cluster.start(tmp_path / "final")
        try:
            with final.client() as c:
                model.check(_reopen(c), fig)
        finally:
            shutdown(final)
    fig.notes.update(commits_acknowledged=model.acked, worker_reopens=reopened,
                     in_doubt=model.outcomes,
                     server_log_warnings=server.log_path.read_text().count("WARNING"))
    fig.report()
    assert fig.lost == 0 and fig.uncommitted_visible == 0 and fig.duplicated == 0


BOUNCES = ("broker stop + start", "broker kill -9 + start",
           "broker kill -9, down 2.5-4 s (longer than the client's deadline)")


def _bounce(broker: Broker, kind: str, delay: float, down_s: float) -> None:
    time.sleep(delay)  # the fault's timing, not a wait for a server
    if "kill" in kind:
        broker.kill()
    if "down" in kind:
        time.sleep(down_s)  # the outage itself
    broker.restart()  # stops it (if still running) and waits for its port

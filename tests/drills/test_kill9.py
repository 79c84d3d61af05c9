"""Drill 1: kill -9 of the store server at random moments of a stream of commits.

Real Tansu broker, real S3 (moto), the server as a subprocess. The killer fires at random
commit counts plus a random delay of up to 15 ms, so it lands between commits, inside a
worker's reads and stages, and inside commits (the commit then gets no answer: it is *in
doubt*). The server is restarted alternately on the same data dir and on an EMPTY one (restore
from snapshot + changelog). After each restart the worker reopens the store, the committed input
offset says how the commit in doubt went, and the model accepts exactly that outcome: the whole
batch or none of it. Every few dozen commits another client's reader checks, while the worker
holds staged writes, that it sees committed state only.
"""

from __future__ import annotations

import random
import threading
import time
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
from tests.infra import Broker, S3Server
from tests.serverproc import ServerProc
from tierstore.client import Client, errors
from tierstore.client.remote import RemoteKeyValueStore

pytestmark = [pytest.mark.kafka, pytest.mark.s3, pytest.mark.timeout(3600 if LONG else 300)]

STORE = "drill-kill9"


def _start(data: Path, cluster: Cluster) -> ServerProc:
    return cluster.start(data, "--snapshot-every-commits", "100")


def _open(client: Client) -> RemoteKeyValueStore:
    # A small buffer: most batches stage writes on the server before their commit.
    return client.key_value_store(STORE, partition=0, num_partitions=1, buffer_max_entries=3)


def test_kill9_during_a_stream_of_commits(
    tmp_path: Path, broker: Broker, s3_server: S3Server, s3_bucket: str
) -> None:
    commits, kills = size(1000, 10_000), size(4, 30)
    fig = Figures("kill9")
    rng = random.Random(1009)
    model = Model(InputStream(seed=1009))
    cluster = Cluster(broker.bootstrap, f"s3://{s3_bucket}/ts", s3_server.endpoint)
    kill_at = sorted(rng.sample(range(20, commits - 20), kills))
    data = tmp_path / "data-0"
    server = _start(data, cluster)
    servers = [server]
    client = server.client(timeout_s=1.5)
    kv = _open(client)
    sizes = batches(rng, 6)
    killer: threading.Thread | None = None
    restarts = {"same data dir": 0, "empty data dir": 0}
    probes = spurious = 0

    def probe() -> None:
        """Another client's reader, while this worker holds staged and buffered writes."""
        nonlocal probes
        got = dict(client.reader(STORE).all())
        diff = model.compare(got)
        fig.add(diff)
        assert diff.ok, f"a reader saw uncommitted or lost state: {diff}"
        probes += 1

    try:
        while model.acked < commits:
            if killer is None and kill_at and model.acked >= kill_at[0]:
                kill_at.pop(0)
                delay = rng.uniform(0, 0.015)
                victim = server

                def kill(victim: ServerProc = victim, delay: float = delay) -> None:
                    time.sleep(delay)  # the fault's timing, not a wait for a server
                    victim.kill9()

                killer = threading.Thread(target=kill)
                killer.start()
            end = model.pos + next(sizes)
            try:
                process(kv, model, end, before_commit=probe if model.acked % 37 == 5 else None)
                fig.operations += 1
            except (InDoubt, errors.StateStoreError) as exc:
                if killer is None:  # no kill: only a deadline exceeded on a loaded machine
                    if not isinstance(exc, (InDoubt, errors.UnavailableError)):
                        raise  # no fault explains this failure
                    spurious += 1
                    kv = _open(client)  # the worker reopens on the same server
                    model.resolve(kv.committed_offsets.get(SOURCE, 0))
                    model.check(kv, fig)
                    continue
                killer.join()
                killer = None
                fig.fault("kill -9 during a commit" if isinstance(exc, InDoubt)
                          else "kill -9 between commits")
                same = len(servers) % 2 == 1
                if not same:
                    data = tmp_path / f"data-{len(servers)}"
                restarts["same data dir" if same else "empty data dir"] += 1
                server.close()
                server = _start(data, cluster)
                servers.append(server)
                client.close()
                client = server.client(timeout_s=1.5)
                kv = _open(client)
                model.resolve(kv.committed_offsets.get(SOURCE, 0))
                model.check(kv, fig)
        model.check(kv, fig)
    finally:
        if killer is not None:
            killer.join()
        client.close()
        server.close()
    # The last word: a server on an empty data dir restores everything from S3 + the changelog.
    final = _start(tmp_path / "final", cluster)
    try:
        with final.client() as c:
            model.check(_open(c), fig)
    finally:
        shutdown(final)
    logs = "".join(p.read_text(errors="replace")
                   for p in {s.log_path for s in [*servers, final]})
    fig.notes.update(
        commits_acknowledged=model.acked, input_records=model.pos, restarts=restarts,
        in_doubt=model.outcomes, reader_probes=probes, deadline_exceeded_without_a_kill=spurious,
        restores_from_snapshot=logs.count(f"restored {STORE}/0 from snapshot"),
    )
    fig.report()
    assert fig.lost == 0 and fig.uncommitted_visible == 0 and fig.duplicated == 0
    assert sum(fig.faults.values()) == kills

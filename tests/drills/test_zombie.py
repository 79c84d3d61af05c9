"""Drill 2: a zombie writer keeps sending after a new owner claimed its shard.

Real Tansu broker and S3 (moto), the server as a subprocess. Each trial hands the shard from the
current owner to a new one (on another connection) and lets the old owner keep writing, in one
of five ways: buffered writes committed after the claim; writes staged on the server before the
claim (the claim drops them) and then committed; writes whose stage itself comes after the claim;
a commit racing the claim (it may win, then it is a legitimate commit, or lose); and, after the
handle is fenced, raw Stage and Commit requests with the stale epoch (for the next commit number
and for the last one, the retry path). Every send after the claim must be fenced
(FAILED_PRECONDITION). Midway the server is killed and restored on an empty data dir, and the
old owner's stale epoch is tried against the restored server too. At the end a server on an
empty data dir restores everything: nothing of any zombie may be there.
"""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path

import grpc
import pytest

from tests.drills.common import (
    LONG,
    SOURCE,
    Cluster,
    Figures,
    InputStream,
    Model,
    process,
    shutdown,
    size,
    write_records,
)
from tests.infra import Broker, S3Server
from tierstore.client import Client, errors
from tierstore.client.remote import RemoteKeyValueStore
from tierstore.v1 import store_pb2 as pb

pytestmark = [pytest.mark.kafka, pytest.mark.s3, pytest.mark.timeout(3600 if LONG else 300)]

STORE = "drill-zombie"
VARIANTS = ("commit after claim", "staged before claim", "stage after claim", "racing commit")


def _open(client: Client) -> RemoteKeyValueStore:
    return client.key_value_store(STORE, partition=0, num_partitions=1, buffer_max_entries=4)


def _zombie_writes(kv: RemoteKeyValueStore, rng: random.Random, trial: int, n: int) -> None:
    for j in range(n):
        key = b"k%04d" % rng.randrange(300) if j % 2 else b"zombie-only-%d-%d" % (trial, j)
        kv.put(key, b"zombie-%d" % trial)


def _raw_sends(client: Client, epoch: int, seq: int, trial: int) -> list[BaseException | None]:
    """Stale-epoch Stage and Commit requests straight on the wire; returns each outcome."""
    batch = pb.WriteBatch(put_keys=[b"k0001", b"zombie-raw-%d" % trial],
                          put_values=[b"zombie-raw", b"zombie-raw"])
    requests = [
        ("Stage", pb.StageRequest(store=STORE, partition=0, epoch=epoch, commit_seq=seq + 1,
                                  batch=batch)),
        ("Commit", pb.CommitRequest(store=STORE, partition=0, epoch=epoch, commit_seq=seq + 1,
                                    batch=batch, offsets={SOURCE: 10**9})),
        ("Commit", pb.CommitRequest(store=STORE, partition=0, epoch=epoch, commit_seq=seq,
                                    batch=batch, offsets={SOURCE: 10**9})),
    ]
    out: list[BaseException | None] = []
    for method, req in requests:
        try:
            client.call(STORE, 0, method, req)
            out.append(None)
        except grpc.RpcError as exc:
            out.append(errors.FencedError(exc.details())
                       if exc.code() is grpc.StatusCode.FAILED_PRECONDITION else exc)
    return out


def test_zombie_writer_is_always_fenced_and_never_restored(
    tmp_path: Path, broker: Broker, s3_server: S3Server, s3_bucket: str
) -> None:
    trials = size(100, 1000)
    fig = Figures("zombie")
    rng = random.Random(2002)
    model = Model(InputStream(seed=2002))
    cluster = Cluster(broker.bootstrap, f"s3://{s3_bucket}/ts", s3_server.endpoint)
    server = cluster.start(tmp_path / "a", "--snapshot-every-commits", "50")
    clients = [server.client(), server.client()]
    owner = _open(clients[0])
    sends = fenced = race_won = 0
    try:
        for trial in range(trials):
            restart = trial == trials // 2
            variant = VARIANTS[trial % len(VARIANTS)]
            process(owner, model, model.pos + rng.randint(1, 4))  # the owner's legitimate work
            old, old_epoch = owner, owner.epoch
            new_client = clients[(trial + 1) % 2]
            outcome: list[BaseException | None] = []
            if variant == "racing commit":
                end = model.pos + rng.randint(1, 4)
                expected = write_records(old, model, end)

                lead = rng.uniform(-0.003, 0.003)  # who starts first, and by how much

                def commit(old: RemoteKeyValueStore = old, end: int = end,
                           outcome: list[BaseException | None] = outcome,
                           delay: float = max(lead, 0.0)) -> None:
                    time.sleep(delay)  # the race's timing, not a wait for a server
                    try:
                        old.commit({SOURCE: end})
                        outcome.append(None)
                    except errors.StateStoreError as exc:
                        outcome.append(exc)

                model.unknown = (end, expected)
                racer = threading.Thread(target=commit)
                racer.start()
                time.sleep(max(-lead, 0.0))
                owner = _open(new_client)
                racer.join()
                how = model.resolve(owner.committed_offsets.get(SOURCE, 0))
                if outcome[0] is None:
                    assert how == "landed", "an acknowledged commit is missing after the claim"
                    race_won += 1
                else:
                    assert isinstance(outcome[0], errors.FencedError), outcome
                    assert how == "not landed", "a fenced commit was applied"
                    sends, fenced = sends + 1, fenced + 1
            else:
                if variant == "staged before claim":
                    _zombie_writes(old, rng, trial, 6)  # over the buffer bound: staged
                elif variant == "commit after claim":
                    _zombie_writes(old, rng, trial, 3)  # buffered only
                if restart:  # the server dies and comes back on an empty data dir
                    server.kill9()
                    server.close()
                    server = cluster.start(tmp_path / "b")
                    for c in clients:
                        c.close()
                    clients = [server.client(), server.client()]
                    new_client = clients[(trial + 1) % 2]
                    fig.fault("kill -9 + restore on an empty data dir")
                owner = _open(new_client)
                model.resolve(owner.committed_offsets.get(SOURCE, 0))
                if not restart:
                    sends += 1
                    try:
                        if variant == "stage after claim":
                            _zombie_writes(old, rng, trial, 6)  # the stage is refused
                        old.commit({SOURCE: 10**9})
                    except errors.FencedError:
                        fenced += 1
            assert owner.epoch > old_epoch
            fig.fault(f"zombie: {variant}")
            if outcome and outcome[0] is None:  # the racing commit won: it keeps sending
                sends += 1
                try:
                    _zombie_writes(old, rng, trial, 2)
                    old.commit({SOURCE: 10**9})
                except errors.FencedError:
                    fenced += 1
            if not restart:
                with pytest.raises(errors.StoreClosedError):
                    old.put(b"zombie-after-fence", b"zombie")
            for result in _raw_sends(clients[trial % 2], old_epoch, old._seq, trial):
                sends += 1
                fenced += isinstance(result, errors.FencedError)
                assert isinstance(result, errors.FencedError), f"trial {trial}: {result!r}"
            process(owner, model, model.pos + rng.randint(1, 4))  # the new owner carries on
            fig.operations += 1
        model.check(owner, fig)
    finally:
        for c in clients:
            c.close()
        server.kill9()
        server.close()
    final = cluster.start(tmp_path / "final")
    try:
        with final.client() as c:
            kv = _open(c)
            model.check(kv, fig)
            assert not [k for k, v in kv.all() if b"zombie" in k or b"zombie" in v]
    finally:
        shutdown(final)
    fig.notes.update(zombie_sends=sends, fenced=fenced, racing_commits_that_won=race_won,
                     commits_acknowledged=model.acked)
    fig.report()
    assert fenced == sends
    assert fig.lost == 0 and fig.uncommitted_visible == 0 and fig.duplicated == 0

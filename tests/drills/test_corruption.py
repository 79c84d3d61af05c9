"""Drill 5: a snapshot file or a manifest in the object store is corrupted.

For each kind of damage one store gets two snapshots and a changelog tail past them (real
Tansu, real moto S3, the server as a subprocess); then the newest snapshot is damaged straight
in S3 and a server on an EMPTY data dir restores every store. The damage must be detected by
checksum (or by the missing object), the previous snapshot used, and the changelog replayed
from its older offset, giving exactly the committed state. When every snapshot of a shard is
damaged, the open fails with DataLossError and never serves a wrong state.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

from tests.drills.common import (
    LONG,
    Cluster,
    Figures,
    InputStream,
    Model,
    batches,
    process,
    shutdown,
    size,
)
from tests.infra import Broker, S3Server
from tierstore.client import Client, errors
from tierstore.client.remote import RemoteKeyValueStore

pytestmark = [pytest.mark.kafka, pytest.mark.s3, pytest.mark.timeout(3600 if LONG else 300)]

CASES = ("sst garbage", "sst truncated", "manifest garbage", "manifest edited",
         "file missing", "every snapshot damaged")


def _open(client: Client, store: str) -> RemoteKeyValueStore:
    return client.key_value_store(store, partition=0, num_partitions=1)


class Bucket:
    def __init__(self, s3: Any, bucket: str, store: str) -> None:
        self.s3, self.bucket = s3, bucket
        self.prefix = f"ts/shards/{store}/0/"

    def manifest(self, sid: int) -> dict[str, Any]:
        key = f"{self.prefix}manifests/{sid:020d}.json"
        doc: dict[str, Any] = json.loads(self.s3.get_object(Bucket=self.bucket,
                                                            Key=key)["Body"].read())
        return doc

    def put_manifest(self, sid: int, body: bytes) -> None:
        self.s3.put_object(Bucket=self.bucket, Key=f"{self.prefix}manifests/{sid:020d}.json",
                           Body=body)

    def new_sst(self, old: int, new: int) -> str:
        """A file key of an SST that snapshot `new` has and snapshot `old` has not."""
        before = {f["sha256"] for f in self.manifest(old)["files"]}
        fresh = [f for f in self.manifest(new)["files"]
                 if f["sha256"] not in before and f["name"].endswith(".sst")]
        assert fresh, "the second snapshot has no SST of its own"
        return f"{self.prefix}files/{fresh[0]['sha256']}"

    def damage(self, case: str, first: int, second: int) -> None:
        if case == "sst garbage":
            self.s3.put_object(Bucket=self.bucket, Key=self.new_sst(first, second),
                               Body=b"garbage, not an SST")
        elif case == "sst truncated":
            key = self.new_sst(first, second)
            data = self.s3.get_object(Bucket=self.bucket, Key=key)["Body"].read()
            self.s3.put_object(Bucket=self.bucket, Key=key, Body=data[: len(data) // 2])
        elif case == "manifest garbage":
            self.put_manifest(second, b'{"store": "trunc')
        elif case == "manifest edited":  # a plausible edit; its body_sha256 no longer matches
            doc = self.manifest(second)
            doc["changelog_offset"] += 1000
            self.put_manifest(second, json.dumps(doc).encode())
        elif case == "file missing":
            self.s3.delete_object(Bucket=self.bucket, Key=self.new_sst(first, second))
        else:
            self.put_manifest(second, b"not json")
            doc = self.manifest(first)
            doc["committed_offsets"] = {"input:0": 0}
            self.put_manifest(first, json.dumps(doc).encode())


def test_corrupted_snapshots_are_detected_and_the_previous_one_is_used(
    tmp_path: Path, broker: Broker, s3_server: S3Server, s3_bucket: str
) -> None:
    rounds = size(1, 5)
    fig = Figures("corruption")
    cluster = Cluster(broker.bootstrap, f"s3://{s3_bucket}/ts", s3_server.endpoint)
    detections = fallbacks = data_loss = 0
    for r in range(rounds):
        rng = random.Random(5005 + r)
        models: dict[str, Model] = {}
        snapshots: dict[str, tuple[int, int]] = {}
        writer = cluster.start(tmp_path / f"writer-{r}", "--snapshot-every-commits", "1000000")
        try:
            with writer.client() as c:
                for i in range(len(CASES)):
                    store = f"damage-{r}-{i}"
                    model = models[store] = Model(InputStream(seed=rng.randrange(10**6)))
                    kv = _open(c, store)
                    sizes, ids = batches(rng, 20), list[int]()
                    for _ in range(3):
                        for _ in range(10):
                            process(kv, model, model.pos + next(sizes))
                            fig.operations += 1
                        if len(ids) < 2:
                            [(_, sid, _)] = c.snapshot(store, 0)
                            ids.append(sid)
                    snapshots[store] = (ids[0], ids[1])
        finally:
            writer.kill9()
            writer.close()
        s3 = s3_server.client()
        for i, case in enumerate(CASES):
            store = f"damage-{r}-{i}"
            Bucket(s3, s3_bucket, store).damage(case, *snapshots[store])
            fig.fault(case)
        reader = cluster.start(tmp_path / f"reader-{r}")
        try:
            with reader.client() as c:
                for i, case in enumerate(CASES):
                    store = f"damage-{r}-{i}"
                    if case == "every snapshot damaged":
                        with pytest.raises(errors.DataLossError, match="no usable snapshot"):
                            _open(c, store)
                        data_loss += 1
                        continue
                    models[store].check(_open(c, store), fig)
                    first = snapshots[store][0]
                    assert f"restored {store}/0 from snapshot {first}" in reader.log(), case
                    fallbacks += 1
            log = reader.log_path.read_text()
        finally:
            shutdown(reader)
        detections += log.count("is unusable, trying an older one")
    fig.notes.update(stores=rounds * len(CASES), detections=detections,
                     restored_from_previous_snapshot=fallbacks,
                     data_loss_errors_when_all_damaged=data_loss)
    fig.report()
    # one detection per damaged snapshot: one per case, two for "every snapshot damaged"
    assert detections == rounds * (len(CASES) + 1)
    assert fig.lost == 0 and fig.uncommitted_visible == 0 and fig.duplicated == 0

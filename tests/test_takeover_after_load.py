"""A takeover must not undo the previous owner's acknowledged commits.

Server b loads a shard (a restore, or a standby catch-up), and the previous owner, server a,
which does not know yet that it lost the shard, commits once more: its batch and marker land
in the log whole, before b's claim, and a acknowledges the commit (rightly: nothing newer was in
the log). Then b claims. b's local copy lacks that commit; the claim must not put b's older
state (values, committed offsets) back on top of it. Real Tansu broker, no seams."""

from __future__ import annotations

from pathlib import Path

import pytest
from confluent_kafka import Producer

from tests.faultlog import FaultyChangelog
from tests.infra import Broker
from tierstore.server.changelog_kafka import KafkaChangelog, KafkaConfig
from tierstore.server.cluster import ClusterConfig, Membership
from tierstore.server.config import ServerConfig
from tierstore.server.errors import FencedError
from tierstore.server.logproto import COMMIT, data_headers, marker
from tierstore.server.objectstore import LocalObjectStore
from tierstore.server.service import StoreService

pytestmark = pytest.mark.kafka


def _service(tmp: Path, name: str, broker: Broker, objects: str = "objects") -> StoreService:
    return StoreService(ServerConfig(data_dir=tmp / name), LocalObjectStore(tmp / objects),
                        KafkaChangelog(KafkaConfig(broker.bootstrap)))


def _restored(tmp: Path, broker: Broker, keys: list[bytes]
              ) -> tuple[list[bytes | None], dict[str, int]]:
    """What a server on an empty disk restores from the changelog alone: values and offsets."""
    fresh = _service(tmp, "fresh", broker, "objects-fresh")
    try:
        m, _ = fresh.open("acct", 0, "kv", 1)
        return fresh.get("acct", 0, m.epoch, keys), m.offsets
    finally:
        fresh.shutdown(snapshot=False)


def test_a_claim_keeps_a_commit_that_landed_after_the_load(tmp_path: Path,
                                                          broker: Broker) -> None:
    a, b = _service(tmp_path, "a", broker), _service(tmp_path, "b", broker)
    try:
        meta, _ = a.open("acct", 0, "kv", 1)
        a.commit("acct", 0, meta.epoch, 1, 0, [b"k", b"j"], [b"v1", b"j1"], [], {"in:0": 1})
        b.registry.shard(b.registry.describe("acct"), 0)  # b loads it, to the log's end
        result = a.commit("acct", 0, meta.epoch, 2, 0, [b"k"], [b"v2"], [], {"in:0": 2})
        assert result.applied  # acknowledged: a's worker moves on from input offset 2
        _take_over(b)  # the takeover
    finally:
        a.shutdown(snapshot=False)
        b.shutdown(snapshot=False)
    assert _restored(tmp_path, broker, [b"k", b"j"]) == ([b"v2", b"j2"], {"in:0": 3})


def _take_over(b: StoreService) -> None:
    """b claims acct/0 after a's acknowledged commit 2 (k=v2, j=j1), and commits j=j2 at 3."""
    claimed, _ = b.open("acct", 0, "kv", 1)
    assert claimed.offsets == {"in:0": 2}, "the new owner resumes before an acked commit"
    assert b.get("acct", 0, claimed.epoch, [b"k", b"j"]) == [b"v2", b"j1"]
    b.commit("acct", 0, claimed.epoch, 1, 0, [b"j"], [b"j2"], [], {"in:0": 3})


def _alone(s: StoreService, name: str) -> StoreService:
    """Attach membership in which this server sees no live peer (a flap, a partition): it
    believes it owns every shard."""
    s.attach_cluster(Membership(ClusterConfig(advertise=name, peers=("a:1", "b:1", "c:1")),
                                probe=lambda address, timeout_s: False))
    return s


def test_two_servers_claiming_from_the_same_state_cannot_both_acknowledge(
    tmp_path: Path, broker: Broker
) -> None:
    """Views differ for a moment (a flap): b and c both take the shard over from the same
    loaded state (a read on each claims it), so both claims take the same epoch, and so do
    the workers' claims after them. The later claim must fence the earlier owner; otherwise
    both servers acknowledge commits of one epoch and restore applies both (split-brain)."""
    a = _service(tmp_path, "a", broker)
    b = _alone(_service(tmp_path, "b", broker), "b:1")
    c = _alone(_service(tmp_path, "c", broker), "c:1")
    outcomes: dict[str, object] = {}
    try:
        meta, _ = a.open("acct", 0, "kv", 1)
        a.commit("acct", 0, meta.epoch, 1, 0, [b"k"], [b"v1"], [], {"in:0": 1})
        for s in (b, c):
            s.registry.shard(s.registry.describe("acct"), 0)  # both load the same state
        for s in (b, c):
            assert s.get("acct", 0, 0, [b"k"]) == [b"v1"]  # a reader: the takeover claim
        mb, _ = b.open("acct", 0, "kv", 1)
        mc, _ = c.open("acct", 0, "kv", 1)
        for name, s, m, value in (("b", b, mb, b"vb"), ("c", c, mc, b"vc")):
            try:
                s.commit("acct", 0, m.epoch, 1, 0, [b"k"], [value], [], {"in:0": 2})
                outcomes[name] = "acknowledged"
            except FencedError:
                outcomes[name] = "fenced"
    finally:
        for s in (a, b, c):
            s.shutdown(snapshot=False)
    assert outcomes == {"b": "fenced", "c": "acknowledged"}
    assert _restored(tmp_path, broker, [b"k"])[0] == [b"vc"]


def test_a_claim_whose_repair_never_landed_keeps_the_previous_owners_offsets(
    tmp_path: Path, broker: Broker
) -> None:
    """The claim marker goes first and carries the claimer's view from before its catch-up. If
    nothing follows it (here the commit after the catch-up fails; a crash does the same),
    restore sees [a's commit, b's claim] and must keep a's offsets, not b's older ones."""
    a = _service(tmp_path, "a", broker)
    log = FaultyChangelog(KafkaChangelog(KafkaConfig(broker.bootstrap)))
    b = StoreService(ServerConfig(data_dir=tmp_path / "b"), LocalObjectStore(tmp_path / "objects"),
                     log)
    try:
        meta, _ = a.open("acct", 0, "kv", 1)
        a.commit("acct", 0, meta.epoch, 1, 0, [b"k", b"j"], [b"v1", b"j1"], [], {"in:0": 1})
        b.registry.shard(b.registry.describe("acct"), 0)
        assert a.commit("acct", 0, meta.epoch, 2, 0, [b"k"], [b"v2"], [], {"in:0": 2}).applied
        log.fail_append_before = lambda kind, keys: kind == COMMIT
        claimed, _ = b.open("acct", 0, "kv", 1)
        assert log.fail_append_before is None, "the catch-up's commit was not attempted"
        assert claimed.offsets == {"in:0": 2}
        assert b.get("acct", 0, claimed.epoch, [b"k", b"j"]) == [b"v2", b"j1"]
    finally:
        a.shutdown(snapshot=False)
        b.shutdown(snapshot=False)
    assert _restored(tmp_path, broker, [b"k", b"j"]) == ([b"v2", b"j1"], {"in:0": 2})


def test_a_claim_does_not_repair_a_key_whose_marker_landed_after_the_load(
    tmp_path: Path, broker: Broker
) -> None:
    """b loads while a's commit is half in the log (its record, not yet its marker): b holds
    the key for repair. The marker lands, then b claims: the repair must write the committed
    value (a's), not b's older one after a's complete batch. a's record and marker are produced
    by hand, to place b's load between them."""
    a = _service(tmp_path, "a", broker)
    b = _service(tmp_path, "b", broker)
    producer = Producer({"bootstrap.servers": broker.bootstrap})
    topic = "tierstore-acct-changelog"
    try:
        meta, _ = a.open("acct", 0, "kv", 1)
        a.commit("acct", 0, meta.epoch, 1, 0, [b"k", b"j"], [b"v1", b"j1"], [], {"in:0": 1})
        producer.produce(topic, b"v2", b"k", 0, headers=data_headers(meta.epoch, 2))
        assert producer.flush(10) == 0
        shard = b.registry.shard(b.registry.describe("acct"), 0)
        assert shard._repair == {b"k"}
        mval, mheaders = marker(COMMIT, meta.epoch, 2, {"in:0": 2})
        producer.produce(topic, mval, b"", 0, headers=mheaders)
        assert producer.flush(10) == 0
        _take_over(b)
    finally:
        a.shutdown(snapshot=False)
        b.shutdown(snapshot=False)
    assert _restored(tmp_path, broker, [b"k", b"j"]) == ([b"v2", b"j2"], {"in:0": 3})

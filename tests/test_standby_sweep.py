"""Standby copies (server/standby.py).

A standby never writes: it follows the owner's changelog. The TTL sweep (Shard.sweep_expired,
run by every server's ticker on its open shards) must therefore skip it. A standby that sweeps
appends tombstones and a marker with its own stale view of the shard (epoch, commit number,
input offsets) to the owner's changelog: a restore then deletes a value the owner refreshed
meanwhile and rewinds the committed offsets. And the follow loop must not make a standby of a
shard being promoted.

Two servers on one real Tansu broker; the standby is made the way Standbys.follow_once makes
one (load, mark standby, catch up)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.infra import Broker
from tierstore import ttl
from tierstore.server.changelog_kafka import KafkaChangelog, KafkaConfig
from tierstore.server.config import ServerConfig
from tierstore.server.objectstore import LocalObjectStore
from tierstore.server.service import StoreService
from tierstore.server.standby import Standbys

pytestmark = pytest.mark.kafka


def _service(tmp: Path, name: str, broker: Broker, objects: str = "objects") -> StoreService:
    return StoreService(ServerConfig(data_dir=tmp / name), LocalObjectStore(tmp / objects),
                        KafkaChangelog(KafkaConfig(broker.bootstrap)))


def test_a_standby_copy_never_sweeps_into_the_owners_changelog(
    tmp_path: Path, broker: Broker
) -> None:
    owner, follower = _service(tmp_path, "owner", broker), _service(tmp_path, "standby", broker)
    now = ttl.now_ms()
    try:
        meta, _ = owner.open("sessions", 0, "kv", 1, ttl_ms=60_000)
        expired = ttl.encode(b"old", 1_000, now - 120_000)
        owner.commit("sessions", 0, meta.epoch, 1, 0, [b"k"], [expired], [], {"in:0": 1})
        copy = follower.registry.shard(follower.registry.describe("sessions"), 0)
        copy.standby = True
        Standbys(follower.registry, None, 1).catch_up(copy)  # type: ignore[arg-type]
        fresh_value = ttl.encode(b"new", 60_000, now)
        owner.commit("sessions", 0, meta.epoch, 2, 0, [b"k"], [fresh_value], [], {"in:0": 2})
        follower.sweep_expired(now)  # the standby still sees the expired value
    finally:
        owner.shutdown(snapshot=False)
        follower.shutdown(snapshot=False)
    restored = _service(tmp_path, "restored", broker, "objects-restored")
    try:
        m, _ = restored.open("sessions", 0, "kv", 1, ttl_ms=60_000)
        assert restored.get("sessions", 0, 0, [b"k"]) == [fresh_value]
        assert m.offsets == {"in:0": 2}
    finally:
        restored.shutdown(snapshot=False)


class _Following(Standbys):
    """The follow loop of a server told to follow store "s", partition 0."""

    def followed(self) -> list[tuple[str, int]]:
        return [("s", 0)]


class _Enabled:
    """A membership that is on (the claim path), and nothing else."""

    enabled = True

    def stop(self) -> None:
        pass


def test_the_follow_loop_does_not_demote_a_shard_being_promoted(
    tmp_path: Path, broker: Broker
) -> None:
    """Promotion takes the shard lock twice: catch up and stop being a standby, then claim.
    A follow round in between (the membership views changing at that moment) made the shard a
    standby again, claimed anew at the next request: a spurious new epoch that fenced the
    worker that had just opened it. The round is run here at the worst moment, from the claim."""
    owner, follower = _service(tmp_path, "owner", broker), _service(tmp_path, "standby", broker)
    try:
        meta, _ = owner.open("s", 0, "kv", 1)
        owner.commit("s", 0, meta.epoch, 1, 0, [b"k"], [b"v1"], [], {"in:0": 1})
        standbys = _Following(follower.registry, None, 1)  # type: ignore[arg-type]
        standbys.follow_once()
        shard = follower.registry.shard(follower.registry.describe("s"), 0)
        assert shard.standby
        follower.standbys = standbys
        follower.membership = _Enabled()  # type: ignore[assignment]
        real_claim = shard.claim

        def claim_during_a_follow_round() -> Any:
            standbys.follow_once()
            return real_claim()

        shard.claim = claim_during_a_follow_round  # type: ignore[method-assign]
        promoted = follower._promote(shard)
        assert promoted is shard and shard.taken_over
        assert not shard.standby
        standbys.follow_once()  # later rounds leave it alone too
        assert not shard.standby and shard.promoted
    finally:
        owner.shutdown(snapshot=False)
        follower.shutdown(snapshot=False)

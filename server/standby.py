"""Standby replicas: follow the changelog of shards this server does not own.

With `--standby-replicas N`, the N servers after a shard's owner in rendezvous order keep a
local copy of it: restored once (snapshot + changelog), then caught up from the changelog every
`interval_s`. They are exactly the servers that take the shard over when the owner dies, so a
failover replays only the few records the standby had not yet applied instead of restoring.

A standby never writes: it applies only committed batches (tierstore.server.restore), and it is
never served to writers until it is promoted, which first catches up to the end of the log.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from tierstore.server.cluster import Membership
from tierstore.server.errors import StateStoreError
from tierstore.server.registry import Registry
from tierstore.server.restore import replay_changelog
from tierstore.server.shard import Shard

log = logging.getLogger(__name__)


@dataclass
class StandbyState:
    caught_up_at: float = 0.0  # monotonic time of the last replay that reached the end
    records_applied: int = 0


class Standbys:
    def __init__(
        self, registry: Registry, membership: Membership, replicas: int, interval_s: float = 0.5
    ) -> None:
        self.registry = registry
        self.membership = membership
        self.replicas = replicas
        self.interval_s = interval_s
        self.state: dict[tuple[str, int], StandbyState] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="standbys", daemon=True)

    def start(self) -> None:
        if self.replicas > 0 and self.registry.changelog is not None:
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def followed(self) -> list[tuple[str, int]]:
        """The shards this server should follow now: ranks 1..N in placement order."""
        me = self.membership.cfg.advertise
        out = []
        for spec in self.registry.list_specs():
            for p in range(spec.num_partitions):
                order = self.membership.order(spec.name, p)
                if me in order[1:1 + self.replicas]:
                    out.append((spec.name, p))
        return out

    def lag_seconds(self) -> dict[str, float]:
        """Per shard open here as a standby ("store/partition"): seconds since its copy last
        caught up to the end of the changelog. Healthy: under `interval_s` plus one catch-up;
        it grows while the changelog cannot be read. A standby not caught up even once yet
        is left out; promoted shards are not standbys any more."""
        now = time.monotonic()
        copies = {(sh.spec.name, sh.partition) for sh in self.registry.open_shards()
                  if sh.standby}
        with self._lock:
            return {f"{s}/{p}": now - st.caught_up_at for (s, p), st in self.state.items()
                    if (s, p) in copies}

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.follow_once()
            except Exception:  # the follower must survive anything
                log.exception("standby round failed")

    def follow_once(self) -> int:
        applied = 0
        for store, partition in self.followed():
            spec = self.registry.find_spec(store)
            if spec is None:
                continue
            try:
                shard = self.registry.shard(spec, partition)
                with shard._lock:  # not between a promotion's steps (StoreService._promote)
                    if shard.promoted or (not shard.standby and not self._is_new_standby(shard)):
                        continue  # this server owns it (or was told to serve it): not a standby
                    shard.standby = True
                    shard.taken_over = False
                applied += self.catch_up(shard)
            except StateStoreError as exc:
                log.warning("standby %s/%d: %s", store, partition, exc)
        return applied

    def _is_new_standby(self, shard: Shard) -> bool:
        # A shard loaded by this loop and never claimed here has commit history only from
        # the log; one that a worker claimed here has been served as the owner.
        return shard.claims_here == 0

    def catch_up(self, shard: Shard) -> int:
        """Apply the committed batches the local copy lacks (under the shard lock)."""
        changelog = self.registry.changelog
        if changelog is None:
            return 0
        with shard._lock:
            if shard.db.closed or not shard.standby:
                return 0  # closed, or promoted meanwhile: the owner's log position is its own
            result = replay_changelog(shard.db, changelog, shard.spec.name, shard.partition,
                                      spec=shard.spec)
            before = shard.meta.commit_seq, shard.meta.epoch
            shard.meta = shard.db.read_meta()
            first = (shard.spec.name, shard.partition) not in self.state
            if first or (shard.meta.commit_seq, shard.meta.epoch) != before:
                log.info("standby %s at commit %d (epoch %d)", shard.name,
                         shard.meta.commit_seq, shard.meta.epoch)
            shard.epoch_floor = max(shard.epoch_floor, result.max_epoch)
            shard.set_repair(result.keys_to_repair())
            shard.log_end = result.end_offset
        with self._lock:
            st = self.state.setdefault((shard.spec.name, shard.partition), StandbyState())
            st.caught_up_at = time.monotonic()
            st.records_applied += result.records_applied
        return result.records_applied

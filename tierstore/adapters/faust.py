"""A Faust (faust-streaming) table store backed by tierstore: ``store="tierstore://HOST:PORT"``.

Registered in the ``faust.stores`` entry-point group, so ``faust.stores.by_url`` finds it once
tierstore is installed (``pip install 'tierstore[faust]'``); nothing else in tierstore imports
this module, so the core package never needs faust.

    app = faust.App("wc", broker="kafka://...", store="tierstore://127.0.0.1:7070")
    counts = app.Table("counts", default=int, partitions=8)

URL: ``tierstore://HOST:PORT[,HOST:PORT...][/STORE]?token=...&cache=N&commit_interval=S``
(and ``&allow_concurrent_agents=1``, see ``_check_agents``).
The tierstore store name defaults to ``<app id>-<table name>`` (Faust's changelog topic without
``-changelog``); commit_interval defaults to Faust's ``broker_commit_interval``.

Mapping: table partition p (= changelog partition p = input partition p, as Faust co-partitions
them) is tierstore shard (store, p); the store is created with ``num_partitions`` = the table's
partition count. A shard is claimed when Faust assigns the partition as *active* and committed
and released when Faust revokes it. Standby assignments claim nothing.

Commits and offsets (see tierstore.adapters.faust_shard for the rules): every commit_interval
seconds, at every rebalance and at stop, each dirty shard is committed with the input offsets
of exactly the records whose writes it holds and the Faust changelog offset it reflects
(``set_persisted_offset``). When a worker gets a partition, Faust's consumer group offset of
each input partition is reset (committed and sought) to tierstore's committed offset before
Faust resumes the streams, and writes from records already committed are dropped, so each
input record counts once. Faust's own changelog tail after the persisted offset is read by
Faust's recovery and discarded: it may hold writes of records that were never committed.
docs/adapters.md says what holds and what does not.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, cast

from faust.exceptions import ImproperlyConfigured
from faust.stores.base import SerializedStore
from faust.streams import current_event
from faust.types import TP, AppT, CollectionT, EventT
from mode import Service
from mode.utils.collections import LRUCache
from yarl import URL

from tierstore.adapters.faust_shard import FaustShard, parse_source, source_name
from tierstore.client.errors import StateStoreError
from tierstore.client.remote import Client, connect

log = logging.getLogger(__name__)

# Per Faust app: input partition -> the offset to resume from (the lowest committed offset
# among this app's tierstore tables), filled at claim time and used once recovery completes.
# Keyed by the app, with the rebalance generation the offsets were noted in.
_RESUME: weakref.WeakKeyDictionary[Any, tuple[int, dict[TP, int]]] = weakref.WeakKeyDictionary()


class TierStore(SerializedStore):
    """Faust table storage in a tierstore server (remote, durable, effectively-once)."""

    def __init__(
        self,
        url: str | URL,
        app: AppT,
        table: CollectionT,
        *,
        options: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(url, app, table, options=options, **kwargs)
        if table.is_global:
            raise ImproperlyConfigured(
                f"table {table.name!r}: a GlobalTable cannot use the tierstore store (every "
                "worker would claim every shard and fence the others); use a Table, and "
                "tierstore.client.reader for reads across partitions")
        if table.use_partitioner:
            raise ImproperlyConfigured(
                f"table {table.name!r}: use_partitioner=True is not supported by the tierstore "
                "store (its changelog partition is chosen by the producer, after the write)")
        u = URL(str(url))
        if not u.host:
            raise ImproperlyConfigured(f"tierstore store URL needs HOST:PORT, got {str(url)!r}")
        self.target = u.raw_authority
        self.store_name = u.path.strip("/") or f"{app.conf.id}-{table.name}"
        self.token = u.query.get("token")
        self.cache_entries = int(u.query.get("cache", "100000"))
        interval = u.query.get("commit_interval")
        self.commit_interval = (float(interval) if interval is not None
                                else float(app.conf.broker_commit_interval))
        self.num_partitions = int(table.partitions or app.conf.topic_partitions)
        self.allow_concurrent_agents = u.query.get("allow_concurrent_agents", "0") in (
            "1", "true", "yes")
        self._agents_checked = False
        self._client: Client | None = None
        self._shards: dict[int, FaustShard] = {}
        self._key_index: LRUCache[bytes, int] = LRUCache(limit=app.conf.table_key_index_size)

    # --- claims ---------------------------------------------------------------------------
    @property
    def client(self) -> Client:
        if self._client is None:
            self._client = connect(self.target, token=self.token)
        return self._client

    @property
    def changelog_topic(self) -> str:
        return str(self.table.changelog_topic.get_topic_name())

    def _claim(self, partition: int) -> FaustShard:
        kv = self.client.key_value_store(self.store_name, partition=partition,
                                         num_partitions=self.num_partitions)
        return FaustShard(kv, source_name(self.changelog_topic, partition),
                          cache_entries=self.cache_entries)

    def _release(self, partition: int, *, commit: bool) -> None:
        shard = self._shards.pop(partition, None)
        if shard is None:
            return
        try:
            if commit and shard.dirty and shard.committable():
                shard.commit()
        except StateStoreError as exc:
            log.warning("tierstore %s/%d: final commit refused (%s); the next owner resumes "
                        "from the last commit", self.store_name, partition, exc)
        finally:
            shard.kv.close()

    async def on_rebalance(
        self,
        assigned: set[TP],
        revoked: set[TP],
        newly_assigned: set[TP],
        generation_id: int = 0,
    ) -> None:
        """Commit every shard (Faust has drained the agents by now), release the partitions
        this worker lost, claim the active ones it does not hold yet (in a thread: a claim may
        restore the shard first), and note where each input partition must resume."""
        self._check_agents()
        mine = self.changelog_topic
        standbys = self.app.assignor.assigned_standbys()
        actives = {tp.partition for tp in assigned if tp.topic == mine and tp not in standbys}
        for p in list(self._shards):
            shard = self._shards[p]
            if p not in actives:
                self._release(p, commit=True)
            elif shard.dirty and not shard.committable():
                # A record still in flight: drop the buffer (reclaim), so that the state is
                # exactly the committed one the input is about to resume from.
                self._release(p, commit=False)
            elif shard.dirty:
                shard.commit()
        loop = asyncio.get_running_loop()
        for p in sorted(actives - set(self._shards)):
            self._shards[p] = await loop.run_in_executor(None, self._claim, p)
        gen, resume = _RESUME.get(self.app, (None, {}))
        if gen != generation_id:
            resume = {}
            _RESUME[self.app] = (generation_id, resume)
        for shard in self._shards.values():
            for name, offset in shard.input_offsets().items():
                parsed = parse_source(name)
                if parsed is not None:
                    tp = TP(parsed[0], parsed[1])
                    resume[tp] = min(offset, resume.get(tp, offset))

    def _check_agents(self) -> None:
        """Refuse to claim anything while an agent runs with concurrency > 1 (once per store,
        at its first rebalance, when every agent is defined). Faust acks such an agent's
        records out of order, and a record still running when a later one of its partition
        commits has its writes dropped as replays (docs/adapters.md, "Limits"): silent loss.
        Nothing here knows which agents write to which table, so an app whose concurrent
        agents write to no tierstore table says so with allow_concurrent_agents=1."""
        if self._agents_checked:
            return
        concurrent = sorted(f"{name} (concurrency={agent.concurrency})"
                            for name, agent in self.app.agents.items()
                            if getattr(agent, "concurrency", 1) > 1)
        if concurrent and not self.allow_concurrent_agents:
            raise ImproperlyConfigured(
                f"table {self.table.name!r} is in tierstore, and agent(s) "
                f"{', '.join(concurrent)} run with concurrency > 1: Faust acks their records "
                "out of order, and a tierstore table written by such an agent can lose writes "
                "(docs/adapters.md, Limits). Run them with concurrency=1, or, if none of them "
                "writes to a tierstore table, add allow_concurrent_agents=1 to the store URL")
        if concurrent:
            log.warning("tierstore: agents %s run with concurrency > 1 (allowed by the store "
                        "URL): none of them may write to a tierstore table", concurrent)
        self._agents_checked = True

    async def on_recovery_completed(self, active_tps: set[TP], standby_tps: set[TP]) -> None:
        """Commit shards that imported the Faust changelog, then move the consumer group's
        offsets of the input partitions to tierstore's committed offsets, so that Faust's
        `perform_seek`, which runs next, resumes the streams exactly there (a rewind when the
        group is ahead of tierstore, a skip when it is behind)."""
        for shard in self._shards.values():
            if shard.importing:
                shard.commit()
        _, resume = _RESUME.get(self.app, (None, {}))
        if not resume:
            return
        consumer: Any = self.app.consumer
        assignment = consumer.assignment()
        offsets = {tp: off for tp, off in resume.items() if tp in assignment}
        resume.clear()
        if offsets:
            group = await consumer.seek_to_committed()
            moves = {f"{tp.topic}:{tp.partition}": (group.get(tp), o) for tp, o in offsets.items()}
            log.info("tierstore: resuming input partitions at tierstore's committed offsets "
                     "(group offset, tierstore offset): %s; rewound=%d skipped=%d", moves,
                     sum(1 for g, o in moves.values() if g is not None and g > o),
                     sum(1 for g, o in moves.values() if g is None or g < o))
            if not await consumer._commit(offsets):
                # Only when the group is rebalancing again: Faust then skips this recovery's
                # seek, and the next on_rebalance notes the offsets again.
                log.warning("tierstore: could not move the consumer group's offsets to %s; "
                            "the next rebalance will", offsets)
                return
            # Seek too: aiokafka's seek_to_committed (Faust's perform_seek) skips a committed
            # offset of 0, which would leave the stream where the group was before.
            for tp, off in offsets.items():
                await consumer.seek(tp, off)

    # --- commits --------------------------------------------------------------------------
    def commit_all(self) -> int:
        """Commit every dirty shard whose buffered input records are all acknowledged; returns
        how many were committed. Runs on the event loop, between agent steps."""
        n = 0
        for shard in list(self._shards.values()):
            if shard.dirty and shard.committable():
                shard.commit()
                n += 1
        return n

    @Service.task
    async def _periodic_commit(self) -> None:
        async for _ in self.itertimer(self.commit_interval, name="tierstore_commit"):
            try:
                self.commit_all()
            except StateStoreError as exc:
                await self.crash(exc)

    async def on_stop(self) -> None:
        for p in list(self._shards):
            self._release(p, commit=True)
        if self._client is not None:
            self._client.close()
            self._client = None

    # --- Faust's offset hooks -------------------------------------------------------------
    def persisted_offset(self, tp: TP) -> int | None:
        """The last changelog offset the committed state reflects; Faust's recovery reads
        only the changelog after it (and this store discards what it reads, see module doc)."""
        shard = self._shards.get(tp.partition)
        if shard is None or tp.topic != self.changelog_topic:
            return None
        return shard.committed_changelog_offset()

    def set_persisted_offset(self, tp: TP, offset: int) -> None:
        shard = self._shards.get(tp.partition)
        if shard is not None and tp.topic == self.changelog_topic:
            shard.note_changelog(offset)

    async def need_active_standby_for(self, tp: TP) -> bool:
        """No standby is needed: any worker can claim the shard and gets its state remotely."""
        return False

    def apply_changelog_batch(
        self,
        batch: Iterable[EventT],
        to_key: Callable[[Any], Any],
        to_value: Callable[[Any], Any],
    ) -> None:
        """Faust's recovery hands us its changelog. A shard that already carries a changelog
        marker discards it (its committed state is authoritative; the tail may hold writes of
        records that were never committed and will be processed again). A shard without one
        (the table's first use of tierstore) imports it once."""
        for event in batch:
            msg = event.message
            shard = self._shards.get(msg.partition)
            if shard is None:
                continue  # a standby partition: the state lives in tierstore, not here
            if not shard.importing:
                shard.changelog_discarded += 1
                continue
            if msg.key is None:
                raise TypeError(f"Changelog entry is missing key: {msg}")
            shard.kv.put(msg.key, msg.value)
            shard.cache.put(msg.key, msg.value)
            shard.note_changelog(msg.offset)

    # --- SerializedStore ------------------------------------------------------------------
    def _partition_of(self, key: bytes) -> int | None:
        event = current_event()
        if event is not None:
            return int(event.message.partition)
        return self._key_index.get(key)

    def _shard(self, partition: int) -> FaustShard:
        try:
            return self._shards[partition]
        except KeyError:
            raise StateStoreError(
                f"table {self.table_name!r}: partition {partition} is not assigned to this "
                f"worker (active: {sorted(self._shards)})") from None

    def _write(self, key: bytes, value: bytes | None) -> None:
        event = current_event()
        if event is not None:
            msg = event.message
            shard = self._shard(int(msg.partition))
            source = source_name(msg.topic, msg.partition)
            if msg.offset is not None and shard.is_replay(source, msg.offset):
                shard.replays_dropped += 1
                return
            tracked = bool(getattr(msg, "tracked", False))
            if (tracked and msg.offset is not None and shard.needs_floor(source)
                    and shard.committable()):
                shard.commit(floor={source: int(msg.offset)})
            shard.kv.put(key, value)
            shard.note_write(source if tracked else None, msg.offset,
                             cast(Any, msg) if tracked else None)
            self._key_index[key] = int(msg.partition)
        else:
            part = self._key_index.get(key)
            shards = [self._shard(part)] if part is not None else self._holders(key)
            for shard in shards:
                shard.kv.put(key, value)
                shard.note_write(None, None, None)
                shard.cache.put(key, value)
            return
        shard.cache.put(key, value)

    def _holders(self, key: bytes) -> list[FaustShard]:
        return [s for s in self._shards.values() if self._lookup(s, key) is not None]

    @staticmethod
    def _lookup(shard: FaustShard, key: bytes) -> bytes | None:
        hit = shard.cache.get(key)
        if not isinstance(hit, bytes) and hit is not None:  # a miss
            hit = shard.kv.get(key)
            shard.cache.put(key, hit)
        return hit

    def _get(self, key: bytes) -> bytes | None:
        part = self._partition_of(key)
        if part is not None and part in self._shards:
            return self._lookup(self._shards[part], key)
        for p, shard in self._shards.items():
            value = self._lookup(shard, key)
            if value is not None:
                self._key_index[key] = p
                return value
        return None

    def _set(self, key: bytes, value: bytes | None) -> None:
        self._write(key, value)

    def _del(self, key: bytes) -> None:
        self._write(key, None)

    def _contains(self, key: bytes) -> bool:
        return self._get(key) is not None

    def _items(self) -> Iterator[tuple[bytes, bytes]]:
        for p in sorted(self._shards):
            yield from self._shards[p].kv.all()

    def _iterkeys(self) -> Iterator[bytes]:
        for k, _ in self._items():
            yield k

    def _itervalues(self) -> Iterator[bytes | None]:
        for _, v in self._items():
            yield v

    def _iteritems(self) -> Iterator[tuple[bytes, bytes]]:
        return self._items()

    def _size(self) -> int:
        return sum(1 for _ in self._items())

    def _clear(self) -> None:
        """Delete every key of the claimed partitions (made durable by the next commit)."""
        for shard in self._shards.values():
            for k, _ in list(shard.kv.all()):
                shard.kv.put(k, None)
            shard.cache.clear()
            shard.note_write(None, None, None)

    def reset_state(self) -> None:
        """No local state to remove: the state lives in tierstore (``faust reset`` leaves it)."""

    async def backup_partition(self, tp: TP | int, flush: bool = True, purge: bool = False,
                               keep: int = 1) -> None:
        raise NotImplementedError("tierstore keeps its own snapshots in object storage")

    def restore_backup(self, tp: TP | int, latest: bool = True, backup_id: int = 0) -> None:
        raise NotImplementedError("tierstore restores shards from its own snapshots")

    def _repr_info(self) -> str:
        return f"table_name={self.table_name} tierstore={self.target}/{self.store_name}"


Store = TierStore

__all__ = ["Store", "TierStore"]

"""Quix Streams state in tierstore: a Quix `Store` whose partitions are tierstore shards.

    from quixstreams import Application
    from tierstore.client import connect
    from tierstore.adapters.quix import use_tierstore

    app = Application(broker_address=..., consumer_group="wc", use_changelog_topics=False)
    use_tierstore(app, connect("127.0.0.1:7070"))     # before the first app.dataframe(...)
    sdf = app.dataframe(app.topic("words"))
    sdf = sdf.apply(count, stateful=True)              # its state now lives in tierstore

**This goes through a hook, not a supported Quix interface** (docs/adapters.md, "Quix
Streams"): Quix 3.x builds its `StateStoreManager` inside `Application.__init__` and
`StateStoreManager.register_store` accepts only `RocksDBStore` and `MemoryStore`. `use_tierstore`
therefore reaches the app's private `_processing_context` once and re-classes its manager as
`TierstoreStateStoreManager`, which overrides two public methods: `register_store` (key-value
stores become `TierstoreStore`) and `on_partition_assign` (seek to tierstore's offsets).
Windowed and timestamped stores (windows, joins) stay in RocksDB.

Mapping:
- Quix store partition (stream_id, store, partition) = tierstore shard
  (`<prefix><group>.<stream_id>.<store>`, partition), claimed on assignment, so a zombie
  worker that still holds it is fenced.
- Quix's processed offsets (the last offset per input topic, given to `prepare`) = tierstore
  committed input offsets `"<topic>:<partition>": offset + 1`, committed with the writes in one
  atomic tierstore commit at `flush`.

Quix's checkpoint commits the consumer offsets (step 4) *before* it flushes stores (step 5).
A worker killed between the two leaves Kafka ahead of tierstore, so on assignment the manager
seeks each input partition back to tierstore's committed offset: the fresh worker replays only
the tail that tierstore does not hold, and nothing twice. State is effectively-once; records
produced downstream stay at-least-once, as in Quix.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from datetime import timedelta
from typing import Any, Literal

try:
    from confluent_kafka import OFFSET_BEGINNING, TopicPartition
    from quixstreams import Application
    from quixstreams.context import MessageContextNotSetError, message_context
    from quixstreams.state.base import PartitionTransaction, Store, StorePartition
    from quixstreams.state.base.transaction import PartitionTransactionCache
    from quixstreams.state.manager import DEFAULT_STATE_STORE_NAME, StateStoreManager
    from quixstreams.state.metadata import Marker
    from quixstreams.state.rocksdb import RocksDBOptions
    from quixstreams.state.serialization import DumpsFunc, LoadsFunc
    from quixstreams.utils.json import dumps as json_dumps
    from quixstreams.utils.json import loads as json_loads
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "tierstore.adapters.quix needs Quix Streams: pip install 'tierstore[quix]'"
    ) from exc

from tierstore.client import Client, KeyValueStore

__all__ = [
    "TierstorePartitionTransaction",
    "TierstoreStateStoreManager",
    "TierstoreStore",
    "TierstoreStorePartition",
    "shard_store_name",
    "use_tierstore",
]

logger = logging.getLogger(__name__)

DEFAULT_CF = "default"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def shard_store_name(prefix: str, group: str, stream_id: str | None, store_name: str) -> str:
    """The tierstore store that holds one Quix store: `<prefix><group>.<stream_id>.<store>`,
    with characters tierstore refuses in a name replaced by `_`."""
    name = f"{prefix}{group}.{stream_id or 'source'}.{store_name}"
    return _UNSAFE.sub("_", name)[:200]


def offset_key(topic: str, partition: int) -> str:
    """The committed-offsets key of one input partition: `"<topic>:<partition>"`."""
    return f"{topic}:{partition}"


class TierstoreStorePartition(StorePartition):
    """One claimed tierstore shard behind Quix's StorePartition interface.

    Reads go to the shard (committed state) through a read cache: the shard is claimed by this
    worker, so nobody else changes its committed state and cached values stay true. Writes are
    the Quix transaction's cache, handed to `commit` as one tierstore commit.
    """

    def __init__(
        self,
        kv: KeyValueStore,
        partition: int,
        dumps: DumpsFunc = json_dumps,
        loads: LoadsFunc = json_loads,
        read_cache_entries: int = 100_000,
    ) -> None:
        super().__init__(dumps=dumps, loads=loads, changelog_producer=None)
        self._kv = kv
        self.partition_num = partition
        self._cache: dict[bytes, bytes | None] = {}
        self._cache_max = read_cache_entries

    @property
    def kv(self) -> KeyValueStore:
        return self._kv

    @property
    def committed_offsets(self) -> dict[str, int]:
        """tierstore's committed input offsets of this shard (next offset to process)."""
        return dict(self._kv.committed_offsets)

    def close(self) -> None:
        """Release the shard; nothing uncommitted is kept (Quix commits before revoking)."""
        self._cache.clear()
        self._kv.close()

    def _lookup(self, key: bytes, cf_name: str) -> bytes | None:
        _check_cf(cf_name)
        if key in self._cache:
            return self._cache[key]
        value = self._kv.get(key)
        self._remember(key, value)
        return value

    def _remember(self, key: bytes, value: bytes | None) -> None:
        if len(self._cache) >= self._cache_max:
            self._cache.clear()  # crude bound; the shard is the truth
        self._cache[key] = value

    def get(
        self, key: bytes, cf_name: str = DEFAULT_CF
    ) -> bytes | Literal[Marker.UNDEFINED]:  # type: ignore[valid-type,unused-ignore]
        value = self._lookup(key, cf_name)
        return Marker.UNDEFINED if value is None else value

    def exists(self, key: bytes, cf_name: str = DEFAULT_CF) -> bool:
        return self._lookup(key, cf_name) is not None

    def commit(self, cache: PartitionTransactionCache, offsets: Mapping[str, int]) -> None:
        """Write the transaction's updates and deletes and `offsets` in one tierstore commit:
        all of it becomes durable, or none of it (an error leaves the shard as it was and is
        raised, so Quix fails the checkpoint)."""
        writes: dict[bytes, bytes | None] = {}
        for cf_name in cache.get_column_families():
            updates = cache.get_updates(cf_name)
            deletes = cache.get_deletes(cf_name)
            if not updates and not deletes:
                continue
            _check_cf(cf_name)
            for prefix_updates in updates.values():
                writes.update(prefix_updates)
            for key in deletes:
                writes[key] = None
        for key, value in writes.items():
            self._kv.put(key, value)  # None buffers a delete
        try:
            self._kv.commit(dict(offsets))
        except BaseException:
            self._cache.clear()  # the outcome may be unknown: read the shard again
            raise
        for key, value in writes.items():
            self._remember(key, value)

    def write(self, cache: PartitionTransactionCache, changelog_offset: int | None) -> None:
        """Quix's write hook: a commit without input offsets (tierstore keeps no Quix
        changelog offset, so `changelog_offset` must be None)."""
        if changelog_offset is not None:
            raise ValueError("a tierstore partition has no Quix changelog offset")
        self.commit(cache, {})

    def get_changelog_offset(self) -> int | None:
        return None  # tierstore keeps its own changelog; Quix's is off

    def write_changelog_offset(self, offset: int) -> None:
        raise NotImplementedError(
            "tierstore stores do not use Quix changelog topics "
            "(create the Application with use_changelog_topics=False)"
        )

    def recover_from_changelog_message(
        self,
        key: bytes,
        value: bytes | None,
        cf_name: str,
        offset: int,
        ttl_stamped: bool = False,
    ) -> None:
        raise NotImplementedError(
            "tierstore stores restore on the tierstore server, not from a Quix changelog "
            "(create the Application with use_changelog_topics=False)"
        )

    def begin(self) -> TierstorePartitionTransaction:
        return TierstorePartitionTransaction(self, dumps=self._dumps, loads=self._loads)


class TierstorePartitionTransaction(PartitionTransaction[Any, Any]):
    """Quix's transaction (its read-your-writes cache is kept) over a tierstore shard.

    `prepare(processed_offsets)` records the offsets, `flush()` commits the writes and
    `offset + 1` per input topic to tierstore together, whether or not anything changed, so the
    shard's committed offsets always say how far its state reaches.

    Writes made while Quix processes a record that the shard's committed state already
    reflects (its offset is below the shard's committed offset for that topic partition) are
    dropped: with several tierstore stores on one stream partition, the input resumes at the
    lowest of their offsets, and the stores that are ahead must not apply those records again.
    """

    def __init__(
        self, partition: TierstoreStorePartition, dumps: DumpsFunc, loads: LoadsFunc
    ) -> None:
        super().__init__(partition=partition, dumps=dumps, loads=loads, changelog_producer=None)
        self._ts_partition = partition
        self._processed: dict[str, int] = {}
        # What the shard's committed state reaches (it changes only when this transaction
        # flushes), to recognise a record it already reflects.
        self._done = partition.committed_offsets
        self.replayed_writes_dropped = 0

    def _replayed(self) -> bool:
        """True while the record being processed is already in the shard's committed state."""
        if not self._done:
            return False
        try:
            ctx = message_context()
        except MessageContextNotSetError:  # a write outside record processing
            return False
        done = self._done.get(offset_key(ctx.topic, ctx.partition))
        if done is None or ctx.offset >= done:
            return False
        self.replayed_writes_dropped += 1
        return True

    def _set_bytes(
        self,
        key: Any,
        value: bytes,
        prefix: bytes,
        cf_name: str = DEFAULT_CF,
        timestamp: int | None = None,
        ttl: timedelta | None = None,
    ) -> None:
        # Every set and set_bytes of Quix's transaction ends here, with its ttl.
        _check_no_ttl(ttl)
        if not self._replayed():
            super()._set_bytes(key, value, prefix, cf_name=cf_name, timestamp=timestamp)

    def delete(self, key: Any, prefix: bytes, cf_name: str = DEFAULT_CF) -> None:
        if not self._replayed():
            super().delete(key, prefix, cf_name=cf_name)

    def _prepare(self, processed_offsets: dict[str, int] | None) -> None:
        self._processed = dict(processed_offsets or {})

    def _flush(self, changelog_offset: int | None) -> None:
        if self._update_cache.is_empty() and not self._processed:
            return
        partition_num = self._ts_partition.partition_num
        if self.replayed_writes_dropped:
            logger.info("tierstore: partition %s dropped %d writes of records its committed "
                        "state already holds (input replayed from a lower offset)",
                        partition_num, self.replayed_writes_dropped)
        offsets = {offset_key(t, partition_num): o + 1 for t, o in self._processed.items()}
        logger.debug("tierstore: commit partition %s, offsets %s", partition_num, offsets)
        self._ts_partition.commit(self._update_cache, offsets)


class TierstoreStore(Store):
    """A Quix key-value store whose partitions are shards of one tierstore store."""

    def __init__(
        self,
        name: str,
        stream_id: str | None,
        client: Client,
        shard_store: str,
        num_partitions: int | None,
        read_cache_entries: int = 100_000,
        dumps: DumpsFunc = json_dumps,
        loads: LoadsFunc = json_loads,
    ) -> None:
        super().__init__(name, stream_id)
        self._dumps = dumps
        self._loads = loads
        self._client = client
        self._shard_store = shard_store
        self._num_partitions = num_partitions
        self._read_cache_entries = read_cache_entries

    @property
    def shard_store(self) -> str:
        """The tierstore store name (what a `client.reader(...)` queries)."""
        return self._shard_store

    def create_new_partition(self, partition: int) -> TierstoreStorePartition:
        kv = self._client.key_value_store(
            self._shard_store, partition=partition, num_partitions=self._num_partitions
        )
        store_partition = TierstoreStorePartition(
            kv, partition, dumps=self._dumps, loads=self._loads,
            read_cache_entries=self._read_cache_entries,
        )
        logger.info(
            "tierstore: claimed %s/%s (epoch %s), committed offsets %s",
            self._shard_store, partition, kv.epoch, kv.committed_offsets,
        )
        return store_partition


class TierstoreStateStoreManager(StateStoreManager):
    """Quix's StateStoreManager with key-value stores in tierstore (see the module doc).

    Not constructed directly: `use_tierstore` re-classes the Application's own manager, so
    every attribute Quix set up stays as it was.
    """

    _ts_client: Client
    _ts_prefix: str
    _ts_group: str
    _ts_consumer: Any
    _ts_registry: Any
    _ts_read_cache_entries: int
    _ts_dumps: DumpsFunc
    _ts_loads: LoadsFunc

    def register_store(
        self,
        stream_id: str | None,
        store_name: str = DEFAULT_STATE_STORE_NAME,
        store_type: Any = None,
        changelog_config: Any = None,
    ) -> None:
        """Register a key-value store in tierstore; an explicit `RocksDBStore` or `MemoryStore`
        type keeps Quix's own backend."""
        if store_type is not None and store_type is not TierstoreStore:
            return super().register_store(stream_id, store_name, store_type, changelog_config)
        if self._stores.get(stream_id, {}).get(store_name) is not None:
            return None
        num_partitions = getattr(changelog_config, "num_partitions", None)
        self._stores.setdefault(stream_id, {})[store_name] = TierstoreStore(
            name=store_name,
            stream_id=stream_id,
            client=self._ts_client,
            shard_store=shard_store_name(self._ts_prefix, self._ts_group, stream_id, store_name),
            num_partitions=num_partitions,
            read_cache_entries=self._ts_read_cache_entries,
            dumps=self._ts_dumps,
            loads=self._ts_loads,
        )
        return None

    def on_partition_assign(
        self,
        stream_id: str | None,
        partition: int,
        committed_offsets: dict[str, int],
    ) -> dict[str, StorePartition]:
        """Claim the shards, then seek each input partition to where tierstore's state stands.

        Kafka's committed offset can be ahead of tierstore's (a worker killed between Quix's
        consumer commit and its store flush) or behind it (a consumer group reset): either way
        the state is the truth, so consumption resumes at its committed offset. A shard with no
        offset for a partition Kafka has committed holds nothing of it: consumption restarts
        at the beginning (OFFSET_BEGINNING) to rebuild it. With several
        tierstore stores on one stream partition, the lowest offset wins (docs/adapters.md).

        Quix passes the committed offsets of every topic assigned at this partition number,
        those of other dataframes included: only the stream's own topics are considered (a
        shard holds nothing of another stream's topic, which must not be rewound for it).
        """
        assigned = super().on_partition_assign(stream_id, partition, committed_offsets)
        own = self._stream_topics(stream_id)
        if own is not None:
            committed_offsets = {t: o for t, o in committed_offsets.items() if t in own}
        targets: dict[str, int] = {}
        for store_partition in assigned.values():
            if not isinstance(store_partition, TierstoreStorePartition):
                continue
            offsets = store_partition.committed_offsets
            for topic, kafka_offset in committed_offsets.items():
                stored = offsets.get(offset_key(topic, partition))
                if stored is None:
                    if kafka_offset < 0:
                        continue  # a new group and a new shard: auto.offset.reset decides
                    # Kafka has moved on but the shard holds nothing of this partition (the
                    # first flush never landed): the state must be rebuilt from the start.
                    stored = OFFSET_BEGINNING
                targets[topic] = min(stored, targets.get(topic, stored))
        for topic, offset in targets.items():
            if committed_offsets.get(topic) != offset:
                logger.info(
                    "tierstore: %s[%s] resumes at tierstore's committed offset %s "
                    "(Kafka's committed offset is %s)",
                    topic, partition, "(beginning)" if offset == OFFSET_BEGINNING else offset,
                    committed_offsets.get(topic),
                )
                self._ts_consumer.seek(TopicPartition(topic, partition, offset))
        return assigned

    def _stream_topics(self, stream_id: str | None) -> set[str] | None:
        """The input topics of `stream_id` (Quix's DataFrameRegistry), or None if unknown."""
        registry = getattr(self, "_ts_registry", None)
        if registry is None or stream_id is None:
            return None
        try:
            return set(registry.get_topics_for_stream_id(stream_id))
        except KeyError:
            return None


def use_tierstore(
    app: Application,
    client: Client,
    *,
    store_prefix: str = "quix.",
    read_cache_entries: int = 100_000,
) -> None:
    """Keep the key-value state of `app` in tierstore. Call it before the first
    `app.dataframe(...)`; stores registered earlier keep their backend.

    Refuses an Application with Quix changelog topics on (tierstore has its own changelog, and
    Quix's recovery would try to replay into tierstore), and an app whose manager was already
    replaced by something else.
    """
    if app.config.use_changelog_topics:
        raise ValueError(
            "use_tierstore needs Application(use_changelog_topics=False): tierstore keeps its "
            "own changelog and snapshots, and Quix's changelog recovery cannot write into it"
        )
    ctx = app._processing_context  # the one private attribute this hook needs
    manager = ctx.state_manager
    if type(manager) is not StateStoreManager and not isinstance(
        manager, TierstoreStateStoreManager
    ):
        raise TypeError(
            f"the app's state manager is a {type(manager).__name__}, not Quix's "
            "StateStoreManager: another hook replaced it"
        )
    manager.__class__ = TierstoreStateStoreManager
    assert isinstance(manager, TierstoreStateStoreManager)
    manager._ts_client = client
    manager._ts_prefix = store_prefix
    manager._ts_group = app.config.consumer_group
    manager._ts_consumer = ctx.consumer
    manager._ts_registry = ctx.dataframe_registry  # a public field of the context
    manager._ts_read_cache_entries = read_cache_entries
    # Values are serialized as Quix's own stores do: RocksDBOptions' dumps/loads (JSON).
    options = app.config.rocksdb_options or RocksDBOptions()
    manager._ts_dumps = options.dumps
    manager._ts_loads = options.loads


def _check_cf(cf_name: str) -> None:
    if cf_name != DEFAULT_CF:
        raise NotImplementedError(
            f"column family {cf_name!r}: a tierstore Quix store holds only the default one "
            "(key-value state; windows and joins keep Quix's RocksDB stores)"
        )


def _check_no_ttl(ttl: timedelta | None) -> None:
    if ttl is not None:
        raise NotImplementedError(
            "state.set(..., ttl=...): Quix's event-time TTL is not mapped to tierstore "
            "(tierstore TTLs are wall-clock, set per store)"
        )

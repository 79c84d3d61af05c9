"""The Faust store backend driven without a broker, against a real tierstore server subprocess:
a real faust App and Table (the store comes from faust.stores.by_url through the entry point),
events set as Faust's stream sets them, and the store's commit, offset and replay rules checked
against what the server committed."""

from __future__ import annotations

import asyncio
import json
import weakref
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from tests.serverproc import ServerProc

faust = pytest.importorskip("faust")
from faust.events import Event  # noqa: E402
from faust.exceptions import ImproperlyConfigured  # noqa: E402
from faust.streams import _current_event  # noqa: E402
from faust.types import TP  # noqa: E402
from faust.types.tuples import Message  # noqa: E402

from tierstore.adapters.faust import TierStore  # noqa: E402
from tierstore.client.errors import StateStoreError  # noqa: E402

CHANGELOG = "unit-counts-changelog"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProc]:
    proc = ServerProc(tmp_path_factory.mktemp("faust-unit") / "data")
    try:
        yield proc
    finally:
        proc.close()


def make_store(address: str, app_id: str = "unit") -> tuple[Any, TierStore]:
    app = faust.App(app_id, broker="kafka://127.0.0.1:1", store=f"tierstore://{address}",
                    topic_partitions=2, web_enabled=False)
    table = app.Table("counts", default=int, partitions=2, key_type=str, value_type=int)
    store = table.data
    assert isinstance(store, TierStore)
    return app, store


def claim(store: TierStore, *partitions: int) -> None:
    tps = {TP(CHANGELOG, p) for p in partitions}
    asyncio.run(store.on_rebalance(tps, set(), tps))


def event(app: Any, topic: str, partition: int, offset: int) -> Event:
    msg = Message(topic, partition, offset, 0.0, 0, None, b"k", b"v", None, tp=TP(topic, partition))
    msg.tracked = True
    ev = Event(app, b"k", b"v", None, msg)
    _current_event.set(weakref.ref(ev))
    return ev


class GroupOffsets:
    """Stands in for Faust's consumer: its assignment, and the offsets committed to the group."""

    def __init__(self, assignment: set[TP]) -> None:
        self._assignment = assignment
        self.committed: dict[TP, int] = {}
        self.positions: dict[TP, int] = {}

    def assignment(self) -> set[TP]:
        return set(self._assignment)

    async def _commit(self, offsets: dict[TP, int]) -> bool:
        self.committed.update(offsets)
        return True

    async def seek_to_committed(self) -> dict[TP, int]:
        return dict(self.committed)

    async def seek(self, tp: TP, offset: int) -> None:
        self.positions[tp] = offset


def test_entry_point_and_refusals(server: ServerProc) -> None:
    _, store = make_store(server.address)
    assert store.store_name == "unit-counts"
    assert store.num_partitions == 2
    app = faust.App("unit-g", broker="kafka://127.0.0.1:1",
                    store=f"tierstore://{server.address}", web_enabled=False)
    with pytest.raises(ImproperlyConfigured, match="GlobalTable"):
        _ = app.GlobalTable("g", default=int).data


def test_offsets_commit_replay_and_changelog(server: ServerProc, tmp_path: Path) -> None:
    app, store = make_store(server.address)
    claim(store, 0, 1)
    ev = event(app, "words", 0, 5)
    store["a"] = 1
    assert store["a"] == 1
    # The first record of an input partition made its own offset durable before writing.
    assert store._shards[0].committed == {"words:0": 5, f"{CHANGELOG}:0": 0}
    assert store.commit_all() == 0, "committed while record 5 was still being processed"
    ev.message.acked = True
    store.set_persisted_offset(TP(CHANGELOG, 0), 41)
    assert store.commit_all() == 1

    # A fresh worker claims the shards: it must see the commit, fence the first worker, and
    # drop the replay of record 5 while applying record 6.
    app2, store2 = make_store(server.address)
    claim(store2, 0, 1)
    assert store2.persisted_offset(TP(CHANGELOG, 0)) == 41
    shard = store2._shards[0]
    assert shard.input_offsets() == {"words:0": 6}
    ev5 = event(app2, "words", 0, 5)  # held: Faust's context keeps only a weak reference
    store2["a"] = store2["a"] + 1  # a replay of record 5: dropped
    assert store2["a"] == 1 and shard.replays_dropped == 1
    ev6 = event(app2, "words", 0, 6)
    store2["a"] = store2["a"] + 1
    assert store2["a"] == 2
    ev6.message.acked = True
    assert store2.commit_all() == 1
    del ev5
    with pytest.raises(StateStoreError):  # the first worker was fenced by the second claim
        ev7 = event(app, "words", 0, 7)
        store["a"] = 9
        ev7.message.acked = True
        store.commit_all()

    # Faust's changelog: a marked shard discards its tail; a never-written shard imports it.
    def cl(partition: int, offset: int, key: str, value: int) -> Event:
        m = Message(CHANGELOG, partition, offset, 0.0, 0, None, json.dumps(key).encode(),
                    json.dumps(value).encode(), None, tp=TP(CHANGELOG, partition))
        return Event(app2, m.key, m.value, None, m)

    store2.apply_changelog_batch([cl(0, 42, "a", 100), cl(1, 0, "b", 7)], lambda k: k,
                                 lambda v: v)
    assert shard.changelog_discarded == 1
    group = GroupOffsets({TP("words", 0), TP("words", 1)})
    app2.consumer = group  # the seam: Faust's consumer, as the store uses it
    asyncio.run(store2.on_recovery_completed(set(), set()))  # commits the import
    assert group.committed == {TP("words", 0): 6}, "the group must resume at tierstore's offset"
    assert group.positions == {TP("words", 0): 6}
    _current_event.set(None)
    assert dict(store2.items()) == {"a": 2, "b": 7}
    asyncio.run(store2.stop())
    with server.client() as client:
        committed = {json.loads(k): json.loads(v) for k, v in client.reader("unit-counts").all()}
    assert committed == {"a": 2, "b": 7}


def test_windowed_table(server: ServerProc, monkeypatch: pytest.MonkeyPatch) -> None:
    """A tumbling-window table keeps its (key, window) entries in the same shards."""
    app = faust.App("unitw", broker="kafka://127.0.0.1:1", store=f"tierstore://{server.address}",
                    topic_partitions=1, web_enabled=False)
    table = app.Table("clicks", default=int, partitions=1, key_type=str, value_type=int)
    windowed = table.tumbling(10.0, expires=3600.0)
    # No broker here: the changelog send and the partition-count check are stubbed out.
    monkeypatch.setattr(table, "send_changelog", lambda partition, *a, **k: SimpleNamespace(
        message=SimpleNamespace(partition=partition)))
    monkeypatch.setattr(table, "_verify_source_topic_partitions", lambda topic: None)
    store = table.data
    assert isinstance(store, TierStore)
    tps = {TP("unitw-clicks-changelog", 0)}
    asyncio.run(store.on_rebalance(tps, set(), tps))
    held = []
    for offset, ts in enumerate([1.0, 2.0, 12.0]):
        ev = event(app, "clicks", 0, offset)
        ev.message.timestamp = ts
        held.append(ev)
        windowed["u"] += 1
        ev.message.acked = True
    assert windowed["u"].delta(0.0) == 1  # the window [10, 20) as of the last event
    assert sorted(v for _, v in store.items()) == [1, 2]
    assert store.commit_all() == 1
    _current_event.set(None)
    asyncio.run(store.stop())
    with server.client() as client:
        rows = dict(client.reader("unitw-clicks").all())
    assert sorted(json.loads(v) for v in rows.values()) == [1, 2]
    assert store._shards == {}


def test_no_commit_while_an_earlier_writer_is_in_flight(server: ServerProc) -> None:
    """Faust acks out of order (an agent with concurrency > 1; the consumer's commit handles
    the gaps): record 6 can be acked while record 5, which already wrote, is still being
    processed. A commit then would make half of record 5's writes durable with an offset that
    says it is done (a crash loses its other half, and its later writes are dropped as
    replays)."""
    app, store = make_store(server.address)
    claim(store, 0)
    ev5 = event(app, "ooo", 0, 5)
    store["a"] = 1  # record 5's first write; it is still running
    ev6 = event(app, "ooo", 0, 6)
    store["b"] = 1
    ev6.message.acked = True
    assert store.commit_all() == 0, "committed while record 5 was still being processed"
    ev5.message.acked = True
    assert store.commit_all() == 1
    assert store._shards[0].committed["ooo:0"] == 7
    _current_event.set(None)
    asyncio.run(store.stop())


def test_agents_with_concurrency_are_refused_unless_the_url_allows_them(
        server: ServerProc) -> None:
    """An agent with concurrency > 1 acks records out of order, which can drop writes to a
    tierstore table (docs/adapters.md, Limits): the store claims nothing and says why, unless
    the URL says that no such agent writes to a tierstore table."""
    for allow in (False, True):
        url = f"tierstore://{server.address}" + ("?allow_concurrent_agents=1" if allow else "")
        app = faust.App(f"unit-conc-{allow}", broker="kafka://127.0.0.1:1", store=url,
                        topic_partitions=2, web_enabled=False)
        table = app.Table("counts", default=int, partitions=2, key_type=str, value_type=int)

        async def busy(stream: Any) -> None:
            async for _ in stream:
                pass

        app.agent(app.topic(f"conc-in-{allow}"), name="busy", concurrency=3)(busy)
        store = table.data
        assert isinstance(store, TierStore)
        tps = {TP(store.changelog_topic, 0)}
        if not allow:
            with pytest.raises(ImproperlyConfigured, match=r"busy \(concurrency=3\).*"
                                                           r"allow_concurrent_agents=1"):
                asyncio.run(store.on_rebalance(tps, set(), tps))
            assert not store._shards
        else:
            asyncio.run(store.on_rebalance(tps, set(), tps))
            assert list(store._shards) == [0]
            asyncio.run(store.stop())

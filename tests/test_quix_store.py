"""The Quix adapter's store partition and transaction over an in-process tierstore store (the
end-to-end run with Kafka, S3 and a server subprocess is tests/test_quix_adapter.py)."""

from __future__ import annotations

import logging
from datetime import timedelta
from pathlib import Path

import pytest

pytest.importorskip("quixstreams", reason="the Quix tests run in .venv-quix (make test)")

from confluent_kafka import TopicPartition
from quixstreams import Application

from tests.serverproc import ServerProc
from tierstore.adapters.quix import (
    TierstorePartitionTransaction,
    TierstoreStateStoreManager,
    TierstoreStorePartition,
    shard_store_name,
    use_tierstore,
)
from tierstore.client import InMemoryKeyValueStore, connect


def test_flush_commits_writes_and_next_offsets_together() -> None:
    kv = InMemoryKeyValueStore()
    part = TierstoreStorePartition(kv, partition=3)
    tx = part.begin()
    state = tx.as_state(prefix="word")
    state.set("count", 2)
    state.set("gone", 1)
    state.delete("gone")
    assert state.get("count") == 2
    tx.prepare(processed_offsets={"words": 41})
    assert kv.committed_offsets == {}  # nothing durable before flush
    tx.flush()
    assert kv.committed_offsets == {"words:3": 42}
    assert dict(kv.all()) == {b'"word"|"count"': b"2"}

    tx2 = part.begin()
    assert tx2.as_state(prefix="word").get("count") == 2
    assert tx2.as_state(prefix="word").get("gone") is None
    tx2.prepare(processed_offsets={"words": 50})
    tx2.flush()  # no writes: the offsets still move
    assert kv.committed_offsets == {"words:3": 51}


def test_writes_of_records_the_shard_already_reflects_are_dropped(
        caplog: pytest.LogCaptureFixture) -> None:
    """Two stores on one stream partition, one flushed further than the other before a crash:
    the input resumes at the lower offset, and the store that is ahead must not apply those
    records again (it would count them twice)."""
    from quixstreams.context import set_message_context
    from quixstreams.models import MessageContext

    kv = InMemoryKeyValueStore()
    part = TierstoreStorePartition(kv, partition=3)
    tx = part.begin()
    tx.as_state(prefix="w").set("count", 5)
    tx.as_state(prefix="w").set("seen", 1)
    tx.prepare(processed_offsets={"words": 99})
    tx.flush()
    assert kv.committed_offsets == {"words:3": 100}
    try:
        tx = part.begin()
        state = tx.as_state(prefix="w")
        set_message_context(MessageContext("words", 3, 60, 0))  # replayed: already in the state
        state.set("count", state.get("count") + 1)
        state.delete("seen")
        assert (state.get("count"), state.get("seen")) == (5, 1)
        set_message_context(MessageContext("other", 3, 7, 0))  # a topic this shard never had
        state.set("other", 1)
        set_message_context(MessageContext("words", 3, 100, 0))  # the first new record
        state.set("count", state.get("count") + 1)
        set_message_context(None)
        state.set("outside", 1)  # no record being processed: kept
        tx.prepare(processed_offsets={"words": 100, "other": 7})
        with caplog.at_level(logging.INFO, logger="tierstore.adapters.quix"):
            tx.flush()
    finally:
        set_message_context(None)
    assert isinstance(tx, TierstorePartitionTransaction)
    assert tx.replayed_writes_dropped == 2
    assert any("partition 3 dropped 2 writes" in r.getMessage() for r in caplog.records)
    assert dict(kv.all()) == {b'"w"|"count"': b"6", b'"w"|"seen"': b"1", b'"w"|"other"': b"1",
                              b'"w"|"outside"': b"1"}
    assert kv.committed_offsets == {"words:3": 101, "other:3": 8}


def test_unsupported_features_fail_clearly() -> None:
    part = TierstoreStorePartition(InMemoryKeyValueStore(), partition=0)
    tx = part.begin()
    assert isinstance(tx, TierstorePartitionTransaction)
    with pytest.raises(NotImplementedError, match="TTL"):
        tx.as_state(prefix="k").set("x", 1, ttl=timedelta(seconds=1))
    with pytest.raises(NotImplementedError, match="column family"):
        part.get(b"k", cf_name="other")
    with pytest.raises(NotImplementedError, match="use_changelog_topics=False"):
        part.recover_from_changelog_message(b"k", b"v", "default", 0)


def test_use_tierstore_refuses_quix_changelogs() -> None:
    app = Application(broker_address="127.0.0.1:1", consumer_group="g")
    with pytest.raises(ValueError, match="use_changelog_topics=False"):
        use_tierstore(app, connect("127.0.0.1:1"))


def test_shard_store_names_are_valid_tierstore_names() -> None:
    assert shard_store_name("quix.", "g", "a topic/with:chars", "default") == (
        "quix.g.a_topic_with_chars.default")


class _SeekRecorder:
    """Stands in for Quix's consumer (the seam): records the seeks the manager makes."""

    def __init__(self) -> None:
        self.seeks: list[tuple[str, int, int]] = []

    def seek(self, tp: TopicPartition) -> None:
        self.seeks.append((tp.topic, tp.partition, tp.offset))


def test_assign_seeks_only_the_topics_of_the_assigned_stream(tmp_path: Path) -> None:
    """Quix hands `on_partition_assign` the committed offsets of EVERY topic assigned at that
    partition number, not only the stream's own. Two independent stateful dataframes (topics a
    and b, each with its tierstore store exactly at Kafka's committed offset) must not seek at
    all: seeking topic b to its beginning because store a holds no offset for b (and then a to
    its beginning for store b) replays a whole topic into state that already counted it."""
    server = ServerProc(tmp_path / "data")
    try:
        with connect(server.address) as client:
            for topic, offset in (("a", 10), ("b", 50)):
                with client.key_value_store(shard_store_name("quix.", "g", topic, "default"),
                                            partition=0) as kv:
                    kv.put(b"k", b"1")
                    kv.commit({f"{topic}:0": offset})
            app = Application(broker_address="127.0.0.1:1", consumer_group="g",
                              use_changelog_topics=False)
            use_tierstore(app, client)
            ctx = app._processing_context
            manager = ctx.state_manager
            assert isinstance(manager, TierstoreStateStoreManager)
            recorder = _SeekRecorder()
            manager._ts_consumer = recorder
            for topic in ("a", "b"):  # what app.dataframe(...).apply(..., stateful=True) does
                ctx.dataframe_registry.register_stream_id(topic, [topic])
                manager.register_store(topic, "default")
            kafka_committed = {"a": 10, "b": 50}
            for stream_id in ("a", "b"):
                manager.on_partition_assign(stream_id, 0, dict(kafka_committed))
            assert recorder.seeks == []
            # A stream whose own topic is behind in tierstore still seeks (that topic only).
            manager.on_partition_revoke("a", 0)
            manager.on_partition_assign("a", 0, {"a": 25, "b": 50})
            assert recorder.seeks == [("a", 0, 10)]
            manager.close()
    finally:
        server.close()

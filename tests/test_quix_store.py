"""The Quix adapter's store partition and transaction over an in-process tierstore store (the
end-to-end run with Kafka, S3 and a server subprocess is tests/test_quix_adapter.py)."""

from __future__ import annotations

from datetime import timedelta

import pytest

pytest.importorskip("quixstreams", reason="the Quix tests run in .venv-quix (make test)")

from quixstreams import Application

from tierstore.adapters.quix import (
    TierstorePartitionTransaction,
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

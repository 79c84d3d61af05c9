"""KafkaChangelog against a real Tansu broker (tests/infra.py), plus KafkaConfig unit tests."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from confluent_kafka import (
    TIMESTAMP_CREATE_TIME,
    Consumer,
    KafkaError,
    KafkaException,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, ConfigResource

from tests.infra import Broker
from tierstore.server.changelog_kafka import KafkaChangelog, KafkaConfig, MiB
from tierstore.server.errors import ChangelogError, InvalidArgumentError
from tierstore.server.ports import Changelog, ChangelogRecord

HDRS = [("ts.e", b"\x00" * 7 + b"\x01"), ("ts.s", b"\x00" * 7 + b"\x05")]
MARKER_HDRS = [("ts.m", b"commit"), *HDRS]


@pytest.fixture
def changelog(broker: Broker) -> Iterator[KafkaChangelog]:
    cl = KafkaChangelog(KafkaConfig(broker.bootstrap))
    try:
        yield cl
    finally:
        cl.close()


def read_all(cl: KafkaChangelog, store: str, partition: int, start: int) -> list[ChangelogRecord]:
    return [rec for page in cl.read(store, partition, start) for rec in page]


def in_threads(n: int, work: Callable[[int], None]) -> list[BaseException]:
    """Run work(0) .. work(n - 1) on n threads at once; what they raised."""
    errors: list[BaseException] = []

    def run(p: int) -> None:
        try:
            work(p)
        except BaseException as exc:  # pragma: no cover - returned to the test
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(p,)) for p in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


def topics(broker: Broker) -> set[str]:
    # a helper, so that no test frame (kept alive by a pytest.raises traceback) holds a client
    admin = AdminClient({"bootstrap.servers": broker.bootstrap, "allow.auto.create.topics": False})
    return set(admin.list_topics(timeout=10).topics)


# ---- KafkaConfig (no broker) ------------------------------------------------------------------


def test_config_dicts() -> None:
    cfg = KafkaConfig("h:1", extra=(("security.protocol", "SSL"),))
    prod = cfg.to_confluent_producer()
    assert prod["bootstrap.servers"] == "h:1"
    assert prod["enable.idempotence"] is True
    assert prod["message.max.bytes"] >= 8 * MiB + 64 * 1024
    assert prod["security.protocol"] == "SSL"
    cons = cfg.to_confluent_consumer()
    assert cons["enable.partition.eof"] is True
    assert cons["enable.auto.commit"] is False
    assert cons["receive.message.max.bytes"] > cons["fetch.max.bytes"]
    assert cons["max.partition.fetch.bytes"] >= cfg.max_message_bytes
    assert cfg.to_admin()["bootstrap.servers"] == "h:1"
    assert cfg.topic_configs()["cleanup.policy"] == "compact"
    with pytest.raises(AttributeError):
        cfg.bootstrap = "x"  # type: ignore[misc]


def test_satisfies_the_changelog_protocol() -> None:
    cl: Changelog = KafkaChangelog(KafkaConfig("127.0.0.1:1"))  # the check is mypy's
    cl.close()


def test_topic_name_and_validation() -> None:
    cl = KafkaChangelog(KafkaConfig("127.0.0.1:1", topic_prefix="p-"))
    assert cl.topic_for("orders.v1_x-y") == "p-orders.v1_x-y-changelog"
    for bad in ("", "a/b", "x" * 201, "spaced name"):
        with pytest.raises(InvalidArgumentError):
            cl.topic_for(bad)
    with pytest.raises(InvalidArgumentError):
        cl.append_batch("s", 0, [b"a", b"b"], [b"1"], [], b"m", [])
    cl.close()
    cl.close()  # idempotent
    with pytest.raises(ChangelogError):
        cl.append_batch("s", 0, [b"a"], [b"1"], [], b"m", [])
    with pytest.raises(ChangelogError):
        cl.read("s", 0, 0)


# ---- topics -----------------------------------------------------------------------------------


@pytest.mark.kafka
def test_ensure_topic_creates_compacted_topic(broker: Broker, changelog: KafkaChangelog) -> None:
    changelog.ensure_topic("orders", 3)
    changelog.ensure_topic("orders", 3)  # cached
    topic = "tierstore-orders-changelog"
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    md = admin.list_topics(topic=topic, timeout=10)
    assert len(md.topics[topic].partitions) == 3
    res = ConfigResource(ConfigResource.Type.TOPIC, topic)
    configs = {k: v.value for k, v in admin.describe_configs([res])[res].result(10).items()}
    cfg = KafkaConfig(broker.bootstrap)
    assert configs["cleanup.policy"] == "compact"
    assert configs["min.compaction.lag.ms"] == str(cfg.min_compaction_lag_ms)
    assert configs["delete.retention.ms"] == str(cfg.delete_retention_ms)
    assert configs["max.message.bytes"] == str(cfg.max_message_bytes)
    # another server (no cache) sees the existing topic and accepts it
    other = KafkaChangelog(KafkaConfig(broker.bootstrap))
    try:
        other.ensure_topic("orders", 3)
    finally:
        other.close()


@pytest.mark.kafka
def test_ensure_topic_partition_mismatch(broker: Broker, changelog: KafkaChangelog) -> None:
    changelog.ensure_topic("counts", 2)
    with pytest.raises(ChangelogError, match=r"2 partitions, but 4"):
        changelog.ensure_topic("counts", 4)  # from the cache
    other = KafkaChangelog(KafkaConfig(broker.bootstrap))
    try:
        with pytest.raises(ChangelogError, match=r"2 partitions, but 5"):
            other.ensure_topic("counts", 5)  # from the broker's metadata
    finally:
        other.close()
    with pytest.raises(InvalidArgumentError):
        changelog.ensure_topic("counts", 0)


@pytest.mark.kafka
def test_ensure_topic_concurrent(changelog: KafkaChangelog) -> None:
    errors: list[BaseException] = []

    def claim() -> None:
        try:
            changelog.ensure_topic("racy", 2)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=claim) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


# ---- append + read ----------------------------------------------------------------------------


@pytest.mark.kafka
def test_append_read_round_trip(changelog: KafkaChangelog) -> None:
    changelog.ensure_topic("kv", 2)
    keys = [b"a", b"b", b"c", b"\x00\xff"]
    values: list[bytes | None] = [b"1", None, b"", b"x" * 1000]
    m1 = changelog.append_batch("kv", 1, keys, values, HDRS, b"marker-1", MARKER_HDRS)
    m2 = changelog.append_batch("kv", 1, [b"d"], [b"4"], [], b"marker-2", [])
    m3 = changelog.append_batch("kv", 1, [], [], HDRS, b"marker-3", MARKER_HDRS)  # marker only
    recs = read_all(changelog, "kv", 1, 0)
    assert [r.key for r in recs] == [*keys, b"", b"d", b"", b""]
    assert [r.value for r in recs] == [*values, b"marker-1", b"4", b"marker-2", b"marker-3"]
    offsets = [r.offset for r in recs]
    assert offsets == sorted(set(offsets))
    assert (recs[4].offset, recs[6].offset, recs[7].offset) == (m1, m2, m3)
    assert m1 < m2 < m3
    for r in recs[:4]:
        assert r.headers == tuple(HDRS)
    assert recs[4].headers == tuple(MARKER_HDRS)
    assert recs[5].headers == () and recs[6].headers == ()
    rebuilt = [ChangelogRecord(r.offset, r.key, r.value, r.headers) for r in recs]
    assert recs == rebuilt and all(type(r) is ChangelogRecord for r in recs)  # built via slots
    assert all(type(h) is tuple and type(h[0]) is str and type(h[1]) is bytes
               for r in recs for h in r.headers)
    with pytest.raises(AttributeError):
        recs[0].key = b"z"  # type: ignore[misc]
    assert read_all(changelog, "kv", 0, 0) == []  # the other partition is untouched


@pytest.mark.kafka
def test_records_carry_the_time_they_were_produced(broker: Broker,
                                                   changelog: KafkaChangelog) -> None:
    """Topic retention (window and session stores) deletes by record time: data records and
    markers must carry the time of their append, not 0 (the produce call passes its arguments
    by position, so a shifted argument would show here)."""
    changelog.ensure_topic("kvtime", 1)
    before = int(time.time() * 1000)
    changelog.append_batch("kvtime", 0, [b"a", b"b"], [b"1", None], HDRS, b"m", MARKER_HDRS)
    after = int(time.time() * 1000)
    consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "kvtime",
                         "enable.partition.eof": True, "log_level": 3})
    try:
        consumer.assign([TopicPartition(changelog.topic_for("kvtime"), 0, 0)])
        stamps = []
        deadline = time.monotonic() + 30
        while len(stamps) < 3 and time.monotonic() < deadline:
            msg = consumer.poll(1.0)
            if msg is not None and msg.error() is None:
                stamps.append(msg.timestamp())
    finally:
        consumer.close()
    assert len(stamps) == 3
    for kind, ms in stamps:
        assert kind == TIMESTAMP_CREATE_TIME and before - 1000 <= ms <= after + 1000, stamps


@pytest.mark.kafka
def test_read_from_middle_and_end(changelog: KafkaChangelog) -> None:
    changelog.ensure_topic("mid", 1)
    keys = [b"k%04d" % i for i in range(3000)]
    m1 = changelog.append_batch("mid", 0, keys, [b"v"] * 3000, HDRS, b"m1", MARKER_HDRS)
    m2 = changelog.append_batch("mid", 0, keys[:10], [None] * 10, HDRS, b"m2", MARKER_HDRS)
    assert m1 == 3000 and m2 == 3011
    recs = read_all(changelog, "mid", 0, 1234)
    assert recs[0].offset == 1234 and recs[0].key == b"k1234"
    assert [r.offset for r in recs] == list(range(1234, 3012))
    assert read_all(changelog, "mid", 0, m1 + 1)[0].key == b"k0000"
    assert [r.value for r in read_all(changelog, "mid", 0, m2)] == [b"m2"]
    started = time.monotonic()
    assert read_all(changelog, "mid", 0, m2 + 1) == []  # from the end: nothing
    assert time.monotonic() - started < 5


@pytest.mark.kafka
def test_read_empty_partition_terminates(changelog: KafkaChangelog) -> None:
    changelog.ensure_topic("empty", 3)
    started = time.monotonic()
    for p in range(3):
        assert list(changelog.read("empty", p, 0)) == []
    assert time.monotonic() - started < 5


@pytest.mark.kafka
def test_read_pages_and_early_close(broker: Broker) -> None:
    cl = KafkaChangelog(KafkaConfig(broker.bootstrap, read_page_records=100))
    try:
        cl.ensure_topic("paged", 1)
        cl.append_batch("paged", 0, [b"k%d" % i for i in range(1000)], [b"v"] * 1000, [], b"m", [])
        pages = list(cl.read("paged", 0, 0))
        assert all(1 <= len(p) <= 100 for p in pages)
        assert sum(len(p) for p in pages) == 1001
        gen = cl.read("paged", 0, 0)
        first = next(gen)
        assert first[0].offset == 0
        gen.close()  # closes its consumer
    finally:
        cl.close()


@pytest.mark.kafka
def test_read_beyond_end_raises(broker: Broker) -> None:
    """Apache Kafka answers OFFSET_OUT_OF_RANGE at once; Tansu sends neither records nor an EOF
    event, so the read fails after read_idle_timeout_ms. Either way: ChangelogError."""
    cl = KafkaChangelog(KafkaConfig(broker.bootstrap, read_idle_timeout_ms=1000))
    try:
        cl.ensure_topic("short", 1)
        cl.append_batch("short", 0, [b"a"], [b"1"], [], b"m", [])
        started = time.monotonic()
        with pytest.raises(ChangelogError):
            read_all(cl, "short", 0, 100)
        assert time.monotonic() - started < 10
    finally:
        cl.close()


@pytest.mark.kafka
def test_eight_mib_value(changelog: KafkaChangelog) -> None:
    changelog.ensure_topic("big", 1)
    big = os.urandom(8 * MiB)
    big_key = os.urandom(64 * 1024)
    m = changelog.append_batch(
        "big", 0, [b"small", big_key, b"after"], [b"s", big, big], HDRS, b"m", MARKER_HDRS
    )
    recs = read_all(changelog, "big", 0, 0)
    assert [r.offset for r in recs] == [0, 1, 2, 3] and m == 3
    assert recs[1].key == big_key and recs[1].value == big and recs[2].value == big


@pytest.mark.kafka
def test_oversized_record_raises(changelog: KafkaChangelog) -> None:
    changelog.ensure_topic("huge", 1)
    with pytest.raises(ChangelogError) as info:
        changelog.append_batch("huge", 0, [b"k"], [b"x" * (10 * MiB)], [], b"m", [])
    assert isinstance(info.value.__cause__, KafkaException)
    assert read_all(changelog, "huge", 0, 0) == []  # no marker was written


@pytest.mark.kafka
def test_concurrent_appends(changelog: KafkaChangelog) -> None:
    changelog.ensure_topic("conc", 4)
    batches, size = 15, 300
    returned: dict[int, list[int]] = {p: [] for p in range(4)}

    def worker(p: int) -> None:
        for b in range(batches):
            keys = [b"p%d-b%d-%d" % (p, b, i) for i in range(size)]
            marker = b"p%d-b%d" % (p, b)
            returned[p].append(
                changelog.append_batch("conc", p, keys, keys, HDRS, marker, MARKER_HDRS)
            )

    assert in_threads(4, worker) == []
    for p in range(4):
        recs = read_all(changelog, "conc", p, 0)
        assert len(recs) == batches * (size + 1)
        by_offset = {r.offset: r for r in recs}
        for b, off in enumerate(returned[p]):
            marker = by_offset[off]
            assert marker.key == b"" and marker.value == b"p%d-b%d" % (p, b)
        for b in range(batches):  # each batch's data records, in order, right before its marker
            chunk = recs[b * (size + 1) : (b + 1) * (size + 1)]
            assert [r.key for r in chunk[:-1]] == [b"p%d-b%d-%d" % (p, b, i) for i in range(size)]
            assert chunk[-1].offset == returned[p][b]


@pytest.mark.kafka
def test_appends_do_not_wait_for_linger(broker: Broker) -> None:
    """Records linger (so that an append's records go out together), but an append waiting for
    its acknowledgements flushes, which sends them at once: with linger.ms at 3 s, appends
    (data records, then the marker: two waits each) from one thread and from four at once
    still take milliseconds. Without the flush each would take at least 6 s."""
    cl = KafkaChangelog(KafkaConfig(broker.bootstrap, linger_ms=3000))
    try:
        cl.ensure_topic("linger", 4)
        cl.append_batch("linger", 0, [b"w"], [b"0"], HDRS, b"m", MARKER_HDRS)  # producer id
        started = time.monotonic()
        for i in range(5):
            cl.append_batch("linger", 0, [b"k%d" % i], [b"v"], HDRS, b"m", MARKER_HDRS)
        assert time.monotonic() - started < 2.5

        took: list[float] = []

        def worker(p: int) -> None:
            for b in range(5):
                t0 = time.monotonic()
                keys = [b"p%d-%d-%d" % (p, b, i) for i in range(50)]
                cl.append_batch("linger", p, keys, keys, HDRS, b"m", MARKER_HDRS)
                took.append(time.monotonic() - t0)

        assert in_threads(4, worker) == [] and len(took) == 20
        assert max(took) < 2.5, sorted(took)
        assert [len(read_all(cl, "linger", p, 0)) for p in range(4)] == [267, 255, 255, 255]
        assert cl._waiting == 0 and cl._nobody_waits.is_set()  # the poll thread serves again
    finally:
        cl.close()


@pytest.mark.kafka
def test_append_to_dead_broker_raises_in_bounded_time(broker: Broker) -> None:
    cfg = KafkaConfig(
        broker.bootstrap,
        message_timeout_ms=1500,
        request_timeout_ms=1000,
        read_idle_timeout_ms=1000,
    )
    cl = KafkaChangelog(cfg)
    try:
        cl.ensure_topic("dead", 1)
        assert cl.append_batch("dead", 0, [b"a"], [b"1"], HDRS, b"m", MARKER_HDRS) == 1
        broker.kill()
        started = time.monotonic()
        with pytest.raises(ChangelogError) as info:
            cl.append_batch("dead", 0, [b"b", b"c"], [b"2", b"3"], HDRS, b"m", MARKER_HDRS)
        elapsed = time.monotonic() - started
        assert elapsed < 1.5 + 5 + 2, elapsed
        assert isinstance(info.value.__cause__, KafkaException)
        assert "data records" in str(info.value)  # failed before the marker
        del info
        started = time.monotonic()
        with pytest.raises(ChangelogError):
            read_all(cl, "dead", 0, 0)
        assert time.monotonic() - started < 1 + 5
    finally:
        cl.close()


@pytest.mark.kafka
def test_fatal_producer_error_replaces_the_producer(changelog: KafkaChangelog) -> None:
    """White-box: a fatal error (rare; e.g. the broker lost the idempotent producer's state)
    retires the producer; the next append gets a fresh one."""
    changelog.ensure_topic("fatal", 1)
    assert changelog.append_batch("fatal", 0, [b"a"], [b"1"], [], b"m", []) == 1
    old = changelog._producer
    assert old is not None
    changelog._note_error(old, KafkaError(KafkaError._FATAL, "simulated", fatal=True))
    assert changelog._producer is None
    assert changelog.append_batch("fatal", 0, [b"b"], [b"2"], [], b"m", []) == 3
    assert changelog._producer is not None and changelog._producer is not old
    assert [r.key for r in read_all(changelog, "fatal", 0, 0)] == [b"a", b"", b"b", b""]


@pytest.mark.kafka
def test_missing_topic_and_bad_partition(broker: Broker, changelog: KafkaChangelog) -> None:
    started = time.monotonic()
    with pytest.raises(ChangelogError, match="ensure_topic") as info:
        changelog.append_batch("ghost", 0, [b"a"], [b"1"], [], b"m", [])
    assert isinstance(info.value.__cause__, KafkaException)
    with pytest.raises(ChangelogError, match="ensure_topic"):
        list(changelog.read("ghost", 0, 0))
    assert time.monotonic() - started < 5
    assert "tierstore-ghost-changelog" not in topics(broker)  # not auto-created
    changelog.ensure_topic("ghost", 2)
    with pytest.raises(InvalidArgumentError):
        changelog.append_batch("ghost", 2, [b"a"], [b"1"], [], b"m", [])
    with pytest.raises(InvalidArgumentError):
        changelog.read("ghost", -1, 0)
    with pytest.raises(InvalidArgumentError):
        changelog.read("ghost", 0, -2)

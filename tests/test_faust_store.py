"""The Faust store backend, end to end: a real Faust word-count worker on a real Tansu broker,
killed with SIGKILL halfway and replaced by a fresh worker on an empty working directory; and
two live workers sharing the input while it arrives (a rebalance each way).

The same scenario runs with Faust's default store (rocksdb:// through rocksdict) and with
tierstore (a real server subprocess with a Kafka changelog and snapshots in moto S3), in one
test, so the two recovery times are measured in the same run and printed with their ratio.

- tierstore: the final counts must equal the reference exactly (nothing lost, nothing counted
  twice), both as the worker sees its table and as tierstore's committed state.
- rocksdb (Faust at-least-once): nothing may be lost; records processed after Faust's last
  consumer commit are counted again after the crash, and the test prints how many.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest

from tests.faust_harness import Worker, create_topic, produce_words, read_dump
from tests.infra import Broker, S3Server, free_port
from tests.serverproc import ServerProc
from tests.words import PacedWords
from tierstore.server.cluster import wait_until
from tierstore.v1 import store_pb2 as pb

pytest.importorskip("faust")  # the `faust` extra (part of `test`)

pytestmark = [pytest.mark.kafka, pytest.mark.s3, pytest.mark.timeout(240)]

PARTITIONS = 4
RECORDS = 6000
VOCABULARY = 300


def group_committed(bootstrap: str, group: str, topic: str) -> int:
    """The sum of the consumer group's committed offsets on `topic` (OffsetFetch only: it does
    not join the group)."""
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        tps = c.committed([TopicPartition(topic, p) for p in range(PARTITIONS)], timeout=10)
        return sum(max(tp.offset, 0) for tp in tps)
    finally:
        c.close()


def run_kill9_scenario(tmp: Path, broker: Broker, store_url: str, app_id: str,
                       seed: int, group_ahead: bool = False) -> dict[str, object]:
    """Word count on a fresh input topic: worker 1 is killed -9 once it has processed half of
    the input; worker 2 starts on an empty directory and runs to the end."""
    topic = f"{app_id}-words"
    ref, ends = produce_words(broker.bootstrap, topic, PARTITIONS, RECORDS, VOCABULARY, seed)
    env = {"WC_APP": app_id, "WC_BROKER": broker.bootstrap, "WC_STORE": store_url,
           "WC_INPUT": topic, "WC_PARTITIONS": str(PARTITIONS), "WC_END": json.dumps(ends)}
    w1 = Worker({**env, "WC_DATADIR": str(tmp / f"{app_id}-w1"),
                 "WC_DUMP": str(tmp / f"{app_id}-w1.json")}, tmp / f"{app_id}-w1.log")
    try:
        w1.wait("half of the input", lambda: w1.seen >= RECORDS // 2, 90)
        if group_ahead:  # let Faust commit the group past tierstore's floor offsets first
            w1.wait("a group commit",
                    lambda: group_committed(broker.bootstrap, app_id, topic) > 0, 30)
        w1.kill9()
        killed_after = w1.seen
    finally:
        w1.stop()
    datadir = tmp / f"{app_id}-w2"
    assert not datadir.exists()
    dump = tmp / f"{app_id}-w2.json"
    w2 = Worker({**env, "WC_DATADIR": str(datadir), "WC_DUMP": str(dump)},
                tmp / f"{app_id}-w2.log")
    try:
        w2.wait("first record", lambda: w2.first_at is not None, 90)
        w2.wait("DONE", lambda: w2.done, 90)
    finally:
        w2.stop()
    assert w2.first_at is not None and w2.done_at is not None
    times = w2.log_times()
    return {"ref": ref, "got": read_dump(dump), "killed_after": killed_after,
            "first_s": w2.first_at - w2.started, "w2_seen": w2.seen,
            "join_s": times.get("joined", float("nan")),
            "recovery_s": times.get("ready", float("nan")) - times.get("joined", float("nan")),
            "rate": w2.seen / max(w2.done_at - w2.first_at, 1e-9)}


def diff(ref: Counter[str], got: dict[str, int]) -> tuple[int, int]:
    """(records lost, records counted twice) of `got` against the reference."""
    lost = sum(max(0, n - got.get(w, 0)) for w, n in ref.items())
    extra = sum(max(0, n - ref.get(w, 0)) for w, n in got.items())
    return lost, extra


def test_faust_kill9_fresh_worker_tierstore_vs_rocksdb(
        tmp_path: Path, broker: Broker, s3_server: S3Server, s3_bucket: str) -> None:
    server = ServerProc(tmp_path / "ts-data", kafka=broker.bootstrap,
                        object_store=f"s3://{s3_bucket}/ts", s3_endpoint=s3_server.endpoint)
    try:
        ts = run_kill9_scenario(tmp_path, broker, f"tierstore://{server.address}", "wcts", 7)
        with server.client() as client:
            reader = client.reader("wcts-counts")
            committed = {json.loads(k): json.loads(v) for k, v in reader.all()}
    finally:
        server.close()
    rd = run_kill9_scenario(tmp_path, broker, "rocksdb://", "wcrd", 7)

    ts_lost, ts_twice = diff(ts["ref"], ts["got"])  # type: ignore[arg-type]
    rd_lost, rd_twice = diff(rd["ref"], rd["got"])  # type: ignore[arg-type]
    ratio = float(rd["first_s"]) / float(ts["first_s"])  # type: ignore[arg-type]
    print(f"\nFAUST kill -9 after {ts['killed_after']} (tierstore) / {rd['killed_after']} "
          f"(rocksdb) of {RECORDS} records, {PARTITIONS} partitions")
    for name, r, lost, twice in (("tierstore", ts, ts_lost, ts_twice),
                                 ("rocksdb:// (Faust default)", rd, rd_lost, rd_twice)):
        print(f"FAUST {name}: lost={lost} counted_twice={twice}; fresh worker: start -> first "
              f"record {r['first_s']:.2f}s (group joined at {r['join_s']:.2f}s, recovery "
              f"{r['recovery_s']:.2f}s), then {r['w2_seen']} records at {r['rate']:.0f}/s")
    print(f"FAUST ratio rocksdb/tierstore, start -> first record: {ratio:.2f}x; recovery only: "
          f"{float(rd['recovery_s']) / float(ts['recovery_s']):.2f}x")  # type: ignore[arg-type]

    assert ts["got"] == dict(ts["ref"]), (ts_lost, ts_twice)  # type: ignore[call-overload]
    assert committed == dict(ts["ref"]), "tierstore's committed state differs"  # type: ignore[call-overload]
    assert rd_lost == 0, f"Faust's default store lost {rd_lost} counts"



def test_faust_kill9_group_ahead_of_tierstore_rewinds(
        tmp_path: Path, broker: Broker, s3_server: S3Server, s3_bucket: str) -> None:
    """tierstore commits only its floor offsets (commit_interval=60) while Faust commits the
    group every second, so at the kill the group is ahead of tierstore: the fresh worker must
    rewind the group to tierstore's offsets and still count every record once."""
    server = ServerProc(tmp_path / "ts-data", kafka=broker.bootstrap,
                        object_store=f"s3://{s3_bucket}/ts", s3_endpoint=s3_server.endpoint)
    try:
        ts = run_kill9_scenario(tmp_path, broker,
                                f"tierstore://{server.address}?commit_interval=60", "wcrw", 11,
                                group_ahead=True)
    finally:
        server.close()
    log = (tmp_path / "wcrw-w2.log").read_text()
    rewound = [int(m) for m in re.findall(r"rewound=(\d+)", log)]
    print(f"\nFAUST rewind: group ahead of tierstore on {sum(rewound)} partitions; "
          f"fresh worker processed {ts['w2_seen']} records")
    assert sum(rewound) > 0, "the scenario did not put the group ahead of tierstore"
    assert ts["got"] == dict(ts["ref"]), diff(ts["ref"], ts["got"])  # type: ignore[arg-type]


def test_faust_live_rebalance_two_workers_count_every_record_once(
        tmp_path: Path, broker: Broker, s3_server: S3Server, s3_bucket: str) -> None:
    """Input keeps arriving while worker 1 runs alone, worker 2 joins (the partitions split
    between the two live workers: worker 1 commits and releases the shards it loses, worker 2
    claims them and resumes at tierstore's offsets), and worker 1 then leaves with SIGTERM
    (worker 2 takes every partition). tierstore's committed counts must equal the reference
    exactly: nothing lost and nothing counted twice across either handover."""
    app_id = "wclive"
    topic = f"{app_id}-words"
    create_topic(broker.bootstrap, topic, PARTITIONS)
    server = ServerProc(tmp_path / "ts-data", kafka=broker.bootstrap,
                        object_store=f"s3://{s3_bucket}/ts", s3_endpoint=s3_server.endpoint)
    words = PacedWords(broker.bootstrap, topic, PARTITIONS, VOCABULARY, seed=5)
    env = {"WC_APP": app_id, "WC_BROKER": broker.bootstrap,
           "WC_STORE": f"tierstore://{server.address}", "WC_INPUT": topic,
           "WC_PARTITIONS": str(PARTITIONS), "WC_END": json.dumps([1 << 40] * PARTITIONS)}

    def worker(name: str) -> Worker:
        return Worker({**env, "WC_DATADIR": str(tmp_path / name), "WC_WEB_PORT": str(free_port()),
                       "WC_DUMP": str(tmp_path / f"{name}.json")}, tmp_path / f"{name}.log")

    w1 = worker("w1")
    w2: Worker | None = None
    try:
        w1.wait("500 records", lambda: w1.seen >= 500, 90)
        w2 = worker("w2")
        w2.wait("300 records of its own", lambda: w2 is not None and w2.seen >= 300, 90)
        before = w1.seen
        w1.wait("more records after worker 2 joined", lambda: w1.seen >= before + 100, 60)
        split_at = (w1.seen, w2.seen)
        w1.stop()  # SIGTERM: Faust leaves the group, the store commits and releases its shards
        after = w2.seen
        w2.wait("worker 1's partitions", lambda: w2 is not None and w2.seen >= after + 500, 90)
        words.stop()
        total = words.produced
        w2.wait("every input record committed to the group",
                lambda: group_committed(broker.bootstrap, app_id, topic) >= total, 90)

        def committed() -> dict[str, int]:
            with server.client() as client:
                reader = client.reader(f"{app_id}-counts")
                return {json.loads(k): json.loads(v) for k, v in reader.all()}

        state: dict[str, dict[str, int]] = {}

        def settled() -> bool:
            state["got"] = committed()
            return sum(state["got"].values()) >= total

        wait_until(settled, 30, every_s=0.5)
    finally:
        words.stop()
        w1.stop()
        if w2 is not None:
            w2.stop()
        server.close()
    lost, twice = diff(words.ref, state["got"])
    print(f"\nFAUST live rebalance: {total} records; both workers counting side by side "
          f"(worker 1 at {split_at[0]} records, worker 2 at {split_at[1]}) until worker 1 left; "
          f"lost={lost} counted_twice={twice}")
    assert state["got"] == dict(words.ref), (lost, twice)


def test_faust_worker_with_a_concurrent_agent_stops_with_the_reason(
        tmp_path: Path, broker: Broker) -> None:
    """An agent with concurrency > 1 could lose writes to a tierstore table: the worker claims
    nothing and stops, and its log says why and what to do."""
    server = ServerProc(tmp_path / "ts-data")
    app_id = "wcconc"
    create_topic(broker.bootstrap, f"{app_id}-words", PARTITIONS)
    w = Worker({"WC_APP": app_id, "WC_BROKER": broker.bootstrap,
                "WC_STORE": f"tierstore://{server.address}", "WC_INPUT": f"{app_id}-words",
                "WC_PARTITIONS": str(PARTITIONS), "WC_END": json.dumps([0] * PARTITIONS),
                "WC_DATADIR": str(tmp_path / "w"), "WC_DUMP": str(tmp_path / "w.json"),
                "WC_WEB_PORT": str(free_port()), "WC_CONCURRENCY": "2"}, tmp_path / "w.log")
    try:
        assert wait_until(lambda: w.proc.poll() is not None, 90), "the worker kept running"
        log = w.log_tail(10**6)
        with server.client() as client:
            shards = client.stub.Inspect(pb.InspectRequest()).shards
    finally:
        w.stop()
        server.close()
    assert w.proc.returncode != 0
    assert [s.store for s in shards] == [], "a shard was claimed"
    assert "concurrency=2" in log and "allow_concurrent_agents=1" in log, log[-3000:]

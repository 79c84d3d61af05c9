"""Reader options and window/session readers on a real server (gRPC, RocksDB):

- min_offsets: satisfied at once, satisfied by a commit that lands during the wait (Get, Scan
  and Count), and failing after the deadline with OffsetsNotReachedError and a clear message;
- window and session readers over 4 partitions equal in-memory reference stores fed the same
  puts (expired windows and sessions hidden by each partition's committed stream time);
- the plain reader refuses window and session stores, naming the right reader.

The standby cases (stale reads while the owner is down, min_offsets answered by a catching-up
standby, standby lag in inspect and metrics) run three servers with Kafka and S3:
tests/test_cluster.py.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from itertools import chain
from pathlib import Path

import grpc
import pytest

from tierstore import windowkeys as wk
from tierstore.client import (
    Client,
    InMemorySessionStore,
    InMemoryWindowStore,
    connect,
    errors,
    partition_for,
)
from tierstore.client.reader import scan
from tierstore.server.app import RunningServer, create_server
from tierstore.server.cluster import wait_until
from tierstore.server.config import ServerConfig
from tierstore.v1 import store_pb2 as pb

MAX = wk.MAX_TIME


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    data = tmp_path_factory.mktemp("reader-options") / "data"
    srv = create_server(ServerConfig(listen="127.0.0.1:0", data_dir=data))
    yield srv
    srv.stop(grace=1)


@pytest.fixture
def client(server: RunningServer) -> Iterator[Client]:
    c = connect(f"127.0.0.1:{server.port}", timeout_s=20)
    yield c
    c.close()


def key_in(partition: int, num_partitions: int, tag: str = "k") -> bytes:
    return next(k for i in range(10_000)
                if partition_for(k := f"{tag}-{i}".encode(), num_partitions) == partition)


# --- min_offsets ----------------------------------------------------------------------------------
def _commit_later(client: Client, store: str, partition: int, delay_s: float,
                  puts: list[tuple[bytes, bytes]], offsets: dict[str, int]) -> threading.Thread:
    def run() -> None:
        time.sleep(delay_s)
        kv = client.key_value_store(store, partition=partition)
        kv.put_all(puts)
        kv.commit(offsets)
        kv.close()

    t = threading.Thread(target=run)
    t.start()
    return t


def test_min_offsets_at_once_after_a_commit_during_the_wait_and_after_the_deadline(
    client: Client,
) -> None:
    store = "fresh"
    k0, k1 = key_in(0, 2), key_in(1, 2)
    for p, k in ((0, k0), (1, k1)):
        kv = client.key_value_store(store, partition=p, num_partitions=2)
        kv.put(k, b"v1")
        kv.commit({f"orders:{p}": 41})
        kv.close()

    # Satisfied at once.
    started = time.monotonic()
    r = client.reader(store, min_offsets={"orders:0": 41}, wait_s=10)
    assert r.get(k0) == b"v1"
    at_once = time.monotonic() - started
    assert at_once < 1.0

    # Satisfied by a commit that lands 1 s into the wait (Get).
    t = _commit_later(client, store, 0, 1.0, [(k0, b"v2")], {"orders:0": 42})
    started = time.monotonic()
    assert client.reader(store, min_offsets={"orders:0": 42}, wait_s=10).get(k0) == b"v2"
    waited = time.monotonic() - started
    t.join()
    assert 0.9 <= waited < 5, waited

    # Scans across partitions: a requirement per partition (offset names are per partition).
    t = _commit_later(client, store, 1, 1.0, [(k1, b"v2")], {"orders:1": 42})
    started = time.monotonic()
    per_part = client.reader(store, min_offsets=lambda p: {f"orders:{p}": 42}, wait_s=10)
    assert dict(per_part.all()) == {k0: b"v2", k1: b"v2"}
    scan_waited = time.monotonic() - started
    t.join()
    assert 0.9 <= scan_waited < 5, scan_waited

    # Count waits the same way.
    t = _commit_later(client, store, 1, 0.5, [(b"extra", b"x")], {"orders:1": 43})
    counting = client.reader(store, min_offsets=lambda p: {f"orders:{p}": 42 + p}, wait_s=10)
    assert counting.approximate_num_entries() >= 2
    t.join()

    # Not reached before the deadline: a clear error, after the wait and not much later.
    started = time.monotonic()
    with pytest.raises(errors.OffsetsNotReachedError) as info:
        client.reader(store, min_offsets={"orders:0": 100}, wait_s=1).get(k0)
    failed_after = time.monotonic() - started
    assert 1.0 <= failed_after < 3, failed_after
    msg = str(info.value)
    assert "DEADLINE_EXCEEDED" in msg
    assert ("state of fresh/0 is at {'orders:0': 42}, below the required {'orders:0': 100} "
            "after 1 s") in msg
    assert isinstance(info.value, errors.UnavailableError)  # a subclass: old handlers still work
    # The same mapping applies to every partition: names a shard never committed count as -1.
    with pytest.raises(errors.OffsetsNotReachedError, match=r"'orders:0': -1"):
        list(client.reader(store, min_offsets={"orders:0": 0}, wait_s=0).range(k1, k1))
    print(f"\nmin_offsets: satisfied at once in {at_once * 1000:.1f} ms; a Get waited "
          f"{waited:.2f} s and a merged scan {scan_waited:.2f} s for a commit landing 1 s "
          f"into the wait; an unreachable requirement failed after {failed_after:.2f} s "
          f"(wait_s=1)")


def test_reader_options_are_checked(client: Client, server: RunningServer) -> None:
    kv = client.key_value_store("checked", num_partitions=1)
    kv.put(b"k", b"v")
    kv.commit({"in:0": 1})
    with pytest.raises(errors.InvalidArgumentError, match="must be an int >= 0"):
        client.reader("checked", min_offsets={"in:0": -1})
    with pytest.raises(errors.InvalidArgumentError, match="wait_s"):
        client.reader("checked", min_offsets={"in:0": 1}, wait_s=-1)
    # allow_stale on a single server: the owner answers.
    assert client.reader("checked", allow_stale=True, min_offsets={"in:0": 1}).get(b"k") == b"v"
    # The server checks the wire too.
    stub = client.stub
    for req in (pb.GetRequest(store="checked", partition=0, keys=[b"k"], min_offsets={"": 1}),
                pb.GetRequest(store="checked", partition=0, keys=[b"k"],
                              min_offsets={"in:0": -5}),
                pb.GetRequest(store="checked", partition=0, epoch=kv.epoch, keys=[b"k"],
                              allow_stale=True)):
        with pytest.raises(grpc.RpcError) as info:
            stub.Get(req, timeout=5)
        assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT, req
    with pytest.raises(grpc.RpcError) as info:
        stub.Count(pb.CountRequest(store="checked", partition=0, epoch=kv.epoch,
                                   allow_stale=True), timeout=5)
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    # A wait never outlasts the caller's deadline: the server answers (its own
    # DEADLINE_EXCEEDED, with the offsets) before a 1 s call deadline, not after 60 s.
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as info:
        stub.Get(pb.GetRequest(store="checked", partition=0, keys=[b"k"],
                               min_offsets={"in:0": 99}, min_offsets_wait_ms=60_000), timeout=1)
    assert time.monotonic() - started < 2
    assert info.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    assert info.value.details().startswith("state of checked/0 is at {'in:0': 1}")
    kv.close()


# --- window and session readers -------------------------------------------------------------------
N = 4
WINDOW = 10_000
RETENTION = 120_000  # segments of 60 s: about 3 live at a time


def test_window_reader_equals_reference_stores(client: Client) -> None:
    store = "clicks-read"
    rng = random.Random(5)
    handles = [client.window_store(store, partition=p, num_partitions=N, window_size_ms=WINDOW,
                                   retention_ms=RETENTION) for p in range(N)]
    refs = [InMemoryWindowStore(WINDOW, RETENTION) for _ in range(N)]
    keys = [b"user-%02d" % i for i in range(24)] + [b"a\x00b", b"\xff", b"a"]
    t = 0
    for step in range(1500):
        t += rng.randrange(0, 400)
        k = rng.choice(keys)
        start = max(0, t - rng.randrange(0, 200_000))  # some late: dropped by both
        start -= start % WINDOW
        p = partition_for(k, N)
        value = b"%d" % step
        handles[p].put(k, value, start)
        refs[p].put(k, value, start)
        if step % 300 == 299:
            for h, r in zip(handles, refs, strict=True):
                h.commit({"clicks": step})
                r.commit({"clicks": step})
    for h, r in zip(handles, refs, strict=True):
        h.commit({"clicks": 1500})
        r.commit({"clicks": 1500})
    assert sum(r.dropped_records for r in refs) > 0
    # Expired windows still on disk (partly expired segments) are hidden by stream time.
    raw = sum(1 for p in range(N)
              for _ in scan(client, store, p, 0, wk.DATA_LO, wk.DATA_HI, None, False))
    live = sum(1 for r in refs for _ in r.all())
    assert raw > live, (raw, live)

    reader = client.window_reader(store)
    assert [reader.stream_time_ms(p) for p in range(N)] == [r.stream_time_ms for r in refs]

    def ref_all(lo: int, hi: int) -> list[tuple[bytes, int, bytes]]:
        return sorted(chain.from_iterable(r.fetch_all(lo, hi) for r in refs))

    assert list(reader.all()) == ref_all(0, MAX)
    top = max(r.stream_time_ms for r in refs)
    ranges = [(0, MAX), (top - 100_000, top - 20_000), (top - 50_000, top - 50_000), (0, 1)]
    for lo, hi in ranges:
        assert list(reader.fetch_all(lo, hi)) == ref_all(lo, hi)
        assert list(reader.backward_fetch_all(lo, hi)) == ref_all(lo, hi)[::-1]
        for kf, kt in [(b"user-03", b"user-11"), (None, b"user-05"), (b"user-20", None)]:
            want = [e for e in ref_all(lo, hi)
                    if (kf is None or e[0] >= kf) and (kt is None or e[0] <= kt)]
            assert list(reader.fetch_range(kf, kt, lo, hi)) == want
            assert list(reader.backward_fetch_range(kf, kt, lo, hi)) == want[::-1]
        for k in [*keys, b"nobody"]:
            ref = refs[partition_for(k, N)]
            assert list(reader.fetch(k, lo, hi)) == list(ref.fetch(k, lo, hi))
            assert list(reader.backward_fetch(k, lo, hi)) == list(ref.backward_fetch(k, lo, hi))
    for k, start, v in ref_all(0, MAX)[::7]:
        assert reader.fetch_window(k, start) == v
    assert reader.fetch_window(keys[0], 0) is None  # long expired
    with pytest.raises(errors.InvalidArgumentError, match="inverted"):
        reader.fetch(b"a", 10, 5)
    for h in handles:
        h.close()
    print(f"\nwindow reader over {N} partitions: {len(ref_all(0, MAX))} live windows equal "
          f"the reference ({raw - live} expired windows still on disk were hidden)")


def test_session_reader_equals_reference_stores(client: Client) -> None:
    store = "visits-read"
    rng = random.Random(6)
    handles = [client.session_store(store, partition=p, num_partitions=N,
                                    retention_ms=RETENTION) for p in range(N)]
    refs = [InMemorySessionStore(RETENTION) for _ in range(N)]
    keys = [b"visitor-%02d" % i for i in range(20)] + [b"v\x00", b"\x00"]
    t = 0
    for step in range(1200):
        t += rng.randrange(0, 500)
        k = rng.choice(keys)
        end = max(0, t - rng.randrange(0, 150_000))
        start = max(0, end - rng.randrange(0, 30_000))
        p = partition_for(k, N)
        handles[p].put(k, start, end, b"s%d" % step)
        refs[p].put(k, start, end, b"s%d" % step)
        if step % 250 == 249:
            for h, r in zip(handles, refs, strict=True):
                h.commit({"visits": step})
                r.commit({"visits": step})
    for h, r in zip(handles, refs, strict=True):
        h.commit({"visits": 1200})
        r.commit({"visits": 1200})
    reader = client.session_reader(store)

    def ref_range(kf: bytes | None, kt: bytes | None, e0: int, s1: int
                  ) -> list[tuple[bytes, int, int, bytes]]:
        got = chain.from_iterable(r.find_sessions_range(kf, kt, e0, s1) for r in refs)
        return sorted(got, key=lambda e: (e[0], e[2], e[1]))  # (key, end, start)

    everything = ref_range(None, None, 0, MAX)
    assert everything and list(reader.all()) == everything
    top = max(r.stream_time_ms for r in refs)
    for e0, s1 in [(0, MAX), (top - 60_000, top - 10_000), (top - 5_000, top - 40_000)]:
        for kf, kt in [(None, None), (b"visitor-04", b"visitor-12"), (b"\x00", b"v")]:
            want = ref_range(kf, kt, e0, s1)
            assert list(reader.find_sessions_range(kf, kt, e0, s1)) == want
            assert list(reader.backward_find_sessions_range(kf, kt, e0, s1)) == want[::-1]
        for k in [*keys, b"nobody"]:
            ref = refs[partition_for(k, N)]
            assert list(reader.find_sessions(k, e0, s1)) == list(ref.find_sessions(k, e0, s1))
            assert (list(reader.backward_find_sessions(k, e0, s1))
                    == list(ref.backward_find_sessions(k, e0, s1)))
    for k in keys:
        assert list(reader.fetch(k)) == list(refs[partition_for(k, N)].fetch(k))
    for k, s, e, v in everything[::5]:
        assert reader.fetch_session(k, s, e) == v
    for h in handles:
        h.close()
    print(f"\nsession reader over {N} partitions: {len(everything)} live sessions equal the "
          f"reference")


def test_each_reader_refuses_other_store_types(client: Client) -> None:
    ws = client.window_store("typed-w", window_size_ms=1000, retention_ms=60_000)
    ws.put(b"k", b"v", 0)
    ws.commit({})
    ss = client.session_store("typed-s", retention_ms=60_000)
    ss.put(b"k", 0, 10, b"v")
    ss.commit({})
    kv = client.key_value_store("typed-kv")
    kv.put(b"k", b"v")
    kv.commit({})
    with pytest.raises(errors.InvalidArgumentError,
                       match=r"'typed-w' is a window store.*client\.window_reader\('typed-w'\)"):
        client.reader("typed-w")
    with pytest.raises(errors.InvalidArgumentError, match=r"client\.session_reader\('typed-s'\)"):
        client.reader("typed-s")
    with pytest.raises(errors.InvalidArgumentError, match=r"client\.reader\('typed-kv'\)"):
        client.window_reader("typed-kv")
    with pytest.raises(errors.InvalidArgumentError, match=r"client\.window_reader"):
        client.session_reader("typed-w")
    assert list(client.window_reader("typed-w").fetch(b"k", 0, 0)) == [(0, b"v")]
    assert list(client.session_reader("typed-s").fetch(b"k")) == [(0, 10, b"v")]
    for h in (ws, ss, kv):
        h.close()


def test_readers_are_exported() -> None:
    from tierstore import client as c

    assert {"ReadOptions", "WindowReader", "SessionReader"} <= set(c.__all__)
    assert Path(c.__file__).exists()


def test_waiting_reads_leave_threads_for_commits(tmp_path: Path) -> None:
    """Reads waiting for min_offsets hold server threads; at most half of --grpc-workers may.
    Here 4 workers: 2 reads wait, further ones are refused with RESOURCE_EXHAUSTED (waits-full)
    and retried by the client, and the commit they wait for still gets a thread. Without the
    cap all 4 workers would wait and the commit would only run after their deadlines."""
    srv = create_server(ServerConfig(listen="127.0.0.1:0", data_dir=tmp_path / "d",
                                     grpc_workers=4))
    target = f"127.0.0.1:{srv.port}"
    try:
        with connect(target, timeout_s=20) as c:
            kv = c.key_value_store("waits", num_partitions=1)
            kv.put(b"k", b"v1")
            kv.commit({"in:0": 1})
            got: list[bytes | None] = []

            def read() -> None:
                got.append(c.reader("waits", min_offsets={"in:0": 2}, wait_s=15).get(b"k"))

            readers = [threading.Thread(target=read) for _ in range(6)]
            for t in readers:
                t.start()
            slots = srv.service.reads._slots
            wait_until(lambda: slots._value <= 0, 5, 0.01)  # type: ignore[attr-defined]
            # Both slots taken: one more waiting read is refused at once, with the marker.
            with grpc.insecure_channel(target) as ch:
                from tierstore.v1 import store_pb2_grpc

                with pytest.raises(grpc.RpcError) as info:
                    store_pb2_grpc.StateStoreStub(ch).Get(pb.GetRequest(
                        store="waits", partition=0, keys=[b"k"], min_offsets={"in:0": 2},
                        min_offsets_wait_ms=10_000), timeout=5)
                assert info.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
                assert "reads already wait for min_offsets" in (info.value.details() or "")
            started = time.monotonic()
            kv.put(b"k", b"v2")
            kv.commit({"in:0": 2})
            commit_s = time.monotonic() - started
            for t in readers:
                t.join(timeout=20)
            assert got == [b"v2"] * 6, got
            assert commit_s < 3.0, commit_s
            print(f"\ncommit with 6 reads waiting on 4 workers: {commit_s * 1000:.0f} ms")
    finally:
        srv.stop(grace=1)

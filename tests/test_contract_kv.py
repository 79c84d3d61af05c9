"""One contract suite for every KeyValueStore implementation: remote, local and in-memory.

A backend swap is proven here, not claimed: each test runs against all three.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tierstore.client import (
    InMemoryKeyValueStore,
    KeyValueStore,
    LocalKeyValueStore,
    connect,
    errors,
)
from tierstore.server.app import RunningServer, create_server
from tierstore.server.config import ServerConfig

Factory = Callable[[], KeyValueStore]  # opens (or reopens) the same store


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    srv = create_server(
        ServerConfig(listen="127.0.0.1:0", data_dir=tmp_path_factory.mktemp("contract"))
    )
    yield srv
    srv.stop(grace=1)


@pytest.fixture(params=["remote", "local", "memory"])
def reopen(
    request: pytest.FixtureRequest, tmp_path: Path, server: RunningServer
) -> Iterator[Factory]:
    opened: list[KeyValueStore] = []
    kind = request.param
    if kind == "memory":
        handles: list[InMemoryKeyValueStore] = []

        def factory() -> KeyValueStore:
            s = handles[-1].reopen() if handles else InMemoryKeyValueStore()
            handles.append(s)
            return s

    elif kind == "local":

        def factory() -> KeyValueStore:
            for s in opened:
                s.close()
            s = LocalKeyValueStore(tmp_path / "db")
            opened.append(s)
            return s

    else:
        client = connect(f"127.0.0.1:{server.port}")
        name = f"contract-{request.node.name.split('[')[0]}-{tmp_path.name}"[:150]
        name = "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in name)

        def factory() -> KeyValueStore:
            s = client.key_value_store(name, partition=0)
            opened.append(s)
            return s

    yield factory
    for s in opened:
        s.close()


def test_put_get_delete(reopen: Factory) -> None:
    kv = reopen()
    assert kv.get(b"k") is None
    kv.put(b"k", b"v")
    assert kv.get(b"k") == b"v"
    assert kv.delete(b"k") == b"v"
    assert kv.get(b"k") is None
    assert kv.delete(b"k") is None
    kv.put(b"k", b"v2")
    kv.put(b"k", None)  # put of None deletes, as in Kafka Streams
    assert kv.get(b"k") is None


def test_put_if_absent_and_put_all(reopen: Factory) -> None:
    kv = reopen()
    assert kv.put_if_absent(b"a", b"1") is None
    assert kv.put_if_absent(b"a", b"2") == b"1"
    assert kv.get(b"a") == b"1"
    kv.put_all([(b"b", b"2"), (b"c", b"3"), (b"a", b"9")])
    assert [kv.get(k) for k in (b"a", b"b", b"c")] == [b"9", b"2", b"3"]
    kv.commit()
    assert kv.put_if_absent(b"b", b"x") == b"2"


def test_ranges_are_inclusive_and_ordered(reopen: Factory) -> None:
    kv = reopen()
    committed = {bytes([i]) * 2: b"c%d" % i for i in range(1, 40, 2)}
    kv.put_all(committed.items())
    kv.commit()
    # uncommitted writes overlay committed state, in both directions
    kv.put(b"\x04\x04", b"new")
    kv.delete(b"\x05\x05")
    kv.put(b"\x07\x07", b"changed")
    expect = dict(committed)
    expect[b"\x04\x04"] = b"new"
    del expect[b"\x05\x05"]
    expect[b"\x07\x07"] = b"changed"
    ordered = sorted(expect.items())
    assert list(kv.all()) == ordered
    lo, hi = b"\x03\x03", b"\x09\x09"
    want = [(k, v) for k, v in ordered if lo <= k <= hi]
    assert list(kv.range(lo, hi)) == want
    assert list(kv.reverse_range(lo, hi)) == want[::-1]
    assert list(kv.range(None, b"\x03\x03")) == [(k, v) for k, v in ordered if k <= b"\x03\x03"]
    assert list(kv.range(b"\x21\x21", None)) == [(k, v) for k, v in ordered if k >= b"\x21\x21"]
    assert list(kv.range(b"\x02", b"\x02\xff")) == []


def test_prefix_scan(reopen: Factory) -> None:
    kv = reopen()
    kv.put_all([(b"user:1", b"a"), (b"user:2", b"b"), (b"users", b"x"), (b"usa", b"y")])
    kv.commit()
    kv.put(b"user:3", b"c")
    kv.delete(b"user:1")
    assert list(kv.prefix_scan(b"user:")) == [(b"user:2", b"b"), (b"user:3", b"c")]
    kv.put(b"\xff\xff", b"top")
    kv.put(b"\xff\xff\x01", b"top2")
    assert list(kv.prefix_scan(b"\xff\xff")) == [(b"\xff\xff", b"top"), (b"\xff\xff\x01", b"top2")]


def test_commit_offsets_merge_and_survive_reopen(reopen: Factory) -> None:
    kv = reopen()
    assert kv.committed_offsets == {}
    kv.put(b"x", b"1")
    assert kv.commit({"orders:0": 10, "orders:1": 5}) == {"orders:0": 10, "orders:1": 5}
    kv.put(b"y", b"2")
    kv.commit({"orders:0": 12})
    assert kv.committed_offsets == {"orders:0": 12, "orders:1": 5}
    kv2 = reopen()
    assert kv2.committed_offsets == {"orders:0": 12, "orders:1": 5}
    assert kv2.get(b"x") == b"1" and kv2.get(b"y") == b"2"


def test_uncommitted_writes_are_lost_on_reopen(reopen: Factory) -> None:
    kv = reopen()
    kv.put(b"kept", b"1")
    kv.commit({"t:0": 1})
    kv.put(b"lost", b"2")
    kv.delete(b"kept")
    kv2 = reopen()
    assert kv2.get(b"lost") is None
    assert kv2.get(b"kept") == b"1"
    assert kv2.committed_offsets == {"t:0": 1}


def test_bad_input_is_refused(reopen: Factory) -> None:
    kv = reopen()
    with pytest.raises(errors.InvalidArgumentError, match="empty"):
        kv.put(b"", b"v")
    with pytest.raises(errors.InvalidArgumentError, match="65536"):
        kv.put(b"k" * 65537, b"v")
    kv.put(b"k" * 65536, b"v")  # exactly the limit is fine
    with pytest.raises(errors.InvalidArgumentError, match="inverted"):
        list(kv.range(b"z", b"a"))
    with pytest.raises(errors.InvalidArgumentError):
        kv.get("str-key")  # type: ignore[arg-type]
    with pytest.raises(errors.InvalidArgumentError):
        kv.commit({"t:0": -1})
    kv.commit()
    assert kv.get(b"k" * 65536) == b"v"


def test_approximate_num_entries(reopen: Factory) -> None:
    kv = reopen()
    kv.put_all((b"%05d" % i, b"v") for i in range(500))
    kv.commit()
    n = kv.approximate_num_entries()
    assert 250 <= n <= 1000


def test_large_batch_and_values(reopen: Factory) -> None:
    kv = reopen()
    big = b"x" * (1024 * 1024)
    kv.put(b"big", big)
    kv.put_all((b"k%06d" % i, b"v%d" % i) for i in range(20_000))
    kv.commit({"t:0": 1})
    assert kv.get(b"big") == big
    assert sum(1 for _ in kv.prefix_scan(b"k")) == 20_000
    assert kv.get(b"k019999") == b"v19999"


def test_context_manager_and_closed_handle(reopen: Factory) -> None:
    kv = reopen()
    with kv:
        kv.put(b"a", b"1")
        kv.commit()
    with pytest.raises(errors.StoreClosedError):
        kv.get(b"a")


def test_put_all_with_a_bad_entry_buffers_none_of_it(reopen: Factory) -> None:
    kv = reopen()
    kv.put(b"a", b"old")
    for bad in [(b"", b"v"), (b"k" * 65537, b"v"), ("str", b"v"), (b"k", "str")]:
        with pytest.raises(errors.InvalidArgumentError):
            kv.put_all([(b"a", b"new"), (b"b", b"2"), bad])  # type: ignore[list-item]
    assert kv.get(b"a") == b"old" and kv.get(b"b") is None
    kv.commit()
    assert list(kv.all()) == [(b"a", b"old")]

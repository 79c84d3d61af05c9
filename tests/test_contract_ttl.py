"""TTL for key-value stores, one contract on every backend (remote, local, in-memory): a store's
default TTL and a per-put TTL; expired keys are invisible to reads at once and physically
removed later by a sweep that commits their deletes. TTLs are short and waited for by polling
with a deadline. The changelog side (an expired key never comes back on restore) is in
tests/test_window_worker.py, with a real broker.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from tierstore import ttl
from tierstore.client import InMemoryKeyValueStore, LocalKeyValueStore, connect, errors
from tierstore.client.buffered import BufferedKeyValueStore
from tierstore.server import errors as server_errors
from tierstore.server.app import RunningServer, create_server
from tierstore.server.cluster import wait_until
from tierstore.server.config import ServerConfig
from tierstore.server.specs import StoreSpec, reconcile
from tierstore.v1 import store_pb2 as pb

HOUR = 3_600_000
SHORT = 800  # ms: long enough to read a value back right after the put, short to wait for


class Opener:
    """Opens (and reopens) one store on a backend, as a restarted worker would."""

    def __init__(self, kind: str, tmp_path: Path, server: RunningServer, name: str) -> None:
        self.kind, self.tmp_path, self.server, self.name = kind, tmp_path, server, name
        self.client = connect(f"127.0.0.1:{server.port}")
        self.opened: list[BufferedKeyValueStore] = []
        self.memory: dict[str, InMemoryKeyValueStore] = {}

    def __call__(self, ttl_ms: int | None = None, name: str = "") -> BufferedKeyValueStore:
        kv: BufferedKeyValueStore
        if self.kind == "memory":
            last = self.memory.get(name)
            kv = (last.reopen(ttl_ms=ttl_ms) if last is not None
                  else InMemoryKeyValueStore(ttl_ms=ttl_ms))
            self.memory[name] = kv
        elif self.kind == "local":
            for old in self.opened:
                old.close()
            kv = LocalKeyValueStore(self.tmp_path / (name or "db"), ttl_ms=ttl_ms)
        else:
            kv = self.client.key_value_store(self.name + name, ttl_ms=ttl_ms)
        self.opened.append(kv)
        return kv

    def raw_keys(self, kv: BufferedKeyValueStore) -> list[bytes]:
        """The keys physically present in committed state, expired or not."""
        return [k for k, _ in kv._backend_scan(None, None, None, False)]

    def close(self) -> None:
        for s in self.opened:
            s.close()
        self.client.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    srv = create_server(
        ServerConfig(listen="127.0.0.1:0", data_dir=tmp_path_factory.mktemp("ttl"))
    )
    yield srv
    srv.stop(grace=1)


@pytest.fixture(params=["remote", "local", "memory"])
def opener(request: pytest.FixtureRequest, tmp_path: Path, server: RunningServer
           ) -> Iterator[Opener]:
    name = f"ttl-{request.node.name.split('[')[0]}-{tmp_path.name}"[:120]
    o = Opener(request.param, tmp_path, server, name)
    yield o
    o.close()


def eventually(check: Callable[[], bool], timeout_s: float = 20.0) -> None:
    """Poll `check` until it holds, failing after the deadline."""
    assert wait_until(check, timeout_s, 0.02), f"not true within {timeout_s}s"


def test_default_and_per_put_ttl_expire_invisibly(opener: Opener) -> None:
    kv = opener(ttl_ms=SHORT)
    assert kv.ttl_ms == SHORT
    kv.put(b"short", b"s")  # the store's default TTL
    kv.put(b"long", b"l", ttl_ms=HOUR)  # a per-put TTL overrides it
    kv.put_all([(b"short2", b"s2")])
    assert kv.get(b"short") == b"s" and kv.get(b"long") == b"l"
    kv.commit({"in:0": 1})
    kv.put(b"buffered", b"b")  # uncommitted entries expire too
    eventually(lambda: kv.get(b"short") is None)
    eventually(lambda: kv.get(b"buffered") is None)
    assert list(kv.all()) == [(b"long", b"l")]
    assert list(kv.range(b"a", b"z")) == [(b"long", b"l")]
    assert list(kv.reverse_range(None, None)) == [(b"long", b"l")]
    assert list(kv.prefix_scan(b"short")) == []
    assert kv.get_many([b"short", b"long", b"short2"]) == [None, b"l", None]
    assert kv.delete(b"short2") is None  # an expired key is absent for every operation
    assert kv.put_if_absent(b"short", b"again", ttl_ms=HOUR) is None
    assert kv.get(b"short") == b"again"
    kv.commit({"in:0": 2})
    kv2 = opener()  # a reopen may omit the TTL: the store keeps its own
    assert kv2.ttl_ms == SHORT
    assert dict(kv2.all()) == {b"long": b"l", b"short": b"again"}
    assert kv2.committed_offsets == {"in:0": 2}


def test_expired_entries_are_removed_by_a_sweep(opener: Opener) -> None:
    kv = opener(ttl_ms=SHORT)
    kv.sweep_interval_s = None  # no automatic sweep: this test runs it
    kv.put_all((b"gone-%03d" % i, b"x") for i in range(50))
    kv.put(b"kept", b"y", ttl_ms=HOUR)
    kv.commit()
    eventually(lambda: kv.get(b"gone-000") is None)
    assert len(opener.raw_keys(kv)) == 51  # invisible, but still on disk
    swept = 0
    while (n := kv.sweep_expired(max_entries=20)) or swept < 50:  # bounded batches
        swept += n
        assert swept <= 50
    assert swept == 50
    kv.commit()
    assert opener.raw_keys(kv) == [b"kept"]
    assert opener.raw_keys(opener()) == [b"kept"]


def test_ttl_needs_a_ttl_store_and_valid_values(opener: Opener) -> None:
    bad = errors.InvalidArgumentError
    plain = opener()
    assert plain.ttl_ms == 0
    with pytest.raises(bad, match="no TTL"):
        plain.put(b"k", b"v", ttl_ms=1_000)
    assert plain.sweep_expired() == 0
    plain.put(b"k", b"v")
    plain.commit()
    with pytest.raises(bad, match="TTL"):  # an existing store without TTL stays without
        opener(ttl_ms=1_000)
    kv = opener(ttl_ms=HOUR, name="other")
    for value in (0, -1, 2**63, 1.5, True, "10"):
        with pytest.raises(bad, match="ttl_ms"):
            kv.put(b"k", b"v", ttl_ms=value)  # type: ignore[arg-type]
    kv.put(b"k", b"v", ttl_ms=2**63 - 1)  # expiry saturates at the end of time
    assert kv.get(b"k") == b"v"
    kv.commit()
    with pytest.raises(bad, match="ttl_ms"):
        opener(ttl_ms=0, name="third")
    with pytest.raises(bad, match=r"ttl|TTL"):
        opener(ttl_ms=2 * HOUR, name="other")  # the store has another TTL


def test_remote_reader_strips_expiry_headers(server: RunningServer) -> None:
    with connect(f"127.0.0.1:{server.port}") as client:
        kv = client.key_value_store("ttl-reader", num_partitions=2, ttl_ms=HOUR)
        kv2 = client.key_value_store("ttl-reader", partition=1)
        assert kv2.ttl_ms == HOUR
        for k in (b"a", b"b", b"c", b"d"):
            (kv if client.reader("ttl-reader").partition_for(k) == 0 else kv2).put(k, b"v" + k)
        kv.put(b"gone", b"x", ttl_ms=1)
        kv.commit()
        kv2.commit()
        reader = client.reader("ttl-reader")
        assert reader.ttl_ms == HOUR
        assert reader.get(b"a") == b"va"
        eventually(lambda: reader.get(b"gone") is None)
        assert list(reader.all()) == [(k, b"v" + k) for k in (b"a", b"b", b"c", b"d")]


def test_store_spec_ttl_rules() -> None:
    """Like retention: fixed by the first claim, omitted (0) or repeated by later ones, and
    only for kv stores."""
    bad = server_errors.InvalidArgumentError
    spec = reconcile(None, "t", "kv", 1, 0, 0, HOUR)
    assert spec.ttl_ms == HOUR and StoreSpec.from_json(spec.to_json()) == spec
    assert reconcile(spec, "t", "kv", 0, 0, 0, 0) is spec
    assert reconcile(spec, "t", "kv", 0, 0, 0, HOUR) is spec
    with pytest.raises(bad, match="has TTL 3600000 ms, not 5 ms"):
        reconcile(spec, "t", "kv", 0, 0, 0, 5)
    plain = reconcile(None, "p", "kv", 1, 0, 0)
    with pytest.raises(bad, match="has no TTL, not 5 ms"):
        reconcile(plain, "p", "kv", 0, 0, 0, 5)
    with pytest.raises(bad, match="window store takes no ttl_ms"):
        reconcile(None, "w", "window", 1, 1_000, 1_000, 5)
    with pytest.raises(bad, match="session store takes no ttl_ms"):
        reconcile(None, "s", "session", 1, 0, 1_000, 5)
    with pytest.raises(bad, match="non-negative"):
        reconcile(None, "n", "kv", 1, 0, 0, -1)


def test_server_sweep_commits_tombstones_without_disturbing_the_owner(
    server: RunningServer,
) -> None:
    """The server removes expired entries of open TTL stores on its own (StoreService's ticker
    calls sweep_expired), as a commit of tombstones that leaves the owner's commit numbers and
    offsets alone."""
    svc = server.service
    with connect(f"127.0.0.1:{server.port}") as client:
        kv = client.key_value_store("ttl-server-sweep", ttl_ms=SHORT)
        kv.put_all((b"e%02d" % i, b"x") for i in range(30))
        kv.put(b"kept", b"y", ttl_ms=HOUR)
        kv.commit({"in:0": 5})
        shard = svc.registry.shard(svc.registry.describe("ttl-server-sweep"), 0)
        seq = shard.meta.commit_seq
        assert svc.sweep_expired(now_ms=ttl.now_ms() - HOUR) == 0  # judged at the time given
        eventually(lambda: kv.get(b"e00") is None)
        assert len(list(shard.db.iterate(None, None))) == 31  # invisible, still on disk

        def swept() -> bool:
            svc.sweep_expired(now_ms=ttl.now_ms())
            return [k for k, _ in shard.db.iterate(None, None)] == [b"kept"]

        eventually(swept)
        assert shard.meta.commit_seq == seq and shard.meta.offsets == {"in:0": 5}
        kv.put(b"more", b"z")  # the owner's next commit is numbered as before the sweep
        assert kv.commit({"in:0": 6}) == {"in:0": 6}
        assert dict(kv.all()) == {b"kept": b"y", b"more": b"z"}


def test_ttl_store_values_carry_the_header_on_the_wire(server: RunningServer) -> None:
    """A raw client's value without the 8-byte expiry header is refused, nothing applied."""
    with connect(f"127.0.0.1:{server.port}") as client:
        kv = client.key_value_store("ttl-raw", ttl_ms=HOUR)
        kv.put(b"ok", b"v")
        batch = pb.WriteBatch(put_keys=[b"ok2", b"bad"], put_values=[bytes(8) + b"x", b"short"])
        with pytest.raises(grpc.RpcError) as info:
            client.stub.Commit(pb.CommitRequest(store="ttl-raw", partition=0, epoch=kv.epoch,
                                                commit_seq=1, batch=batch))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "8-byte expiry header" in str(info.value.details())
        kv.commit()
        assert dict(kv.all()) == {b"ok": b"v"}

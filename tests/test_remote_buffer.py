"""The remote store's bounded write-back buffer: overflow stages writes on the server, which
keeps them visible to the owner only and applies them at commit, all or nothing."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.infra import Broker
from tierstore.client import connect, errors
from tierstore.server.app import RunningServer, create_server
from tierstore.server.config import ServerConfig


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RunningServer]:
    srv = create_server(ServerConfig(listen="127.0.0.1:0", data_dir=tmp_path / "data"))
    yield srv
    srv.stop(grace=1)


def test_overflow_is_staged_visible_to_owner_only_and_committed_whole(
    server: RunningServer,
) -> None:
    client = connect(f"127.0.0.1:{server.port}")
    kv = client.key_value_store("buf", buffer_max_entries=100)
    kv.put(b"old", b"committed")
    kv.commit({"t:0": 1})
    expected = {b"old": b"committed"}
    for i in range(1050):
        k = b"k%05d" % i
        kv.put(k, b"v%d" % i)
        expected[k] = b"v%d" % i
    kv.delete(b"old")
    del expected[b"old"]
    kv.put(b"k00007", b"rewritten")  # a key already staged, rewritten in the local buffer
    expected[b"k00007"] = b"rewritten"
    assert kv._staged >= 10  # the overflow went to the server
    # read-your-writes through both buffers: point reads and merged scans
    assert kv.get(b"k00003") == b"v3"
    assert kv.get(b"k00007") == b"rewritten"
    assert kv.get(b"old") is None
    assert dict(kv.all()) == expected
    assert list(kv.reverse_range(b"k00010", b"k00012")) == [
        (b"k00012", b"v12"), (b"k00011", b"v11"), (b"k00010", b"v10")
    ]
    # nobody else sees staged writes
    reader = client.reader("buf")
    assert reader.get(b"k00003") is None
    assert dict(reader.all()) == {b"old": b"committed"}
    kv.commit({"t:0": 2})
    assert dict(reader.all()) == expected
    kv2 = client.key_value_store("buf")  # reclaim: committed state only
    assert dict(kv2.all()) == expected
    assert kv2.committed_offsets == {"t:0": 2}


def test_the_byte_bound_counts_value_sizes(server: RunningServer) -> None:
    """Large values stage once the buffered bytes reach buffer_max_bytes, not after thousands
    of them (the buffer's memory is what the bound is for)."""
    client = connect(f"127.0.0.1:{server.port}")
    kv = client.key_value_store("big", buffer_max_bytes=4 << 20)
    value = bytes(512 * 1024)
    for i in range(40):  # 20 MiB in all
        kv.put(b"k%02d" % i, value)
        buffered = sum(len(k) + len(v or b"") for k, v in kv._writes.items())
        assert buffered < (4 << 20) + len(value) + 16, f"{buffered} bytes buffered after {i + 1}"
    assert kv._staged >= 4
    kv.commit({"t:0": 1})
    assert client.reader("big").get(b"k39") == value
    assert len(list(client.reader("big").all())) == 40


class _CountingDict(dict[bytes, bytes | None]):
    recounts = 0

    def items(self):  # type: ignore[override]
        _CountingDict.recounts += 1
        return super().items()


def test_overwrites_near_the_byte_bound_do_not_recount_the_buffer_each_time(
    server: RunningServer,
) -> None:
    """A buffer just under buffer_max_bytes, then many overwrites of one key: the running
    size estimate crosses the bound on each of them, but the whole buffer is re-measured
    only now and then, not on every put (that made each put cost the buffer's size)."""
    client = connect(f"127.0.0.1:{server.port}")
    kv = client.key_value_store("recount", buffer_max_bytes=1 << 20)
    value = bytes(10_000)
    n = (1 << 20) // (len(value) + 8) - 1  # just under the bound
    kv._writes = _CountingDict()
    for i in range(n):
        kv.put(b"k%06d" % i, value)
    before = _CountingDict.recounts
    for _ in range(2000):
        kv.put(b"k000001", value)
    assert _CountingDict.recounts - before <= 5
    kv.commit({"t:0": 1})
    assert len(list(client.reader("recount").all())) == n


def test_staged_writes_lost_in_a_restart_abort_the_commit(tmp_path: Path) -> None:
    """After ABORTED (staged writes lost in a server restart) nothing of the batch is applied,
    and the handle is closed: it must not go on reading without those writes (a put made
    before the commit read back as absent) nor take new ones."""
    cfg = ServerConfig(listen="127.0.0.1:0", data_dir=tmp_path / "data")
    srv = create_server(cfg)
    port = srv.port
    client = connect(f"127.0.0.1:{port}")
    kv = client.key_value_store("lost", buffer_max_entries=10)
    kv.put(b"a", b"1")
    kv.commit({"t:0": 1})
    for i in range(25):
        kv.put(b"s%02d" % i, b"x")
    assert kv._staged >= 2
    srv.stop(grace=1)
    srv = create_server(ServerConfig(listen=f"127.0.0.1:{port}", data_dir=tmp_path / "data"))
    try:
        with pytest.raises(errors.AbortedError, match="staged"):
            kv.commit({"t:0": 2})
        with pytest.raises(errors.StoreClosedError, match="reopen"):
            kv.get(b"s00")
        with pytest.raises(errors.StoreClosedError, match="reopen"):
            kv.put(b"b", b"2")
        kv2 = connect(f"127.0.0.1:{port}").key_value_store("lost")
        assert dict(kv2.all()) == {b"a": b"1"}
        assert kv2.committed_offsets == {"t:0": 1}
    finally:
        srv.stop(grace=1)


def test_commit_retry_after_lost_answer_applies_once(server: RunningServer) -> None:
    client = connect(f"127.0.0.1:{server.port}")
    kv = client.key_value_store("retry")
    kv.put(b"a", b"1")
    kv.commit({"t:0": 1})
    # Replay the same commit number by hand, as a client that lost the answer would.
    from tierstore.v1 import store_pb2 as pb

    req = pb.CommitRequest(
        store="retry", partition=0, epoch=kv.epoch, commit_seq=1,
        batch=pb.WriteBatch(put_keys=[b"a"], put_values=[b"DIFFERENT"]), offsets={"t:0": 9},
    )
    resp = client.stub.Commit(req)
    assert dict(resp.committed_offsets) == {"t:0": 1}
    assert kv.get(b"a") == b"1"


def test_staged_writes_with_a_changelog(tmp_path: Path, broker: Broker) -> None:
    """With a changelog, staged writes are read back by the owner (point reads and scans),
    nobody else sees them, and the commit makes the whole batch durable: a server with an empty
    disk restores it from the log alone. Writes staged by a fenced handle are refused and never
    land."""
    objects = (tmp_path / "objects").as_uri()
    cfg = ServerConfig(listen="127.0.0.1:0", data_dir=tmp_path / "a", object_store=objects,
                       kafka_bootstrap=broker.bootstrap)
    srv = create_server(cfg)
    try:
        client = connect(f"127.0.0.1:{srv.port}")
        kv = client.key_value_store("ahead", 0, 1, buffer_max_entries=100)
        expected = {}
        for i in range(1050):
            kv.put(b"k%05d" % i, b"v%d" % i)
            expected[b"k%05d" % i] = b"v%d" % i
        kv.put(b"k00007", b"rewritten")  # staged already, rewritten here
        expected[b"k00007"] = b"rewritten"
        kv.delete(b"k00008")
        del expected[b"k00008"]
        assert kv._staged == 10
        assert kv.get(b"k00003") == b"v3" and kv.get(b"k00007") == b"rewritten"
        assert kv.get_many([b"k00001", b"k01049", b"nope"]) == [b"v1", b"v1049", None]
        assert dict(kv.all()) == expected
        reader = client.reader("ahead")
        assert reader.get(b"k00003") is None
        kv.commit({"t:0": 1})
        assert dict(reader.all()) == expected
        # Another worker claims the shard: this handle's next writes are refused.
        kv2 = client.key_value_store("ahead", 0, 1)
        with pytest.raises(errors.FencedError):
            for i in range(150):
                kv.put(b"x%03d" % i, b"lost")  # the 100th write stages, and is refused
        kv2.put(b"k00001", b"theirs")
        kv2.commit({"t:0": 2})
        expected[b"k00001"] = b"theirs"
        kv2.close()
    finally:
        srv.stop(grace=1, snapshot=False)  # the next server restores from the log alone
    fresh = create_server(ServerConfig(listen="127.0.0.1:0", data_dir=tmp_path / "b",
                                       object_store=objects, kafka_bootstrap=broker.bootstrap))
    try:
        reader = connect(f"127.0.0.1:{fresh.port}").reader("ahead")
        assert dict(reader.all()) == expected
    finally:
        fresh.stop(grace=1)

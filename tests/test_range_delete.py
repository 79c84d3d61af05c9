"""Range deletes in the key-value layer (the segment-drop primitive of window and session
stores): buffered until commit, hidden from reads at once, atomic with the commit, on every
backend; and what the server accepts (window and session stores only, expired segments only).

The flows respect the server's rules on all three backends: the handles are window-typed on
the remote, the stream time is written under windowkeys.STREAM_TIME_KEY as the window store
does, and ranges only cover segments that stream time has expired.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tierstore import windowkeys as wk
from tierstore.client import InMemoryKeyValueStore, LocalKeyValueStore, connect, errors
from tierstore.client.buffered import BufferedKeyValueStore
from tierstore.client.remote import Client, RemoteKeyValueStore
from tierstore.server.app import RunningServer, create_server
from tierstore.server.config import ServerConfig
from tierstore.v1 import store_pb2 as pb

MIN = 60_000  # retention MIN: one-minute segments, the window at t is in segment t // MIN
Opener = Callable[[], BufferedKeyValueStore]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    srv = create_server(
        ServerConfig(listen="127.0.0.1:0", data_dir=tmp_path_factory.mktemp("ranges"))
    )
    yield srv
    srv.stop(grace=1)


@pytest.fixture(params=["remote", "local", "memory"])
def reopen(request: pytest.FixtureRequest, tmp_path: Path, server: RunningServer
           ) -> Iterator[Opener]:
    opened: list[BufferedKeyValueStore] = []
    client = connect(f"127.0.0.1:{server.port}")
    name = f"ranges-{request.node.name.split('[')[0]}-{tmp_path.name}"[:120]

    def factory() -> BufferedKeyValueStore:
        s: BufferedKeyValueStore
        if request.param == "memory":
            last = opened[-1] if opened else None
            s = (last.reopen() if isinstance(last, InMemoryKeyValueStore)
                 else InMemoryKeyValueStore())
        elif request.param == "local":
            for old in opened:
                old.close()
            s = LocalKeyValueStore(tmp_path / "db")
        else:  # a tiny buffer: writes are staged to the server ahead of the commit
            s = RemoteKeyValueStore(client, name, 0, 0, buffer_max_bytes=1 << 20,
                                    buffer_max_entries=3, store_type=pb.STORE_TYPE_WINDOW,
                                    window_size_ms=MIN, retention_ms=MIN)
        opened.append(s)
        return s

    yield factory
    for s in opened:
        s.close()
    client.close()


def w(key: bytes, t: int) -> bytes:
    return wk.window_key(key, t, MIN)


def st(t: int) -> tuple[bytes, bytes]:
    return wk.STREAM_TIME_KEY, wk.encode_time(t)


def data(kv: BufferedKeyValueStore) -> list[bytes]:
    return [k for k, _ in kv.range(wk.DATA_LO, wk.DATA_HI)]


def test_range_delete_hides_at_once_and_drops_at_commit(reopen: Opener) -> None:
    kv = reopen()
    keys = [w(k, s * MIN + 5) for s in range(6) for k in (b"a", b"b\x00", b"c")]
    kv.put_all([st(5), *((k, b"v") for k in keys)])
    kv.commit({"in:0": 1})
    assert data(kv) == sorted(keys)
    # stream time 4 min + 5 ms: with retention 1 min, segments 0..2 have expired whole
    kv.put(*st(4 * MIN + 5))
    kv.put(w(b"z", 2 * MIN), b"buffered, then covered")  # dropped from the buffer by the range
    kv.delete_range(wk.segment_prefix(0), wk.segment_prefix(3))
    live = [k for k in keys if wk.segment_of_key(k) >= 3]
    assert data(kv) == sorted(live)
    assert list(kv.reverse_range(wk.DATA_LO, wk.DATA_HI)) == [(k, b"v") for k in sorted(live)][::-1]
    assert kv.get(keys[0]) is None and kv.get(w(b"z", 2 * MIN)) is None
    assert kv.get_many([keys[0], live[0]]) == [None, b"v"]
    assert kv.delete(keys[1]) is None  # already covered
    kv.put(w(b"d", 5 * MIN), b"new")  # a write outside the range is unaffected
    kv.commit({"in:0": 2})
    kv2 = reopen()
    assert data(kv2) == sorted([*live, w(b"d", 5 * MIN)])
    assert kv2.committed_offsets == {"in:0": 2}
    assert kv2.get(w(b"z", 2 * MIN)) is None


def test_staged_writes_inside_a_range_are_deleted_and_uncommitted_ranges_lost(
    reopen: Opener,
) -> None:
    kv = reopen()
    kv.put(*st(0))
    early = [w(b"k%d" % i, 10 + i) for i in range(7)]  # segment 0; the remote stages them
    kv.put_all((k, b"early") for k in early)
    kv.put(w(b"late", MIN + 1), b"x")
    kv.put(*st(2 * MIN))  # segment 0 expires whole
    kv.delete_range(wk.segment_prefix(0), wk.segment_prefix(1))
    if isinstance(kv, RemoteKeyValueStore):
        assert kv._staged > 0  # the early writes went to the server ahead of the commit
    assert data(kv) == [w(b"late", MIN + 1)]
    kv.commit()
    assert data(reopen()) == [w(b"late", MIN + 1)]
    # a range delete that is never committed deletes nothing
    kv3 = reopen()
    kv3.put(*st(3 * MIN))
    kv3.delete_range(wk.segment_prefix(0), wk.segment_prefix(2))
    assert data(kv3) == []
    kv3.close()
    assert data(reopen()) == [w(b"late", MIN + 1)]


def test_bad_range_deletes(reopen: Opener) -> None:
    kv = reopen()
    bad = errors.InvalidArgumentError
    with pytest.raises(bad, match="inverted"):
        kv.delete_range(b"b", b"a")
    with pytest.raises(bad, match="inverted"):
        kv.delete_range(b"a", b"a")
    with pytest.raises(bad, match="empty"):
        kv.delete_range(b"", b"a")
    with pytest.raises(bad, match="65536"):
        kv.delete_range(b"a", b"b" * 65537)


@pytest.mark.parametrize("kind", ["local", "memory"])
def test_writes_after_a_range_delete_survive_it(kind: str, tmp_path: Path) -> None:
    """The rule of the key-value layer: range deletes apply before the batch's writes. (On the
    server a window store never writes into a range it drops: that is refused, below.)"""
    kv: BufferedKeyValueStore = (LocalKeyValueStore(tmp_path / "db") if kind == "local"
                                 else InMemoryKeyValueStore())
    kv.put_all([(b"a1", b"1"), (b"a2", b"2"), (b"b1", b"3")])
    kv.commit()
    kv.put(b"a3", b"buffered")
    kv.delete_range(b"a", b"b")
    kv.put(b"a2", b"after")
    assert list(kv.all()) == [(b"a2", b"after"), (b"b1", b"3")]
    kv.commit()
    assert list(kv.all()) == [(b"a2", b"after"), (b"b1", b"3")]
    kv.close()


def test_the_server_accepts_range_deletes_of_expired_segments_only(server: RunningServer) -> None:
    bad = errors.InvalidArgumentError
    with connect(f"127.0.0.1:{server.port}") as client:
        kv = client.key_value_store("ranges-on-kv")
        kv.put(b"a", b"1")
        kv.delete_range(b"a", b"b")
        with pytest.raises(bad, match="only for window and session stores"):
            kv.commit()
        kv.close()

        def window_kv() -> RemoteKeyValueStore:
            return _raw_window_store(client, "ranges-checked")

        ws = window_kv()
        ws.put(*st(3 * MIN))
        ws.put(w(b"k", 3 * MIN), b"v")
        ws.commit()
        # at stream time 3 min segments 0..1 are expired whole, segment 2 is not
        for begin, end, match in [
            (wk.segment_prefix(0), wk.segment_prefix(3), "reaches beyond the segments expired"),
            (b"\x00meta", wk.segment_prefix(1), "reaches beyond"),
        ]:
            ws = window_kv()
            ws.delete_range(begin, end)
            with pytest.raises(bad, match=match):
                ws.commit()
        ws = window_kv()
        ws.put(w(b"late", MIN), b"v")  # a put into an expired segment: never committed
        with pytest.raises(bad, match="expired"):
            ws.commit()
        ws = window_kv()
        ws.put(*st(5 * MIN))  # a commit that moves stream time may drop what that expires
        ws.delete_range(wk.segment_prefix(0), wk.segment_prefix(4))
        ws.commit()
        assert data(ws) == []
        stub = client.stub
        with pytest.raises(Exception, match="not Stage"):
            stub.Stage(pb.StageRequest(store="ranges-checked", partition=0, epoch=ws.epoch,
                                       commit_seq=2, batch=pb.WriteBatch(
                                           range_begin=[b"\x01"], range_end=[b"\x02"])))
        ws.close()


def _raw_window_store(client: Client, name: str) -> RemoteKeyValueStore:
    """A window store's shard through the raw key-value handle (window keys by hand)."""
    return RemoteKeyValueStore(client, name, 0, 0, buffer_max_bytes=1 << 20,
                               buffer_max_entries=1000, store_type=pb.STORE_TYPE_WINDOW,
                               window_size_ms=MIN, retention_ms=MIN)


def test_the_server_refuses_a_commit_that_moves_stream_time_back(server: RunningServer) -> None:
    """Stream time only grows: restore re-derives the segment drops from its newest value and
    never un-drops a segment, so a commit that lowered it (or deleted it) would let the live
    server accept puts into segments that a restore then drops, and un-hide expired windows
    to readers."""
    bad = errors.InvalidArgumentError
    with connect(f"127.0.0.1:{server.port}") as client:
        def window_kv() -> RemoteKeyValueStore:
            return _raw_window_store(client, "ranges-backwards")

        ws = window_kv()
        ws.put(*st(5 * MIN))
        ws.put(w(b"k", 5 * MIN), b"v")
        ws.commit()
        for stage in (False, True):
            ws = window_kv()
            ws.put(*st(MIN))
            if stage:  # the lower stream time reaches the server in a staged batch
                ws._stage()
            with pytest.raises(bad, match=r"stream time .* before .*300000"):
                ws.commit()
        ws = window_kv()
        ws.put(wk.STREAM_TIME_KEY, None)
        with pytest.raises(bad, match="stream time"):
            ws.commit()
        ws = window_kv()
        ws.put(wk.STREAM_TIME_KEY, b"\xff" * 8)  # 2**64 - 1: beyond any time
        with pytest.raises(bad, match="stream time"):
            ws.commit()
        ws = window_kv()
        ws.put(*st(5 * MIN))  # the same stream time again is fine
        ws.commit()
        assert data(ws) == [w(b"k", 5 * MIN)]
        ws.close()

"""GetStream: point reads over one long-lived stream per server (client/getstream.py,
server/getstreams.py). Real servers on free ports; the stub and a raw stream where the test is
about the wire. Each test checks the answers against the unary Get's, and which path served
them (the client's count of reads answered on a stream)."""

from __future__ import annotations

import hashlib
import queue
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.inproc import running
from tierstore.client import connect, errors
from tierstore.server.app import create_server
from tierstore.server.cluster import wait_until
from tierstore.server.config import ServerConfig
from tierstore.server.servicer import SERVICE_NAME
from tierstore.v1 import store_pb2 as pb
from tierstore.v1 import store_pb2_grpc


def seed(target: str, store: str, n: int = 50) -> dict[bytes, bytes]:
    data = {f"k{i:03d}".encode(): f"v{i}".encode() * (i % 7 + 1) for i in range(n)}
    with connect(target) as c, c.key_value_store(store) as kv:
        kv.put_all(list(data.items()))
        kv.commit({"in:0": n})
    return data


class RawStream:
    """A GetStream driven by hand: raw request bytes in, GetStreamResponse out."""

    def __init__(self, target: str, token: str | None = None) -> None:
        self.channel = grpc.insecure_channel(target)
        self.requests: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        call = self.channel.stream_stream(f"/{SERVICE_NAME}/GetStream",
                                          response_deserializer=pb.GetStreamResponse.FromString)
        md = (("authorization", f"Bearer {token}"),) if token else ()
        self.responses = call(iter(self.requests.get, None), metadata=md, timeout=30)

    def ask(self, request: bytes) -> pb.GetStreamResponse:
        self.requests.put(request)
        resp: pb.GetStreamResponse = next(self.responses)
        return resp

    def close(self) -> None:
        self.requests.put(None)
        self.channel.close()


def get_req(store: str, keys: list[bytes], epoch: int = 0) -> bytes:
    return pb.StreamRequest(get=pb.GetRequest(store=store, partition=0, epoch=epoch, keys=keys)
                            ).SerializeToString()


def test_reads_use_the_stream_and_match_unary_gets(tmp_path: Path) -> None:
    with running(tmp_path) as server:
        target = f"127.0.0.1:{server.port}"
        data = seed(target, "s")
        keys = [*list(data)[:20], b"missing", b"k999"]
        with grpc.insecure_channel(target) as ch:
            unary = store_pb2_grpc.StateStoreStub(ch).Get(
                pb.GetRequest(store="s", partition=0, keys=keys), timeout=10)
        expected = [v if f else None for v, f in zip(unary.values, unary.found, strict=True)]
        assert expected == [data.get(k) for k in keys]
        with connect(target) as c:
            r = c.reader("s")
            before = c.router.stream_reads
            assert [r.get(k) for k in keys] == expected
            assert r.multi_get(keys) == expected
            assert c.router.stream_reads - before == len(keys) + 1
            with c.key_value_store("s") as kv:  # the owner: epoch > 0, staged writes on top
                kv.put(b"k000", b"staged")
                before = c.router.stream_reads
                assert kv.get(b"k001") == data[b"k001"]
                assert kv.get(b"k000") == b"staged"  # from the client's buffer, no call
                assert kv.get_many([b"k002", b"missing"]) == [data[b"k002"], None]
                assert c.router.stream_reads - before == 2


def test_errors_are_answered_in_the_stream_which_stays_open(tmp_path: Path) -> None:
    with running(tmp_path) as server:
        target = f"127.0.0.1:{server.port}"
        data = seed(target, "s")
        raw = RawStream(target)
        try:
            cases = [
                (get_req("nope", [b"a"]), grpc.StatusCode.NOT_FOUND, "nope"),
                (get_req("s", [b""]), grpc.StatusCode.INVALID_ARGUMENT, "empty"),
                (b"\xff\xff\xff", grpc.StatusCode.INVALID_ARGUMENT, "malformed StreamRequest"),
                (b"", grpc.StatusCode.INVALID_ARGUMENT, "needs `get` or `scan`"),
                (get_req("s", [b"k001"], epoch=99), grpc.StatusCode.FAILED_PRECONDITION, ""),
            ]
            for request, code, words in cases:
                resp = raw.ask(request)
                assert resp.error_code == code.value[0], resp
                assert words in resp.error_message
                assert not resp.HasField("result")
                ok = raw.ask(get_req("s", [b"k001", b"x"]))  # the stream still answers
                assert ok.error_code == 0
                assert list(ok.result.values) == [data[b"k001"], b""]
                assert list(ok.result.found) == [True, False]
        finally:
            raw.close()


def test_client_errors_match_the_unary_path(tmp_path: Path) -> None:
    with running(tmp_path) as server:
        target = f"127.0.0.1:{server.port}"
        seed(target, "s")
        with connect(target) as c, connect(target) as other:
            kv = c.key_value_store("s")
            assert kv.get(b"k001") is not None
            other.key_value_store("s")  # claims the shard: kv is fenced
            answered = c.router.stream_reads
            with pytest.raises(errors.FencedError):
                kv.get(b"k001")
            assert c.router.stream_reads == answered  # not answered on the stream


def test_streams_are_capped_and_clients_fall_back(tmp_path: Path) -> None:
    with running(tmp_path, max_get_streams=1) as server:
        target = f"127.0.0.1:{server.port}"
        data = seed(target, "s")
        with connect(target) as a, connect(target) as b:
            ra, rb = a.reader("s"), b.reader("s")
            for k in list(data)[:10]:
                assert ra.get(k) == data[k]
                assert rb.get(k) == data[k]
            assert a.router.stream_reads == 10
            assert b.router.stream_reads == 0  # refused a slot: every read was unary


def test_an_idle_stream_is_ended_and_its_slot_freed(tmp_path: Path) -> None:
    with running(tmp_path, max_get_streams=1, get_stream_idle_s=0.3) as server:
        target = f"127.0.0.1:{server.port}"
        data = seed(target, "s")
        with connect(target) as a:
            ra = a.reader("s")
            assert ra.get(b"k001") == data[b"k001"]
            assert a.router.stream_reads == 1
            streams = server.get_streams
            assert streams is not None and streams.open_count() == 1
            # Idle for more than get_stream_idle_s: the server ends a's stream.
            assert wait_until(lambda: streams.open_count() == 0 and streams.reaped == 1, 10)
            with connect(target) as b:
                assert b.reader("s").get(b"k002") == data[b"k002"]
                assert b.router.stream_reads == 1  # b got the only slot
            # a's next read finds its stream ended: still answered (unary), then a new stream.
            assert ra.get(b"k003") == data[b"k003"]
            assert ra.get(b"k004") == data[b"k004"]
            assert a.router.stream_reads == 2  # k003 went unary, k004 on a new stream


def test_a_server_restart_does_not_break_reads(tmp_path: Path) -> None:
    port: int
    with running(tmp_path) as server:
        port = server.port
        target = f"127.0.0.1:{port}"
        data = seed(target, "s")
        c = connect(target, timeout_s=5)
        r = c.reader("s")
        assert r.get(b"k001") == data[b"k001"]
    try:
        with pytest.raises(errors.UnavailableError):
            r.get(b"k001")  # the server is gone: an error, not a hang
        with running(tmp_path, listen=f"127.0.0.1:{port}"):
            assert wait_until(lambda: _answers(r, data), 15), "no read after the restart"
            before = c.router.stream_reads
            assert r.get(b"k005") == data[b"k005"]
            assert c.router.stream_reads == before + 1  # on a new stream
    finally:
        c.close()


def _answers(r: Any, data: dict[bytes, bytes]) -> bool:
    try:
        return bool(r.get(b"k001") == data[b"k001"])
    except errors.UnavailableError:
        return False


TOKENS = """
[[tokens]]
name = "orders-reader"
token_sha256 = "{digest}"
permissions = [{{ store_prefix = "orders-", access = "read" }}]

[[tokens]]
name = "admin"
token = "admin-secret-0123"
permissions = [{{ store_prefix = "", access = "read-write" }}]
"""


def test_stream_requests_are_authorized_one_by_one(tmp_path: Path) -> None:
    token = "orders-reader-secret-4567"
    (tmp_path / "t.toml").write_text(
        TOKENS.format(digest=hashlib.sha256(token.encode()).hexdigest()))
    with running(tmp_path, auth_tokens=str(tmp_path / "t.toml")) as server:
        target = f"127.0.0.1:{server.port}"
        for store in ("orders-1", "payroll"):
            with connect(target, token="admin-secret-0123") as c, c.key_value_store(store) as kv:
                kv.put(b"k", store.encode())
                kv.commit({})
        raw = RawStream(target, token)
        try:
            assert list(raw.ask(get_req("orders-1", [b"k"])).result.values) == [b"orders-1"]
            denied = raw.ask(get_req("payroll", [b"k"]))
            assert denied.error_code == grpc.StatusCode.PERMISSION_DENIED.value[0]
            assert "lacks read access to store 'payroll'" in denied.error_message
            assert b"payroll" not in denied.SerializeToString().replace(b"'payroll'", b"")
            assert list(raw.ask(get_req("orders-1", [b"k"])).result.values) == [b"orders-1"]
        finally:
            raw.close()
        with connect(target, token=token) as c:
            assert c.reader("orders-1").get(b"k") == b"orders-1"
            assert c.router.stream_reads == 1
            with pytest.raises(errors.PermissionDeniedError):
                c.reader("payroll")
        bad = RawStream(target, "not-a-token")
        try:
            with pytest.raises(grpc.RpcError) as info:
                bad.ask(get_req("orders-1", [b"k"]))
            assert info.value.code() is grpc.StatusCode.UNAUTHENTICATED
        finally:
            bad.close()


def test_a_stream_that_never_answers_times_out(tmp_path: Path) -> None:
    """A server stuck on a read (here: a GetStream handler that never answers) fails the read
    after the client's timeout instead of hanging it."""
    release = threading.Event()

    def stuck(requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
        for _ in requests:
            release.wait(30)
            return
        yield b""  # pragma: no cover - a generator, never reached

    server = grpc.server(futures.ThreadPoolExecutor(4))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        SERVICE_NAME, {"GetStream": grpc.stream_stream_rpc_method_handler(stuck)}),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with connect(f"127.0.0.1:{port}", timeout_s=0.5) as c:
            started = time.monotonic()
            with pytest.raises(errors.UnavailableError, match="did not answer a read within"):
                c.get("s", 0, pb.GetRequest(store="s", partition=0, keys=[b"k"]))
            assert time.monotonic() - started < 5
    finally:
        release.set()
        server.stop(0)


def test_a_graceful_stop_does_not_wait_for_open_streams(tmp_path: Path) -> None:
    server = create_server(ServerConfig(listen="127.0.0.1:0", data_dir=tmp_path / "data"))
    target = f"127.0.0.1:{server.port}"
    data = seed(target, "s")
    with connect(target, timeout_s=5) as c:
        r = c.reader("s")
        assert r.get(b"k001") == data[b"k001"]
        assert c.router.stream_reads == 1  # a stream is open, and idle from now on
        started = time.monotonic()
        server.stop(grace=10.0, snapshot=False)
        assert time.monotonic() - started < 5  # not the whole grace period
        with pytest.raises(errors.UnavailableError):
            r.get(b"k001")


def test_concurrent_reads_use_up_to_four_streams_per_server(tmp_path: Path) -> None:
    with running(tmp_path) as server:
        target = f"127.0.0.1:{server.port}"
        data = seed(target, "s")
        with connect(target) as c:
            r = c.reader("s")
            gets = c.router._gets
            assert r.get(b"k001") == data[b"k001"] and gets.open_streams(target) == 1
            held = []
            for n in range(2, 5):  # each busy stream (its lock held) makes a read open another
                stream = gets._streams[target][-1]
                stream.lock.acquire()
                held.append(stream)
                before = c.router.stream_reads
                assert r.get(b"k002") == data[b"k002"]
                assert gets.open_streams(target) == n and c.router.stream_reads == before + 1
            held.append(gets._streams[target][-1])
            held[-1].lock.acquire()
            before = c.router.stream_reads
            assert r.get(b"k003") == data[b"k003"]  # all four busy: a unary call
            assert c.router.stream_reads == before and gets.open_streams(target) == 4
            for stream in held:
                stream.lock.release()

            errors_seen: list[BaseException] = []

            def reader_thread(i: int) -> None:
                try:
                    for j in range(200):
                        k = b"k%03d" % ((i * 7 + j) % 50)
                        assert r.get(k) == data[k]
                except BaseException as exc:  # reported below
                    errors_seen.append(exc)

            threads = [threading.Thread(target=reader_thread, args=(i,)) for i in range(6)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
            assert not errors_seen, errors_seen[:1]
            assert gets.open_streams(target) <= 4


def scan_req(store: str, **fields: Any) -> bytes:
    return pb.StreamRequest(scan=pb.ScanRequest(store=store, partition=0, **fields)
                            ).SerializeToString()


def test_a_range_read_gets_its_first_page_on_the_stream(tmp_path: Path) -> None:
    with running(tmp_path, scan_page_size=20) as server:
        target = f"127.0.0.1:{server.port}"
        data = seed(target, "s")  # 50 keys k000..k049
        ordered = sorted(data.items())
        raw = RawStream(target)
        try:
            cases = [
                ({}, ordered[:20], True),  # one server page, and more after it
                ({"limit": 10}, ordered[:10], True),
                ({"from_key": b"k040"}, ordered[40:], False),
                ({"prefix": b"k01"}, ordered[10:20], False),
                ({"reverse": True, "limit": 3}, ordered[::-1][:3], True),
                ({"from_key": b"k045", "to_key": b"k047"}, ordered[45:48], False),
            ]
            for fields, want, more in cases:
                resp = raw.ask(scan_req("s", **fields))
                assert resp.error_code == 0, resp
                assert list(zip(resp.page.keys, resp.page.values, strict=True)) == want, fields
                assert resp.more is more, fields
            errs = [(scan_req("nope"), grpc.StatusCode.NOT_FOUND),
                    (scan_req("s", from_key=b"b", to_key=b"a"), grpc.StatusCode.INVALID_ARGUMENT),
                    (scan_req("s", prefix=b"k", from_key=b"a"), grpc.StatusCode.INVALID_ARGUMENT)]
            for request, code in errs:
                assert raw.ask(request).error_code == code.value[0]
        finally:
            raw.close()
        with connect(target) as c:
            r = c.reader("s")
            before = c.router.stream_reads
            assert list(r.range(b"k010", b"k019")) == ordered[10:20]  # fits: on the stream
            assert list(r.prefix_scan(b"k03")) == ordered[30:40]
            assert c.router.stream_reads == before + 2
            assert list(r.all()) == ordered  # past one page: read again whole with a Scan
            assert list(r.reverse_range(None, None)) == ordered[::-1]
            with c.key_value_store("s") as kv:  # the owner, with staged writes on the server
                kv.put(b"k0105", b"between")
                kv._stage()
                kv.put(b"k011", b"buffered")
                got = list(kv.range(b"k010", b"k012"))
                assert got == [(b"k010", data[b"k010"]), (b"k0105", b"between"),
                               (b"k011", b"buffered"), (b"k012", data[b"k012"])]

"""Limits that keep one client from exhausting the server: message size, scan page size and
concurrent calls. Beyond each the caller gets RESOURCE_EXHAUSTED (or a capped page), and the
server keeps serving everyone else.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tierstore.client import connect, errors
from tierstore.server.app import create_server
from tierstore.server.config import ServerConfig
from tierstore.v1 import store_pb2 as pb
from tierstore.v1 import store_pb2_grpc


@contextlib.contextmanager
def target(tmp: Path, **cfg: Any) -> Iterator[str]:
    server = create_server(ServerConfig(listen="127.0.0.1:0", data_dir=tmp, **cfg))
    try:
        yield f"127.0.0.1:{server.port}"
    finally:
        server.stop(grace=1.0, snapshot=False)


def assert_healthy(addr: str) -> None:
    with grpc.insecure_channel(addr) as ch:
        resp = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert resp.status == health_pb2.HealthCheckResponse.SERVING


def test_message_size_limit(tmp_path: Path) -> None:
    with target(tmp_path, max_value_bytes=1024, max_message_bytes=200_000) as addr:
        with connect(addr) as c:
            with c.key_value_store("sized") as kv:
                kv.put(b"a", b"1")
                kv.commit({"in:0": 1})
                for i in range(300):
                    kv.put(b"big%04d" % i, b"v" * 1000)
                with pytest.raises(errors.ResourceExhaustedError):
                    kv.commit({"in:0": 2})  # a 300 KB Commit message
            reader = c.reader("sized")
            with pytest.raises(errors.ResourceExhaustedError):
                reader.multi_get([b"k%04d" % i + b"x" * 1000 for i in range(300)])
            assert reader.get(b"a") == b"1"
            assert reader.get(b"big0000") is None  # nothing of the refused commit
            with c.key_value_store("sized") as kv:
                assert kv.committed_offsets == {"in:0": 1}
        assert_healthy(addr)


def scan_pages(addr: str, store: str, **fields: Any) -> list[list[bytes]]:
    with grpc.insecure_channel(addr, options=[("grpc.max_receive_message_length", -1)]) as ch:
        stub = store_pb2_grpc.StateStoreStub(ch)
        return [list(p.keys) for p in stub.Scan(pb.ScanRequest(store=store, **fields), timeout=10)]


def test_scan_page_size_is_capped(tmp_path: Path) -> None:
    with target(tmp_path, scan_page_size=7) as addr:
        keys = [b"k%02d" % i for i in range(30)]
        with connect(addr) as c, c.key_value_store("paged") as kv:
            kv.put_all([(k, b"v") for k in keys])
            kv.commit({})
        for page_size in (0, 3, 7, 8, 1_000_000, 2**32 - 1):
            pages = scan_pages(addr, "paged", page_size=page_size)
            want = min(page_size or 7, 7)
            sizes = [want] * (30 // want) + ([30 % want] if 30 % want else [])
            assert [len(p) for p in pages] == sizes
            assert [k for p in pages for k in p] == keys
        assert [len(p) for p in scan_pages(addr, "paged", page_size=5, limit=12)] == [5, 5, 2]


def test_scan_limit_is_a_full_uint64(tmp_path: Path) -> None:
    """Found by fuzzing: a limit above 2**63 - 1 (sys.maxsize) made the server answer INTERNAL."""
    with target(tmp_path) as addr:
        with connect(addr) as c, c.key_value_store("lim") as kv:
            kv.put_all([(b"a", b"1"), (b"b", b"2")])
            kv.commit({})
        for limit in (2**63 - 1, 2**63, 2**64 - 1):
            assert scan_pages(addr, "lim", limit=limit) == [[b"a", b"b"]]


def test_scan_pages_fit_in_a_message(tmp_path: Path) -> None:
    """Pages are bounded in bytes too: 1,000 entries of large values would not fit in one
    message (and would all be held in memory at once)."""
    with target(tmp_path, max_value_bytes=100_000, max_message_bytes=200_000) as addr:
        with connect(addr) as c:
            with c.key_value_store("wide") as kv:
                for i in range(6):
                    kv.put(b"w%d" % i, bytes([i]) * 100_000)
                    kv.commit({})
            assert [k for k, _ in c.reader("wide").all()] == [b"w%d" % i for i in range(6)]
        assert all(len(p) >= 1 for p in scan_pages(addr, "wide"))


def hold(stub: store_pb2_grpc.StateStoreStub) -> Any:
    """A Scan that is started and then not read. Earlier calls may still hold their slots for a
    moment after they returned, so a refusal is retried until a deadline."""
    deadline = time.monotonic() + 10
    while True:
        call = stub.Scan(pb.ScanRequest(store="held"), timeout=30)
        try:
            next(call)
            return call
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert time.monotonic() < deadline, "the server never freed a slot"
            time.sleep(0.01)


def test_concurrent_rpc_limit(tmp_path: Path) -> None:
    with target(tmp_path, max_concurrent_rpcs=2, scan_page_size=1) as addr:
        with connect(addr) as c, c.key_value_store("held") as kv:
            kv.put_all([(b"h%04d" % i, b"v" * 60_000) for i in range(100)])
            kv.commit({})
        # Two scans that are not read hold their calls open (flow control stops the server).
        opts = [("grpc.http2.bdp_probe", 0), ("grpc.max_receive_message_length", -1)]
        with grpc.insecure_channel(addr, options=opts) as ch:
            stub = store_pb2_grpc.StateStoreStub(ch)
            held = [hold(stub) for _ in range(2)]
            with connect(addr) as c, pytest.raises(errors.ResourceExhaustedError):
                c.reader("held").get(b"h0000")
            for h in held:
                h.cancel()
        # The slots free up once the server notices the cancellations: poll with a deadline.
        deadline = time.monotonic() + 10
        with connect(addr) as c:
            while True:
                try:
                    assert c.reader("held").get(b"h0000") == b"v" * 60_000
                    break
                except errors.ResourceExhaustedError:
                    assert time.monotonic() < deadline, "the held calls never ended"
                    time.sleep(0.01)
        assert_healthy(addr)

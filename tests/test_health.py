"""The gRPC health service per store, against real server subprocesses, a Tansu changelog and a
moto S3 object store (behind the fault proxy, for an outage).

`tierstore.store.<name>` is NOT_SERVING while one of the store's shards is being restored and
after a restore failed, SERVING otherwise; the overall status "" stays SERVING throughout (peers
use it for liveness), and everything turns NOT_SERVING on shutdown."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.drills.s3proxy import FaultyS3Proxy
from tests.infra import Broker, S3Server
from tests.serverproc import ServerProc
from tierstore.client import connect, errors
from tierstore.server.health import store_service_name

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN


def check(address: str, service: str) -> int | grpc.StatusCode:
    """The status, or the RPC error code (NOT_FOUND for an unknown service)."""
    with grpc.insecure_channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=5)
        except grpc.RpcError as exc:
            return exc.code()
    return int(reply.status)


def wait_for(address: str, service: str, want: int, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    got: int | grpc.StatusCode = -1
    while time.monotonic() < deadline:
        got = check(address, service)
        if got == want:
            return
        time.sleep(0.05)
    raise AssertionError(f"{service!r} is {got}, not {want}, after {timeout_s}s")


class Watch:
    """Every status the server streams for one service (grpc.health.v1 Watch), in order."""

    def __init__(self, address: str, service: str) -> None:
        self.channel = grpc.insecure_channel(address)
        self.statuses: queue.Queue[int] = queue.Queue()
        self.call = health_pb2_grpc.HealthStub(self.channel).Watch(
            health_pb2.HealthCheckRequest(service=service))
        self.thread = threading.Thread(target=self._pump, daemon=True)
        self.thread.start()

    def _pump(self) -> None:
        try:
            for reply in self.call:
                self.statuses.put(int(reply.status))
        except grpc.RpcError:
            pass

    def until(self, want: int, timeout_s: float = 15.0) -> list[int]:
        """Statuses seen up to and including `want`."""
        seen: list[int] = []
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            try:
                seen.append(self.statuses.get(timeout=max(left, 0.01)))
            except queue.Empty:
                raise AssertionError(f"no {want} in {timeout_s}s; saw {seen}") from None
            if seen[-1] == want:
                return seen

    def close(self) -> None:
        self.call.cancel()
        self.channel.close()


@pytest.fixture
def proxy(s3_server: S3Server) -> Iterator[FaultyS3Proxy]:
    p = FaultyS3Proxy(s3_server.endpoint, seed=1, rates={})
    try:
        yield p
    finally:
        p.close()


@pytest.mark.kafka
@pytest.mark.s3
def test_store_health_follows_restores_and_their_failures(
    tmp_path: Path, broker: Broker, s3_server: S3Server, s3_bucket: str, proxy: FaultyS3Proxy,
) -> None:
    store_url = f"s3://{s3_bucket}/h"
    a = ServerProc(tmp_path / "a", kafka=broker.bootstrap, object_store=store_url,
                   s3_endpoint=s3_server.endpoint)
    try:
        with a.client() as client:
            for p in (0, 1):
                kv = client.key_value_store("counts", partition=p, num_partitions=2)
                for i in range(3):
                    kv.put_all([(b"k%04d" % j, b"v%d" % i) for j in range(500)])
                    kv.commit({f"in:{p}": i + 1})
                client.snapshot("counts", p)
            assert check(a.address, store_service_name("counts")) == SERVING
            assert check(a.address, store_service_name("nope")) == grpc.StatusCode.NOT_FOUND
    finally:
        a.kill9()

    # B restores both shards from S3 (through the proxy) plus the changelog tail.
    b = ServerProc(tmp_path / "b", kafka=broker.bootstrap, object_store=store_url,
                   s3_endpoint=proxy.endpoint)
    name = store_service_name("counts")
    watch = Watch(b.address, name)
    try:
        assert check(b.address, "") == SERVING
        assert watch.until(UNKNOWN, 5) == [UNKNOWN]  # nothing of the store seen here yet
        with connect(b.address, timeout_s=30) as client:
            kv = client.key_value_store("counts", partition=0)
            assert kv.get(b"k0001") == b"v2"
            # known (SERVING), restoring partition 0 (NOT_SERVING), restored (SERVING)
            assert watch.until(SERVING) == [SERVING]
            assert watch.until(NOT_SERVING) == [NOT_SERVING]
            assert watch.until(SERVING) == [SERVING]
            assert check(b.address, name) == SERVING

        # The object store goes down: restoring partition 1 fails, and the store says so.
        proxy.outage(10**9)
        with connect(b.address, timeout_s=4) as client, pytest.raises(errors.UnavailableError):
            client.key_value_store("counts", partition=1)
        wait_for(b.address, name, NOT_SERVING)
        assert check(b.address, "") == SERVING  # the server itself is alive
        time.sleep(1.5)  # past a background refresh: a failed load stays NOT_SERVING
        assert check(b.address, name) == NOT_SERVING

        # It comes back: the next claim restores the shard, and the store serves again.
        proxy.outage(0)
        with connect(b.address, timeout_s=30) as client:
            kv = client.key_value_store("counts", partition=1)
            assert kv.get(b"k0499") == b"v2"
        wait_for(b.address, name, SERVING)
    finally:
        watch.close()
        b.terminate()


def test_a_broken_shard_and_shutdown_turn_the_store_not_serving(tmp_path: Path) -> None:
    """In process: a shard broken by a failed local write (as a full disk leaves it) makes its
    store NOT_SERVING within a refresh, its reload makes it SERVING again; stop() turns every
    status NOT_SERVING before calls are drained."""
    from tierstore.server.app import create_server
    from tierstore.server.config import ServerConfig

    running = create_server(ServerConfig(listen="127.0.0.1:0", data_dir=tmp_path))
    address = f"127.0.0.1:{running.port}"
    name = store_service_name("s")
    try:
        with connect(address) as client:
            kv = client.key_value_store("s", partition=0)
            kv.put(b"k", b"v")
            kv.commit({"in:0": 1})
            assert check(address, name) == SERVING
            [shard] = running.service.registry.open_shards()
            shard.broken = "local write failed: disk full on the data dir (injected)"
            wait_for(address, name, NOT_SERVING, timeout_s=5)
            assert check(address, "") == SERVING
            assert client.reader("s").get(b"k") == b"v"  # the next use reloads the shard
            wait_for(address, name, SERVING, timeout_s=5)
    finally:
        running.stop(grace=0, snapshot=False)
    assert running.store_health is not None
    assert all(s == NOT_SERVING for s in running.store_health.servicer._server_status.values())

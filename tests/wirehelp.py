"""Helpers for the wire-error tests (tests/test_wire_errors_*.py): a real server started
in-process on a free port with a canary key, a raw stub over a real channel (`Wire`, with
`Wire.fails` asserting a status, its message and that the server still serves), request builders
and the limits the tests probe. The `wire` and `kv` fixtures built on them are in tests/conftest.py.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tierstore.server.app import RunningServer, create_server
from tierstore.server.config import ServerConfig
from tierstore.v1 import store_pb2 as pb
from tierstore.v1 import store_pb2_grpc

SERVICE = "tierstore.v1.StateStore"
MAX_VALUE = 1024  # the small server's max_value_bytes, so oversized values stay cheap
DEFAULT_MAX_VALUE = 8 * 1024 * 1024
MAX_KEY = 64 * 1024
TIMEOUT = 10.0
CANARY = "canary"

INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND
FENCED = grpc.StatusCode.FAILED_PRECONDITION
ABORTED = grpc.StatusCode.ABORTED

KV = pb.STORE_TYPE_KV
WINDOW = pb.STORE_TYPE_WINDOW
SESSION = pb.STORE_TYPE_SESSION

REQUEST_OF: dict[str, type[Message]] = {
    "Open": pb.OpenRequest,
    "Stage": pb.StageRequest,
    "Commit": pb.CommitRequest,
    "Get": pb.GetRequest,
    "Scan": pb.ScanRequest,
    "Count": pb.CountRequest,
    "Close": pb.CloseRequest,
    "DescribeStore": pb.DescribeStoreRequest,
    "Snapshot": pb.SnapshotRequest,
    "Inspect": pb.InspectRequest,
}



def fresh(prefix: str = "s") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def batch(puts: Sequence[tuple[bytes, bytes]] = (), deletes: Sequence[bytes] = ()) -> pb.WriteBatch:
    return pb.WriteBatch(
        put_keys=[k for k, _ in puts], put_values=[v for _, v in puts], delete_keys=list(deletes)
    )


@dataclass
class Wire:
    """A running server plus a raw stub over a real channel, with assertion helpers."""

    running: RunningServer
    channel: grpc.Channel
    stub: store_pb2_grpc.StateStoreStub

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.running.port}"

    def call(self, method: str, req: Message) -> Any:
        fn = getattr(self.stub, method)
        if method == "Scan":
            return list(fn(req, timeout=TIMEOUT))
        return fn(req, timeout=TIMEOUT)

    def open(
        self,
        store: str,
        partition: int = 0,
        type_: pb.StoreType.ValueType = KV,
        num_partitions: int = 0,
    ) -> pb.OpenResponse:
        req = pb.OpenRequest(
            store=store, partition=partition, type=type_, num_partitions=num_partitions
        )
        resp: pb.OpenResponse = self.call("Open", req)
        return resp

    def commit(
        self,
        store: str,
        epoch: int,
        seq: int,
        b: pb.WriteBatch | None = None,
        offsets: dict[str, int] | None = None,
        staged: int = 0,
        partition: int = 0,
    ) -> pb.CommitResponse:
        resp: pb.CommitResponse = self.call(
            "Commit", commit_req(store, epoch, seq, b, offsets, staged, partition)
        )
        return resp

    def get(
        self, store: str, keys: Sequence[bytes], epoch: int = 0, partition: int = 0
    ) -> list[bytes | None]:
        req = pb.GetRequest(store=store, partition=partition, epoch=epoch, keys=list(keys))
        resp: pb.GetResponse = self.call("Get", req)
        return [v if f else None for v, f in zip(resp.values, resp.found, strict=True)]

    def scan(self, store: str, epoch: int = 0, partition: int = 0) -> list[tuple[bytes, bytes]]:
        pages = self.call("Scan", pb.ScanRequest(store=store, partition=partition, epoch=epoch))
        return [kv for p in pages for kv in zip(p.keys, p.values, strict=True)]

    def health(self, service: str = "") -> int:
        stub = health_pb2_grpc.HealthStub(self.channel)
        resp = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=TIMEOUT)
        return int(resp.status)

    def assert_serving(self) -> None:
        """A good call succeeds: the server survived whatever came before."""
        assert self.get(CANARY, [b"canary"]) == [b"alive"]

    def fails(self, code: grpc.StatusCode, method: str, req: Message, *words: str) -> str:
        """`method(req)` fails with `code` and a message containing every word; then a good call
        succeeds. Returns the status details."""
        with pytest.raises(grpc.RpcError) as info:
            self.call(method, req)
        err: Any = info.value
        details = err.details() or ""
        assert err.code() == code, f"{method}: expected {code}, got {err.code()}: {details}"
        for w in words:
            assert w.lower() in details.lower(), f"{method}: {w!r} not in {details!r}"
        self.assert_serving()
        return str(details)


def commit_req(
    store: str,
    epoch: int,
    seq: int,
    b: pb.WriteBatch | None = None,
    offsets: dict[str, int] | None = None,
    staged: int = 0,
    partition: int = 0,
) -> pb.CommitRequest:
    return pb.CommitRequest(
        store=store,
        partition=partition,
        epoch=epoch,
        commit_seq=seq,
        staged_batches=staged,
        batch=b or pb.WriteBatch(),
        offsets=offsets or {},
    )


def stage_req(
    store: str, epoch: int, seq: int, b: pb.WriteBatch, partition: int = 0
) -> pb.StageRequest:
    return pb.StageRequest(store=store, partition=partition, epoch=epoch, commit_seq=seq, batch=b)


def scan_req(store: str, epoch: int = 0, partition: int = 0, **fields: Any) -> pb.ScanRequest:
    return pb.ScanRequest(store=store, partition=partition, epoch=epoch, **fields)


def get_req(store: str, keys: Sequence[bytes], epoch: int = 0, partition: int = 0) -> pb.GetRequest:
    return pb.GetRequest(store=store, partition=partition, epoch=epoch, keys=list(keys))


@contextlib.contextmanager
def serving(data_dir: Path, **cfg: Any) -> Iterator[Wire]:
    """A server on a free port with a canary key committed (see Wire.assert_serving)."""
    running = create_server(ServerConfig(listen="127.0.0.1:0", data_dir=data_dir, **cfg))
    limit = 64 * 1024 * 1024  # a client that can read back a maximal value
    channel = grpc.insecure_channel(
        f"127.0.0.1:{running.port}", options=[("grpc.max_receive_message_length", limit)]
    )
    try:
        w = Wire(running, channel, store_pb2_grpc.StateStoreStub(channel))
        epoch = w.open(CANARY).epoch
        w.commit(CANARY, epoch, 1, batch([(b"canary", b"alive")]))
        yield w
    finally:
        channel.close()
        running.stop(grace=1.0, snapshot=False)

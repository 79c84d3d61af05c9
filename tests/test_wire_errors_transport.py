"""The service surface on the wire: undecodable request bytes to every method, health and
reflection, and, last, that the shared server of the `wire` fixture still serves after every
other wire-error test (this module sorts after the other test_wire_errors_* modules, and the
fixture is session-scoped, so in a run of them all it sees the server they all used).
"""

from __future__ import annotations

import queue
import random
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pool
from google.protobuf.message import DecodeError, Message
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from tests.wirehelp import INVALID, NOT_FOUND, REQUEST_OF, SERVICE, TIMEOUT, Wire, batch, fresh
from tierstore.client import connect
from tierstore.v1 import store_pb2 as pb


# --- garbage on the wire ------------------------------------------------------------------------
def garbage() -> list[bytes]:
    rng = random.Random(20240611)
    blobs = [b"\xff\xff\xff\xff", b"\xff", b"\x0a\x05ab", b"\x0a\x02\xff\xfe", b"\x12\xff"]
    blobs += [rng.randbytes(rng.randint(1, 300)) for _ in range(24)]
    return blobs


def parses(cls: type[Message], data: bytes) -> bool:
    try:
        cls().ParseFromString(data)
    except DecodeError:
        return False
    return True


@pytest.mark.parametrize("method", list(REQUEST_OF))
def test_garbage_bytes(wire: Wire, method: str) -> None:
    path = f"/{SERVICE}/{method}"
    if method == "Scan":
        scan = wire.channel.unary_stream(path, request_serializer=None, response_deserializer=None)

        def call(data: bytes) -> object:
            return list(scan(data, timeout=TIMEOUT))
    else:
        unary = wire.channel.unary_unary(path, request_serializer=None, response_deserializer=None)

        def call(data: bytes) -> object:
            return unary(data, timeout=TIMEOUT)

    refused = 0
    for data in garbage():
        try:
            call(data)
        except grpc.RpcError as exc:
            err: Any = exc
            code, details = err.code(), err.details() or ""
        else:
            code, details = grpc.StatusCode.OK, ""
        if not parses(REQUEST_OF[method], data):
            assert code == INVALID, f"{method} {data[:16]!r}: {code} {details}"
            assert "malformed" in details, details
            refused += 1
        else:  # random bytes that happen to parse: never an internal error
            assert code not in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN), details
        wire.assert_serving()
    assert refused >= 20


def test_garbage_on_a_get_stream(wire: Wire) -> None:
    """Every message on one GetStream is answered in the stream: garbage with INVALID_ARGUMENT
    ("malformed"), never INTERNAL, and the stream stays open for the next."""
    requests: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
    call = wire.channel.stream_stream(f"/{SERVICE}/GetStream", request_serializer=None,
                                      response_deserializer=pb.GetStreamResponse.FromString)
    answers = call(iter(requests.get, None), timeout=120)
    refused = 0
    try:
        for data in garbage():
            requests.put(data)
            resp = next(answers)
            if not parses(pb.StreamRequest, data):
                assert resp.error_code == INVALID.value[0], (data[:16], resp)
                assert "malformed" in resp.error_message, resp.error_message
                refused += 1
            else:
                assert resp.error_code not in (grpc.StatusCode.INTERNAL.value[0],
                                               grpc.StatusCode.UNKNOWN.value[0]), resp
    finally:
        requests.put(None)
    assert refused >= 20
    wire.assert_serving()


# --- health and reflection ----------------------------------------------------------------------
def test_health_and_reflection(wire: Wire) -> None:
    assert wire.health("") == health_pb2.HealthCheckResponse.SERVING
    assert wire.health(SERVICE) == health_pb2.HealthCheckResponse.SERVING
    with pytest.raises(grpc.RpcError) as info:
        wire.health("no.such.Service")
    assert info.value.code() == NOT_FOUND

    db = ProtoReflectionDescriptorDatabase(wire.channel)
    services = db.get_services()
    assert SERVICE in services
    assert "grpc.health.v1.Health" in services
    desc = descriptor_pool.DescriptorPool(db).FindServiceByName(SERVICE)
    assert {m.name for m in desc.methods} == {*REQUEST_OF, "GetStream"}


# --- after all of the above ---------------------------------------------------------------------
def test_server_still_serving_after_everything(wire: Wire) -> None:
    assert wire.health("") == health_pb2.HealthCheckResponse.SERVING
    assert wire.health(SERVICE) == health_pb2.HealthCheckResponse.SERVING
    wire.assert_serving()
    store = fresh("final")
    opened = wire.open(store, num_partitions=1)
    resp = wire.commit(store, opened.epoch, 1, batch([(b"k", b"v"), (b"j", b"w")]), {"in:0": 3})
    assert dict(resp.committed_offsets) == {"in:0": 3}
    assert wire.get(store, [b"k", b"j", b"x"]) == [b"v", b"w", None]
    assert wire.scan(store) == [(b"j", b"w"), (b"k", b"v")]
    with connect(wire.target) as client:
        kv = client.key_value_store(store)
        assert kv.committed_offsets == {"in:0": 3}
        kv.put(b"m", b"n")
        kv.commit({"in:0": 4})
        assert client.reader(store).get(b"m") == b"n"

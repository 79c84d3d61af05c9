"""A retried call whose deadline runs out names what it was retrying.

The router retries a commit that got UNAVAILABLE until the client's deadline (safe: the server
applies a commit number once). When the deadline cuts the last attempt short, the error must
still carry the server's reason (here "disk full"), not only "Deadline Exceeded": under load a
disk-full drill once failed that way. The server here is a stub at the wire seam that answers
Open, refuses the first Commits as a full disk would, then stops answering.
"""

from __future__ import annotations

import threading
import time
from concurrent import futures

import grpc
import pytest

from tierstore.client import connect, errors
from tierstore.server.servicer import SERVICE_NAME
from tierstore.v1 import store_pb2 as pb

DISK_FULL = "shard s/0: writing shard /data/s-0: disk full on the data dir (No space left)"


class _Stub:
    def __init__(self, refusals: int) -> None:
        self.refusals = refusals
        self.commits = 0
        self.release = threading.Event()

    def open(self, request: pb.OpenRequest, context: grpc.ServicerContext) -> pb.OpenResponse:
        return pb.OpenResponse(epoch=1, spec=pb.StoreSpec(num_partitions=1))

    def commit(self, request: pb.CommitRequest, context: grpc.ServicerContext
               ) -> pb.CommitResponse:
        self.commits += 1
        if self.commits <= self.refusals:
            context.abort(grpc.StatusCode.UNAVAILABLE, DISK_FULL)
        self.release.wait(30)  # a server too slow to answer before the deadline
        context.abort(grpc.StatusCode.UNAVAILABLE, "released")
        return pb.CommitResponse()  # not reached: abort raises

    def close(self, request: pb.CloseRequest, context: grpc.ServicerContext
              ) -> pb.CloseResponse:
        return pb.CloseResponse()


def _serve(stub: _Stub) -> tuple[grpc.Server, str]:
    def unary(fn, req, resp):  # type: ignore[no-untyped-def]
        return grpc.unary_unary_rpc_method_handler(
            fn, request_deserializer=req.FromString, response_serializer=resp.SerializeToString)

    server = grpc.server(futures.ThreadPoolExecutor(8))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, {
        "Open": unary(stub.open, pb.OpenRequest, pb.OpenResponse),
        "Commit": unary(stub.commit, pb.CommitRequest, pb.CommitResponse),
        "Close": unary(stub.close, pb.CloseRequest, pb.CloseResponse),
    }),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, f"127.0.0.1:{port}"


@pytest.mark.parametrize("refusals", [3, 0])
def test_a_deadline_during_retries_keeps_the_retried_reason(refusals: int) -> None:
    stub = _Stub(refusals)
    server, target = _serve(stub)
    try:
        with connect(target, timeout_s=1.0) as client:
            kv = client.key_value_store("s", 0, 1)
            kv.put(b"k", b"v")
            started = time.monotonic()
            with pytest.raises(errors.UnavailableError) as info:
                kv.commit({"in:0": 1})
            assert time.monotonic() - started < 5
            assert stub.commits == refusals + 1
            text = str(info.value)
            assert text.startswith("DEADLINE_EXCEEDED"), text
            if refusals:  # the deadline, and what the attempts before it were refused for
                assert "disk full" in text and "retrying for" in text, text
            else:  # nothing was retried: the plain deadline
                assert "retrying" not in text, text
            # the outcome is unknown: the handle is done, as after any unanswered commit
            with pytest.raises(errors.StoreClosedError, match="may or may not"):
                kv.put(b"k", b"v2")
    finally:
        stub.release.set()
        server.stop(0)

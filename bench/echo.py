"""The floor: a bare gRPC unary echo between two processes, set up like tierstore's own server.

`python -m bench.echo serve [--workers N] [--opt NAME=INT ...]` runs a sync `grpc.server` on a
ThreadPoolExecutor (like tierstore.server.app, default 16 workers, the same message-size
options) with one generic handler: a call to `/bench.Echo/R<n>` takes the request bytes as they
are and answers `n` zero bytes (prebuilt), so that request and response sizes can match
tierstore's Get request and response exactly. It prints `listening on HOST:PORT`.

`EchoClient(address).latencies(request, response_size, n)` times `n` such calls from this
process (no protobuf on either side: raw bytes, the same deadline handling as the client).
What is left of a tierstore read after subtracting this is our own per-call cost.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent import futures
from typing import Any

import grpc

SERVICE = "bench.Echo"
MAX_MESSAGE = 64 * 1024 * 1024


class _Handler(grpc.GenericRpcHandler):
    def __init__(self) -> None:
        self._cache: dict[str, Any] = {}

    def service(self, details: grpc.HandlerCallDetails) -> Any:
        method: str = details.method
        handler = self._cache.get(method)
        if handler is None and method.startswith(f"/{SERVICE}/R"):
            answer = bytes(int(method.rsplit("/R", 1)[1]))

            def echo(request: bytes, context: grpc.ServicerContext) -> bytes:
                return answer

            handler = self._cache[method] = grpc.unary_unary_rpc_method_handler(echo)
        return handler


def serve(workers: int = 16, extra: Sequence[tuple[str, int]] = ()) -> None:
    opts = [
        ("grpc.max_receive_message_length", MAX_MESSAGE),
        ("grpc.max_send_message_length", MAX_MESSAGE),
        ("grpc.so_reuseport", 0),
        *extra,
    ]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers), options=opts)
    server.add_generic_rpc_handlers((_Handler(),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    print(f"listening on 127.0.0.1:{port}", flush=True)
    while not stop.wait(0.5):
        pass
    server.stop(0)


class EchoClient:
    """One channel to an echo server (options as tierstore's client channel, plus `extra`)."""

    def __init__(self, address: str, extra: Sequence[tuple[str, int]] = ()) -> None:
        self.channel = grpc.insecure_channel(address, options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE),
            ("grpc.max_send_message_length", MAX_MESSAGE),
            *extra,
        ])
        grpc.channel_ready_future(self.channel).result(timeout=30)
        self._calls: dict[int, Callable[..., bytes]] = {}

    def call(self, response_size: int) -> Callable[..., bytes]:
        fn = self._calls.get(response_size)
        if fn is None:
            fn = self._calls[response_size] = self.channel.unary_unary(
                f"/{SERVICE}/R{response_size}", _registered_method=True)
        return fn

    def latencies(self, request: bytes, response_size: int, n: int) -> list[int]:
        """`n` calls' latencies in nanoseconds."""
        fn = self.call(response_size)
        clock = time.perf_counter_ns
        out = []
        for _ in range(n):
            t0 = clock()
            if len(fn(request, timeout=30.0)) != response_size:
                raise AssertionError("echo: wrong response size")
            out.append(clock() - t0)
        return out

    def close(self) -> None:
        self.channel.close()


def _opt(text: str) -> tuple[str, int]:
    name, _, value = text.partition("=")
    return name, int(value)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.echo", description=__doc__)
    parser.add_argument("command", choices=["serve"])
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--opt", type=_opt, action="append", default=[],
                        help="an extra integer server option NAME=VALUE")
    args = parser.parse_args(argv)
    serve(args.workers, args.opt)
    return 0


if __name__ == "__main__":
    sys.exit(main())

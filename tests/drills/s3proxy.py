"""A fault-injecting HTTP proxy for S3, in front of moto: the object store as a bad network and
an overloaded service make it.

Each request is forwarded to the upstream server, except that, at seeded random, the proxy:
- answers ``503 SlowDown`` without forwarding (``503``);
- resets the connection before forwarding (``reset before``: the request was never done);
- forwards, then resets instead of answering (``reset after``: done, but the answer is lost);
- forwards and answers after a delay of 50-400 ms (``slow``);
- forwards and sends the full headers but only half of the body, then resets (``truncated``).

`outage(n)` makes the next n requests fail (503 or reset), enough to exhaust a client's retries;
`force(...)` gives the next requests chosen faults.
One request per connection (``Connection: close``), so a fault never leaks into the next request.
"""

from __future__ import annotations

import http.client
import random
import socket
import struct
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "transfer-encoding",
                        "te", "trailer", "upgrade", "content-length"})
DEFAULT_RATES = {"503": 0.05, "reset before": 0.03, "reset after": 0.03, "slow": 0.05,
                 "truncated": 0.05}


class FaultyS3Proxy:
    def __init__(self, upstream: str, seed: int, rates: dict[str, float] | None = None) -> None:
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.rates = dict(DEFAULT_RATES if rates is None else rates)
        self.enabled = True
        self.faults: Counter[str] = Counter()
        self.requests = 0
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._outage = 0
        self._forced: list[str] = []
        proxy = self

        class Handler(_Handler):
            owner = proxy

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True,
                                        name="s3-fault-proxy")
        self._thread.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def outage(self, requests: int) -> None:
        with self._lock:
            self._outage = requests

    def force(self, *faults: str) -> None:
        """The next requests get these faults, in order (then the random ones again)."""
        with self._lock:
            self._forced.extend(faults)

    def pick(self) -> tuple[str | None, float]:
        """The fault for the next request (None: none) and a delay for `slow`."""
        with self._lock:
            self.requests += 1
            if self._forced:
                fault: str | None = self._forced.pop(0)
            elif not self.enabled:
                return None, 0.0
            elif self._outage > 0:
                self._outage -= 1
                fault = self._rng.choice(("503", "reset before"))
            else:
                fault, roll = None, self._rng.random()
                for kind, rate in self.rates.items():
                    if roll < rate:
                        fault = kind
                        break
                    roll -= rate
            if fault is not None:
                self.faults[fault] += 1
            return fault, self._rng.uniform(0.05, 0.4)

    def not_applied(self, fault: str) -> None:
        with self._lock:
            self.faults[fault] -= 1

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class _Handler(BaseHTTPRequestHandler):
    owner: FaultyS3Proxy
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass  # quiet

    def do_GET(self) -> None:
        self._proxy()

    do_PUT = do_POST = do_DELETE = do_HEAD = do_GET

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return bytes(out)
                out += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _reset(self) -> None:
        """Close with RST (SO_LINGER 0): the client sees 'connection reset by peer'."""
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close_connection = True
        self.connection.close()

    def _proxy(self) -> None:
        self.close_connection = True
        body = self._read_body()
        fault, delay = self.owner.pick()
        if fault == "reset before":
            self._reset()
            return
        if fault == "503":
            msg = (b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>SlowDown</Code>"
                   b"<Message>Please reduce your request rate (injected)</Message></Error>")
            self.send_response(503, "Slow Down")
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(msg)))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(msg)
            return
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
        headers["Content-Length"] = str(len(body))
        conn = http.client.HTTPConnection(*self.owner.upstream, timeout=60)
        try:
            conn.request(self.command, self.path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
        finally:
            conn.close()
        if fault == "reset after":
            self._reset()
            return
        if fault == "slow":
            time.sleep(delay)  # the injected fault itself
        self.send_response(resp.status, resp.reason)
        for k, v in resp.getheaders():
            if k.lower() not in HOP_BY_HOP:
                self.send_header(k, v)
        self.send_header("Content-Length", str(resp.getheader("Content-Length") or len(data)))
        self.send_header("Connection", "close")
        self.end_headers()
        if fault == "truncated" and (self.command == "HEAD" or len(data) < 2):
            self.owner.not_applied(fault)  # nothing to truncate
            fault = None
        if self.command == "HEAD":
            return
        if fault == "truncated":
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            self._reset()
            return
        self.wfile.write(data)

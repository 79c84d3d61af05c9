"""A scan whose server stops sending is cancelled after the client's timeout with a clear
UnavailableError, instead of hanging the worker's iteration forever (client/streamwatch.py);
a slow consumer of the pages is never cut off. The server is a real subprocess, stopped with
SIGSTOP (its host alive, its connection open, nothing sent)."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.serverproc import ServerProc
from tierstore.client import errors

VALUE = bytes(10_000)
KEYS = 3000  # 30 MB: far more than gRPC's flow-control windows buffer


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProc]:
    proc = ServerProc(tmp_path / "data")
    yield proc
    os.kill(proc.proc.pid, signal.SIGCONT)
    proc.close()


def _load(server: ServerProc) -> None:
    with server.client() as client:
        kv = client.key_value_store("idle", 0, 1)
        for i in range(KEYS):
            kv.put(b"k%06d" % i, VALUE)
            if i % 1000 == 999:
                kv.commit({"in:0": i})
        kv.close()


def test_a_scan_from_a_stuck_server_fails_after_the_timeout(server: ServerProc) -> None:
    _load(server)
    with server.client(timeout_s=1.5) as client:
        reader = client.reader("idle")
        items = reader.all()
        assert next(items)[0] == b"k000000"
        os.kill(server.proc.pid, signal.SIGSTOP)
        started = time.monotonic()
        with pytest.raises(errors.UnavailableError, match="sent nothing on the stream"):
            for _ in items:
                pass
        assert time.monotonic() - started < 10
        os.kill(server.proc.pid, signal.SIGCONT)
        assert sum(1 for _ in reader.all()) == KEYS  # the next scan works


def test_a_slow_consumer_is_not_cut_off(server: ServerProc) -> None:
    _load(server)
    with server.client(timeout_s=0.5) as client:
        n = 0
        for n, _ in enumerate(client.reader("idle").all(), 1):
            if n in (1, 1500):
                time.sleep(1.5)  # three timeouts between two pages: not the server's wait
        assert n == KEYS

"""Regression for a bug the broker-restart drill found: `tierstore serve` sometimes ignored
SIGTERM (no graceful shutdown, no final snapshot, until a SIGKILL). The kernel may deliver a
process-directed signal to any thread, here one of librdkafka's or gRPC's; CPython then runs
the Python handler only when the main thread next checks, and the main thread was blocked in
`Event.wait()` without a timeout, which that signal does not interrupt. Now it waits in slices.

The signal is sent to one thread that is not the main one (tgkill), as the kernel may do.
"""

from __future__ import annotations

import ctypes
import os
import platform
import signal
from pathlib import Path

import pytest

from tests.serverproc import ServerProc
from tierstore.server.cluster import wait_until

TGKILL = {"x86_64": 234, "aarch64": 131}.get(platform.machine())


@pytest.mark.skipif(TGKILL is None or not Path("/proc/self/task").exists(),
                    reason="needs Linux tgkill on x86_64 or aarch64")
def test_sigterm_to_any_thread_shuts_the_server_down(tmp_path: Path) -> None:
    server = ServerProc(tmp_path / "data")
    try:
        with server.client() as c:
            kv = c.key_value_store("sig", partition=0)
            kv.put(b"k", b"v")
            kv.commit({"in:0": 1})
        pid = server.proc.pid
        others = [int(t) for t in os.listdir(f"/proc/{pid}/task") if int(t) != pid]
        assert others, "the server has no threads besides the main one"
        libc = ctypes.CDLL(None, use_errno=True)
        assert libc.syscall(TGKILL, pid, others[-1], signal.SIGTERM) == 0
        wait_until(lambda: server.proc.poll() is not None, 20)
        assert server.proc.poll() == 0, "SIGTERM was ignored: no graceful shutdown"
        assert "signal 15: shutting down" in server.log()
    finally:
        server.close()

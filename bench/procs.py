"""Processes the benchmarks start: the tierstore server as a subprocess, and py-spy profilers.

The server is started with `python -m tierstore serve --listen 127.0.0.1:0 ...` (or, for the
memory benchmark, a small `python -c` script that calls `serve()` with a custom HotTierConfig);
its address is read from the "listening on HOST:PORT" line it prints, polled with a deadline.
The Tansu broker and moto S3 server come from tests/infra.py.
"""

from __future__ import annotations

import contextlib
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from tests.infra import S3_ENV, kill9, terminate
from tierstore.client import Client, connect


class Server:
    """A server subprocess. `kill9()` for a crash, `terminate()` for a graceful stop."""

    def __init__(self, cmd: Sequence[str], log_path: Path, timeout_s: float = 60.0,
                 cwd: Path | None = None) -> None:
        """`cwd`: the directory to start in. `python -m tierstore` imports the package from
        there before PYTHONPATH, so a run of another source tree must start in that tree."""
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(
            list(cmd), stdout=subprocess.PIPE, stderr=self._log, env={**os.environ, **S3_ENV},
            cwd=cwd,
        )
        self.pid = self.proc.pid
        try:
            self.address = self._wait_listening(timeout_s)
        except BaseException:
            self.close()
            raise

    @classmethod
    def serve(cls, data_dir: Path, *flags: str) -> Server:
        """`tierstore serve` on a free port with `data_dir` and extra flags."""
        cmd = [sys.executable, "-m", "tierstore", "serve", "--listen", "127.0.0.1:0",
               "--data-dir", str(data_dir), *flags]
        return cls(cmd, data_dir.parent / f"{data_dir.name}-server.log")

    def _wait_listening(self, timeout_s: float) -> str:
        out = self.proc.stdout
        assert out is not None
        lines: queue.Queue[bytes] = queue.Queue()

        def pump() -> None:
            for line in out:
                lines.put(line)

        threading.Thread(target=pump, daemon=True, name="server-stdout").start()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                text = lines.get(timeout=0.05).decode().strip()
            except queue.Empty:
                if self.proc.poll() is not None:
                    raise RuntimeError(
                        f"server exited with {self.proc.returncode}: {self.log_tail()}"
                    ) from None
                continue
            if text.startswith("listening on "):
                return text.removeprefix("listening on ")
        raise TimeoutError(f"server did not print 'listening on' in {timeout_s}s")

    def log_tail(self, n: int = 4000) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-n:]

    def client(self, timeout_s: float = 600.0) -> Client:
        c = connect(self.address, timeout_s=timeout_s)
        c.wait_ready(30.0)
        return c

    def kill9(self) -> None:
        kill9(self.proc, 30.0)

    def terminate(self, timeout_s: float = 120.0) -> None:
        terminate(self.proc, timeout_s)

    def close(self) -> None:
        self.kill9()
        self._log.close()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def py_spy() -> str | None:
    """The py-spy executable next to this interpreter or on PATH, if installed."""
    local = Path(sys.executable).parent / "py-spy"
    return str(local) if local.exists() else shutil.which("py-spy")


@contextlib.contextmanager
def profiled(pid: int, out: Path | None, rate: int = 100) -> Iterator[None]:
    """While the block runs, record `pid` with py-spy into `out` (collapsed stacks, the "raw"
    format; summarise with `python -m bench.profile FILE`): `out` samples every thread that is
    not idle (wall-clock view: includes waiting in C calls), and `<out stem>.gil.txt` only the
    thread holding the GIL (where Python CPU time goes). Does nothing if `out` is None or py-spy
    is not installed."""
    exe = py_spy()
    if out is None or exe is None:
        yield
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    spies = [
        subprocess.Popen(
            [exe, "record", "--format", "raw", "--rate", str(rate), "--nonblocking",
             *extra, "-o", str(path), "-p", str(pid)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        for path, extra in ((out, []), (out.with_suffix(".gil.txt"), ["--gil"]))
    ]
    try:
        yield
    finally:
        for spy in spies:
            if spy.poll() is None:
                spy.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
        for spy in spies:
            try:
                spy.wait(timeout=60)
            except subprocess.TimeoutExpired:
                spy.kill()
                spy.wait()


def prof_path(profile_dir: Path | None, name: str) -> Path | None:
    """Where `profiled` writes profile `name`, or None when not profiling."""
    return None if profile_dir is None else profile_dir / f"{name}.txt"

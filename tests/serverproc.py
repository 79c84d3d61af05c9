"""Run `tierstore serve` as a real subprocess, so tests can kill -9 it."""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

from tests.infra import S3_ENV, kill9, terminate
from tierstore.client import Client, connect


class ServerProc:
    def __init__(
        self,
        data_dir: Path,
        *,
        kafka: str | None = None,
        object_store: str | None = None,
        s3_endpoint: str | None = None,
        extra: list[str] | None = None,
        cwd: Path | None = None,
        args: list[str] | None = None,
    ) -> None:
        cmd = [sys.executable, "-m", "tierstore", "serve"]
        if args is None:
            args = ["--listen", "127.0.0.1:0", "--data-dir", str(data_dir)]
            if kafka:
                args += ["--kafka-bootstrap", kafka]
            if object_store:
                args += ["--object-store", object_store]
            if s3_endpoint:
                args += ["--s3-endpoint", s3_endpoint]
        self.log_path = data_dir.parent / f"{data_dir.name}-server.log"
        self._log = open(self.log_path, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [*cmd, *args, *(extra or [])],
            stdout=subprocess.PIPE,
            stderr=self._log,
            env={**os.environ, **S3_ENV},
            cwd=cwd,
        )
        self.address = self._wait_listening()

    def _wait_listening(self, timeout: float = 60.0) -> str:
        assert self.proc.stdout is not None
        lines: queue.Queue[bytes] = queue.Queue()
        out = self.proc.stdout

        def pump() -> None:
            for line in out:
                lines.put(line)

        threading.Thread(target=pump, daemon=True).start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = lines.get(timeout=0.1)
            except queue.Empty:
                if self.proc.poll() is not None:
                    msg = f"server exited {self.proc.returncode}: {self.log()}"
                    raise RuntimeError(msg) from None
                continue
            text = line.decode().strip()
            if text.startswith("listening on "):
                return text.removeprefix("listening on ")
        raise TimeoutError(f"server did not print 'listening on' in {timeout}s: {self.log()}")

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-4000:]

    def client(self, timeout_s: float = 30.0) -> Client:
        c = connect(self.address, timeout_s=timeout_s)
        c.wait_ready()
        return c

    def kill9(self) -> None:
        kill9(self.proc)

    def terminate(self, timeout: float = 60.0) -> int:
        return terminate(self.proc, timeout, then_kill=False)

    def close(self) -> None:
        kill9(self.proc)
        self._log.close()

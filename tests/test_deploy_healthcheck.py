"""deploy/healthcheck.py (the image's HEALTHCHECK), run for real against an in-process server."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from grpc_health.v1 import health_pb2

from tests.deploy_model import HEALTHCHECK
from tierstore.server.app import create_server
from tierstore.server.config import ServerConfig
from tierstore.server.servicer import SERVICE_NAME


def _run_healthcheck(listen: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(HEALTHCHECK), *args],
        env={**os.environ, "TIERSTORE_LISTEN": listen},
        capture_output=True, text=True, timeout=30,
    )


def _closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def test_healthcheck_against_a_real_server(tmp_path: Path) -> None:
    running = create_server(ServerConfig(listen="127.0.0.1:0", data_dir=tmp_path))
    try:
        ok = _run_healthcheck(f"127.0.0.1:{running.port}")
        assert ok.returncode == 0, ok.stderr
        ok = _run_healthcheck(f"0.0.0.0:{running.port}", SERVICE_NAME)  # wildcard: loopback
        assert ok.returncode == 0, ok.stderr
        unknown = _run_healthcheck(f"127.0.0.1:{running.port}", "no.such.Service")
        assert unknown.returncode == 1 and "NOT_FOUND" in unknown.stderr
        # NOT_SERVING, as during a graceful shutdown
        running.health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        draining = _run_healthcheck(f"127.0.0.1:{running.port}")
        assert draining.returncode == 1 and "NOT_SERVING" in draining.stderr
    finally:
        running.stop(grace=0, snapshot=False)


def test_healthcheck_fails_on_a_closed_port() -> None:
    result = _run_healthcheck(f"127.0.0.1:{_closed_port()}")
    assert result.returncode == 1
    assert "UNAVAILABLE" in result.stderr

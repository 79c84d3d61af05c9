"""A real tierstore server in this process, on a free loopback port, for tests about the wire."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tierstore.server.app import RunningServer, create_server
from tierstore.server.config import ServerConfig


@contextlib.contextmanager
def running(tmp: Path, **cfg: Any) -> Iterator[RunningServer]:
    """A server with its data under `tmp/data` and the settings `cfg` (listen defaults to a
    free port), stopped (without a snapshot) on exit."""
    cfg.setdefault("listen", "127.0.0.1:0")
    server = create_server(ServerConfig(data_dir=tmp / "data", **cfg))
    try:
        yield server
    finally:
        server.stop(grace=1.0, snapshot=False)

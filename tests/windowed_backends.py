"""Opening (and reopening) window and session stores on each backend, for the windowed tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tierstore.client import (
    Client,
    InMemorySessionStore,
    InMemoryWindowStore,
    LocalSessionStore,
    LocalWindowStore,
    SessionStoreImpl,
    WindowStoreImpl,
    connect,
)
from tierstore.client.memory import InMemoryKeyValueStore
from tierstore.server.app import RunningServer, create_server
from tierstore.server.config import ServerConfig

BACKENDS = ["remote", "local", "memory"]


class Backend:
    """Opens the same window store (and the same session store) again and again, the way a
    restarted worker would: remote claims the shard anew, local reopens the RocksDB directory,
    memory takes a new handle on the same committed state (`reopen()`). On every backend the
    uncommitted writes of the earlier handle are lost."""

    def __init__(self, kind: str, tmp_path: Path, client: Client | None, name: str) -> None:
        self.kind = kind
        self.tmp_path = tmp_path
        self.client = client
        self.name = name
        self.windows: list[WindowStoreImpl] = []
        self.sessions: list[SessionStoreImpl] = []

    def window(self, window_size_ms: int, retention_ms: int) -> WindowStoreImpl:
        ws: WindowStoreImpl
        if self.kind == "memory":
            last = self.windows[-1].kv if self.windows else None
            assert last is None or isinstance(last, InMemoryKeyValueStore)
            kv = last.reopen() if last is not None else None  # drops last's uncommitted writes
            ws = InMemoryWindowStore(window_size_ms, retention_ms, kv=kv)
        elif self.kind == "local":
            for old in self.windows:  # one handle per RocksDB directory
                old.close()
            ws = LocalWindowStore(self.tmp_path / "w", window_size_ms, retention_ms)
        else:
            assert self.client is not None
            ws = self.client.window_store(
                self.name + "-w", window_size_ms=window_size_ms, retention_ms=retention_ms
            )
        self.windows.append(ws)
        return ws

    def session(self, retention_ms: int) -> SessionStoreImpl:
        ss: SessionStoreImpl
        if self.kind == "memory":
            last = self.sessions[-1].kv if self.sessions else None
            assert last is None or isinstance(last, InMemoryKeyValueStore)
            kv = last.reopen() if last is not None else None  # drops last's uncommitted writes
            ss = InMemorySessionStore(retention_ms, kv=kv)
        elif self.kind == "local":
            for old in self.sessions:
                old.close()
            ss = LocalSessionStore(self.tmp_path / "s", retention_ms)
        else:
            assert self.client is not None
            ss = self.client.session_store(self.name + "-s", retention_ms=retention_ms)
        self.sessions.append(ss)
        return ss

    def close(self) -> None:
        for s in [*self.windows, *self.sessions]:
            s.close()


def server_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    srv = create_server(
        ServerConfig(listen="127.0.0.1:0", data_dir=tmp_path_factory.mktemp("windowed"))
    )
    yield srv
    srv.stop(grace=1)


def backend_fixture(
    request: pytest.FixtureRequest, tmp_path: Path, server: RunningServer
) -> Iterator[Backend]:
    kind = request.param
    client = connect(f"127.0.0.1:{server.port}") if kind == "remote" else None
    name = f"{request.node.name.split('[')[0]}-{tmp_path.name}"[:120]
    name = "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in name)
    b = Backend(kind, tmp_path, client, name)
    yield b
    b.close()
    if client is not None:
        client.close()

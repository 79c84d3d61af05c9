"""A zombie *server*: two servers believe they own one shard (a network partition, a slow
membership view). The changelog's offsets give the fence: the old owner's append lands after the
new owner's claim, is refused (never acknowledged), and is never restored. Real Tansu broker."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.infra import Broker
from tierstore.client import connect, errors
from tierstore.server.app import create_server
from tierstore.server.config import ServerConfig

pytestmark = pytest.mark.kafka


def _server(tmp: Path, name: str, broker: Broker) -> object:
    return create_server(ServerConfig(
        listen="127.0.0.1:0", data_dir=tmp / name, kafka_bootstrap=broker.bootstrap,
        object_store=(tmp / "objects").resolve().as_uri(),
    ))


def test_a_zombie_server_cannot_acknowledge_a_commit_after_a_takeover(
    tmp_path: Path, broker: Broker
) -> None:
    a = _server(tmp_path, "a", broker)
    b = _server(tmp_path, "b", broker)
    try:
        wa = connect(f"127.0.0.1:{a.port}").key_value_store("acct", partition=0)  # type: ignore[attr-defined]
        wa.put(b"balance", b"100")
        wa.commit({"in:0": 1})
        # Server b takes the shard over (restores it from the changelog, claims a new epoch)
        # while server a still has it open and its worker keeps writing.
        wb = connect(f"127.0.0.1:{b.port}").key_value_store("acct", partition=0)  # type: ignore[attr-defined]
        assert wb.epoch > wa.epoch
        assert wb.get(b"balance") == b"100"
        wa.put(b"balance", b"0")  # the zombie's write
        with pytest.raises(errors.FencedError, match="another server"):
            wa.commit({"in:0": 2})
        wb.put(b"balance", b"150")
        wb.commit({"in:0": 3})
    finally:
        a.stop(grace=1, snapshot=False)  # type: ignore[attr-defined]
        b.stop(grace=1, snapshot=False)  # type: ignore[attr-defined]
    c = _server(tmp_path, "c", broker)  # restores from the changelog alone
    try:
        kv = connect(f"127.0.0.1:{c.port}").key_value_store("acct", partition=0)  # type: ignore[attr-defined]
        assert kv.get(b"balance") == b"150"
        assert kv.committed_offsets == {"in:0": 3}
    finally:
        c.stop(grace=1, snapshot=False)  # type: ignore[attr-defined]

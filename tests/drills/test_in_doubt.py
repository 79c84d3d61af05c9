"""Regression for a bug the disk-full drill found: a commit that got no answer (UnavailableError)
but was applied, followed by another `commit()` on the same handle, silently lost the writes of
the second one. The handle reused the commit number, and the server, which applies a commit
number once, acknowledged the second commit as a retry of the first and applied nothing.
Now a commit without an answer closes the handle with a message that says to reopen it, as the
docs always asked; the reopened handle's committed_offsets tell whether the commit landed.

The server (in this process) applies the commit and holds its answer past the client's deadline,
so the outcome is deterministic.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from tierstore.client import connect, errors
from tierstore.server.app import create_server
from tierstore.server.config import ServerConfig


def test_a_commit_without_an_answer_closes_the_handle(tmp_path: Path) -> None:
    running = create_server(ServerConfig(listen="127.0.0.1:0", data_dir=tmp_path / "data"))
    svc = running.service
    applied_then_held = threading.Event()
    release = threading.Event()
    real_commit = svc.commit
    hold = {"next": False}

    def commit_and_lose_the_answer(*args: Any, **kwargs: Any) -> Any:
        result = real_commit(*args, **kwargs)
        if hold["next"]:
            hold["next"] = False
            applied_then_held.set()
            release.wait(30)  # the answer arrives after the client's deadline
        return result

    svc.commit = commit_and_lose_the_answer  # type: ignore[method-assign]
    try:
        with connect(f"127.0.0.1:{running.port}", timeout_s=0.5) as client:
            kv = client.key_value_store("doubt", partition=0)
            kv.put(b"a", b"1")
            kv.commit({"in:0": 1})
            kv.put(b"b", b"2")
            hold["next"] = True
            with pytest.raises(errors.UnavailableError):
                kv.commit({"in:0": 2})  # applied, but the answer is lost
            assert applied_then_held.is_set()
            release.set()
            kv2 = None
            try:
                kv.put(b"c", b"3")
                kv.commit({"in:0": 3})  # before the fix: acknowledged, and "c" never applied
            except errors.StoreClosedError as exc:
                assert "reopen" in str(exc)
            else:
                kv2 = client.key_value_store("doubt", partition=0)
                assert kv2.get(b"c") == b"3", "an acknowledged commit was not applied"
            kv2 = kv2 or client.key_value_store("doubt", partition=0)
            assert kv2.committed_offsets == {"in:0": 2}  # the commit in doubt landed
            assert dict(kv2.all()) == {b"a": b"1", b"b": b"2"}
    finally:
        release.set()
        running.stop(grace=1)

"""examples/wordcount.py: a commit that fails while partitions are being revoked drops them; it
must not claim them again (that would fence the worker they are moving to). The Worker object is
driven without a broker: the consumer and the partition's stores are stand-ins at that seam."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from tierstore.client import errors

WORKER = Path(__file__).resolve().parent.parent / "examples" / "wordcount.py"


def _module() -> Any:
    spec = importlib.util.spec_from_file_location("wordcount_example", WORKER)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


class _Stores:
    def __init__(self, fail: Exception) -> None:
        self.fail = fail
        self.closed = False

    def commit(self, offset: int) -> None:
        raise self.fail

    def close(self) -> None:
        self.closed = True


@pytest.mark.parametrize("fail", [errors.UnavailableError("no answer to the commit"),
                                  errors.FencedError("fenced")])
def test_a_failed_commit_on_revoke_drops_the_partition_without_reclaiming_it(
    fail: Exception,
) -> None:
    mod = _module()
    worker = mod.Worker.__new__(mod.Worker)  # no broker: only what release() uses
    claims: list[list[int]] = []
    paused: list[Any] = []
    stores = _Stores(fail)
    worker.topic = "words"
    worker.states = {3: stores}
    worker.pending = {3: 42}
    worker.consumer = SimpleNamespace(pause=paused.append, seek=lambda tp: None)
    worker.claim = lambda parts: claims.append(parts) or []
    worker.on_revoke(worker.consumer, [SimpleNamespace(partition=3)])
    assert claims == []  # not reclaimed: its next owner is not fenced
    assert paused == []
    assert 3 not in worker.states and stores.closed

"""The restore progress a scrape shows (tierstore_restore_* gauges, server/registry.py's
RestoreProgress): a load that fails must not keep showing as a restore in progress."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.faultlog import FaultyChangelog
from tests.memlog import MemoryChangelog
from tests.test_metrics import Samples, value
from tierstore.server.config import ServerConfig
from tierstore.server.errors import StateStoreError
from tierstore.server.metrics import StateCollector
from tierstore.server.objectstore import LocalObjectStore
from tierstore.server.service import StoreService


def _scrape(svc: StoreService) -> Samples:
    return {(s.name, frozenset(s.labels.items())): s.value
            for m in StateCollector(svc).collect() for s in m.samples}


def test_a_failed_load_is_not_shown_as_a_restore_in_progress(tmp_path: Path) -> None:
    log = FaultyChangelog(MemoryChangelog())
    svc = StoreService(ServerConfig(data_dir=tmp_path / "data"),
                       LocalObjectStore(tmp_path / "objects"), log)  # type: ignore[arg-type]
    try:
        log.fail_reads = 1  # the replay of the shard's changelog fails
        with pytest.raises(StateStoreError):
            svc.open("counts", 0, "kv", 1)
        m = _scrape(svc)
        labels = {"store": "counts", "partition": "0"}
        assert value(m, "tierstore_restore_in_progress", **labels) == 0
        seconds = value(m, "tierstore_restore_seconds", **labels)
        assert value(_scrape(svc), "tierstore_restore_seconds", **labels) == seconds  # stopped
        svc.open("counts", 0, "kv", 1)  # the next load succeeds
        assert value(_scrape(svc), "tierstore_restore_in_progress", **labels) == 0
    finally:
        svc.shutdown(snapshot=False)

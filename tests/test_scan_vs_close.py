"""A scan still open (a slow or idle client) while its shard is evicted (in process: real hot
tier, real local object store).

A RocksDB iterator holds its database open, and its LOCK, after `close()`: the evicted shard
could not be loaded again (every request answered UNAVAILABLE "locked by another process")
for as long as the scan lived, which a slow consumer may make minutes. Closing a shard
database now ends its open scans, and the scan answers UNAVAILABLE (retry) rather than
stopping early as if it had reached the end.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tierstore.server.config import ServerConfig
from tierstore.server.errors import UnavailableError
from tierstore.server.objectstore import LocalObjectStore
from tierstore.server.service import StoreService


@pytest.mark.parametrize("reverse", [False, True])
def test_an_open_scan_does_not_keep_an_evicted_shard_from_loading(
    tmp_path: Path, reverse: bool,
) -> None:
    cfg = ServerConfig(data_dir=tmp_path / "data", evict_idle_s=0)
    svc = StoreService(cfg, LocalObjectStore(tmp_path / "objects"), None)
    try:
        meta, spec = svc.open("s", 0, "kv", 1)
        keys = [b"k%04d" % i for i in range(100)]
        svc.commit("s", 0, meta.epoch, 1, 0, keys, [b"v"] * 100, [], {"in:0": 1})
        pages = svc.scan("s", 0, 0, None, None, None, reverse, 10, 0)
        assert len(next(pages)) == 10  # the client reads one page, then waits
        shard = svc.registry.shard(spec, 0)
        assert svc.evictor.evict(shard)
        # The next request loads the shard again, while the scan is still open.
        assert svc.get("s", 0, 0, [b"k0050"]) == [b"v"]
        with pytest.raises(UnavailableError):  # not a short scan that looks complete
            for _ in pages:
                pass
    finally:
        svc.shutdown(snapshot=False)

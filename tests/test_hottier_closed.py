"""A shard database closed between the open check and the read (eviction or a move on another
thread) answers a retryable UnavailableError (gRPC UNAVAILABLE), not rocksdict's own
DbClosedError (which reached the client as INTERNAL)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tierstore.server.errors import UnavailableError
from tierstore.server.hottier import HotTier


def test_reads_of_a_database_closed_under_them_are_unavailable(tmp_path: Path) -> None:
    tier = HotTier(tmp_path)
    db = tier.open(tmp_path / "shard")
    db.get_many([b"k"])
    db._db.close()  # closed by another thread after the reader's open check passed
    for read in (lambda: db.get_many([b"k"]), lambda: db.get(b"k"),
                 lambda: db.iterate(None, None), lambda: db.iterate(b"a", b"z", reverse=True)):
        with pytest.raises(UnavailableError, match="closed"):
            read()

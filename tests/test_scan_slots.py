"""Open scans have threads of their own (--max-open-scans, on top of --grpc-workers): scans left
open and unread cannot take the threads commits and gets need, and a scan beyond the cap fails
at once with RESOURCE_EXHAUSTED naming the setting. A real server in-process with one gRPC
worker; the scans are real Scan streams held open by iterators read only partly."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.inproc import running
from tierstore.client import connect, errors
from tierstore.server.cluster import wait_until


def test_open_scans_do_not_starve_commits_and_are_capped(tmp_path: Path) -> None:
    with running(tmp_path, grpc_workers=1, max_get_streams=1, max_open_scans=2,
                 scan_page_size=10) as server:
        target = f"127.0.0.1:{server.port}"
        with connect(target, timeout_s=5) as c, c.key_value_store("s") as kv:
            # 16 MB: far past what gRPC buffers for an unread stream, so its call stays open
            kv.put_all([(b"k%05d" % i, b"v" * 8000) for i in range(2000)])
            kv.commit({"in:0": 1})
            r = c.reader("s")
            first, second = iter(r.all()), iter(r.all())
            assert next(first)[0] == next(second)[0] == b"k00000"
            # Both scans are open and unread, holding a thread each; the one worker is free.
            kv.put(b"new", b"1")
            kv.commit({"in:0": 2})
            assert kv.get(b"k00001") == b"v" * 8000
            assert r.approximate_num_entries() >= 1000  # a unary Count
            with pytest.raises(errors.ResourceExhaustedError, match="--max-open-scans"):
                next(iter(r.all()))
            del first, second  # closing the iterators ends their calls: the slots come back
            assert wait_until(lambda: _scans(r), 10), "no scan slot came back"
            assert sum(1 for _ in r.all()) == 2001


def _scans(r: object) -> bool:
    try:
        return next(iter(r.all()))[0] == b"k00000"  # type: ignore[attr-defined]
    except errors.ResourceExhaustedError:
        return False


def test_open_streams_and_scans_are_metrics(tmp_path: Path) -> None:
    from tests.test_metrics import scrape, value

    with running(tmp_path, metrics_listen="127.0.0.1:0", max_open_scans=5,
                 max_get_streams=7, scan_page_size=10) as server:
        assert server.metrics is not None
        before = scrape(server.metrics.port)
        assert value(before, "tierstore_scans_limit") == 5
        assert value(before, "tierstore_get_streams_limit") == 7
        assert value(before, "tierstore_scans_open") == 0
        assert value(before, "tierstore_get_streams_open") == 0
        with connect(f"127.0.0.1:{server.port}", timeout_s=5) as c, c.key_value_store("s") as kv:
            kv.put_all([(b"k%05d" % i, b"v" * 8000) for i in range(2000)])
            kv.commit({"in:0": 1})
            assert kv.get(b"k00001") == b"v" * 8000  # on a GetStream, which stays open
            open_scan = iter(c.reader("s").all())
            next(open_scan)
            during = scrape(server.metrics.port)
            assert value(during, "tierstore_get_streams_open") == 1
            assert value(during, "tierstore_scans_open") == 1
            del open_scan
            assert wait_until(lambda: value(scrape(server.metrics.port),  # type: ignore[union-attr]
                                            "tierstore_scans_open") == 0, 10)

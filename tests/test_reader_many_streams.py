"""A reader's merge over more partitions (or window segments) than the server has worker threads
and HTTP/2 streams per connection. Each open Scan stream holds a server thread while the client
does not read it (flow control), and a merge reads the streams in key order: with one stream per
partition, the partitions beyond the server's free threads never started, and the merge waited
for them until the client's timeout (UnavailableError). Merges now read each partition in
chunks, each a whole Scan call (client/reader.py, CHUNK). A real server in-process, with 3
workers and 3 streams per connection, and more data per partition than one chunk."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from tierstore.client import connect
from tierstore.client.reader import CHUNK
from tierstore.server.app import create_server
from tierstore.server.config import ServerConfig

PARTITIONS = 8
PER_PARTITION = CHUNK + 500  # past a chunk's end: the merge resumes each partition once


@contextlib.contextmanager
def small_server(tmp_path: Path) -> Iterator[str]:
    srv = create_server(ServerConfig(listen="127.0.0.1:0", data_dir=tmp_path / "data",
                                     grpc_workers=3, max_concurrent_streams=3))
    try:
        yield f"127.0.0.1:{srv.port}"
    finally:
        srv.stop(grace=1)


def test_a_kv_merge_over_more_partitions_than_server_threads(tmp_path: Path) -> None:
    with small_server(tmp_path) as target, connect(target, timeout_s=3) as c:
        want = []
        for p in range(PARTITIONS):
            with c.key_value_store("many", partition=p, num_partitions=PARTITIONS) as h:
                items = [(b"p%d-%05d" % (p, i), b"x" * 1000) for i in range(PER_PARTITION)]
                h.put_all(items)
                h.commit({})
                want += items
        want.sort()
        r = c.reader("many")
        assert list(r.all()) == want
        assert list(r.reverse_range(None, None)) == want[::-1]
        assert list(r.prefix_scan(b"p3-")) == [e for e in want if e[0].startswith(b"p3-")]
        assert list(r.range(b"p2-00100", b"p5-01200")) == [
            e for e in want if b"p2-00100" <= e[0] <= b"p5-01200"]
        assert list(r.reverse_range(b"p2-00100", b"p5-01200")) == [
            e for e in want if b"p2-00100" <= e[0] <= b"p5-01200"][::-1]


def test_a_window_merge_over_more_partitions_than_server_threads(tmp_path: Path) -> None:
    with small_server(tmp_path) as target, connect(target, timeout_s=3) as c:
        want = []
        for p in range(PARTITIONS):
            with c.window_store("wmany", partition=p, num_partitions=PARTITIONS,
                                window_size_ms=1000, retention_ms=10**9) as w:
                for i in range(PER_PARTITION):
                    key = b"p%d-%05d" % (p, i)
                    w.put(key, b"y" * 500, 5000)
                    want.append((key, 5000, b"y" * 500))
                w.commit({})
        want.sort()
        r = c.window_reader("wmany")
        assert list(r.fetch_all(0, 10_000)) == want

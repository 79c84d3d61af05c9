"""Workers started together (one per partition) make the first claims of a new store at the
same moment: every claim succeeds and the store is created once (a server subprocess on a free
port, one client thread per partition released together)."""

from __future__ import annotations

import threading
from pathlib import Path

from tests.serverproc import ServerProc
from tierstore.client import connect

PARTITIONS = 8


def test_concurrent_first_claims_of_a_new_store_all_succeed(tmp_path: Path) -> None:
    srv = ServerProc(tmp_path / "data")
    try:
        for round_ in range(5):  # a race: several new stores, each claimed 8 ways at once
            name = f"race-{round_}"
            barrier = threading.Barrier(PARTITIONS)
            errors: list[BaseException] = []

            def claim(p: int, name: str = name, barrier: threading.Barrier = barrier,
                      errors: list[BaseException] = errors) -> None:
                try:
                    with connect(srv.address) as client:
                        barrier.wait(10)
                        kv = client.key_value_store(name, partition=p,
                                                    num_partitions=PARTITIONS)
                        kv.put(b"k", b"%d" % p)
                        kv.commit({f"in:{p}": 1})
                        kv.close()
                except BaseException as exc:  # collected: the test names every failure
                    errors.append(exc)

            threads = [threading.Thread(target=claim, args=(p,)) for p in range(PARTITIONS)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
            assert not errors, f"{name}: {errors}"
        specs = sorted(p.name for p in (tmp_path / "data" / "stores").iterdir())
        assert specs == [f"race-{i}.json" for i in range(5)], specs  # no temporary files left
    finally:
        srv.close()

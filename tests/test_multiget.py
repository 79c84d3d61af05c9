"""Large multi-gets are split across an idle helper thread (server/multiget.py): same answers
in the same order, a helper is never waited for, and an error in either half surfaces. The last
test reads through a real shard database (ShardDB.get_many)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from tierstore.server.cluster import wait_until
from tierstore.server.hottier import HotTier, ShardMeta
from tierstore.server.multiget import MultiGetHelpers


def _recording(calls: list[tuple[int, list[bytes]]]):  # type: ignore[no-untyped-def]
    def get(keys: list[bytes]) -> list[bytes | None]:
        calls.append((threading.get_ident(), list(keys)))
        return [None if k.endswith(b"7") else k.upper() for k in keys]
    return get


def _keys(n: int) -> list[bytes]:
    return [b"k%03d" % i for i in range(n)]


def test_small_runs_whole_large_is_split_in_order() -> None:
    helpers = MultiGetHelpers(helpers=1, split_at=8)
    try:
        calls: list[tuple[int, list[bytes]]] = []
        get = _recording(calls)
        small = _keys(7)
        assert helpers.get_many(get, small) == get(small)
        assert len(calls) == 2 and calls[0][1] == small  # one call for the small request
        calls.clear()
        big = _keys(100)
        assert helpers.get_many(get, big) == [None if k.endswith(b"7") else k.upper()
                                              for k in big]
        assert [c[1] for c in calls] in ([big[:50], big[50:]], [big[50:], big[:50]])
        assert len({c[0] for c in calls}) == 2  # the two halves ran on two threads
    finally:
        helpers.shutdown()


def test_a_busy_helper_is_not_waited_for() -> None:
    helpers = MultiGetHelpers(helpers=1, split_at=8)
    release = threading.Event()
    started = threading.Event()

    def stuck(keys: list[bytes]) -> list[bytes | None]:
        if threading.current_thread().name.startswith("multiget"):
            started.set()
            release.wait(30)
        return [None] * len(keys)

    blocked = threading.Thread(target=helpers.get_many, args=(stuck, _keys(20)))
    blocked.start()
    try:
        assert started.wait(10)  # the only helper holds a half
        calls: list[tuple[int, list[bytes]]] = []
        got = helpers.get_many(_recording(calls), _keys(20))
        assert len(got) == 20 and len(calls) == 1  # whole, on this thread, without waiting
        assert calls[0][0] == threading.get_ident()
    finally:
        release.set()
        blocked.join(10)
        helpers.shutdown()


@pytest.mark.parametrize("failing_half", [0, 1])
def test_an_error_in_either_half_surfaces_and_frees_the_helper(failing_half: int) -> None:
    helpers = MultiGetHelpers(helpers=1, split_at=8)
    keys = _keys(20)
    bad = keys[:10] if failing_half == 0 else keys[10:]

    def get(ks: list[bytes]) -> list[bytes | None]:
        if ks == bad:
            raise RuntimeError("closed (test)")
        return list(ks)

    try:
        with pytest.raises(RuntimeError, match="closed"):
            helpers.get_many(get, keys)
        calls: list[tuple[int, list[bytes]]] = []

        def split_again() -> bool:  # the helper is released once its half is done
            calls.clear()
            helpers.get_many(_recording(calls), keys)
            return len(calls) == 2

        assert wait_until(split_again, 5, 0.01)
    finally:
        helpers.shutdown()


def test_shard_database_multi_get(tmp_path: Path) -> None:
    db = HotTier(tmp_path / "hot").open(tmp_path / "hot" / "s")
    try:
        keys = _keys(300)
        wb = db.prepare(keys[::2], [k + b"=v" for k in keys[::2]], [])
        db.write_prepared(wb, ShardMeta(1, 1, 0, {}), sync=False)
        want = [k + b"=v" if i % 2 == 0 else None for i, k in enumerate(keys)]
        assert db.get_many(keys) == want
        assert db.get_many(list(reversed(keys))) == list(reversed(want))
        assert db.get_many(keys[:3]) == want[:3]
    finally:
        db.close()


def test_a_forked_child_gets_its_own_helpers() -> None:
    """The parent's helper threads do not exist in a forked child: a split there must not wait
    for them forever."""
    import os

    from tierstore.server import multiget

    parent = multiget.helpers()
    parent.get_many(lambda ks: list(ks), _keys(100))  # the parent's helper thread exists
    pid = os.fork()
    if pid == 0:  # the child: answer with the split, or be killed by the parent's timeout
        try:
            ok = multiget.helpers() is not parent and multiget.helpers().get_many(
                lambda ks: list(ks), _keys(100)) == _keys(100)
        finally:
            os._exit(0 if ok else 1)
    status: list[int] = []

    def exited() -> bool:
        done, code = os.waitpid(pid, os.WNOHANG)
        if done:
            status.append(os.waitstatus_to_exitcode(code))
        return bool(done)

    if not wait_until(exited, 5):
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        raise AssertionError("the forked child's multi-get hung")
    assert status == [0]

"""`tierstore restore --to DIR` builds the database next to DIR and renames it into place only
when complete: a run killed midway (here: the process exits hard right after the download,
before the replay) leaves nothing at DIR that a server could later take for a shard's state."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tierstore.server.config import ServerConfig
from tierstore.server.objectstore import LocalObjectStore
from tierstore.server.service import StoreService

KILLED_AFTER_DOWNLOAD = """
import os, sys
from tierstore.server.snapshots import SnapshotStore
real = SnapshotStore.restore_latest
def restore_then_die(self, *args, **kwargs):
    real(self, *args, **kwargs)
    os._exit(9)  # as a kill -9 after the download
SnapshotStore.restore_latest = restore_then_die
from tierstore.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _snapshot(tmp_path: Path) -> Path:
    objects = tmp_path / "objects"
    svc = StoreService(ServerConfig(data_dir=tmp_path / "data"), LocalObjectStore(objects), None)
    try:
        meta, _ = svc.open("cmd", 0, "kv", 1)
        svc.commit("cmd", 0, meta.epoch, 1, 0, [b"k"], [b"v"], [], {"in:0": 1})
        assert svc.snapshot("cmd", 0)
    finally:
        svc.shutdown(snapshot=False)
    return objects


def _restore(objects: Path, dest: Path, *, killed: bool) -> subprocess.CompletedProcess[str]:
    code = ["-c", KILLED_AFTER_DOWNLOAD] if killed else ["-m", "tierstore"]
    return subprocess.run(
        [sys.executable, *code, "restore", "cmd/0", "--to", str(dest),
         "--object-store", objects.as_uri(), "--no-progress"],
        capture_output=True, text=True, timeout=120)


def test_a_killed_restore_leaves_nothing_at_dir(tmp_path: Path) -> None:
    objects = _snapshot(tmp_path)
    dest = tmp_path / "out" / "shard"
    dest.parent.mkdir()
    run = _restore(objects, dest, killed=True)
    assert run.returncode == 9, run.stderr
    assert not dest.exists()
    run = _restore(objects, dest, killed=False)  # a later run is not confused by the leftover
    assert run.returncode == 0, run.stderr
    assert (dest / "CURRENT").exists()


def test_an_existing_empty_dir_is_filled_only_when_complete(tmp_path: Path) -> None:
    objects = _snapshot(tmp_path)
    dest = tmp_path / "empty"
    dest.mkdir()
    assert _restore(objects, dest, killed=True).returncode == 9
    assert dest.is_dir() and not any(dest.iterdir())
    run = _restore(objects, dest, killed=False)
    assert run.returncode == 0, run.stderr
    assert "restored cmd/0" in run.stdout and (dest / "CURRENT").exists()

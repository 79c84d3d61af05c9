"""The generated code matches proto/, and the README's commands and example work as written."""

from __future__ import annotations

import filecmp
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.serverproc import ServerProc

ROOT = Path(__file__).resolve().parent.parent


def test_generated_protobuf_is_up_to_date(tmp_path: Path) -> None:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_proto.py"), str(tmp_path)],
        check=True, env=env, capture_output=True,
    )
    generated = sorted(p.name for p in (tmp_path / "tierstore" / "v1").iterdir())
    assert generated, "protoc produced nothing"
    for name in generated:
        ours = ROOT / "tierstore" / "v1" / name
        assert ours.exists(), f"{name} is missing: run `make proto`"
        assert filecmp.cmp(ours, tmp_path / "tierstore" / "v1" / name, shallow=False), (
            f"tierstore/v1/{name} is stale: run `make proto` and commit the result"
        )


def test_readme_has_exactly_two_setup_commands() -> None:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"## Two commands\n\n```sh\n(.*?)```", text, re.S)
    assert block is not None
    commands = [ln.split("#")[0].strip() for ln in block.group(1).splitlines() if ln.strip()]
    assert commands == ["make run", "make test"]
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def _readme_python_example() -> str:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```python\n(.*?)```", text, re.S)
    assert block is not None
    return block.group(1)


def test_serve_with_no_flags_is_the_embedded_default_and_runs_the_readme_example(
    tmp_path: Path,
) -> None:
    """`tierstore serve` with no flags listens on 127.0.0.1:7070, data in ./tierstore-data."""
    srv = ServerProc(tmp_path / "unused", args=[], cwd=tmp_path)
    try:
        assert srv.address == "127.0.0.1:7070"
        result = subprocess.run(
            [sys.executable, "-c", _readme_python_example()],
            capture_output=True, text=True, timeout=60, cwd=tmp_path,
        )
        assert result.returncode == 0, result.stderr
        assert "{'orders:0': 42}" not in result.stdout  # a fresh store: no offsets yet
        assert "[(b'b', b'2'), (b'k', b'v')]" in result.stdout
        assert (tmp_path / "tierstore-data" / "shards" / "counts" / "0" / "CURRENT").exists()
        assert srv.terminate() == 0
        assert (tmp_path / "tierstore-data" / "snapshots").is_dir()
    finally:
        srv.close()


@pytest.mark.parametrize("flag,value,expect", [
    ("--listen", "nonsense", "listen"),
    ("--snapshot-keep", "zero", "snapshot_keep"),
    ("--object-store", "ftp://x", "object_store"),
])
def test_bad_configuration_is_refused_naming_the_key(
    tmp_path: Path, flag: str, value: str, expect: str
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tierstore", "serve", "--data-dir", str(tmp_path), flag, value],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2
    assert expect in result.stderr

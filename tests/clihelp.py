"""What a command's --help lists: shared by the checks that keep docs/ and deploy/ honest."""

from __future__ import annotations

import functools
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FLAG_RE = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")


@functools.cache
def script_options(path: str) -> frozenset[str]:
    """The options `python PATH --help` lists (PATH relative to the repository root), e.g. an
    example worker's: they are its own, not tierstore's."""
    out = subprocess.run([sys.executable, str(ROOT / path), "--help"], capture_output=True,
                         text=True, timeout=60, check=True).stdout
    return frozenset(FLAG_RE.findall(out))

"""`tierstore bench ...`: the benchmarks (`python -m bench`), from the same command line.

The benchmarks live in the source checkout (bench/ at the repository root), not in the installed
package: run this from the repository root, or with the checkout on PYTHONPATH.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable, Sequence
from types import ModuleType

from tierstore.commands.common import Command, ServerFlags, SubParsers


def add_parser(sub: SubParsers, server_flags: ServerFlags) -> dict[str, Command]:
    p = sub.add_parser("bench", add_help=False,
                       help="run the benchmarks (python -m bench; `tierstore bench --help`)")
    p.add_argument("args", nargs=argparse.REMAINDER)
    return {"bench": lambda args: forward(args.args)}


def _load() -> ModuleType | None:
    """bench.__main__ from sys.path, else from the current directory's checkout."""
    for extra in (None, os.getcwd()):
        if extra is not None:
            if not os.path.isfile(os.path.join(extra, "bench", "__main__.py")):
                return None
            sys.path.insert(0, extra)
        try:
            module = importlib.import_module("bench.__main__")
        except ImportError:
            sys.modules.pop("bench", None)
            continue
        if hasattr(module, "main") and hasattr(sys.modules.get("bench"), "BENCHMARKS"):
            return module
        sys.modules.pop("bench", None)
        sys.modules.pop("bench.__main__", None)
    return None


def forward(argv: Sequence[str]) -> int:
    module = _load()
    if module is None:
        print("tierstore bench: error: the benchmarks are not installed: they live in bench/ of "
              "the source checkout; run `tierstore bench` from the repository root (or put the "
              "checkout on PYTHONPATH)", file=sys.stderr)
        return 1
    main: Callable[[Sequence[str]], int] = module.main
    try:
        return int(main(list(argv)) or 0)
    except SystemExit as exc:  # argparse inside bench: --help (0) or a usage error (2)
        return exc.code if isinstance(exc.code, int) else 1

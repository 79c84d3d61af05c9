"""Summarise py-spy profiles in the collapsed-stack ("raw") format that `--profile` records:
`python -m bench.profile FILE [FILE...] [--top N]` prints the frames with the most samples,
by self time (the sampled frame itself) and inclusive time (anywhere on the stack)."""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

_LINE = re.compile(r"^(.*) (\d+)$")
_FRAME = re.compile(r"^(?P<fn>.*?) \((?P<file>[^():]+)(?::\d+)?\)$")


def frame_name(frame: str) -> str:
    """'put (/x/y/tierstore/client/buffered.py:97)' -> 'put (client/buffered.py)'."""
    m = _FRAME.match(frame.strip())
    if not m:
        return frame.strip()
    parts = Path(m.group("file")).parts
    short = "/".join(parts[-2:]) if len(parts) >= 2 else m.group("file")
    return f"{m.group('fn')} ({short})"


def summarise(paths: Sequence[Path]) -> tuple[int, Counter[str], Counter[str]]:
    """(total samples, self samples per frame, inclusive samples per frame)."""
    total = 0
    self_c: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    for path in paths:
        for line in path.read_text(errors="replace").splitlines():
            m = _LINE.match(line)
            if not m:
                continue
            n = int(m.group(2))
            frames = [frame_name(f) for f in m.group(1).split(";") if f]
            if not frames:
                continue
            total += n
            self_c[frames[-1]] += n
            for f in set(frames):
                incl[f] += n
    return total, self_c, incl


def render(paths: Sequence[Path], top: int = 15) -> str:
    total, self_c, incl = summarise(paths)
    if total == 0:
        return "no samples"
    lines = [f"{total} samples in {', '.join(p.name for p in paths)}", "", "self time:"]
    lines += [f"  {100 * n / total:5.1f}%  {f}" for f, n in self_c.most_common(top)]
    lines += ["", "inclusive time:"]
    lines += [f"  {100 * n / total:5.1f}%  {f}" for f, n in incl.most_common(top)]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args(argv)
    print(render(args.files, args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A warning for secret files that other users of the machine can read.

Token files and TLS private keys belong to the process that uses them (mode 0600 or 0400).
Like ssh with a private key, tierstore checks the mode when it reads such a file; unlike ssh it
only warns, because Kubernetes mounts Secret volumes 0644 unless `defaultMode` says otherwise,
and refusing to start there would surprise more than it protects.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path


def exposure(path: str | Path) -> str | None:
    """Why `path` is readable by others, e.g. "mode 0644: readable by its group and by every
    user"; None when only its owner can read it (or on a system without POSIX modes)."""
    if os.name != "posix":
        return None
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return None  # the reader reports a missing or unreadable file itself
    who = [w for bit, w in ((stat.S_IRGRP, "its group"), (stat.S_IROTH, "every user"))
           if mode & bit]
    if not who:
        return None
    return f"mode {mode:04o}: readable by {' and by '.join(who)}"


def warning(path: str | Path, what: str) -> str | None:
    """A one-line warning for `what` (e.g. "--tls-key") at `path`, or None if it is private."""
    why = exposure(path)
    if why is None:
        return None
    return (f"{what} {path} is not private ({why}); make it readable by its owner only "
            f"(chmod 600, or defaultMode: 0400 for a Kubernetes Secret volume)")


def warn(path: str | Path, what: str, logger: logging.Logger, hint: str = "") -> None:
    """Log `warning(path, what)` (with `hint` after it) on `logger` if there is one."""
    if (text := warning(path, what)) is not None:
        logger.warning("%s%s", text, hint)

"""Shared pieces of the `tierstore` subcommands: arguments, errors, tables, progress bars.

Exit codes: 0 success, 1 failure (the server, the object store or the changelog said no, or
could not be reached), 2 usage (argparse, or an argument that does not parse).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

from tqdm import tqdm

from tierstore import secretfile
from tierstore.client import Client, TLSConfig, connect

if TYPE_CHECKING:
    from tierstore.server.hottier import HotTier

OK, FAILED, USAGE = 0, 1, 2

# What each command module's add_parser takes and returns (tierstore.cli collects them).
Command = Callable[[argparse.Namespace], int]
SubParsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"  # not at runtime
ServerFlags = Callable[[argparse.ArgumentParser], None]


class CommandError(Exception):
    """A failure to report on stderr; exit code 1 (or `code`)."""

    def __init__(self, message: str, code: int = FAILED) -> None:
        super().__init__(message)
        self.code = code


def parse_shard(text: str, need_partition: bool) -> tuple[str, int]:
    """`STORE` -> (STORE, -1); `STORE/PARTITION` -> (STORE, PARTITION). Usage error otherwise."""
    store, sep, part = text.partition("/")
    form = "STORE/PARTITION" if need_partition else "STORE[/PARTITION]"
    if not store or (sep and not part.isdigit()) or (need_partition and not sep):
        raise CommandError(f"expected {form}, got {text!r}", USAGE)
    return store, int(part) if sep else -1


# --- arguments ---------------------------------------------------------------------------------
def add_server_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--server", metavar="HOST:PORT", required=required,
                   help="address of a running tierstore server")
    p.add_argument("--token", default=None,
                   help="bearer token, if the server requires one (visible to other users in "
                   "the process list: prefer --token-file or TIERSTORE_TOKEN)")
    p.add_argument("--token-file", metavar="FILE", default=None,
                   help="read the bearer token from FILE (its first line)")
    p.add_argument("--tls", action="store_true",
                   help="connect with TLS, verifying the server with the system CA roots")
    p.add_argument("--tls-ca", metavar="FILE", default=None,
                   help="connect with TLS, verifying the server with this PEM CA (a private CA)")
    p.add_argument("--tls-cert", metavar="FILE", default=None,
                   help="PEM client certificate, for servers that require mTLS (with --tls-key)")
    p.add_argument("--tls-key", metavar="FILE", default=None, help="PEM key of --tls-cert")
    p.add_argument("--tls-server-name", metavar="NAME", default=None,
                   help="the name to expect in the server's certificate (when dialing an IP)")
    p.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS",
                   help="deadline of each call (default 30; snapshots get at least 300)")


def add_object_store_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--object-store", metavar="URL", required=required,
                   help="snapshot location: file:///path or s3://bucket/prefix")
    p.add_argument("--s3-endpoint", metavar="URL", default=None,
                   help="S3 endpoint URL, for S3-compatible servers (credentials come from "
                   "boto3's usual chain: AWS_* variables, ~/.aws, instance roles)")


def add_output_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="show progress bars on stderr (default: when stderr is a terminal)")


def offline_hot_tier(root: Path) -> HotTier:
    """A small hot tier for commands that open shard databases themselves (restore, fork)."""
    from tierstore.server.hottier import HotTier, HotTierConfig

    mib = 1024 * 1024
    return HotTier(root, HotTierConfig(block_cache_bytes=64 * mib, write_buffer_bytes=64 * mib))


TOKEN_ENV = "TIERSTORE_TOKEN"


def token_of(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> str | None:
    """--token, else the first line of --token-file, else $TIERSTORE_TOKEN, else None."""
    if args.token is not None and args.token_file is not None:
        raise CommandError("give --token or --token-file, not both", USAGE)
    if args.token is not None:
        return str(args.token)
    if args.token_file is not None:
        try:
            lines = Path(args.token_file).read_text().splitlines()
        except OSError as exc:
            raise CommandError(f"--token-file {args.token_file}: {exc.strerror or exc}",
                               USAGE) from exc
        token = lines[0].strip() if lines else ""
        if not token:
            raise CommandError(f"--token-file {args.token_file}: the file is empty", USAGE)
        if (warning := secretfile.warning(args.token_file, "--token-file")) is not None:
            print(f"warning: {warning}", file=sys.stderr)
        return token
    env = os.environ if environ is None else environ
    return env.get(TOKEN_ENV) or None


def tls_of(args: argparse.Namespace) -> bool | TLSConfig | None:
    """None (plaintext), True (system roots) or a TLSConfig from the --tls-* flags."""
    if (args.tls_cert is None) != (args.tls_key is None):
        raise CommandError("give both --tls-cert and --tls-key, or neither", USAGE)
    if args.tls_ca or args.tls_cert or args.tls_server_name:
        return TLSConfig(ca_file=args.tls_ca, cert_file=args.tls_cert, key_file=args.tls_key,
                         server_name=args.tls_server_name)
    return True if args.tls else None


def client_of(args: argparse.Namespace) -> Client:
    return connect(args.server, tls=tls_of(args), token=token_of(args), timeout_s=args.timeout)


def run_guarded(name: str, fn: Callable[[argparse.Namespace], int],
                args: argparse.Namespace) -> int:
    """Run a subcommand, turning the errors it may meet into a message and an exit code."""
    from tierstore.client.errors import StateStoreError as ClientError
    from tierstore.server.errors import StateStoreError as ServerError

    try:
        return fn(args)
    except CommandError as exc:
        print(f"tierstore {name}: error: {exc}", file=sys.stderr)
        return exc.code
    except (ClientError, ServerError, OSError, ValueError) as exc:
        print(f"tierstore {name}: error: {exc}", file=sys.stderr)
        return FAILED
    except KeyboardInterrupt:
        print(f"tierstore {name}: interrupted", file=sys.stderr)
        return 130


# --- output ------------------------------------------------------------------------------------
def print_json(doc: Any) -> None:
    print(json.dumps(doc, indent=2, sort_keys=False, default=str))


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain-text table: columns padded to their widest cell, numbers right-aligned."""
    cells = [[str(h) for h in headers]] + [[_cell(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    numeric = [all(isinstance(r[i], int | float) for r in rows) and bool(rows)
               for i in range(len(headers))]
    lines = []
    for r in cells:
        parts = [c.rjust(w) if num else c.ljust(w) for c, w, num in zip(r, widths, numeric,
                                                                         strict=True)]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.1f}"
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in sorted(value.items())) or "-"
    return str(value)


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # unreachable


def human_age(seconds: float) -> str:
    seconds = max(0.0, seconds)
    for limit, unit in ((120, "s"), (7200, "m"), (172800, "h")):
        if seconds < limit:
            return f"{seconds / {'s': 1, 'm': 60, 'h': 3600}[unit]:.0f}{unit}"
    return f"{seconds / 86400:.1f}d"


# --- progress ----------------------------------------------------------------------------------
class Progress:
    """tqdm bars on stderr, or nothing when disabled."""

    def __init__(self, enabled: bool | None) -> None:
        self.enabled = sys.stderr.isatty() if enabled is None else enabled

    def _bar(self, desc: str, **kw: Any) -> tqdm[Any]:
        return tqdm(desc=desc, file=sys.stderr, disable=not self.enabled, dynamic_ncols=True,
                    **kw)

    @contextlib.contextmanager
    def bytes(self, desc: str) -> Iterator[Callable[[int, int], None]]:
        """A byte bar with rate and ETA; yields progress(done, total)."""
        bar = self._bar(desc, unit="B", unit_scale=True, unit_divisor=1024, total=0)
        lock = threading.Lock()

        def update(done: int, total: int) -> None:
            with lock:
                if bar.total != total:
                    bar.total = total
                bar.update(done - bar.n)

        try:
            yield update
        finally:
            bar.close()

    @contextlib.contextmanager
    def count(self, desc: str, unit: str, total: int | None = None
              ) -> Iterator[Callable[[int], None]]:
        """A counter with rate (and ETA when `total` is known); yields progress(done)."""
        bar = self._bar(desc, unit=f" {unit}", unit_scale=True, total=total)

        def update(done: int) -> None:
            bar.update(done - bar.n)

        try:
            yield update
        finally:
            bar.close()

    @contextlib.contextmanager
    def waiting(self, desc: str) -> Iterator[None]:
        """An elapsed-time line, refreshed while the body runs (for one long call)."""
        bar = self._bar(desc, total=None, bar_format="{desc}: {elapsed}")
        done = threading.Event()

        def tick() -> None:
            while not done.wait(0.2):
                bar.refresh()

        ticker = threading.Thread(target=tick, daemon=True)
        if self.enabled:
            ticker.start()
        try:
            yield
        finally:
            done.set()
            if self.enabled:
                ticker.join()
            bar.close()

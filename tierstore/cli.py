"""The `tierstore` command line."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from tierstore import __version__


def _serve_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from tierstore.server.config import DEFAULT_DATA_DIR, DEFAULT_LISTEN, FLAGS, env_name

    p = sub.add_parser(
        "serve",
        help="run the store server",
        description=(
            "Run the store server. With no flags: the embedded default, listening on "
            f"{DEFAULT_LISTEN}, data in {DEFAULT_DATA_DIR}, snapshots in a local directory, "
            "no changelog (commits are made durable by syncing RocksDB's WAL)."
        ),
    )
    helps = {
        "--listen": "HOST:PORT to listen on (port 0 picks a free port)",
        "--data-dir": "directory for the hot tier (RocksDB) and temporary files",
        "--object-store": "snapshot location: file:///path or s3://bucket/prefix "
        "(default: DATA_DIR/snapshots)",
        "--s3-endpoint": "S3 endpoint URL, for S3-compatible servers",
        "--kafka-bootstrap": "HOST:PORT[,...] of the Kafka cluster for changelogs (default: none)",
        "--kafka-topic-prefix": "prefix of changelog topic names (default: tierstore-)",
        "--snapshot-every-commits": "snapshot a shard after this many commits (default 1000)",
        "--snapshot-interval-s": "... or this many seconds after a commit (default 300)",
        "--snapshot-keep": "snapshots kept per shard (default 3)",
        "--max-value-bytes": "largest value accepted (default 8 MiB)",
        "--grpc-workers": "threads serving requests (default 16)",
    }
    for flag, field_name in FLAGS.items():
        p.add_argument(flag, dest=field_name, default=None,
                       help=f"{helps.get(flag, '')} [env {env_name(field_name)}]")
    p.add_argument("--log-level", default=None,
                   help="DEBUG, INFO, WARNING or ERROR (default INFO) [env TIERSTORE_LOG_LEVEL]")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tierstore", description=__doc__)
    parser.add_argument("--version", action="version", version=f"tierstore {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _serve_parser(sub)
    args = parser.parse_args(argv)
    if args.command == "serve":
        import os

        from tierstore.server.app import serve
        from tierstore.server.config import FLAGS, ConfigError, load_config

        level = (args.log_level or os.environ.get("TIERSTORE_LOG_LEVEL") or "INFO").upper()
        if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            print(f"tierstore serve: configuration error: log_level: {level!r} is not one of "
                  "DEBUG, INFO, WARNING, ERROR", file=sys.stderr)
            return 2
        logging.basicConfig(
            level=getattr(logging, level),
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
            stream=sys.stderr,
        )
        try:
            cfg = load_config({f: getattr(args, f) for f in FLAGS.values()})
        except ConfigError as exc:
            print(f"tierstore serve: configuration error: {exc}", file=sys.stderr)
            return 2
        return serve(cfg)
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())

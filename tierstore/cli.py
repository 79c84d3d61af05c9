"""The `tierstore` command line: serve, config show, inspect, snapshot, restore, fork, bench.

Exit codes: 0 success, 1 failure, 2 usage or configuration error.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from tierstore import __version__

if TYPE_CHECKING:
    from tierstore.commands.common import SubParsers


def _serve_parser(sub: SubParsers) -> None:
    from tierstore.server.config import DEFAULT_DATA_DIR, DEFAULT_LISTEN

    p = sub.add_parser(
        "serve",
        help="run the store server",
        description=(
            "Run the store server. With no flags: the embedded default, listening on "
            f"{DEFAULT_LISTEN}, data in {DEFAULT_DATA_DIR}, snapshots in a local directory, "
            "no changelog (commits are made durable by syncing RocksDB's WAL). Settings come "
            "from defaults < --config FILE.toml < TIERSTORE_* variables < flags."
        ),
    )
    add_server_flags(p)


def add_server_flags(p: argparse.ArgumentParser) -> None:
    """One option per entry of tierstore.server.config.FLAGS (dest: the configuration key)."""
    from tierstore.server.config import FLAGS, env_name

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
        "--tls-cert": "PEM certificate chain: serve TLS only (with --tls-key)",
        "--tls-key": "PEM private key of --tls-cert",
        "--tls-client-ca": "PEM CA: require client certificates signed by it (mTLS)",
        "--peer-tls-ca": "PEM CA that signed the peers' certificates, for health probes between "
        "TLS servers (default: --tls-client-ca, else the system roots)",
        "--peer-tls-server-name": "name to expect in peers' certificates when they are reached "
        "by IP (default: the peer's host)",
        "--auth-tokens": "token file (TOML, or JSON if *.json): require bearer tokens with "
        "per-store-prefix read / read-write permissions",
        "--max-concurrent-streams": "HTTP/2 streams per connection (default 100)",
        "--max-concurrent-rpcs": "calls in progress; beyond: RESOURCE_EXHAUSTED (default 1000)",
        "--max-get-streams": "GetStream calls (clients' point-read streams) open at once, each "
        "with a thread of its own; beyond, clients use unary Get (default 64)",
        "--get-stream-idle-s": "end a GetStream idle this long (default 60)",
        "--max-open-scans": "Scan calls open at once, each with a thread of its own until it "
        "ends; beyond: RESOURCE_EXHAUSTED (default 64)",
        "--max-message-bytes": "largest gRPC message (default 64 MiB); beyond: "
        "RESOURCE_EXHAUSTED",
        "--scan-page-size": "most entries per scan page (default 1000)",
        "--config": "TOML file of settings: the same keys as the flags, with underscores "
        "(e.g. block_cache_bytes = \"512MiB\"), all top-level",
        "--block-cache-bytes": "RocksDB block cache shared by every shard (default 256MiB); "
        "sizes take KiB/MiB/GiB",
        "--write-buffer-bytes": "memtable budget of all shards together (default 128MiB)",
        "--metrics-listen": "HOST:PORT to serve Prometheus /metrics on (default: off)",
        "--log-level": "DEBUG, INFO, WARNING or ERROR (default INFO)",
        "--log-format": "text or json (one JSON object per line) (default text)",
        "--peers": "the servers sharing this object store and changelog: HOST:PORT or "
        "dns:NAME:PORT, comma-separated (default: none, a single server)",
        "--advertise": "this server's HOST:PORT as peers and clients reach it "
        "(default: the listen address)",
        "--standby-replicas": "servers after each shard's owner that follow its changelog, "
        "so a failover does not wait for a restore (default 0)",
        "--evict-idle-s": "a shard unused this many seconds may be evicted (default 30)",
        "--max-local-bytes": "evict idle shards to object storage above this many local bytes "
        "(default 0: no budget)",
        "--restore-target-seconds": "snapshot each shard early enough that restoring it "
        "(snapshot download + changelog replay, as measured here) is predicted to take less "
        "than this many seconds (default 0: off)",
    }
    for flag, field_name in FLAGS.items():
        p.add_argument(flag, dest=field_name, default=None,
                       help=f"{helps.get(flag, '')} [env {env_name(field_name)}]")


def _serve(args: argparse.Namespace) -> int:
    from tierstore.server.app import serve
    from tierstore.server.config import FLAGS, ConfigError, load_config
    from tierstore.server.errors import StateStoreError
    from tierstore.server.logs import configure_logging

    try:
        cfg = load_config({f: getattr(args, f) for f in FLAGS.values()})
    except ConfigError as exc:
        print(f"tierstore serve: configuration error: {exc}", file=sys.stderr)
        return 2
    configure_logging(cfg.log_level, cfg.log_format)
    try:
        return serve(cfg)
    except ConfigError as exc:  # TLS or token file unreadable or malformed
        print(f"tierstore serve: configuration error: {exc}", file=sys.stderr)
        return 2
    except (OSError, StateStoreError) as exc:  # a port that cannot be bound, an unusable
        # data dir or object store: a message, not a traceback
        print(f"tierstore serve: error: {exc}", file=sys.stderr)
        return 1


def main(argv: Sequence[str] | None = None) -> int:
    from tierstore.commands import bench, configcmd, fork, inspection, restore, snapshot

    parser = argparse.ArgumentParser(prog="tierstore", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"tierstore {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _serve_parser(sub)
    commands = {"serve": _serve}
    for module in (configcmd, inspection, snapshot, restore, fork, bench):
        commands.update(module.add_parser(sub, add_server_flags))
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:  # everything after `bench` belongs to `python -m bench`
        return bench.forward(argv[1:])
    args = parser.parse_args(argv)
    return commands[args.command](args)


if __name__ == "__main__":
    sys.exit(main())

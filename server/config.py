"""Server configuration: one frozen dataclass, read from flags and TIERSTORE_* variables.

Environment variables are read here and only here (at the entry point), never deep inside.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path

from tierstore.server.hottier import HotTierConfig

DEFAULT_LISTEN = "127.0.0.1:7070"
DEFAULT_DATA_DIR = "./tierstore-data"


class ConfigError(ValueError):
    """A configuration value is missing or malformed; the message names the key."""


@dataclass(frozen=True)
class ServerConfig:
    listen: str = DEFAULT_LISTEN
    data_dir: Path = Path(DEFAULT_DATA_DIR)
    object_store: str = ""  # empty: a directory `snapshots` inside data_dir
    s3_endpoint: str = ""
    kafka_bootstrap: str = ""
    kafka_topic_prefix: str = "tierstore-"
    snapshot_every_commits: int = 1000
    snapshot_interval_s: float = 300.0
    snapshot_keep: int = 3
    snapshot_workers: int = 4
    snapshot_gc_grace_s: float = 600.0
    max_value_bytes: int = 8 * 1024 * 1024
    max_staged_bytes: int = 256 * 1024 * 1024
    max_message_bytes: int = 64 * 1024 * 1024
    scan_page_size: int = 1000
    grpc_workers: int = 16
    shutdown_grace_s: float = 10.0
    hot: HotTierConfig = field(default_factory=HotTierConfig)

    def object_store_url(self) -> str:
        return self.object_store or (self.data_dir / "snapshots").resolve().as_uri()

    def listen_host_port(self) -> tuple[str, int]:
        host, sep, port = self.listen.rpartition(":")
        if not sep or not host or not port.isdigit() or int(port) > 65535:
            raise ConfigError(f"listen: expected HOST:PORT, got {self.listen!r}")
        return host.strip("[]"), int(port)

    def validate(self) -> ServerConfig:
        self.listen_host_port()
        for name in ("snapshot_every_commits", "snapshot_keep", "snapshot_workers",
                     "max_value_bytes", "max_staged_bytes", "max_message_bytes",
                     "scan_page_size", "grpc_workers"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name}: must be positive, got {getattr(self, name)}")
        if self.snapshot_interval_s <= 0:
            raise ConfigError("snapshot_interval_s: must be positive")
        if self.max_value_bytes + 65536 > self.max_message_bytes:
            raise ConfigError("max_message_bytes: must exceed max_value_bytes + 64 KiB")
        url = self.object_store_url()
        if not (url.startswith("file://") or url.startswith("s3://")):
            raise ConfigError(f"object_store: expected file:///path or s3://bucket/prefix, got "
                              f"{url!r}")
        return self


# Flag name -> (field, converter). Every flag has the env var TIERSTORE_<FIELD upper-cased>.
FLAGS: Mapping[str, str] = {
    "--listen": "listen",
    "--data-dir": "data_dir",
    "--object-store": "object_store",
    "--s3-endpoint": "s3_endpoint",
    "--kafka-bootstrap": "kafka_bootstrap",
    "--kafka-topic-prefix": "kafka_topic_prefix",
    "--snapshot-every-commits": "snapshot_every_commits",
    "--snapshot-interval-s": "snapshot_interval_s",
    "--snapshot-keep": "snapshot_keep",
    "--max-value-bytes": "max_value_bytes",
    "--grpc-workers": "grpc_workers",
}


def env_name(field_name: str) -> str:
    return "TIERSTORE_" + field_name.upper()


def _convert(name: str, raw: str) -> object:
    typ = {f.name: f.type for f in fields(ServerConfig)}[name]
    try:
        if typ in ("int", int):
            return int(raw)
        if typ in ("float", float):
            return float(raw)
        if typ in ("Path", Path):
            return Path(raw)
    except ValueError as exc:
        raise ConfigError(f"{name}: cannot parse {raw!r} as {typ}") from exc
    return raw


def load_config(
    flags: Mapping[str, str | None], environ: Mapping[str, str] | None = None
) -> ServerConfig:
    """Defaults, then TIERSTORE_* environment variables, then flags (highest precedence)."""
    env = os.environ if environ is None else environ
    values: dict[str, object] = {}
    for field_name in FLAGS.values():
        raw = env.get(env_name(field_name))
        if raw:
            values[field_name] = _convert(field_name, raw)
    for field_name, raw in flags.items():
        if raw is not None:
            values[field_name] = _convert(field_name, str(raw))
    return ServerConfig(**values).validate()  # type: ignore[arg-type]

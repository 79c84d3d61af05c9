"""Server configuration: one frozen dataclass, read from a TOML file, TIERSTORE_* variables and
flags (tierstore.server.configload does the reading; FLAGS below is the one table of keys).

Environment variables are read here and only here (at the entry point), never deep inside.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from tierstore.server.hottier import HotTierConfig

DEFAULT_LISTEN = "127.0.0.1:7070"
DEFAULT_DATA_DIR = "./tierstore-data"


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
LOG_FORMATS = ("text", "json")
# HotTierConfig fields that are configuration keys too (top-level keys, like every other one).
HOT_KEYS = ("block_cache_bytes", "write_buffer_bytes", "write_buffer_size_per_shard",
            "max_open_files_per_shard", "memtable_bloom_ratio", "rocksdb_statistics")


class ConfigError(ValueError):
    """A configuration value is missing or malformed; the message names the key."""


def _host_port(key: str, value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"{key}: expected HOST:PORT, got {value!r}")
    return host.strip("[]"), int(port)


def _check_object_store_url(url: str) -> None:
    """The rules of objectstore.open_object_store for the URLs a server accepts, checked
    without opening anything (a bad URL is a configuration error, not a crash at start)."""
    parts = urlsplit(url)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost") or not parts.path.startswith("/") \
                or parts.query or parts.fragment:
            raise ConfigError(f"object_store: expected file:///absolute/path, got {url!r}")
    elif parts.scheme == "s3":
        if not parts.netloc or "/" in parts.netloc or parts.query or parts.fragment:
            raise ConfigError(f"object_store: expected s3://bucket/prefix, got {url!r}")
    else:
        raise ConfigError(f"object_store: expected file:///path or s3://bucket/prefix, got "
                          f"{url!r}")


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
    metrics_listen: str = ""  # HOST:PORT of the Prometheus /metrics endpoint; "" means off
    log_level: str = "INFO"  # DEBUG, INFO, WARNING or ERROR
    log_format: str = "text"  # or "json": one JSON object per line
    hot: HotTierConfig = field(default_factory=HotTierConfig)
    # Security (see tierstore.server.tls and tierstore.server.auth); "" means off.
    tls_cert: str = ""  # PEM certificate chain: with tls_key, the port speaks only TLS
    tls_key: str = ""
    tls_client_ca: str = ""  # PEM CA: clients must present a certificate it signed (mTLS)
    auth_tokens: str = ""  # token file (TOML, or JSON for *.json): bearer tokens required
    # How this server checks its peers when the port speaks TLS (health probes): the CA their
    # certificates are signed by ("" = tls_client_ca, else the system roots), and the name to
    # expect in them when peers are reached by IP ("" = the host of the peer's address).
    peer_tls_ca: str = ""
    peer_tls_server_name: str = ""
    # Limits, so that one client cannot exhaust the server (beyond: RESOURCE_EXHAUSTED).
    max_concurrent_streams: int = 100  # HTTP/2 streams per connection
    max_concurrent_rpcs: int = 1000  # calls in progress on the whole server
    # GetStream calls (point reads on one long-lived stream) open at once; each holds a thread
    # of its own (added to grpc_workers). Beyond it a client reads with unary Get calls.
    max_get_streams: int = 64
    get_stream_idle_s: float = 60.0  # a stream without a request this long is ended
    # Scan calls open at once; each holds a thread of its own (added to grpc_workers) until it
    # ends, however slowly it is read. Beyond it a scan fails with RESOURCE_EXHAUSTED.
    max_open_scans: int = 64
    # Several servers (see tierstore.server.cluster): peers are HOST:PORT or dns:NAME:PORT,
    # comma-separated; advertise is this server's address as peers and clients reach it.
    peers: str = ""
    advertise: str = ""
    standby_replicas: int = 0  # servers after the owner that follow each shard's changelog
    # Tiering (see tierstore.server.tiering): idle shards over this many local bytes are
    # snapshotted and evicted; 0 means no budget.
    max_local_bytes: int = 0
    evict_idle_s: float = 30.0  # a shard unused this long may be evicted
    # Snapshot shards early enough that restoring one (download + changelog tail replay) is
    # predicted to take less than this (see tierstore.server.restoretarget); 0 means off.
    restore_target_seconds: float = 0.0

    def object_store_url(self) -> str:
        return self.object_store or (self.data_dir / "snapshots").resolve().as_uri()

    def listen_host_port(self) -> tuple[str, int]:
        return _host_port("listen", self.listen)

    def peer_list(self) -> tuple[str, ...]:
        return tuple(p.strip() for p in self.peers.split(",") if p.strip())

    def metrics_host_port(self) -> tuple[str, int] | None:
        return _host_port("metrics_listen", self.metrics_listen) if self.metrics_listen else None

    def validate(self) -> ServerConfig:
        self.listen_host_port()
        for name in ("snapshot_every_commits", "snapshot_keep", "snapshot_workers",
                     "max_value_bytes", "max_staged_bytes", "max_message_bytes",
                     "scan_page_size", "grpc_workers", "max_concurrent_streams",
                     "max_concurrent_rpcs", "max_get_streams", "max_open_scans"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name}: must be positive, got {getattr(self, name)}")
        if not self.get_stream_idle_s > 0:  # zero, negative or NaN
            raise ConfigError(f"get_stream_idle_s: must be positive, got "
                              f"{self.get_stream_idle_s}")
        if self.snapshot_interval_s <= 0:
            raise ConfigError("snapshot_interval_s: must be positive")
        if self.max_value_bytes + 65536 > self.max_message_bytes:
            raise ConfigError("max_message_bytes: must exceed max_value_bytes + 64 KiB")
        if not self.snapshot_gc_grace_s >= 0:  # negative or NaN
            raise ConfigError(f"snapshot_gc_grace_s: must be 0 or more, got "
                              f"{self.snapshot_gc_grace_s}")
        _check_object_store_url(self.object_store_url())
        self._check_security_files()
        self._check_operations()
        return self

    def _check_operations(self) -> None:
        self.metrics_host_port()
        if self.log_level.upper() not in LOG_LEVELS:
            raise ConfigError(f"log_level: {self.log_level!r} is not one of "
                              f"{', '.join(LOG_LEVELS)}")
        if self.log_format not in LOG_FORMATS:
            raise ConfigError(f"log_format: {self.log_format!r} is not one of "
                              f"{', '.join(LOG_FORMATS)}")
        if self.standby_replicas < 0:
            raise ConfigError(f"standby_replicas: must be 0 or more, got {self.standby_replicas}")
        if self.evict_idle_s < 0:
            raise ConfigError(f"evict_idle_s: must be 0 or more, got {self.evict_idle_s}")
        if not self.restore_target_seconds >= 0:  # negative or NaN
            raise ConfigError(f"restore_target_seconds: must be 0 (off) or positive, got "
                              f"{self.restore_target_seconds}")
        if self.max_local_bytes < 0:
            raise ConfigError(f"max_local_bytes: must be 0 (off) or positive, got "
                              f"{self.max_local_bytes}")
        if self.advertise:
            _host_port("advertise", self.advertise)
        if self.peer_list() and not self.kafka_bootstrap:
            raise ConfigError("peers: several servers need a changelog (kafka_bootstrap); "
                              "without one a moved shard would lose commits since its last "
                              "snapshot")
        if self.peer_list() and self.object_store_url().startswith("file://"):
            raise ConfigError("peers: several servers need a shared object store (s3://...)")
        for peer in self.peer_list():
            if not peer.startswith("dns:"):
                _host_port("peers", peer)
        for name in HOT_KEYS:
            if name not in ("rocksdb_statistics", "memtable_bloom_ratio") \
                    and getattr(self.hot, name) <= 0:
                raise ConfigError(f"{name}: must be positive, got {getattr(self.hot, name)}")
        if not 0 <= self.hot.memtable_bloom_ratio <= 0.25:
            raise ConfigError(f"memtable_bloom_ratio: must be from 0 (no filter) to 0.25, got "
                              f"{self.hot.memtable_bloom_ratio}")

    def _check_security_files(self) -> None:
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ConfigError("tls_cert and tls_key: give both or neither")
        if self.tls_client_ca and not self.tls_cert:
            raise ConfigError("tls_client_ca: needs tls_cert and tls_key")
        if (self.peer_tls_ca or self.peer_tls_server_name) and not self.tls_cert:
            raise ConfigError("peer_tls_ca and peer_tls_server_name: need tls_cert and tls_key")
        for name in ("tls_cert", "tls_key", "tls_client_ca", "peer_tls_ca", "auth_tokens"):
            path = getattr(self, name)
            if path and not Path(path).is_file():
                raise ConfigError(f"{name}: no such file {path!r}")


# Flag name -> configuration key: a ServerConfig field, one of HOT_KEYS, or "config" (the TOML
# file). Every flag has the env var TIERSTORE_<KEY upper-cased>; every key but "config" can also
# be set in the TOML file (see tierstore.server.configload).
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
    "--tls-cert": "tls_cert",
    "--tls-key": "tls_key",
    "--tls-client-ca": "tls_client_ca",
    "--auth-tokens": "auth_tokens",
    "--peer-tls-ca": "peer_tls_ca",
    "--peer-tls-server-name": "peer_tls_server_name",
    "--max-concurrent-streams": "max_concurrent_streams",
    "--max-concurrent-rpcs": "max_concurrent_rpcs",
    "--max-get-streams": "max_get_streams",
    "--get-stream-idle-s": "get_stream_idle_s",
    "--max-open-scans": "max_open_scans",
    "--max-message-bytes": "max_message_bytes",
    "--scan-page-size": "scan_page_size",
    "--config": "config",
    "--block-cache-bytes": "block_cache_bytes",
    "--write-buffer-bytes": "write_buffer_bytes",
    "--metrics-listen": "metrics_listen",
    "--log-level": "log_level",
    "--log-format": "log_format",
    "--peers": "peers",
    "--advertise": "advertise",
    "--max-local-bytes": "max_local_bytes",
    "--evict-idle-s": "evict_idle_s",
    "--standby-replicas": "standby_replicas",
    "--restore-target-seconds": "restore_target_seconds",
}


def env_name(field_name: str) -> str:
    return "TIERSTORE_" + field_name.upper()


def load_config(
    flags: Mapping[str, object],
    environ: Mapping[str, str] | None = None,
    config_file: str | Path | None = None,
) -> ServerConfig:
    """Defaults, then the TOML file (`config_file`, else flags["config"], else TIERSTORE_CONFIG),
    then TIERSTORE_* environment variables, then flags (highest precedence). `flags` maps keys
    (the values of FLAGS, or any other key) to values; None means not given. Raises ConfigError
    naming the key on an unknown key or a bad value."""
    from tierstore.server.configload import resolve_config

    return resolve_config(flags, environ, config_file).config

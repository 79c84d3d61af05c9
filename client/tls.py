"""TLS settings for the client's channel: `connect(target, tls=...)`.

`tls=True` verifies the server against the system's root CAs; `tls=TLSConfig(...)` names a CA
file (a private CA), a client certificate and key (for servers that require mTLS) and the name
to expect in the server's certificate; a ready-made `grpc.ChannelCredentials` is used as is.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from tierstore import secretfile
from tierstore.client.errors import InvalidArgumentError

log = logging.getLogger("tierstore.client")


@dataclass(frozen=True)
class TLSConfig:
    """PEM files for a TLS channel. Every field is optional: without `ca_file` the system roots
    verify the server; `cert_file` and `key_file` go together; `server_name` overrides the host
    name checked against the server's certificate (e.g. when dialing an IP address)."""

    ca_file: str | Path | None = None
    cert_file: str | Path | None = None
    key_file: str | Path | None = None
    server_name: str | None = None

    def credentials(self) -> grpc.ChannelCredentials:
        """Channel credentials from the files. Raises InvalidArgumentError naming the file when
        one cannot be read, or when only one of cert_file and key_file is given."""
        if (self.cert_file is None) != (self.key_file is None):
            raise InvalidArgumentError("TLSConfig: give both cert_file and key_file, or neither")
        if self.key_file is not None:
            secretfile.warn(self.key_file, "TLSConfig.key_file", log)
        return grpc.ssl_channel_credentials(
            root_certificates=_read("ca_file", self.ca_file),
            private_key=_read("key_file", self.key_file),
            certificate_chain=_read("cert_file", self.cert_file),
        )

    def options(self) -> list[tuple[str, Any]]:
        """Channel options: the expected server name, when one is set."""
        if self.server_name:
            return [("grpc.ssl_target_name_override", self.server_name)]
        return []


def _read(what: str, path: str | Path | None) -> bytes | None:
    if path is None:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise InvalidArgumentError(f"TLSConfig.{what} {path}: {exc.strerror or exc}") from exc


def channel_security(tls: object) -> tuple[grpc.ChannelCredentials | None, list[tuple[str, Any]]]:
    """(credentials or None for plaintext, extra channel options) for a `tls=` argument: a false
    value, True, a TLSConfig or a grpc.ChannelCredentials. Raises InvalidArgumentError for
    anything else."""
    if tls is None or tls is False:
        return None, []
    if tls is True:
        return grpc.ssl_channel_credentials(), []
    if isinstance(tls, TLSConfig):
        return tls.credentials(), tls.options()
    if isinstance(tls, grpc.ChannelCredentials):
        return tls, []
    raise InvalidArgumentError(
        f"tls must be True, a TLSConfig or grpc.ChannelCredentials, got {type(tls).__name__}"
    )

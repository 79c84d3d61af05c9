"""TLS for the gRPC port: server credentials from PEM files, with optional client-cert checks.

With `tls_cert` and `tls_key` the port speaks only TLS. With `tls_client_ca` as well, every
client must present a certificate signed by that CA (mutual TLS); a client without one fails
its handshake and sees UNAVAILABLE.
"""

from __future__ import annotations

import logging
from pathlib import Path

import grpc

from tierstore import secretfile
from tierstore.server.config import ConfigError

log = logging.getLogger(__name__)


class TLSConfigError(ConfigError):
    """A TLS file is missing or unreadable, or the flags are inconsistent; names the flag."""


def _read(flag: str, path: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise TLSConfigError(f"{flag} {path}: {exc.strerror or exc}") from exc
    if b"-----BEGIN" not in data:
        raise TLSConfigError(f"{flag} {path}: not a PEM file")
    return data


def check_tls_flags(cert: str, key: str, client_ca: str) -> None:
    """Raises TLSConfigError unless cert and key are both given or both empty, and client_ca
    is only given with them."""
    if bool(cert) != bool(key):
        raise TLSConfigError("tls_cert and tls_key: give both or neither")
    if client_ca and not cert:
        raise TLSConfigError("tls_client_ca needs tls_cert and tls_key")


def server_credentials(cert: str, key: str, client_ca: str = "") -> grpc.ServerCredentials | None:
    """Credentials for the listening port, or None for plaintext (no cert and key).

    Raises TLSConfigError when the flags are inconsistent or a file cannot be read. A key that
    does not match its certificate is refused by grpc when the port is bound."""
    check_tls_flags(cert, key, client_ca)
    if not cert:
        return None
    chain, private_key = _read("--tls-cert", cert), _read("--tls-key", key)
    secretfile.warn(key, "--tls-key", log)
    ca = _read("--tls-client-ca", client_ca) if client_ca else None
    return grpc.ssl_server_credentials(
        [(private_key, chain)],
        root_certificates=ca,
        require_client_auth=ca is not None,
    )


def peer_channel_credentials(cert: str, key: str, client_ca: str = "",
                             peer_ca: str = "") -> grpc.ChannelCredentials | None:
    """Credentials a TLS server uses to probe its peers (which speak TLS too, with the same
    flags), or None when this server speaks plaintext. Peers are checked against `peer_ca`,
    else `client_ca`, else the system roots. Under mutual TLS (`client_ca`) the probe presents
    this server's own certificate, which therefore needs the clientAuth usage as well."""
    if not cert:
        return None
    ca_path = peer_ca or client_ca
    roots = _read("--peer-tls-ca" if peer_ca else "--tls-client-ca", ca_path) if ca_path else None
    if not client_ca:
        return grpc.ssl_channel_credentials(root_certificates=roots)
    return grpc.ssl_channel_credentials(
        root_certificates=roots,
        private_key=_read("--tls-key", key),
        certificate_chain=_read("--tls-cert", cert),
    )

"""The command line's connection security: the token from --token-file or TIERSTORE_TOKEN (not
in the process list), TLS with a private CA, a client certificate and a server name
(--tls-ca, --tls-cert, --tls-key, --tls-server-name); and the client's warning when it would
send a token in plaintext to another host. Real servers in-process on free ports (TLS and
token checks are the server's own); the CLI runs as a subprocess."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.inproc import running
from tests.tlscerts import Pki, make_pki
from tierstore.client import TLSConfig, connect

TOKEN = "cli-reader-token-6b1f0a"
TOKENS = f"""
[[tokens]]
name = "cli"
token = "{TOKEN}"
permissions = [{{ store_prefix = "", access = "read" }}]
"""


def inspect(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if k != "TIERSTORE_TOKEN"}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "tierstore", "inspect", "--timeout", "5", *args],
                          capture_output=True, text=True, timeout=60, env=full_env)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def test_the_token_comes_from_a_file_or_the_environment(tmp_path: Path) -> None:
    (tmp_path / "tokens.toml").write_text(TOKENS)
    (tmp_path / "token").write_text(TOKEN + "\n")
    (tmp_path / "wrong").write_text("not-the-token\n")
    (tmp_path / "empty").write_text("")
    with running(tmp_path, auth_tokens=str(tmp_path / "tokens.toml")) as server:
        where = ("--server", f"127.0.0.1:{server.port}")
        assert inspect(*where, "--token-file", str(tmp_path / "token")).returncode == 0
        assert inspect(*where, env={"TIERSTORE_TOKEN": TOKEN}).returncode == 0
        refused = inspect(*where, "--token-file", str(tmp_path / "wrong"))
        assert refused.returncode == 1 and "unknown token" in refused.stderr
        assert TOKEN not in refused.stderr and "not-the-token" not in refused.stderr
        missing = inspect(*where)
        assert missing.returncode == 1 and "missing bearer token" in missing.stderr
        both = inspect(*where, "--token", TOKEN, "--token-file", str(tmp_path / "token"))
        assert both.returncode == 2 and "not both" in both.stderr
        empty = inspect(*where, "--token-file", str(tmp_path / "empty"))
        assert empty.returncode == 2 and "empty" in empty.stderr
        absent = inspect(*where, "--token-file", str(tmp_path / "nope"))
        assert absent.returncode == 2 and "nope" in absent.stderr


def test_tls_with_a_private_ca_and_a_client_certificate(tmp_path: Path, pki: Pki) -> None:
    with running(tmp_path, tls_cert=str(pki.server_cert), tls_key=str(pki.server_key),
                 tls_client_ca=str(pki.ca)) as server:
        where = ("--server", f"127.0.0.1:{server.port}")
        client = ("--tls-cert", str(pki.client_cert), "--tls-key", str(pki.client_key))
        ok = inspect(*where, "--tls-ca", str(pki.ca), *client)
        assert ok.returncode == 0, ok.stderr
        named = inspect("--server", f"localhost:{server.port}", "--tls-ca", str(pki.ca), *client,
                        "--tls-server-name", "localhost")
        assert named.returncode == 0, named.stderr
        assert inspect(*where, "--tls-ca", str(pki.ca)).returncode == 1  # mTLS: no cert
        assert inspect(*where, "--tls", *client).returncode == 1  # system roots: untrusted
        assert inspect(*where, *client).returncode == 1  # plaintext against TLS
        half = inspect(*where, "--tls-ca", str(pki.ca), "--tls-cert", str(pki.client_cert))
        assert half.returncode == 2 and "--tls-key" in half.stderr


def test_a_token_in_plaintext_to_another_host_is_warned_about(
        caplog: pytest.LogCaptureFixture, pki: Pki) -> None:
    caplog.set_level(logging.WARNING, logger="tierstore.client")
    for target, tls in (("127.0.0.1:1", None), ("localhost:1", None), ("[::1]:1", None),
                        ("10.255.255.1:1", TLSConfig(ca_file=pki.ca))):
        with connect(target, token=TOKEN, tls=tls) as c:
            c.router.stub(target)  # the channel (no call needed)
    with connect("10.255.255.1:1") as c:  # no token: nothing to warn about
        c.router.stub("10.255.255.1:1")
    assert not caplog.records
    with connect("10.255.255.1:1", token=TOKEN) as c:
        c.router.stub("10.255.255.1:1")
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "10.255.255.1:1 over plaintext" in warnings[0]
    assert TOKEN not in warnings[0]

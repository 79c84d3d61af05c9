"""Secret files readable by other users are warned about where tierstore reads them: the
server's auth tokens file (when it holds plain tokens, not only digests) and TLS key, the
client's TLSConfig.key_file, and the command line's --token-file (tierstore.secretfile)."""

from __future__ import annotations

import argparse
import logging
import shutil
from pathlib import Path

import pytest

from tests.tlscerts import Pki, make_pki
from tierstore import secretfile
from tierstore.client import TLSConfig
from tierstore.commands.common import token_of
from tierstore.server.auth import TokenTable
from tierstore.server.tls import server_credentials

PLAIN = '[[tokens]]\nname = "a"\ntoken = "s3cret-token"\n'
DIGEST = '[[tokens]]\nname = "a"\ntoken_sha256 = "' + "ab" * 32 + '"\n'


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def _file(path: Path, text: str, mode: int) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


def test_exposure_names_who_can_read(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_text("x")
    expected = {0o600: None, 0o400: None, 0o700: None, 0o620: None,
                0o640: "mode 0640: readable by its group",
                0o604: "mode 0604: readable by every user",
                0o644: "mode 0644: readable by its group and by every user"}
    for mode, why in expected.items():
        f.chmod(mode)
        assert secretfile.exposure(f) == why, oct(mode)
    assert secretfile.exposure(tmp_path / "missing") is None  # the reader reports that itself
    f.chmod(0o644)
    warning = secretfile.warning(f, "--token-file")
    assert warning is not None and "chmod 600" in warning and str(f) in warning


def test_the_server_warns_about_a_readable_tokens_file_with_plain_tokens(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "tierstore.server.auth")
    TokenTable.load(_file(tmp_path / "private.toml", PLAIN, 0o600))
    TokenTable.load(_file(tmp_path / "digests.toml", DIGEST, 0o644))  # digests are no secret
    assert caplog.records == []
    TokenTable.load(_file(tmp_path / "open.toml", PLAIN, 0o644))
    [rec] = caplog.records
    assert "open.toml" in rec.getMessage() and "token_sha256" in rec.getMessage()
    assert "s3cret-token" not in rec.getMessage()


def test_the_server_warns_about_a_readable_tls_key(
        tmp_path: Path, pki: Pki, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "tierstore.server.tls")
    assert server_credentials(str(pki.server_cert), str(pki.server_key)) is not None
    assert caplog.records == []
    key = Path(shutil.copy(pki.server_key, tmp_path / "server.key"))
    key.chmod(0o644)
    assert server_credentials(str(pki.server_cert), str(key)) is not None  # still serves
    [rec] = caplog.records
    assert "--tls-key" in rec.getMessage() and "0644" in rec.getMessage()


def test_the_client_warns_about_a_readable_key_file(
        tmp_path: Path, pki: Pki, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "tierstore.client")
    TLSConfig(pki.ca, pki.client_cert, pki.client_key).credentials()
    assert caplog.records == []
    key = Path(shutil.copy(pki.client_key, tmp_path / "client.key"))
    key.chmod(0o640)
    TLSConfig(pki.ca, pki.client_cert, key).credentials()
    [rec] = caplog.records
    assert "TLSConfig.key_file" in rec.getMessage() and "its group" in rec.getMessage()


def test_the_command_line_warns_about_a_readable_token_file(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    def args(path: Path) -> argparse.Namespace:
        return argparse.Namespace(token=None, token_file=str(path))

    assert token_of(args(_file(tmp_path / "private", "tok\n", 0o600))) == "tok"
    assert capsys.readouterr().err == ""
    assert token_of(args(_file(tmp_path / "open", "tok\n", 0o644))) == "tok"
    err = capsys.readouterr().err
    assert err.startswith("warning: --token-file") and "tok\n" not in err

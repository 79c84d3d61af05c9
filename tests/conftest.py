"""Shared fixtures: real brokers and S3 servers on free loopback ports (see tests/infra.py), the
code and deploy/ as the deploy tests compare them (tests/deploy_model.py), and the server the
wire-error tests share (tests/wirehelp.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.deploy_model import Code, Deploy, load_deploy, real_code
from tests.infra import Broker, S3Server, moto_s3, tansu
from tests.wirehelp import MAX_VALUE, Wire, fresh, serving


@pytest.fixture
def broker() -> Iterator[Broker]:
    """A fresh Tansu broker with in-memory storage, for one test."""
    with tansu() as b:
        yield b


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """One moto S3 server for the session; each test makes its own bucket (see `s3_bucket`)."""
    with moto_s3() as s:
        yield s


@pytest.fixture
def s3_bucket(s3_server: S3Server, request: pytest.FixtureRequest) -> str:
    import re
    import uuid

    name = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:40].strip("-")
    bucket = f"{name}-{uuid.uuid4().hex[:8]}"
    s3_server.create_bucket(bucket)
    return bucket


# --- tests/test_deploy_*.py -------------------------------------------------------------------


@pytest.fixture(scope="module")
def code() -> Code:
    return real_code()


@pytest.fixture(scope="module")
def dep() -> Deploy:
    return load_deploy()


# --- tests/test_wire_errors_*.py --------------------------------------------------------------


@pytest.fixture(scope="session")
def wire(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Wire]:
    """One server for all the wire-error modules (as when they were one module, so that
    test_wire_errors_transport.py, which runs last, checks the server every one of them used),
    with a small max_value_bytes so oversized values are cheap."""
    with serving(tmp_path_factory.mktemp("wire"), max_value_bytes=MAX_VALUE) as w:
        yield w


@pytest.fixture
def kv(wire: Wire) -> tuple[str, int]:
    """A fresh KV store (1 partition), claimed: (name, epoch)."""
    name = fresh("kv")
    return name, int(wire.open(name).epoch)

"""Shared fixtures: real brokers and S3 servers on free loopback ports (see tests/infra.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.infra import Broker, S3Server, moto_s3, tansu


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

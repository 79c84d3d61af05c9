"""Security: bearer tokens with per-store-prefix permissions, TLS and mTLS on the gRPC port.

Every test runs a real server in-process on a free port and talks to it through the real client
(`tierstore.client.connect`) or the generated stub. "Changes nothing" is checked afterwards with
a read-write token: the epoch was not bumped, no commit number was used up, the data and the
committed offsets are as they were.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.infra import Broker, S3Server, free_port
from tests.inproc import running
from tests.tlscerts import Pki, make_pki
from tierstore.client import TLSConfig, connect, errors
from tierstore.client._grpc import translate
from tierstore.server.app import RunningServer, create_server
from tierstore.server.auth import ACCESS_OF, AuthConfigError, TokenTable, bearer_token
from tierstore.server.cluster import wait_until
from tierstore.server.config import ConfigError, ServerConfig, load_config
from tierstore.v1 import store_pb2 as pb
from tierstore.v1 import store_pb2_grpc

RW = "rw-7f3b9c2e51d04a6b"  # read-write on every store, given in plain text
RO = "ro-0c9d8e7f6a5b4c3d"  # read on every store, given as sha256
ORDERS = "orders-a1b2c3d4e5f6"  # read-write on orders-*, nothing else
WRONG = "wrong-9e8d7c6b5a4f3e2d"
SECRETS = (RW, RO, ORDERS, WRONG)

TOKENS_TOML = f"""
[[tokens]]
name = "admin"
token = "{RW}"
permissions = [{{ store_prefix = "", access = "read-write" }}]

[[tokens]]
name = "dashboard"
token_sha256 = "{hashlib.sha256(RO.encode()).hexdigest()}"
permissions = [{{ store_prefix = "", access = "read" }}]

[[tokens]]
name = "orders-worker"
token = "{ORDERS}"
permissions = [{{ store_prefix = "orders-", access = "read-write" }}]
"""


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("auth")
    (tmp / "tokens.toml").write_text(TOKENS_TOML)
    with running(tmp, auth_tokens=str(tmp / "tokens.toml")) as server:
        yield f"127.0.0.1:{server.port}"


def raw_call(target: str, method: str, req: Any, token: str | None) -> Any:
    """One call through the generated stub; a refusal is raised as the client's error class."""
    with grpc.insecure_channel(target) as ch:
        fn = getattr(store_pb2_grpc.StateStoreStub(ch), method)
        md = (("authorization", f"Bearer {token}"),) if token else ()
        try:
            resp = fn(req, timeout=10, metadata=md)
            return list(resp) if method == "Scan" else resp
        except grpc.RpcError as exc:
            raise translate(exc) from exc


def seeded(target: str, store: str) -> tuple[int, int]:
    """Creates `store` with a=1 and offsets {in:0: 5}; returns (epoch, last commit seq)."""
    with connect(target, token=RW) as c, c.key_value_store(store) as kv:
        kv.put(b"a", b"1")
        kv.commit({"in:0": 5})
        return kv.epoch, 1


def assert_unchanged(target: str, store: str, epoch: int) -> None:
    """Nobody claimed the shard since `epoch`, and the state is what `seeded` committed."""
    with connect(target, token=RW) as c, c.key_value_store(store) as kv:
        assert kv.epoch == epoch + 1
        assert kv.committed_offsets == {"in:0": 5}
        assert list(kv.all()) == [(b"a", b"1")]


INTRUDERS = [
    (None, errors.UnauthenticatedError, "missing bearer token"),
    (WRONG, errors.UnauthenticatedError, "unknown token"),
    (RO, errors.PermissionDeniedError, "read-write"),
]


@pytest.mark.parametrize(("token", "error", "words"), INTRUDERS,
                         ids=["no-token", "wrong-token", "read-only"])
def test_refused_writes_change_nothing(
    auth_server: str, token: str | None, error: type[Exception], words: str
) -> None:
    store = f"acct-{error.__name__}-{bool(token)}"
    epoch, seq = seeded(auth_server, store)
    with connect(auth_server, token=token) as c:
        with pytest.raises(error, match=words):
            c.key_value_store(store)  # Open: would claim the shard and bump the epoch
        with pytest.raises(error, match=words):
            c.snapshot(store)
    batch = pb.WriteBatch(put_keys=[b"a", b"evil"], put_values=[b"2", b"x"])
    writes: list[tuple[str, Any]] = [
        ("Commit", pb.CommitRequest(store=store, epoch=epoch, commit_seq=seq + 1, batch=batch,
                                    offsets={"in:0": 99})),
        ("Stage", pb.StageRequest(store=store, epoch=epoch, commit_seq=seq + 1, batch=batch)),
        ("Close", pb.CloseRequest(store=store, epoch=epoch)),
        ("Open", pb.OpenRequest(store=store, type=pb.STORE_TYPE_KV)),
    ]
    for method, req in writes:
        with pytest.raises(error, match=words):
            raw_call(auth_server, method, req, token)
    assert_unchanged(auth_server, store, epoch)


@pytest.mark.parametrize("token", [None, WRONG], ids=["no-token", "wrong-token"])
def test_unauthenticated_reads_are_refused(auth_server: str, token: str | None) -> None:
    seeded(auth_server, f"secret-{bool(token)}")
    with connect(auth_server, token=token) as c, pytest.raises(errors.UnauthenticatedError):
        c.reader(f"secret-{bool(token)}")
    req = pb.GetRequest(store=f"secret-{bool(token)}", keys=[b"a"])
    with pytest.raises(errors.UnauthenticatedError):
        raw_call(auth_server, "Get", req, token)


def test_read_only_token_reads(auth_server: str) -> None:
    seeded(auth_server, "shared")
    with connect(auth_server, token=RO) as c:
        reader = c.reader("shared")
        assert reader.get(b"a") == b"1"
        assert list(reader.all()) == [(b"a", b"1")]
        assert reader.approximate_num_entries() >= 0


def test_prefix_permissions(auth_server: str) -> None:
    seeded(auth_server, "payments")
    with connect(auth_server, token=ORDERS) as c:
        with c.key_value_store("orders-eu") as kv:
            kv.put(b"o1", b"10")
            kv.commit({})
            assert c.reader("orders-eu").get(b"o1") == b"10"
        with pytest.raises(errors.PermissionDeniedError) as info:
            c.key_value_store("payments")
        assert "'payments'" in str(info.value) and "read-write" in str(info.value)
        with pytest.raises(errors.PermissionDeniedError, match="read access to store 'payments'"):
            c.reader("payments")
        with pytest.raises(errors.PermissionDeniedError):
            c.key_value_store("order")  # a prefix of the prefix is not enough


def test_inspect_of_one_store_names_no_other_store(auth_server: str) -> None:
    """A token scoped to orders-* may Inspect its own store, but the answer must not list the
    names of stores it has no access to (Inspect of every store needs the prefix "")."""
    seeded(auth_server, "payments-private")
    seeded(auth_server, "orders-inspected")
    resp = raw_call(auth_server, "Inspect", pb.InspectRequest(store="orders-inspected"),
                    ORDERS)
    assert list(resp.stores) == ["orders-inspected"]
    assert {s.store for s in resp.shards} <= {"orders-inspected"}
    everything = raw_call(auth_server, "Inspect", pb.InspectRequest(), RO)
    assert {"payments-private", "orders-inspected"} <= set(everything.stores)
    with pytest.raises(errors.PermissionDeniedError):
        raw_call(auth_server, "Inspect", pb.InspectRequest(), ORDERS)


def test_open_services_and_malformed_requests(auth_server: str) -> None:
    with grpc.insecure_channel(auth_server) as ch:
        health = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        garbage = ch.unary_unary("/tierstore.v1.StateStore/Get")
        with pytest.raises(grpc.RpcError) as info:
            garbage(b"\xff\xff\xff", timeout=10)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as info:
            garbage(b"\xff\xff\xff", timeout=10, metadata=(("authorization", f"Bearer {RW}"),))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


AUTH_FUZZ_STATUSES = {
    grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.ABORTED,
    grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED,
}


@settings(max_examples=300, deadline=None, database=None)
@given(method=st.sampled_from(["Open", "Stage", "Commit", "Get", "Scan", "Count", "Close",
                               "DescribeStore", "Snapshot"]),
       token=st.sampled_from([None, RW, RO, ORDERS, WRONG, ""]),
       data=st.one_of(st.binary(max_size=80),
                      st.builds(lambda n: pb.OpenRequest(store=n).SerializeToString()[:-1],
                                st.text(min_size=1, max_size=8))))
def test_interceptor_survives_garbage(auth_server: str, method: str, token: str | None,
                                      data: bytes) -> None:
    """Garbage through the interceptor: a proper status, never INTERNAL or UNKNOWN; without a
    known token, always UNAUTHENTICATED."""
    with grpc.insecure_channel(auth_server) as ch:
        path = f"/tierstore.v1.StateStore/{method}"
        call = ch.unary_stream(path) if method == "Scan" else ch.unary_unary(path)
        md = (("authorization", f"Bearer {token}"),) if token is not None else ()
        try:
            reply = call(data, timeout=10, metadata=md)
            if method == "Scan":
                list(reply)
            code = grpc.StatusCode.OK
        except grpc.RpcError as exc:
            code = exc.code()
        assert code in AUTH_FUZZ_STATUSES
        if token in (None, WRONG, ""):
            assert code is grpc.StatusCode.UNAUTHENTICATED


def test_secrets_never_logged(auth_server: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    seeded(auth_server, "logged")
    for token in (None, WRONG, RO, ORDERS):
        with connect(auth_server, token=token) as c, contextlib.suppress(errors.StateStoreError):
            c.key_value_store("logged")
    messages = caplog.text + "".join(str(r.args) for r in caplog.records)
    assert "refused Open" in messages  # the failures were logged...
    for secret in SECRETS:  # ...without any token
        assert secret not in messages


# --- token file --------------------------------------------------------------------------------
def test_token_file_json_and_hashes(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    path.write_text(json.dumps({"tokens": [
        {"name": "a", "token_sha256": hashlib.sha256(b"t1").hexdigest().upper(),
         "permissions": [{"store_prefix": "x-", "access": "read"}]},
    ]}))
    table = TokenTable.load(path)
    grant = table.authenticate("t1")
    assert grant is not None and grant.allows("x-1", "read")
    assert not grant.allows("x-1", "read-write") and not grant.allows("y-1", "read")
    assert table.authenticate("t2") is None


@pytest.mark.parametrize(("entry", "words"), [
    ({"token": "s3cret-xyz", "permissions": [{"store_prefix": "", "access": "write"}]}, "access"),
    ({"token": "s3cret-xyz", "token_sha256": "0" * 64}, "exactly one"),
    ({"token_sha256": "s3cret-xyz"}, "64 hex"),
    ({"token": "s3cret-xyz", "acces": "read"}, "unknown keys"),
    ({"token": "s3cret-xyz", "permissions": [{"prefix": ""}]}, "store_prefix"),
])
def test_token_file_errors_name_the_entry_not_the_token(
    tmp_path: Path, entry: dict[str, Any], words: str
) -> None:
    path = tmp_path / "tokens.json"
    path.write_text(json.dumps({"tokens": [entry]}))
    with pytest.raises(AuthConfigError, match=words) as info:
        TokenTable.load(path)
    assert "tokens[0]" in str(info.value) and "s3cret-xyz" not in str(info.value)


def test_token_file_syntax_error_does_not_quote_it(tmp_path: Path) -> None:
    path = tmp_path / "tokens.toml"
    path.write_text('[[tokens]]\ntoken = "s3cret-xyz\n')  # unterminated string
    with pytest.raises(ConfigError) as info:
        TokenTable.load(path)
    assert "s3cret-xyz" not in str(info.value)
    dup = tmp_path / "dup.toml"
    dup.write_text('[[tokens]]\ntoken = "a"\n[[tokens]]\ntoken_sha256 = "'
                   + hashlib.sha256(b"a").hexdigest() + '"\n')
    with pytest.raises(ConfigError, match="more than one entry"):
        TokenTable.load(dup)


def test_every_method_has_an_access_rule() -> None:
    """A new RPC without a rule would be refused to everyone (fail closed): catch it here."""
    methods = {m.name for m in pb.DESCRIPTOR.services_by_name["StateStore"].methods}
    assert methods == set(ACCESS_OF)


def test_bearer_parsing() -> None:
    assert bearer_token([("authorization", "Bearer abc")]) == "abc"
    assert bearer_token([("authorization", "bearer  abc ")]) == "abc"
    assert bearer_token([("authorization", "Basic abc")]) is None
    assert bearer_token([("authorization", "Bearer ")]) is None
    assert bearer_token([("authorization", "Bearer a"), ("authorization", "Bearer b")]) is None
    assert bearer_token(None) is None


def test_flags_and_environment(tmp_path: Path) -> None:
    (tmp_path / "t.toml").write_text(TOKENS_TOML)
    cfg = load_config(
        {"auth_tokens": str(tmp_path / "t.toml"), "max_concurrent_rpcs": "7"},
        {"TIERSTORE_MAX_CONCURRENT_STREAMS": "9", "TIERSTORE_DATA_DIR": str(tmp_path)},
    )
    assert (cfg.max_concurrent_rpcs, cfg.max_concurrent_streams) == (7, 9)
    with pytest.raises(ConfigError, match="both or neither"):
        load_config({"tls_cert": str(tmp_path / "t.toml")}, {})
    with pytest.raises(ConfigError, match="no such file"):
        load_config({"auth_tokens": str(tmp_path / "missing.toml")}, {})


# --- TLS ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def roundtrip(target: str, **kw: Any) -> None:
    with connect(target, timeout_s=10, **kw) as c:
        with c.key_value_store("tls-store") as kv:
            kv.put(b"k", b"v")
            kv.commit({"in:0": 1})
        assert c.reader("tls-store").get(b"k") == b"v"


def test_tls_round_trip_and_refusals(tmp_path: Path, pki: Pki) -> None:
    with running(tmp_path, tls_cert=str(pki.server_cert), tls_key=str(pki.server_key)) as s:
        target = f"127.0.0.1:{s.port}"
        roundtrip(target, tls=TLSConfig(ca_file=pki.ca))
        roundtrip(f"localhost:{s.port}", tls=TLSConfig(ca_file=str(pki.ca)))
        creds = grpc.ssl_channel_credentials(pki.ca.read_bytes())
        roundtrip(target, tls=creds)
        with pytest.raises(errors.UnavailableError):
            roundtrip(target)  # plaintext against TLS
        with pytest.raises(errors.UnavailableError):
            roundtrip(target, tls=True)  # the system roots do not know the test CA
        with pytest.raises(errors.UnavailableError):
            roundtrip(target, tls=TLSConfig(ca_file=pki.ca, server_name="elsewhere.example"))


def test_mtls_requires_a_client_certificate(tmp_path: Path, pki: Pki) -> None:
    (tmp_path / "tokens.toml").write_text(TOKENS_TOML)
    with running(tmp_path, tls_cert=str(pki.server_cert), tls_key=str(pki.server_key),
                 tls_client_ca=str(pki.ca), auth_tokens=str(tmp_path / "tokens.toml")) as s:
        target = f"127.0.0.1:{s.port}"
        with pytest.raises(errors.UnavailableError):
            roundtrip(target, tls=TLSConfig(ca_file=pki.ca), token=RW)
        with pytest.raises(errors.UnavailableError):
            roundtrip(target, token=RW, tls=TLSConfig(
                ca_file=pki.ca, cert_file=pki.stranger_cert, key_file=pki.stranger_key))
        good = TLSConfig(ca_file=pki.ca, cert_file=pki.client_cert, key_file=pki.client_key)
        with pytest.raises(errors.UnauthenticatedError):
            roundtrip(target, tls=good)  # a certificate does not replace the token
        roundtrip(target, tls=good, token=RW)


def test_tls_config_errors(tmp_path: Path) -> None:
    with pytest.raises(errors.InvalidArgumentError, match="cert_file and key_file"):
        TLSConfig(cert_file="c.pem").credentials()
    with pytest.raises(errors.InvalidArgumentError, match="ca_file"):
        connect("127.0.0.1:1", tls=TLSConfig(ca_file=tmp_path / "nope.pem"))
    (tmp_path / "junk.pem").write_text("junk")
    with pytest.raises(ConfigError, match="tls-cert"):
        create_server(ServerConfig(listen="127.0.0.1:0", data_dir=tmp_path / "d",
                                   tls_cert=str(tmp_path / "junk.pem"),
                                   tls_key=str(tmp_path / "junk.pem")))


@pytest.mark.kafka
@pytest.mark.s3
@pytest.mark.parametrize("mtls", [False, True])
def test_tls_peers_probe_each_other_over_tls(tmp_path: Path, pki: Pki, broker: Broker,
                                            s3_server: S3Server, s3_bucket: str,
                                            mtls: bool) -> None:
    """Peers that speak only TLS (and, under mTLS, require client certificates) must still see
    each other: their health probes use TLS. A wrong expected name makes the probe fail, so the
    check can fail."""
    ports = [free_port(), free_port()]
    peers = ",".join(f"127.0.0.1:{p}" for p in ports)
    common: dict[str, Any] = dict(
        tls_cert=str(pki.peer_cert), tls_key=str(pki.peer_key), peers=peers,
        kafka_bootstrap=broker.bootstrap, object_store=f"s3://{s3_bucket}/tls-peers",
        s3_endpoint=s3_server.endpoint,
    )
    if mtls:
        common["tls_client_ca"] = str(pki.ca)
    else:
        common["peer_tls_ca"] = str(pki.ca)
    servers = [create_server(ServerConfig(listen=f"127.0.0.1:{p}", data_dir=tmp_path / str(p),
                                          **common)) for p in ports]
    odd = create_server(ServerConfig(listen=f"127.0.0.1:{free_port()}",
                                     data_dir=tmp_path / "odd",
                                     **{**common, "peer_tls_server_name": "elsewhere.example"}))
    try:
        everyone = tuple(sorted(f"127.0.0.1:{p}" for p in ports))
        assert wait_until(lambda: all(_live(s) == everyone for s in servers), 20.0), \
            [_live(s) for s in servers]
        # The odd server expects another name in its peers' certificates: it sees none of them.
        assert not set(everyone) & set(_live(odd)), _live(odd)
    finally:
        for s in [*servers, odd]:
            s.stop(grace=1.0, snapshot=False)


def _live(server: RunningServer) -> tuple[str, ...]:
    m = server.service.membership
    assert m is not None
    return m.live()

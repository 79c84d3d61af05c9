"""Bad input on the wire: each gets its precise gRPC status with a message naming the problem,
nothing of the refused call is applied, and the server keeps serving afterwards.

Everything runs against a real server started in-process on a free port, over a real channel,
mostly through the generated stub so that the statuses are asserted as they travel on the wire.
"""

from __future__ import annotations

import contextlib
import random
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import grpc
import pytest
from google.protobuf import descriptor_pool
from google.protobuf.message import DecodeError, Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from tierstore.client import connect, errors
from tierstore.server.app import RunningServer, create_server
from tierstore.server.config import ServerConfig
from tierstore.v1 import store_pb2 as pb
from tierstore.v1 import store_pb2_grpc

SERVICE = "tierstore.v1.StateStore"
MAX_VALUE = 1024  # the small server's max_value_bytes, so oversized values stay cheap
DEFAULT_MAX_VALUE = 8 * 1024 * 1024
MAX_KEY = 64 * 1024
TIMEOUT = 10.0
CANARY = "canary"

INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND
FENCED = grpc.StatusCode.FAILED_PRECONDITION
ABORTED = grpc.StatusCode.ABORTED

KV = pb.STORE_TYPE_KV
WINDOW = pb.STORE_TYPE_WINDOW
SESSION = pb.STORE_TYPE_SESSION

REQUEST_OF: dict[str, type[Message]] = {
    "Open": pb.OpenRequest,
    "Stage": pb.StageRequest,
    "Commit": pb.CommitRequest,
    "Get": pb.GetRequest,
    "Scan": pb.ScanRequest,
    "Count": pb.CountRequest,
    "Close": pb.CloseRequest,
    "DescribeStore": pb.DescribeStoreRequest,
    "Snapshot": pb.SnapshotRequest,
    "Inspect": pb.InspectRequest,
}


def fresh(prefix: str = "s") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def batch(puts: Sequence[tuple[bytes, bytes]] = (), deletes: Sequence[bytes] = ()) -> pb.WriteBatch:
    return pb.WriteBatch(
        put_keys=[k for k, _ in puts], put_values=[v for _, v in puts], delete_keys=list(deletes)
    )


@dataclass
class Wire:
    """A running server plus a raw stub over a real channel, with assertion helpers."""

    running: RunningServer
    channel: grpc.Channel
    stub: store_pb2_grpc.StateStoreStub

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.running.port}"

    def call(self, method: str, req: Message) -> Any:
        fn = getattr(self.stub, method)
        if method == "Scan":
            return list(fn(req, timeout=TIMEOUT))
        return fn(req, timeout=TIMEOUT)

    def open(
        self,
        store: str,
        partition: int = 0,
        type_: pb.StoreType.ValueType = KV,
        num_partitions: int = 0,
    ) -> pb.OpenResponse:
        req = pb.OpenRequest(
            store=store, partition=partition, type=type_, num_partitions=num_partitions
        )
        resp: pb.OpenResponse = self.call("Open", req)
        return resp

    def commit(
        self,
        store: str,
        epoch: int,
        seq: int,
        b: pb.WriteBatch | None = None,
        offsets: dict[str, int] | None = None,
        staged: int = 0,
        partition: int = 0,
    ) -> pb.CommitResponse:
        resp: pb.CommitResponse = self.call(
            "Commit", commit_req(store, epoch, seq, b, offsets, staged, partition)
        )
        return resp

    def get(
        self, store: str, keys: Sequence[bytes], epoch: int = 0, partition: int = 0
    ) -> list[bytes | None]:
        req = pb.GetRequest(store=store, partition=partition, epoch=epoch, keys=list(keys))
        resp: pb.GetResponse = self.call("Get", req)
        return [v if f else None for v, f in zip(resp.values, resp.found, strict=True)]

    def scan(self, store: str, epoch: int = 0, partition: int = 0) -> list[tuple[bytes, bytes]]:
        pages = self.call("Scan", pb.ScanRequest(store=store, partition=partition, epoch=epoch))
        return [kv for p in pages for kv in zip(p.keys, p.values, strict=True)]

    def health(self, service: str = "") -> int:
        stub = health_pb2_grpc.HealthStub(self.channel)
        resp = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=TIMEOUT)
        return int(resp.status)

    def assert_serving(self) -> None:
        """A good call succeeds: the server survived whatever came before."""
        assert self.get(CANARY, [b"canary"]) == [b"alive"]

    def fails(self, code: grpc.StatusCode, method: str, req: Message, *words: str) -> str:
        """`method(req)` fails with `code` and a message containing every word; then a good call
        succeeds. Returns the status details."""
        with pytest.raises(grpc.RpcError) as info:
            self.call(method, req)
        err: Any = info.value
        details = err.details() or ""
        assert err.code() == code, f"{method}: expected {code}, got {err.code()}: {details}"
        for w in words:
            assert w.lower() in details.lower(), f"{method}: {w!r} not in {details!r}"
        self.assert_serving()
        return str(details)


def commit_req(
    store: str,
    epoch: int,
    seq: int,
    b: pb.WriteBatch | None = None,
    offsets: dict[str, int] | None = None,
    staged: int = 0,
    partition: int = 0,
) -> pb.CommitRequest:
    return pb.CommitRequest(
        store=store,
        partition=partition,
        epoch=epoch,
        commit_seq=seq,
        staged_batches=staged,
        batch=b or pb.WriteBatch(),
        offsets=offsets or {},
    )


def stage_req(
    store: str, epoch: int, seq: int, b: pb.WriteBatch, partition: int = 0
) -> pb.StageRequest:
    return pb.StageRequest(store=store, partition=partition, epoch=epoch, commit_seq=seq, batch=b)


def scan_req(store: str, epoch: int = 0, partition: int = 0, **fields: Any) -> pb.ScanRequest:
    return pb.ScanRequest(store=store, partition=partition, epoch=epoch, **fields)


def get_req(store: str, keys: Sequence[bytes], epoch: int = 0, partition: int = 0) -> pb.GetRequest:
    return pb.GetRequest(store=store, partition=partition, epoch=epoch, keys=list(keys))


@contextlib.contextmanager
def serving(data_dir: Path, **cfg: Any) -> Iterator[Wire]:
    """A server on a free port with a canary key committed (see Wire.assert_serving)."""
    running = create_server(ServerConfig(listen="127.0.0.1:0", data_dir=data_dir, **cfg))
    limit = 64 * 1024 * 1024  # a client that can read back a maximal value
    channel = grpc.insecure_channel(
        f"127.0.0.1:{running.port}", options=[("grpc.max_receive_message_length", limit)]
    )
    try:
        w = Wire(running, channel, store_pb2_grpc.StateStoreStub(channel))
        epoch = w.open(CANARY).epoch
        w.commit(CANARY, epoch, 1, batch([(b"canary", b"alive")]))
        yield w
    finally:
        channel.close()
        running.stop(grace=1.0, snapshot=False)


@pytest.fixture(scope="module")
def wire(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Wire]:
    """One server for the module, with a small max_value_bytes so oversized values are cheap."""
    with serving(tmp_path_factory.mktemp("wire"), max_value_bytes=MAX_VALUE) as w:
        yield w


@pytest.fixture
def kv(wire: Wire) -> tuple[str, int]:
    """A fresh KV store (1 partition), claimed: (name, epoch)."""
    name = fresh("kv")
    return name, int(wire.open(name).epoch)


# --- keys ---------------------------------------------------------------------------------------
def test_empty_key_is_refused_everywhere(wire: Wire, kv: tuple[str, int]) -> None:
    store, epoch = kv
    wire.commit(store, epoch, 1, batch([(b"a", b"1")]), {"in:0": 1})

    wire.fails(INVALID, "Get", get_req(store, [b"a", b""]), "empty")
    wire.fails(INVALID, "Get", get_req(store, [b""], epoch=epoch), "empty")
    wire.fails(
        INVALID,
        "Commit",
        commit_req(store, epoch, 2, batch([(b"x", b"1"), (b"", b"2")]), {"in:0": 2}),
        "empty",
    )
    wire.fails(INVALID, "Commit", commit_req(store, epoch, 2, batch(deletes=[b"a", b""])), "empty")
    wire.fails(INVALID, "Stage", stage_req(store, epoch, 2, batch([(b"", b"1")])), "empty")
    wire.fails(INVALID, "Scan", scan_req(store, from_key=b""), "empty")
    wire.fails(INVALID, "Scan", scan_req(store, to_key=b""), "empty")
    wire.fails(INVALID, "Scan", scan_req(store, from_key=b"", to_key=b"z", reverse=True), "empty")

    # Nothing was applied or staged: "a" is still there, "x" never arrived, and the next commit
    # is still number 2 with the offsets of commit 1.
    assert wire.get(store, [b"a", b"x"], epoch=epoch) == [b"1", None]
    resp = wire.commit(store, epoch, 2)
    assert dict(resp.committed_offsets) == {"in:0": 1}
    assert wire.scan(store) == [(b"a", b"1")]


def test_key_size_limit(wire: Wire, kv: tuple[str, int]) -> None:
    store, epoch = kv
    biggest, too_big = b"k" * MAX_KEY, b"k" * (MAX_KEY + 1)

    wire.commit(store, epoch, 1, batch([(biggest, b"v")]))
    assert wire.get(store, [biggest]) == [b"v"]
    assert wire.call("Scan", scan_req(store, from_key=biggest, to_key=biggest))[0].keys == [biggest]

    words = ("65537", "65536")
    wire.fails(INVALID, "Get", get_req(store, [b"a", too_big]), *words)
    wire.fails(INVALID, "Commit", commit_req(store, epoch, 2, batch([(too_big, b"v")])), *words)
    wire.fails(INVALID, "Commit", commit_req(store, epoch, 2, batch(deletes=[too_big])), *words)
    wire.fails(INVALID, "Stage", stage_req(store, epoch, 2, batch([(too_big, b"v")])), *words)
    wire.fails(INVALID, "Scan", scan_req(store, from_key=too_big), *words)
    wire.fails(INVALID, "Scan", scan_req(store, to_key=too_big), *words)

    wire.commit(store, epoch, 2, batch(deletes=[biggest]))
    assert wire.get(store, [biggest]) == [None]


def test_value_over_configured_max(wire: Wire, kv: tuple[str, int]) -> None:
    store, epoch = kv
    wire.commit(store, epoch, 1, batch([(b"max", b"v" * MAX_VALUE)]))
    assert wire.get(store, [b"max"]) == [b"v" * MAX_VALUE]

    over = batch([(b"a", b"1"), (b"big", b"v" * (MAX_VALUE + 1))])
    wire.fails(
        INVALID,
        "Commit",
        commit_req(store, epoch, 2, over),
        str(MAX_VALUE + 1),
        str(MAX_VALUE),
        "maximum",
    )
    wire.fails(INVALID, "Stage", stage_req(store, epoch, 2, over), str(MAX_VALUE))
    assert wire.get(store, [b"a", b"big"], epoch=epoch) == [None, None]
    wire.commit(store, epoch, 2)


def test_value_over_default_max(tmp_path: Path) -> None:
    with serving(tmp_path) as w:
        store = fresh("default")
        epoch = w.open(store).epoch
        w.commit(store, epoch, 1, batch([(b"max", b"\0" * DEFAULT_MAX_VALUE)]))
        w.fails(
            INVALID,
            "Commit",
            commit_req(store, epoch, 2, batch([(b"big", b"\0" * (DEFAULT_MAX_VALUE + 1))])),
            str(DEFAULT_MAX_VALUE),
        )
        assert w.get(store, [b"big"]) == [None]
        assert len(w.get(store, [b"max"])[0] or b"") == DEFAULT_MAX_VALUE


# --- ranges -------------------------------------------------------------------------------------
def test_inverted_range(wire: Wire, kv: tuple[str, int]) -> None:
    store, epoch = kv
    wire.commit(store, epoch, 1, batch([(b"a", b"1"), (b"b", b"2")]))
    for reverse in (False, True):
        for e in (0, epoch):
            wire.fails(
                INVALID,
                "Scan",
                scan_req(store, e, from_key=b"b", to_key=b"a", reverse=reverse),
                "inverted",
            )
    pages = wire.call("Scan", scan_req(store, from_key=b"b", to_key=b"b"))
    assert [k for p in pages for k in p.keys] == [b"b"]


def test_prefix_with_bounds(wire: Wire, kv: tuple[str, int]) -> None:
    store, _ = kv
    wire.fails(INVALID, "Scan", scan_req(store, prefix=b"a", from_key=b"a"), "prefix")
    wire.fails(INVALID, "Scan", scan_req(store, prefix=b"a", to_key=b"b"), "prefix")
    wire.fails(INVALID, "Scan", scan_req(store, prefix=b"a", from_key=b"a", to_key=b"b"), "prefix")
    assert wire.call("Scan", scan_req(store, prefix=b"a")) == []


# --- stores and partitions ----------------------------------------------------------------------
def test_unknown_store(wire: Wire) -> None:
    name = fresh("missing")
    wire.fails(NOT_FOUND, "DescribeStore", pb.DescribeStoreRequest(store=name), name)
    wire.fails(NOT_FOUND, "Get", get_req(name, [b"a"]), name)
    wire.fails(NOT_FOUND, "Scan", scan_req(name), name)
    wire.fails(NOT_FOUND, "Count", pb.CountRequest(store=name), name)
    wire.fails(NOT_FOUND, "Commit", commit_req(name, 1, 1, batch([(b"a", b"1")])), name)
    wire.fails(NOT_FOUND, "Stage", stage_req(name, 1, 1, batch([(b"a", b"1")])), name)
    wire.fails(NOT_FOUND, "Close", pb.CloseRequest(store=name, epoch=1), name)
    wire.fails(NOT_FOUND, "Snapshot", pb.SnapshotRequest(store=name, partition=-1), name)
    # None of those created the store.
    wire.fails(NOT_FOUND, "DescribeStore", pb.DescribeStoreRequest(store=name), name)


def test_wrong_type_and_partition_count(wire: Wire) -> None:
    name = fresh("typed")
    first = wire.open(name, type_=KV, num_partitions=3)
    assert first.spec.num_partitions == 3

    for t in (WINDOW, SESSION):
        req = pb.OpenRequest(store=name, type=t, window_size_ms=60_000, retention_ms=3_600_000)
        wire.fails(INVALID, "Open", req, name, "kv")
    wire.fails(INVALID, "Open", pb.OpenRequest(store=name, type=KV, num_partitions=4), "3", "4")
    wire.fails(INVALID, "Open", pb.OpenRequest(store=name, type=KV, num_partitions=1), "3")

    again = wire.open(name, partition=2, num_partitions=0)
    assert again.spec.num_partitions == 3
    assert again.spec.type == KV
    spec = wire.call("DescribeStore", pb.DescribeStoreRequest(store=name)).spec
    assert (spec.type, spec.num_partitions) == (KV, 3)
    # The refused claims did not claim: the first owner of partition 0 is not fenced.
    wire.commit(name, first.epoch, 1, batch([(b"k", b"v")]))


def test_partition_out_of_range(wire: Wire) -> None:
    name = fresh("parts")
    epoch = wire.open(name, num_partitions=2).epoch
    for p in (-1, 2, 1000, -(2**31)):
        wire.fails(
            INVALID, "Open", pb.OpenRequest(store=name, partition=p, type=KV), "partition", str(p)
        )
        wire.fails(INVALID, "Get", get_req(name, [b"a"], partition=p), "partition")
        wire.fails(INVALID, "Scan", scan_req(name, partition=p), "partition")
        wire.fails(INVALID, "Count", pb.CountRequest(store=name, partition=p), "partition")
        wire.fails(
            INVALID,
            "Commit",
            commit_req(name, epoch, 1, batch([(b"a", b"1")]), partition=p),
            "partition",
        )
        wire.fails(
            INVALID, "Stage", stage_req(name, epoch, 1, batch([(b"a", b"1")]), p), "partition"
        )
    wire.commit(name, epoch, 1, batch([(b"a", b"1")]))

    # A refused first claim does not leave a half-created store behind.
    new = fresh("parts-new")
    wire.fails(INVALID, "Open", pb.OpenRequest(store=new, partition=-1, type=KV), "partition")
    wire.fails(
        INVALID,
        "Open",
        pb.OpenRequest(store=new, partition=2, type=KV, num_partitions=2),
        "partition",
    )
    wire.fails(NOT_FOUND, "DescribeStore", pb.DescribeStoreRequest(store=new), new)
    assert wire.open(new, partition=4, num_partitions=5).spec.num_partitions == 5


def test_bad_store_names(wire: Wire) -> None:
    bad = [
        "",
        "a/b",
        "x" * 201,
        "..",
        ".",
        "../escape",
        "a b",
        "caf\u00e9",
        "a\x00b",
        "a\n",
        ".tmp.x",
    ]
    for name in bad:
        wire.fails(INVALID, "Open", pb.OpenRequest(store=name, type=KV), "store name")
        wire.fails(INVALID, "DescribeStore", pb.DescribeStoreRequest(store=name), "store name")
        wire.fails(INVALID, "Get", get_req(name, [b"a"]), "store name")
    longest = "x" * 200
    assert wire.open(longest).spec.name == longest


def test_store_type_unspecified(wire: Wire) -> None:
    name = fresh("untyped")
    wire.fails(
        INVALID, "Open", pb.OpenRequest(store=name, type=pb.STORE_TYPE_UNSPECIFIED), "store type"
    )
    unknown = cast(pb.StoreType.ValueType, 99)  # an enum number this server does not know
    wire.fails(INVALID, "Open", pb.OpenRequest(store=name, type=unknown), "store type")
    wire.fails(NOT_FOUND, "DescribeStore", pb.DescribeStoreRequest(store=name), name)


# --- fencing ------------------------------------------------------------------------------------
def test_stale_epoch_is_fenced(wire: Wire, kv: tuple[str, int]) -> None:
    store, old = kv
    wire.commit(store, old, 1, batch([(b"a", b"1")]), {"in:0": 10})
    new = wire.open(store).epoch
    assert new > old

    stale = batch([(b"a", b"stale"), (b"b", b"stale")], deletes=[b"c"])
    wire.fails(FENCED, "Commit", commit_req(store, old, 2, stale, {"in:0": 99}), "fenced")
    wire.fails(FENCED, "Stage", stage_req(store, old, 2, stale), "fenced")
    wire.fails(FENCED, "Commit", commit_req(store, new + 1, 1, stale), "fenced")

    # The new owner's view (and the committed view) has none of the stale writes.
    for e in (0, new):
        assert wire.get(store, [b"a", b"b"], epoch=e) == [b"1", None]
    resp = wire.commit(store, new, 1, batch([(b"c", b"3")]))
    assert dict(resp.committed_offsets) == {"in:0": 10}
    # The old owner stays fenced after the new one commits.
    wire.fails(FENCED, "Commit", commit_req(store, old, 2, stale), "fenced")
    assert wire.scan(store) == [(b"a", b"1"), (b"c", b"3")]


# --- batches ------------------------------------------------------------------------------------
def test_negative_and_unnamed_offsets(wire: Wire, kv: tuple[str, int]) -> None:
    store, epoch = kv
    wire.commit(store, epoch, 1, offsets={"in:0": 5})
    b = batch([(b"a", b"1")])
    wire.fails(
        INVALID, "Commit", commit_req(store, epoch, 2, b, {"in:0": 6, "in:1": -1}), "offset", "-1"
    )
    wire.fails(INVALID, "Commit", commit_req(store, epoch, 2, b, {"": 1}), "offset")
    assert wire.get(store, [b"a"]) == [None]
    assert dict(wire.commit(store, epoch, 2).committed_offsets) == {"in:0": 5}


def test_put_keys_and_values_of_different_lengths(wire: Wire, kv: tuple[str, int]) -> None:
    store, epoch = kv
    for keys, values in (([b"a", b"b"], [b"1"]), ([b"a"], [b"1", b"2"]), ([], [b"1"])):
        b = pb.WriteBatch(put_keys=keys, put_values=values)
        wire.fails(
            INVALID,
            "Commit",
            commit_req(store, epoch, 1, b),
            f"{len(keys)} put keys",
            f"{len(values)} values",
        )
        wire.fails(INVALID, "Stage", stage_req(store, epoch, 1, b), "put keys")
    assert wire.get(store, [b"a", b"b"], epoch=epoch) == [None, None]
    wire.commit(store, epoch, 1)


def test_same_key_put_and_deleted(wire: Wire, kv: tuple[str, int]) -> None:
    store, epoch = kv
    b = batch([(b"a", b"1"), (b"b", b"2")], deletes=[b"c", b"b"])
    wire.fails(INVALID, "Commit", commit_req(store, epoch, 1, b), "both put and deleted")
    wire.fails(INVALID, "Stage", stage_req(store, epoch, 1, b), "both put and deleted")
    assert wire.get(store, [b"a", b"b"], epoch=epoch) == [None, None]
    wire.commit(store, epoch, 1)


BAD_ONE: dict[str, tuple[int, tuple[bytes, bytes] | None, bytes | None, str]] = {
    # kind: (position, bad put or None, bad delete or None, expected word)
    "empty key": (0, (b"", b"v"), None, "empty"),
    "oversized key": (500, (b"k" * (MAX_KEY + 1), b"v"), None, "65536"),
    "oversized value": (999, (b"bad", b"v" * (MAX_VALUE + 1)), None, str(MAX_VALUE)),
    "empty delete key": (0, None, b"", "empty"),
    "oversized delete key": (0, None, b"d" * (MAX_KEY + 1), "65536"),
    "put and deleted": (0, None, b"key-000900", "both"),
}


@pytest.mark.parametrize("kind", list(BAD_ONE))
@pytest.mark.parametrize("staged", [False, True], ids=["direct", "staged"])
def test_one_bad_key_in_a_thousand(wire: Wire, kind: str, staged: bool) -> None:
    pos, bad_put, bad_delete, word = BAD_ONE[kind]
    store = fresh("bad-one")
    epoch = wire.open(store).epoch
    wire.commit(store, epoch, 1, batch([(b"old", b"0")]), {"in:0": 7})

    good = [(b"key-%06d" % i, b"val-%d" % i) for i in range(1000)]
    puts = list(good)
    if bad_put is not None:
        puts[pos] = bad_put
    else:
        del puts[999]
    deletes = [bad_delete] if bad_delete is not None else []
    assert len(puts) + len(deletes) == 1000
    bad = batch(puts, deletes)

    if staged:
        wire.fails(INVALID, "Stage", stage_req(store, epoch, 2, bad), word)
        # A good stage, then a commit carrying the bad part: the staged part is not applied.
        half = len(puts) // 2
        ok_part = [kv for kv in puts[:half] if kv != bad_put]
        rest = batch(
            [kv for kv in puts[half:] if kv != bad_put] + ([bad_put] if bad_put else []), deletes
        )
        assert wire.call("Stage", stage_req(store, epoch, 2, batch(ok_part))).staged_batches == 1
        wire.fails(
            INVALID, "Commit", commit_req(store, epoch, 2, rest, {"in:0": 8}, staged=1), word
        )
    else:
        wire.fails(INVALID, "Commit", commit_req(store, epoch, 2, bad, {"in:0": 8}), word)

    good_keys = [k for k, _ in good]
    assert wire.get(store, good_keys) == [None] * len(good_keys)
    assert wire.scan(store) == [(b"old", b"0")]
    # Committed state is exactly commit 1: the sequence did not move (a retry of 1 is
    # acknowledged with its offsets), and a new claim sees the same offsets.
    ack = wire.commit(store, epoch, 1)
    assert dict(ack.committed_offsets) == {"in:0": 7}
    reopened = wire.open(store)
    assert dict(reopened.committed_offsets) == {"in:0": 7}
    assert wire.get(store, good_keys, epoch=reopened.epoch) == [None] * len(good_keys)


# --- commit sequence ----------------------------------------------------------------------------
def test_commit_sequence_gap_and_staged_mismatch(wire: Wire, kv: tuple[str, int]) -> None:
    store, epoch = kv
    b = batch([(b"a", b"1")])
    wire.fails(ABORTED, "Commit", commit_req(store, epoch, 2, b), "sequence")
    wire.fails(ABORTED, "Commit", commit_req(store, epoch, 0, b), "sequence")
    wire.fails(ABORTED, "Stage", stage_req(store, epoch, 3, b), "commit 3", "expected 1")
    # The commit claims a staged batch the server does not hold.
    wire.fails(ABORTED, "Commit", commit_req(store, epoch, 1, b, staged=1), "staged")
    # The server holds a staged batch the commit does not claim: aborted, and the stage dropped.
    assert wire.call("Stage", stage_req(store, epoch, 1, batch([(b"s", b"1")]))).staged_batches
    assert wire.get(store, [b"s"], epoch=epoch) == [b"1"]
    wire.fails(ABORTED, "Commit", commit_req(store, epoch, 1, b, staged=0), "staged")
    assert wire.get(store, [b"a", b"s"], epoch=epoch) == [None, None]
    assert wire.get(store, [b"a", b"s"]) == [None, None]

    resp = wire.commit(store, epoch, 1, b, {"in:0": 1})
    assert dict(resp.committed_offsets) == {"in:0": 1}
    wire.fails(ABORTED, "Commit", commit_req(store, epoch, 3, b), "sequence")
    assert wire.get(store, [b"a"]) == [b"1"]


def test_retried_commit_is_acknowledged_and_applied_once(wire: Wire, kv: tuple[str, int]) -> None:
    store, epoch = kv
    first = commit_req(store, epoch, 1, batch([(b"a", b"1")], deletes=[b"x"]), {"in:0": 1})
    ack1 = wire.call("Commit", first)
    ack2 = wire.call("Commit", first)  # the same request again: its response was "lost"
    assert dict(ack1.committed_offsets) == dict(ack2.committed_offsets) == {"in:0": 1}
    assert ack1.changelog_offset == ack2.changelog_offset

    # A retry of number 1 is acknowledged without applying anything of what it carries.
    other = commit_req(store, epoch, 1, batch([(b"a", b"2"), (b"b", b"2")]), {"in:0": 50})
    assert dict(wire.call("Commit", other).committed_offsets) == {"in:0": 1}
    assert wire.scan(store) == [(b"a", b"1")]

    # The sequence did not move: the next commit is number 2, and 1 is now too old to retry.
    second = wire.commit(store, epoch, 2, batch([(b"b", b"3")]), {"in:0": 2})
    assert dict(second.committed_offsets) == {"in:0": 2}
    wire.fails(ABORTED, "Commit", first, "sequence")
    reopened = wire.open(store)
    assert reopened.last_commit_seq == 0  # a claim starts a new sequence
    assert dict(reopened.committed_offsets) == {"in:0": 2}
    assert wire.scan(store) == [(b"a", b"1"), (b"b", b"3")]


# --- garbage on the wire ------------------------------------------------------------------------
def garbage() -> list[bytes]:
    rng = random.Random(20240611)
    blobs = [b"\xff\xff\xff\xff", b"\xff", b"\x0a\x05ab", b"\x0a\x02\xff\xfe", b"\x12\xff"]
    blobs += [rng.randbytes(rng.randint(1, 300)) for _ in range(24)]
    return blobs


def parses(cls: type[Message], data: bytes) -> bool:
    try:
        cls().ParseFromString(data)
    except DecodeError:
        return False
    return True


@pytest.mark.parametrize("method", list(REQUEST_OF))
def test_garbage_bytes(wire: Wire, method: str) -> None:
    path = f"/{SERVICE}/{method}"
    if method == "Scan":
        scan = wire.channel.unary_stream(path, request_serializer=None, response_deserializer=None)

        def call(data: bytes) -> object:
            return list(scan(data, timeout=TIMEOUT))
    else:
        unary = wire.channel.unary_unary(path, request_serializer=None, response_deserializer=None)

        def call(data: bytes) -> object:
            return unary(data, timeout=TIMEOUT)

    refused = 0
    for data in garbage():
        try:
            call(data)
        except grpc.RpcError as exc:
            err: Any = exc
            code, details = err.code(), err.details() or ""
        else:
            code, details = grpc.StatusCode.OK, ""
        if not parses(REQUEST_OF[method], data):
            assert code == INVALID, f"{method} {data[:16]!r}: {code} {details}"
            assert "malformed" in details, details
            refused += 1
        else:  # random bytes that happen to parse: never an internal error
            assert code not in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN), details
        wire.assert_serving()
    assert refused >= 20


# --- health and reflection ----------------------------------------------------------------------
def test_health_and_reflection(wire: Wire) -> None:
    assert wire.health("") == health_pb2.HealthCheckResponse.SERVING
    assert wire.health(SERVICE) == health_pb2.HealthCheckResponse.SERVING
    with pytest.raises(grpc.RpcError) as info:
        wire.health("no.such.Service")
    assert info.value.code() == NOT_FOUND

    db = ProtoReflectionDescriptorDatabase(wire.channel)
    services = db.get_services()
    assert SERVICE in services
    assert "grpc.health.v1.Health" in services
    desc = descriptor_pool.DescriptorPool(db).FindServiceByName(SERVICE)
    assert {m.name for m in desc.methods} == set(REQUEST_OF)


# --- the client library -------------------------------------------------------------------------
def test_client_library_error_classes(wire: Wire) -> None:
    def cause(exc: BaseException, code: grpc.StatusCode) -> None:
        assert isinstance(exc.__cause__, grpc.RpcError)
        assert exc.__cause__.code() == code

    with connect(wire.target) as client:
        name = fresh("client")
        kv = client.key_value_store(name, num_partitions=2)

        with pytest.raises(errors.InvalidArgumentError, match="2 partitions") as inv:
            client.key_value_store(name, num_partitions=3)
        cause(inv.value, INVALID)
        with pytest.raises(errors.InvalidArgumentError, match="partition 5") as inv:
            client.key_value_store(name, partition=5)
        cause(inv.value, INVALID)
        kv.put(b"big", b"v" * (MAX_VALUE + 1))  # under the client's default limit
        with pytest.raises(errors.InvalidArgumentError, match=str(MAX_VALUE)) as inv:
            kv.commit({"in:0": 1})
        cause(inv.value, INVALID)
        kv.close()

        with pytest.raises(errors.StoreNotFoundError, match="does not exist") as nf:
            client.reader(fresh("nope"))
        cause(nf.value, NOT_FOUND)

        old = client.key_value_store(name)
        new = client.key_value_store(name)
        old.put(b"k", b"stale")
        with pytest.raises(errors.FencedError, match="fenced") as fenced:
            old.commit({"in:0": 9})
        cause(fenced.value, FENCED)
        assert new.get(b"k") is None
        assert client.reader(name).get(b"k") is None

        # Staged writes lost on the server (here: the shard was released under the handle).
        lossy = client.key_value_store(name, buffer_max_entries=1)
        lossy.put(b"k", b"v")  # moves to the server as a staged batch
        wire.call("Close", pb.CloseRequest(store=name, partition=0, epoch=lossy.epoch))
        with pytest.raises(errors.AbortedError, match="staged") as aborted:
            lossy.commit({"in:0": 1})
        cause(aborted.value, ABORTED)
        assert client.reader(name).get(b"k") is None

        for exc in (inv.value, nf.value, fenced.value, aborted.value):
            assert isinstance(exc, errors.StateStoreError)
    wire.assert_serving()


# --- after all of the above ---------------------------------------------------------------------
def test_server_still_serving_after_everything(wire: Wire) -> None:
    assert wire.health("") == health_pb2.HealthCheckResponse.SERVING
    assert wire.health(SERVICE) == health_pb2.HealthCheckResponse.SERVING
    wire.assert_serving()
    store = fresh("final")
    opened = wire.open(store, num_partitions=1)
    resp = wire.commit(store, opened.epoch, 1, batch([(b"k", b"v"), (b"j", b"w")]), {"in:0": 3})
    assert dict(resp.committed_offsets) == {"in:0": 3}
    assert wire.get(store, [b"k", b"j", b"x"]) == [b"v", b"w", None]
    assert wire.scan(store) == [(b"j", b"w"), (b"k", b"v")]
    with connect(wire.target) as client:
        kv = client.key_value_store(store)
        assert kv.committed_offsets == {"in:0": 3}
        kv.put(b"m", b"n")
        kv.commit({"in:0": 4})
        assert client.reader(store).get(b"m") == b"n"

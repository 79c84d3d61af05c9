"""Bad stores and partitions on the wire: unknown stores, a claim with the wrong type or partition
count, partitions out of range, invalid store names and an unspecified store type.

Each refused call gets its precise gRPC status with a message naming the problem, nothing of it
is applied, and the server keeps serving. All run against the in-process server of the `wire`
fixture (tests/conftest.py) through the generated stub, with the helpers of tests/wirehelp.py.
"""

from __future__ import annotations

from typing import cast

from tests.wirehelp import (
    INVALID,
    KV,
    NOT_FOUND,
    SESSION,
    WINDOW,
    Wire,
    batch,
    commit_req,
    fresh,
    get_req,
    scan_req,
    stage_req,
)
from tierstore.v1 import store_pb2 as pb


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

"""Bad keys, values and scan ranges on the wire: empty and oversized keys, values over the
configured and the default maximum, inverted ranges and a prefix combined with bounds.

Each refused call gets its precise gRPC status with a message naming the problem, nothing of it
is applied, and the server keeps serving. All run against the in-process server of the `wire`
fixture (tests/conftest.py) through the generated stub, with the helpers of tests/wirehelp.py.
"""

from __future__ import annotations

from pathlib import Path

from tests.wirehelp import (
    DEFAULT_MAX_VALUE,
    INVALID,
    MAX_KEY,
    MAX_VALUE,
    Wire,
    batch,
    commit_req,
    fresh,
    get_req,
    scan_req,
    serving,
    stage_req,
)


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

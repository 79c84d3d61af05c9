"""Refused writes on the wire (Commit and Stage): a stale epoch is fenced, a malformed batch is
refused as a whole, and the commit sequence is enforced while a retried commit is acknowledged
and applied once.

Each refused call gets its precise gRPC status with a message naming the problem, nothing of it
is applied, and the server keeps serving. All run against the in-process server of the `wire`
fixture (tests/conftest.py) through the generated stub, with the helpers of tests/wirehelp.py.
"""

from __future__ import annotations

import pytest

from tests.wirehelp import (
    ABORTED,
    FENCED,
    INVALID,
    MAX_KEY,
    MAX_VALUE,
    Wire,
    batch,
    commit_req,
    fresh,
    stage_req,
)
from tierstore.v1 import store_pb2 as pb


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

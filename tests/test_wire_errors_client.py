"""The client library turns the wire's error statuses into its own error classes, each with the
gRPC error as its cause, against the shared server of the `wire` fixture (tests/conftest.py).
"""

from __future__ import annotations

import grpc
import pytest

from tests.wirehelp import ABORTED, FENCED, INVALID, MAX_VALUE, NOT_FOUND, Wire, fresh
from tierstore.client import connect, errors
from tierstore.v1 import store_pb2 as pb


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
        # The server's value limit (below the client's default) comes with the claim: a
        # larger value is refused at put, and the handle stays usable (it used to be refused
        # only at commit, and stayed in the buffer, failing every later commit).
        with pytest.raises(errors.InvalidArgumentError, match=str(MAX_VALUE)):
            kv.put(b"big", b"v" * (MAX_VALUE + 1))
        kv.put(b"fits", b"v" * MAX_VALUE)
        kv.commit({"in:0": 1})
        assert kv.get_many([b"fits", b"big"]) == [b"v" * MAX_VALUE, None]
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


def test_a_fenced_owner_cannot_read_either(wire: Wire) -> None:
    """DESIGN.md: a stale epoch gets FAILED_PRECONDITION. A superseded handle's reads used to
    be answered (from the new owner's state) unless it had writes staged on the server, so a
    zombie worker kept computing on state it no longer owned without learning it was fenced."""
    with connect(wire.target) as client:
        name = fresh("fenced-reads")
        old = client.key_value_store(name)
        old.put(b"k", b"1")
        old.commit({"in:0": 1})
        new = client.key_value_store(name)
        for read in (lambda: old.get(b"k"), lambda: old.get_many([b"k", b"x"]),
                     lambda: list(old.all()), lambda: list(old.range(b"a", b"z")),
                     old.approximate_num_entries):
            with pytest.raises(errors.FencedError, match="fenced") as fenced:
                read()
            assert isinstance(fenced.value.__cause__, grpc.RpcError)
            assert fenced.value.__cause__.code() == FENCED
        assert new.get(b"k") == b"1"
        assert client.reader(name).get(b"k") == b"1"
    wire.assert_serving()

"""Fuzzing the wire boundary: generated requests against a live in-process server.

Hypothesis builds every request message of the service from the generated classes (store names
valid and invalid, partitions negative and huge, epochs and commit numbers stale, current and
absurd, keys empty and oversized, inverted ranges, batches whose parallel lists disagree), and
also sends raw garbage frames and truncated or bit-flipped valid messages with identity
serializers. Every reply must be OK or one of the statuses a client can act on, never INTERNAL
or UNKNOWN; the server must log no internal error and still be SERVING afterwards.

The quick run (the normal suite) sends at least 10,000 requests; set TIERSTORE_FUZZ_EXAMPLES to
send more. The last test prints the number of requests and the status histogram.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tierstore.server.app import RunningServer, create_server
from tierstore.server.config import ServerConfig
from tierstore.v1 import store_pb2 as pb

TOTAL = int(os.environ.get("TIERSTORE_FUZZ_EXAMPLES") or 10_000)
SERVICE = "tierstore.v1.StateStore"
MAX_VALUE = 4096
MAX_MESSAGE = 1024 * 1024
EXPECTED = {
    grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.ABORTED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}
# Every method of the service, from its descriptor, so that a new RPC is fuzzed too.
_METHODS = pb.DESCRIPTOR.services_by_name["StateStore"].methods
REQUEST_OF: dict[str, type[Message]] = {
    m.name: getattr(pb, m.input_type.name) for m in _METHODS if not m.client_streaming
}
STREAMING = {m.name for m in _METHODS if m.server_streaming}
# The stores set up before fuzzing: (name, type, partitions, window size, retention).
STORES = [("fz-kv", pb.STORE_TYPE_KV, 4, 0, 0), ("fz-win", pb.STORE_TYPE_WINDOW, 2, 1000, 10_000),
          ("fz-ses", pb.STORE_TYPE_SESSION, 2, 0, 10_000)]
# Share of TOTAL per test (a little over 1 in all, so that the run never falls short).
SHARE = {"open": 0.05, "stage": 0.09, "commit": 0.12, "get": 0.10, "scan": 0.10, "count": 0.05,
         "close": 0.05, "describe": 0.05, "snapshot": 0.01, "generic": 0.08, "garbage": 0.17,
         "mangled": 0.14}
CURRENT = 2**64 - 77  # placeholder epoch / commit number: replaced by the shard's current one
STAGED = 2**32 - 77  # placeholder staged_batches: replaced by the Stage calls that succeeded


def examples(kind: str) -> int:
    return math.ceil(TOTAL * SHARE[kind])


def fuzz_settings(kind: str) -> settings:
    return settings(max_examples=examples(kind), deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


class InternalErrors(logging.Handler):
    """Counts the servicer's 'internal error' log records (it logs each INTERNAL it answers)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record.getMessage())


@dataclass
class Fuzz:
    running: RunningServer
    channel: grpc.Channel
    epochs: dict[tuple[str, int], int] = field(default_factory=dict)
    seqs: dict[tuple[str, int], int] = field(default_factory=dict)
    staged: dict[tuple[str, int], int] = field(default_factory=dict)
    statuses: Counter[str] = field(default_factory=Counter)
    per_method: Counter[str] = field(default_factory=Counter)
    started: float = field(default_factory=time.monotonic)
    calls: dict[str, Any] = field(default_factory=dict)

    def send(self, method: str, data: bytes) -> tuple[grpc.StatusCode, Any]:
        """Sends raw bytes to `method`; returns (status, reply bytes or None). Asserts that the
        status is one of EXPECTED."""
        call = self.calls.get(method)
        if call is None:  # identity serializers: the bytes go out as they are
            path = f"/{SERVICE}/{method}"
            streaming = method in STREAMING
            call = self.channel.unary_stream(path) if streaming else self.channel.unary_unary(path)
            self.calls[method] = call
        self.per_method[method] += 1
        reply: Any = None
        try:
            reply = call(data, timeout=30)
            if method in STREAMING:
                reply = list(reply)
            code = grpc.StatusCode.OK
        except grpc.RpcError as exc:
            code, details = exc.code(), exc.details()
            # A reader's min_offsets not reached in time (OffsetsNotReachedError): the server's
            # own DEADLINE_EXCEEDED, told apart from a hang by its message.
            offsets = code is grpc.StatusCode.DEADLINE_EXCEEDED and details.startswith("state of")
            assert code in EXPECTED or offsets, f"{method}({data[:200]!r}...) -> {code}: {details}"
        self.statuses[code.name] += 1
        return code, reply

    def request(self, method: str, msg: Message) -> grpc.StatusCode:
        """Fills CURRENT placeholders from the shard's state, sends, and tracks the new state."""
        shard = (getattr(msg, "store", ""), getattr(msg, "partition", 0))
        if getattr(msg, "epoch", None) == CURRENT:
            msg.epoch = self.epochs.get(shard, 0)  # type: ignore[attr-defined]
        if getattr(msg, "commit_seq", None) == CURRENT:
            msg.commit_seq = self.seqs.get(shard, 0) + 1  # type: ignore[attr-defined]
        if getattr(msg, "staged_batches", None) == STAGED:
            msg.staged_batches = self.staged.get(shard, 0)  # type: ignore[attr-defined]
        code, reply = self.send(method, msg.SerializeToString())
        if code is grpc.StatusCode.OK and method == "Open":
            resp = pb.OpenResponse.FromString(reply)
            self.epochs[shard], self.seqs[shard] = resp.epoch, resp.last_commit_seq
            self.staged[shard] = 0
        elif code is grpc.StatusCode.OK and method == "Stage":
            self.staged[shard] = pb.StageResponse.FromString(reply).staged_batches
        elif method == "Commit" and code in (grpc.StatusCode.OK, grpc.StatusCode.ABORTED):
            self.staged[shard] = 0
            if code is grpc.StatusCode.OK:
                self.seqs[shard] = msg.commit_seq  # type: ignore[attr-defined]
        return code

    def assert_healthy(self) -> None:
        stub = health_pb2_grpc.HealthStub(self.channel)
        resp = stub.Check(health_pb2.HealthCheckRequest(service=SERVICE), timeout=10)
        assert resp.status == health_pb2.HealthCheckResponse.SERVING
        code, reply = self.send("Get", pb.GetRequest(store="fz-kv", keys=[b"seed"]).
                                SerializeToString())
        assert code is grpc.StatusCode.OK and pb.GetResponse.FromString(reply).values == [b"1"]


@pytest.fixture(scope="module")
def fuzz(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fuzz]:
    cfg = ServerConfig(listen="127.0.0.1:0", data_dir=tmp_path_factory.mktemp("fuzz"),
                       max_value_bytes=MAX_VALUE, max_message_bytes=MAX_MESSAGE,
                       scan_page_size=50, snapshot_every_commits=10**9)
    errors = InternalErrors()
    logging.getLogger("tierstore").addHandler(errors)
    running = create_server(cfg)
    channel = grpc.insecure_channel(f"127.0.0.1:{running.port}")
    f = Fuzz(running, channel)
    try:
        for name, type_, parts, window, retention in STORES:
            for p in range(parts):
                assert f.request("Open", pb.OpenRequest(
                    store=name, partition=p, type=type_, num_partitions=parts,
                    window_size_ms=window, retention_ms=retention)) is grpc.StatusCode.OK
        seed = pb.CommitRequest(store="fz-kv", epoch=CURRENT, commit_seq=CURRENT,
                                batch=pb.WriteBatch(put_keys=[b"seed"], put_values=[b"1"]))
        assert f.request("Commit", seed) is grpc.StatusCode.OK
        yield f
        f.assert_healthy()
        assert errors.records == [], f"the server logged internal errors: {errors.records[:5]}"
    finally:
        logging.getLogger("tierstore").removeHandler(errors)
        channel.close()
        running.stop(grace=1.0, snapshot=False)


# --- strategies ----------------------------------------------------------------------------------
KNOWN = st.sampled_from([s[0] for s in STORES])
BAD_NAMES = st.sampled_from(["", ".", "..", ".tmp.x", "a/b", "../up", "x" * 201, "naïve", "a\n",
                             "nul\x00", " ", "*"])
stores = st.one_of(KNOWN, KNOWN, BAD_NAMES, st.text(max_size=24),
                   st.from_regex(r"[A-Za-z0-9._-]{1,24}", fullmatch=True))
# Open creates what it names: only a few new names, so the run opens a bounded set of shards.
open_stores = st.one_of(KNOWN, KNOWN, BAD_NAMES, st.sampled_from([f"fz-new-{i}" for i in range(4)]))
int32 = st.integers(-(2**31), 2**31 - 1)
uint32 = st.integers(0, 2**32 - 1)
uint64 = st.integers(0, 2**64 - 1)
int64 = st.integers(-(2**63), 2**63 - 1)
partitions = st.one_of(st.sampled_from([0, 0, 1, 2, 3, 4, -1, 100, 9999, 10_000]),
                       st.sampled_from([-(2**31), 2**31 - 1]), int32)
epochs = st.one_of(st.just(CURRENT), st.just(CURRENT), st.just(0),
                   st.sampled_from([1, 2, 2**63, 2**64 - 1]), uint64)
seqs = st.one_of(st.just(CURRENT), st.just(0), st.sampled_from([1, 2**64 - 1]), uint64)
keys = st.one_of(st.binary(min_size=1, max_size=8), st.just(b""),
                 st.sampled_from([b"\x00", b"\xff" * 9, b"seed"]),
                 st.integers(65_530, 65_540).map(lambda n: b"k" * n))
values = st.one_of(st.binary(max_size=16),
                   st.integers(MAX_VALUE - 2, MAX_VALUE + 2).map(lambda n: b"v" * n))
batches = st.builds(pb.WriteBatch, put_keys=st.lists(keys, max_size=5),
                    put_values=st.lists(values, max_size=5), delete_keys=st.lists(keys, max_size=4))
offsets = st.dictionaries(st.text(max_size=12), int64, max_size=3)
times = st.one_of(st.sampled_from([0, 0, -1, 1000, 10_000, 2**63 - 1]), int64)
store_types = st.one_of(st.sampled_from([0, 1, 2, 3]), st.integers(-5, 10))


def _scan(store: str, partition: int, epoch: int, from_key: bytes | None, to_key: bytes | None,
          prefix: bytes, reverse: bool, page_size: int, limit: int) -> pb.ScanRequest:
    req = pb.ScanRequest(store=store, partition=partition, epoch=epoch, prefix=prefix,
                         reverse=reverse, page_size=page_size, limit=limit)
    if from_key is not None:
        req.from_key = from_key
    if to_key is not None:
        req.to_key = to_key
    return req


# Well-formed requests from the current owner, so that the success paths are exercised too.
sane_stores, sane_parts = KNOWN, st.sampled_from([0, 1])
sane_keys = st.binary(min_size=1, max_size=8)
sane_batches = st.builds(
    lambda puts, dels: pb.WriteBatch(put_keys=list(puts), put_values=list(puts.values()),
                                     delete_keys=[d for d in dels if d not in puts]),
    st.dictionaries(sane_keys, st.binary(max_size=16), max_size=5),
    st.lists(sane_keys, max_size=3, unique=True),
)
sane_ranges = st.lists(sane_keys, min_size=2, max_size=2).map(sorted)
SANE: dict[str, st.SearchStrategy[Any]] = {
    "Stage": st.builds(pb.StageRequest, store=sane_stores, partition=sane_parts,
                       epoch=st.just(CURRENT), commit_seq=st.just(CURRENT), batch=sane_batches),
    "Commit": st.builds(pb.CommitRequest, store=sane_stores, partition=sane_parts,
                        epoch=st.just(CURRENT), commit_seq=st.just(CURRENT),
                        staged_batches=st.just(STAGED), batch=sane_batches,
                        offsets=st.dictionaries(st.sampled_from(["in:0", "in:1"]),
                                                st.integers(0, 2**40), max_size=2)),
    "Get": st.builds(pb.GetRequest, store=sane_stores, partition=sane_parts,
                     epoch=st.sampled_from([0, CURRENT]), keys=st.lists(sane_keys, max_size=6)),
    "Scan": st.builds(lambda store, part, epoch, r, rev, page, limit: _scan(
                          store, part, epoch, r[0], r[1], b"", rev, page, limit),
                      sane_stores, sane_parts, st.sampled_from([0, CURRENT]), sane_ranges,
                      st.booleans(), st.integers(0, 60), st.integers(0, 20)),
    "Count": st.builds(pb.CountRequest, store=sane_stores, partition=sane_parts,
                       epoch=st.sampled_from([0, CURRENT])),
}
WILD: dict[str, st.SearchStrategy[Any]] = {
    "Open": st.builds(pb.OpenRequest, store=open_stores, partition=partitions, type=store_types,
                      num_partitions=st.one_of(st.sampled_from([0, 1, 2, 4, 10_000, 10_001]),
                                               uint32),
                      window_size_ms=times, retention_ms=times),
    "Stage": st.builds(pb.StageRequest, store=stores, partition=partitions, epoch=epochs,
                       commit_seq=seqs, batch=batches),
    "Commit": st.builds(pb.CommitRequest, store=stores, partition=partitions, epoch=epochs,
                        commit_seq=seqs, staged_batches=st.one_of(st.just(0), uint32),
                        batch=batches, offsets=offsets),
    "Get": st.builds(pb.GetRequest, store=stores, partition=partitions, epoch=epochs,
                     keys=st.lists(keys, max_size=6)),
    "Scan": st.builds(_scan, stores, partitions, epochs, st.none() | keys, st.none() | keys,
                      st.just(b"") | keys, st.booleans(), st.one_of(st.just(0), uint32),
                      st.one_of(st.just(0), st.integers(1, 100), uint64)),
    "Count": st.builds(pb.CountRequest, store=stores, partition=partitions, epoch=epochs),
    "Close": st.builds(pb.CloseRequest, store=stores, partition=partitions, epoch=epochs),
    "DescribeStore": st.builds(pb.DescribeStoreRequest, store=stores),
    "Snapshot": st.builds(pb.SnapshotRequest, store=st.one_of(KNOWN, BAD_NAMES, stores),
                          partition=st.sampled_from([-1, 0, 1, 5, -(2**31), 2**31 - 1])),
}


def _field(fd: FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
    """Values for one field of any message: by name for the fields every request shares, else
    by type (edge values included)."""
    if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
        k, v = fd.message_type.fields_by_name["key"], fd.message_type.fields_by_name["value"]
        return st.dictionaries(_scalar(k), _scalar(v), max_size=3)
    one = _message(fd.message_type, depth + 1) if fd.message_type is not None else _scalar(fd)
    return st.lists(one, max_size=4) if fd.is_repeated else one


def _scalar(fd: FieldDescriptor) -> st.SearchStrategy[Any]:
    by_name = {"store": stores, "partition": partitions, "epoch": epochs, "commit_seq": seqs,
               # reader waits for min_offsets: short, or the run would wait instead of fuzzing
               "min_offsets_wait_ms": st.sampled_from([0, 1, 20])}
    if fd.name == "store" and fd.containing_type.name == "OpenRequest":
        return open_stores  # Open creates what it names
    if fd.name in by_name:
        return by_name[fd.name]
    t = FieldDescriptor
    return {
        t.TYPE_INT32: int32, t.TYPE_SINT32: int32, t.TYPE_SFIXED32: int32,
        t.TYPE_INT64: times, t.TYPE_SINT64: times, t.TYPE_SFIXED64: times,
        t.TYPE_UINT32: uint32, t.TYPE_FIXED32: uint32, t.TYPE_UINT64: uint64,
        t.TYPE_FIXED64: uint64, t.TYPE_BOOL: st.booleans(), t.TYPE_STRING: st.text(max_size=12),
        t.TYPE_BYTES: keys, t.TYPE_ENUM: st.integers(-3, 10), t.TYPE_DOUBLE: st.floats(),
        t.TYPE_FLOAT: st.floats(width=32),
    }[fd.type]


def _message(desc: Descriptor, depth: int = 0) -> st.SearchStrategy[Message]:
    """Any message of type `desc`, each field set or not, built by the generated class."""
    cls = GetMessageClass(desc)
    if depth > 2:
        return st.just(cls())
    optional = {fd.name: _field(fd, depth) for fd in desc.fields}
    return st.fixed_dictionaries({}, optional=optional).map(lambda kw: cls(**kw))


GENERIC = {m: _message(cls.DESCRIPTOR) for m, cls in REQUEST_OF.items()}
REQUESTS = {m: st.one_of([s[m] for s in (SANE, WILD, GENERIC) if m in s]) for m in REQUEST_OF}
methods = st.sampled_from(sorted(REQUEST_OF))
any_request = methods.flatmap(lambda m: st.tuples(st.just(m), REQUESTS[m]))


# --- tests ---------------------------------------------------------------------------------------
def _message_test(method: str, kind: str) -> Any:
    @fuzz_settings(kind)
    @given(msg=REQUESTS[method])
    def test(fuzz: Fuzz, msg: Message) -> None:
        fuzz.request(method, msg)

    return test


test_open = _message_test("Open", "open")
test_stage = _message_test("Stage", "stage")
test_commit = _message_test("Commit", "commit")
test_get = _message_test("Get", "get")
test_scan = _message_test("Scan", "scan")
test_count = _message_test("Count", "count")
test_close = _message_test("Close", "close")
test_describe = _message_test("DescribeStore", "describe")
test_snapshot = _message_test("Snapshot", "snapshot")


@fuzz_settings("generic")
@given(req=methods.flatmap(lambda m: st.tuples(st.just(m), GENERIC[m])))
def test_every_method_generic(fuzz: Fuzz, req: tuple[str, Message]) -> None:
    fuzz.request(*req)


@fuzz_settings("garbage")
@given(method=methods, data=st.one_of(st.binary(max_size=64), st.binary(min_size=1, max_size=600)))
def test_garbage_frames(fuzz: Fuzz, method: str, data: bytes) -> None:
    fuzz.send(method, data)


def test_frames_at_the_size_limit(fuzz: Fuzz) -> None:
    """Frames just under the limit are parsed (and refused as garbage); over it, grpc refuses
    them with RESOURCE_EXHAUSTED. (Few of them: grpc takes ~0.5 s to refuse each one.)"""
    for method in ("Commit", "Scan", "Open"):
        under, over = b"\x0a" * (MAX_MESSAGE - 8), b"\x0a" * (MAX_MESSAGE + 1)
        assert fuzz.send(method, under)[0] is grpc.StatusCode.INVALID_ARGUMENT
        assert fuzz.send(method, over)[0] is grpc.StatusCode.RESOURCE_EXHAUSTED
    fuzz.assert_healthy()


@fuzz_settings("mangled")
@given(req=any_request, data=st.data())
def test_truncated_and_flipped_messages(fuzz: Fuzz, req: tuple[str, Message],
                                        data: st.DataObject) -> None:
    method, msg = req
    raw = bytearray(msg.SerializeToString())
    if raw and data.draw(st.booleans(), label="truncate"):
        raw = raw[: data.draw(st.integers(0, len(raw) - 1), label="cut")]
    elif raw:
        i = data.draw(st.integers(0, len(raw) - 1), label="byte")
        raw[i] ^= data.draw(st.integers(1, 255), label="mask")
    fuzz.send(method, bytes(raw))


def test_zz_summary(fuzz: Fuzz, capsys: pytest.CaptureFixture[str]) -> None:
    """Runs last: the server is healthy, and the figures of the run."""
    fuzz.assert_healthy()
    sent = sum(fuzz.statuses.values())
    created = len(list((Path(fuzz.running.service.cfg.data_dir) / "stores").glob("*.json")))
    with capsys.disabled():
        print(f"\nfuzz: {sent} requests in {time.monotonic() - fuzz.started:.1f}s "
              f"({created} stores exist); "
              f"statuses: {dict(fuzz.statuses.most_common())}; "
              f"per method: {dict(sorted(fuzz.per_method.items()))}")
    assert sent >= TOTAL
    assert fuzz.statuses["OK"] > 0 and fuzz.statuses["INVALID_ARGUMENT"] > 0

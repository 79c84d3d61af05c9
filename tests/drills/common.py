"""What every drill shares: quick/long sizes, the printed figures, and a counting worker with an
independent model of its acknowledged commits plus the checker that compares a store with it.

The worker is a real stream processor in miniature: it consumes an input stream (record i says
"count key k" or "reset key k"), keeps per-key counts in the store, and commits the next input
offset with each batch. Every value records its provenance, ``b"<count>@<offset of the record
that wrote it>"``, so a wrong value says what went wrong:

- written by a record at or after the committed input offset: an **uncommitted write visible**;
- the right record but a higher count: a record processed twice, **duplicated**;
- missing, older, or a deleted key back: a committed write **lost**.

The model computes the expected state from the input stream alone, never from the store.
"""

from __future__ import annotations

import hashlib
import os
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.serverproc import ServerProc
from tierstore.client import KeyValueStore, errors

LONG = os.environ.get("TIERSTORE_DRILL", "").strip().lower() == "long"
SOURCE = "input:0"


def size(quick: int, long: int) -> int:
    """The quick size in the normal suite, the long one with TIERSTORE_DRILL=long."""
    return long if LONG else quick


@dataclass
class Figures:
    """A drill's figures; `report()` prints them (run pytest with -s to see them)."""

    drill: str
    operations: int = 0
    faults: dict[str, int] = field(default_factory=dict)
    lost: int = 0
    duplicated: int = 0
    uncommitted_visible: int = 0
    notes: dict[str, object] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)

    def fault(self, kind: str, n: int = 1) -> None:
        self.faults[kind] = self.faults.get(kind, 0) + n

    def add(self, diff: Diff) -> None:
        self.lost += diff.lost
        self.duplicated += diff.duplicated
        self.uncommitted_visible += diff.uncommitted_visible

    def report(self) -> str:
        kinds = ", ".join(f"{k}={v}" for k, v in sorted(self.faults.items()))
        notes = ", ".join(f"{k}={v}" for k, v in self.notes.items())
        line = (f"DRILL {self.drill} [{'long' if LONG else 'quick'}]: "
                f"operations={self.operations} faults={sum(self.faults.values())} ({kinds}) "
                f"lost={self.lost} duplicated={self.duplicated} "
                f"uncommitted_visible={self.uncommitted_visible} "
                f"seconds={time.monotonic() - self.started:.1f}" + (f"; {notes}" if notes else ""))
        print("\n" + line, flush=True)
        return line


# --- the input stream and the model ------------------------------------------------------------
def encode(count: int, offset: int, pad: int = 0) -> bytes:
    """`pad` bytes of padding give a drill data volume (disk full) without changing meaning."""
    return b"%d@%d" % (count, offset) + (b"." * pad if pad else b"")


def decode(value: bytes) -> tuple[int, int] | None:
    count, sep, offset = value.rstrip(b".").partition(b"@")
    if not sep or not count.isdigit() or not offset.isdigit():
        return None
    return int(count), int(offset)


class InputStream:
    """Record i: (key, reset?). Deterministic for a seed; generated as far as it is read."""

    def __init__(self, seed: int, keys: int = 300, reset_ratio: float = 0.05) -> None:
        self._rng = random.Random(seed)
        self._keys = keys
        self._reset = reset_ratio
        self.ops: list[tuple[bytes, bool]] = []

    def op(self, i: int) -> tuple[bytes, bool]:
        while len(self.ops) <= i:
            self.ops.append((b"k%04d" % self._rng.randrange(self._keys),
                             self._rng.random() < self._reset))
        return self.ops[i]


@dataclass
class Diff:
    lost: int = 0
    duplicated: int = 0
    uncommitted_visible: int = 0
    examples: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.lost or self.duplicated or self.uncommitted_visible)


class Model:
    """The expected state after every acknowledged commit of the counting worker."""

    def __init__(self, stream: InputStream, pad: int = 0) -> None:
        self.stream = stream
        self.pad = pad
        self.pos = 0  # the committed input offset: records [0, pos) are in the state
        self.state: dict[bytes, bytes] = {}
        self.acked = 0
        self.unknown: tuple[int, dict[bytes, bytes]] | None = None  # an unanswered commit
        self.outcomes = {"landed": 0, "not landed": 0}

    def fold(self, start: int, end: int) -> dict[bytes, bytes]:
        """The state after records [start, end), computed from the input alone."""
        state = dict(self.state)
        for i in range(start, end):
            key, reset = self.stream.op(i)
            if reset:
                state.pop(key, None)
            else:
                old = state.get(key)
                count = decode(old)[0] if old is not None else 0  # type: ignore[index]
                state[key] = encode(count + 1, i, self.pad)
        return state

    def ack(self, end: int, state: dict[bytes, bytes]) -> None:
        self.pos, self.state = end, state
        self.acked += 1

    def resolve(self, committed: int) -> str:
        """After a reopen: the committed input offset says how an unanswered commit went. It must
        be exactly the state before it or exactly the state after it."""
        if self.unknown is None:
            assert committed == self.pos, (
                f"committed input offset {committed}, but the last acknowledged commit left "
                f"{self.pos} and no commit was in doubt")
            return "none"
        end, state = self.unknown
        self.unknown = None
        if committed == end:
            self.pos, self.state = end, state
            self.outcomes["landed"] += 1
            return "landed"
        assert committed == self.pos, (
            f"committed input offset {committed} is neither {self.pos} (before the commit in "
            f"doubt) nor {end} (after it)")
        self.outcomes["not landed"] += 1
        return "not landed"

    def compare(self, got: dict[bytes, bytes], committed: int | None = None) -> Diff:
        diff = Diff()
        if committed is not None and committed != self.pos:
            if committed > self.pos:
                diff.uncommitted_visible += 1
            else:
                diff.lost += 1
            diff.examples.append(f"committed offset {committed}, expected {self.pos}")
        for key in sorted(set(got) | set(self.state)):
            exp, have = self.state.get(key), got.get(key)
            if exp == have:
                continue
            kind = "lost"
            parsed = decode(have) if have is not None else None
            if have is not None and parsed is None:
                kind = "uncommitted_visible"  # a value no commit of this worker wrote
            elif parsed is not None and parsed[1] >= self.pos:
                kind = "uncommitted_visible"
            elif parsed is not None and exp is not None:
                want = decode(exp)
                if want is not None and parsed[1] == want[1] and parsed[0] > want[0]:
                    kind = "duplicated"
            setattr(diff, kind, getattr(diff, kind) + 1)
            if len(diff.examples) < 5:
                diff.examples.append(f"{key!r}: store {have!r}, model {exp!r} ({kind})")
        return diff

    def check(self, kv: KeyValueStore, figures: Figures | None = None) -> Diff:
        diff = self.compare(dict(kv.all()), kv.committed_offsets.get(SOURCE, 0))
        if figures is not None:
            figures.add(diff)
        assert diff.ok, f"store differs from the model: {diff}"
        return diff


# --- the worker --------------------------------------------------------------------------------
class InDoubt(Exception):
    """A commit got no answer (UnavailableError): it may or may not have landed."""


def write_records(kv: KeyValueStore, model: Model, end: int) -> dict[bytes, bytes]:
    """Process records [model.pos, end) into `kv` (not committed), the way a counting worker
    does: read the count through the handle, write it plus one. Returns the model's state after
    them, for the commit that follows."""
    for i in range(model.pos, end):
        key, reset = model.stream.op(i)
        if reset:
            kv.delete(key)
        else:
            old = kv.get(key)
            parsed = decode(old) if old is not None else None
            if old is not None and parsed is None:
                raise AssertionError(f"the worker read a value it never wrote: {key!r}={old!r}")
            kv.put(key, encode((parsed[0] if parsed else 0) + 1, i, model.pad))
    return model.fold(model.pos, end)


def process(kv: KeyValueStore, model: Model, end: int,
            before_commit: Callable[[], None] | None = None) -> None:
    """Process records [model.pos, end) and commit them. On success the model acknowledges the
    commit. An error before the commit is raised as is (nothing was committed); an
    UnavailableError at the commit leaves it in doubt (InDoubt, resolved at the next reopen);
    any other error at the commit means nothing was applied (the reopen checks that)."""
    expected = write_records(kv, model, end)
    if before_commit is not None:
        before_commit()
    try:
        kv.commit({SOURCE: end})
    except errors.UnavailableError as exc:
        model.unknown = (end, expected)
        raise InDoubt(str(exc)) from exc
    model.ack(end, expected)


def batches(rng: random.Random, max_records: int) -> Iterator[int]:
    """Batch sizes of 1..max_records records."""
    while True:
        yield rng.randint(1, max_records)


# --- the object store, seen directly ------------------------------------------------------------
@dataclass
class Audit:
    manifests: int = 0
    files: int = 0
    bad: list[str] = field(default_factory=list)


def audit_manifests(s3: Any, bucket: str, prefix: str) -> Audit:
    """Check every manifest under `prefix` in the bucket (straight to the S3 server, no proxy):
    it parses and verifies, and each file it references exists with its size and sha256."""
    from tierstore.server.errors import SnapshotCorruptError
    from tierstore.server.snapshots import Manifest

    audit = Audit()
    keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(
        Bucket=bucket, Prefix=prefix) for o in page.get("Contents", [])]
    for key in (k for k in keys if "/manifests/" in k):
        audit.manifests += 1
        try:
            m = Manifest.from_json(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
        except SnapshotCorruptError as exc:
            audit.bad.append(f"{key}: {exc}")
            continue
        files_prefix = key.rsplit("/manifests/", 1)[0] + "/files/"
        for f in m.files:
            audit.files += 1
            try:
                data = s3.get_object(Bucket=bucket, Key=files_prefix + f.sha256)["Body"].read()
            except s3.exceptions.NoSuchKey:
                audit.bad.append(f"{key}: file {f.name} ({f.sha256}) is missing")
                continue
            if len(data) != f.size or hashlib.sha256(data).hexdigest() != f.sha256:
                audit.bad.append(f"{key}: file {f.name} has {len(data)} bytes, or wrong sha256")
    return audit


def shutdown(server: ServerProc) -> None:
    """Graceful stop (SIGTERM), which must succeed; the process is gone afterwards either way."""
    try:
        assert server.terminate() == 0, f"the server exited badly: {server.log()}"
    finally:
        server.close()


@dataclass(frozen=True)
class Cluster:
    """Where the store servers of a drill keep their changelog and snapshots."""

    kafka: str
    object_store: str
    s3_endpoint: str

    def start(self, data: Path, *extra: str) -> ServerProc:
        """A store server (subprocess) on `data`, with these plus `extra` flags."""
        return ServerProc(data, kafka=self.kafka, object_store=self.object_store,
                          s3_endpoint=self.s3_endpoint, extra=list(extra))

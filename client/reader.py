"""Interactive queries: a reader of the committed state of every partition of a store, its
options, and the streaming scan it shares with the remote store handle.

Options (`ReadOptions`, given to `client.reader(...)`, `window_reader` and `session_reader`):
- `allow_stale=True`: a server that follows the shard as a standby may answer from its copy
  (committed state, possibly a little behind the owner's; see `tierstore inspect` for the lag).
  Reads go to the owner as usual; when it cannot be reached, the other servers are tried and a
  standby answers at once instead of the read waiting for the failover.
- `min_offsets={"orders:3": 42}`: answer only from state at least that new: every named input
  offset in the shard's committed offsets must be >= the given one. The server waits up to
  `wait_s` for the writer's commits, then the read raises `errors.OffsetsNotReachedError` (an
  UnavailableError) with a message naming the shard, its offsets and the required ones. A name
  the shard has never committed counts as -1, so it is never reached. The same mapping is
  required of every partition a read touches; offset names are usually per input partition
  (``orders:3``), so for reads that span partitions give a function of the partition instead:
  ``min_offsets=lambda p: {f"orders:{p}": produced[p] + 1}`` (an empty mapping: no
  requirement for that partition).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from tierstore import ttl as ttlcodec
from tierstore.client._grpc import rpc, stream
from tierstore.client.buffered import check_bounds, check_key
from tierstore.client.errors import InvalidArgumentError
from tierstore.client.partitioner import partition_for
from tierstore.v1 import store_pb2 as pb

if TYPE_CHECKING:
    from tierstore.client.remote import Client

MinOffsets = Mapping[str, int] | Callable[[int], Mapping[str, int]]
MAX_WAIT_S = 300.0  # the server caps a wait at this too
# A merge of more than MERGE_STREAMS scans (partitions, segments) reads each in chunks of CHUNK
# entries, each chunk one request on a GetStream (or a whole Scan call read to its end): no
# Scan stream stays open while the merge waits on another (an open Scan stream holds a server
# thread until it is read; one per partition could exceed the server's budget and stall).
# Smaller merges keep one Scan stream per scan: faster (0.87x for chunks), and each partition
# one RocksDB view.
MERGE_STREAMS = 4
CHUNK = 999  # + the resume key = 1,000: one server page, so a chunk is one GetStream answer

TYPE_NAMES = {pb.STORE_TYPE_KV: "kv", pb.STORE_TYPE_WINDOW: "window",
              pb.STORE_TYPE_SESSION: "session"}
READER_OF = {"kv": "reader", "window": "window_reader", "session": "session_reader"}


def _check_offsets(offsets: Mapping[str, int]) -> dict[str, int]:
    out = {}
    for name, off in offsets.items():
        if not isinstance(name, str) or not name:
            raise InvalidArgumentError(f"min_offsets: names must be non-empty str, got {name!r}")
        if isinstance(off, bool) or not isinstance(off, int) or off < 0:
            raise InvalidArgumentError(f"min_offsets: offset of {name!r} must be an int >= 0, "
                                       f"got {off!r}")
        out[name] = off
    return out


@dataclass(frozen=True)
class ReadOptions:
    """How fresh a reader's answers must be (see the module docstring)."""

    allow_stale: bool = False
    min_offsets: MinOffsets | None = None
    wait_s: float = 10.0

    def __post_init__(self) -> None:
        if not isinstance(self.wait_s, int | float) or not 0 <= self.wait_s <= MAX_WAIT_S:
            raise InvalidArgumentError(f"wait_s must be 0 .. {MAX_WAIT_S:g} s, got "
                                       f"{self.wait_s!r}")
        if isinstance(self.min_offsets, Mapping):
            _check_offsets(self.min_offsets)
        elif self.min_offsets is not None and not callable(self.min_offsets):
            raise InvalidArgumentError("min_offsets must be a mapping of input offset names to "
                                       "offsets, or a function of the partition returning one")

    def required(self, partition: int) -> dict[str, int]:
        """The offsets required of `partition`."""
        m = self.min_offsets
        if m is None:
            return {}
        return _check_offsets(m(partition) if callable(m) else m)

    def fields(self, partition: int) -> dict[str, Any]:
        """The request fields carrying these options for a read of `partition`."""
        out: dict[str, Any] = {}
        if self.allow_stale:
            out["allow_stale"] = True
        req = self.required(partition)
        if req:
            out["min_offsets"] = req
            out["min_offsets_wait_ms"] = math.ceil(self.wait_s * 1000)
        return out

    def timeout(self, base_s: float) -> float:
        """A call's deadline: the client's own, plus the server's wait when there is one."""
        return base_s + (self.wait_s if self.min_offsets is not None else 0.0)


def scan(
    c: Client, store: str, partition: int, epoch: int, from_key: bytes | None,
    to_key: bytes | None, prefix: bytes | None, reverse: bool,
    options: ReadOptions | None = None, limit: int = 0,
) -> Iterator[tuple[bytes, bytes]]:
    """The raw (key, value) pairs of one shard's range (at most `limit`; 0: all).

    The range's first page is asked for on a GetStream (tierstore.client.getstream): a range
    that fits in it (or a `limit` it meets) is answered there, without a call of its own. A
    longer range is read whole with a Scan call, that page dropped, so that one partition's
    range is always one RocksDB view."""
    fields = options.fields(partition) if options is not None else {}
    req = pb.ScanRequest(store=store, partition=partition, epoch=epoch, reverse=reverse,
                         limit=limit, **fields)
    if prefix is not None:
        req.prefix = prefix
    if from_key is not None:
        req.from_key = from_key
    if to_key is not None:
        req.to_key = to_key
    stale = options is not None and options.allow_stale
    # A min_offsets wait may hold the first page back for up to the wait on top of the timeout.
    idle_s = options.timeout(c.timeout_s) if options is not None else c.timeout_s
    first = c.scan_page(store, partition, req, timeout=idle_s)
    if first is not None:
        page, more = first
        if not more or (limit and len(page.keys) >= limit):
            yield from zip(page.keys, page.values, strict=True)
            return
    pages = stream(c.stream_call(store, partition, "Scan", req, stale=stale, idle_s=idle_s))
    for page in pages:
        yield from zip(page.keys, page.values, strict=True)


class StoreReader:
    """What every reader shares: the store's spec, routing, and reads of one partition carrying
    the reader's options. Refuses a store of another type than `kind`, naming the right
    reader."""

    kind: ClassVar[str] = "kv"

    def __init__(self, client: Client, name: str, options: ReadOptions | None = None) -> None:
        self._c = client
        self.name = name
        self.options = options or ReadOptions()
        spec = self._describe()
        self.type = TYPE_NAMES.get(spec.type, str(spec.type))
        if self.type != self.kind:
            right = READER_OF.get(self.type, "reader")
            raise InvalidArgumentError(
                f"store {name!r} is a {self.type} store, not a {self.kind} store: read it with "
                f"client.{right}({name!r})"
                + (" (it decodes the encoded window/session keys and hides expired entries)"
                   if self.type != "kv" else "")
            )
        self.num_partitions = int(spec.num_partitions)
        self.ttl_ms = int(spec.ttl_ms)
        self.window_size_ms = int(spec.window_size_ms)
        self.retention_ms = int(spec.retention_ms)
        self.clock = ttlcodec.now_ms

    @rpc
    def _describe(self) -> pb.StoreSpec:
        resp = self._c.call(self.name, None, "DescribeStore",
                            pb.DescribeStoreRequest(store=self.name))
        return resp.spec

    def partition_for(self, key: bytes) -> int:
        """The partition of `key`: Kafka's default partitioner (murmur2), as producers use."""
        return partition_for(key, self.num_partitions)

    @rpc
    def _get(self, partition: int, keys: list[bytes]) -> list[bytes | None]:
        o = self.options
        resp = self._c.get(
            self.name, partition,
            pb.GetRequest(store=self.name, partition=partition, keys=keys,
                          **o.fields(partition)),
            timeout=o.timeout(self._c.timeout_s), stale=o.allow_stale,
        )
        return [v if f else None for v, f in zip(resp.values, resp.found, strict=True)]

    def _scan(self, partition: int, from_key: bytes | None, to_key: bytes | None,
              prefix: bytes | None, reverse: bool, chunked: bool = False
              ) -> Iterator[tuple[bytes, bytes]]:
        """One partition's entries: one range read (`scan`), or (`chunked`) CHUNK entries at a
        time, each chunk a range read of its own resuming after the last key returned."""
        if not chunked:
            return scan(self._c, self.name, partition, 0, from_key, to_key, prefix, reverse,
                        self.options)
        return self._chunks(partition, from_key, to_key, prefix, reverse)

    def _merge_scans(self, ranges: Sequence[tuple[int, bytes | None, bytes | None]],
                     prefix: bytes | None, reverse: bool) -> list[Iterator[tuple[bytes, bytes]]]:
        """The raw scans of a merge, one per (partition, from, to): chunked when there are
        more than MERGE_STREAMS of them."""
        chunked = len(ranges) > MERGE_STREAMS
        return [self._scan(p, a, b, prefix, reverse, chunked) for p, a, b in ranges]

    def _chunks(self, partition: int, from_key: bytes | None, to_key: bytes | None,
                prefix: bytes | None, reverse: bool) -> Iterator[tuple[bytes, bytes]]:
        lo, hi, pre, last = from_key, to_key, prefix, None
        while True:
            limit = CHUNK if last is None else CHUNK + 1  # the resume key comes again
            chunk = list(scan(self._c, self.name, partition, 0, lo, hi, pre, reverse,
                              self.options, limit))
            got = len(chunk)
            if last is not None and chunk and chunk[0][0] == last:
                del chunk[0]
            for k, v in chunk:
                if prefix is not None and not k.startswith(prefix):
                    return  # a resumed prefix scan runs on past the prefix: stop there
                yield k, v
            if got < limit or not chunk:
                return
            last = chunk[-1][0]
            lo, hi, pre = (from_key, last, None) if reverse else (last, to_key, None)

    @rpc
    def approximate_num_entries(self) -> int:
        o = self.options
        total = 0
        for p in range(self.num_partitions):
            resp = self._c.call(self.name, p, "Count",
                                pb.CountRequest(store=self.name, partition=p, **o.fields(p)),
                                timeout=o.timeout(self._c.timeout_s), stale=o.allow_stale)
            total += int(resp.approximate_num_entries)
        return total


class Reader(StoreReader):
    """Reads committed state across all partitions of a key-value store; keys are routed with
    Kafka's default partitioner (murmur2), and scans are merged across partitions in key order,
    streaming. On a TTL store, expiry headers are stripped and expired entries skipped, as for
    the owner. Window and session stores are refused: use `WindowReader` / `SessionReader`."""

    def get(self, key: bytes) -> bytes | None:
        return self.multi_get([key])[0]

    def multi_get(self, keys: Sequence[bytes]) -> list[bytes | None]:
        for k in keys:
            check_key(k)
        if self.num_partitions == 1 and keys:  # one partition: no hashing, no regrouping
            if not self.ttl_ms:
                return self._get(0, list(keys))
            now = self.clock()
            values = self._get(0, list(keys))
            return [None if v is None else ttlcodec.live_payload(v, now) for v in values]
        by_part: dict[int, list[int]] = {}
        for i, k in enumerate(keys):
            by_part.setdefault(self.partition_for(k), []).append(i)
        out: list[bytes | None] = [None] * len(keys)
        now = self.clock()
        for p, idx in by_part.items():
            values = self._get(p, [keys[i] for i in idx])
            for i, v in zip(idx, values, strict=True):
                if v is not None:
                    out[i] = ttlcodec.live_payload(v, now) if self.ttl_ms else v
        return out

    def _merged(
        self, from_key: bytes | None, to_key: bytes | None, prefix: bytes | None, reverse: bool
    ) -> Iterator[tuple[bytes, bytes]]:
        if prefix is not None:
            check_key(prefix, "prefix")
        else:
            check_bounds(from_key, to_key)
        streams = self._merge_scans(
            [(p, from_key, to_key) for p in range(self.num_partitions)], prefix, reverse)
        merged = heapq.merge(*streams, key=lambda kv: kv[0], reverse=reverse)
        return self._live(merged) if self.ttl_ms else merged

    def _live(self, items: Iterator[tuple[bytes, bytes]]) -> Iterator[tuple[bytes, bytes]]:
        return ttlcodec.live_items(items, self.clock())

    def range(self, from_key: bytes | None, to_key: bytes | None) -> Iterator[tuple[bytes, bytes]]:
        return self._merged(from_key, to_key, None, False)

    def reverse_range(
        self, from_key: bytes | None, to_key: bytes | None
    ) -> Iterator[tuple[bytes, bytes]]:
        return self._merged(from_key, to_key, None, True)

    def prefix_scan(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        return self._merged(None, None, prefix, False)

    def all(self) -> Iterator[tuple[bytes, bytes]]:
        return self._merged(None, None, None, False)

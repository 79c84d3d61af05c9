"""Interactive queries: a reader of the committed state of every partition of a store, and the
streaming scan it shares with the remote store handle."""

from __future__ import annotations

import heapq
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

from tierstore import ttl as ttlcodec
from tierstore.client._grpc import rpc, stream
from tierstore.client.buffered import check_bounds, check_key
from tierstore.client.partitioner import partition_for
from tierstore.v1 import store_pb2 as pb

if TYPE_CHECKING:
    from tierstore.client.remote import Client


def scan(
    c: Client, store: str, partition: int, epoch: int, from_key: bytes | None,
    to_key: bytes | None, prefix: bytes | None, reverse: bool,
) -> Iterator[tuple[bytes, bytes]]:
    """The raw (key, value) pairs of one shard's Scan stream."""
    req = pb.ScanRequest(store=store, partition=partition, epoch=epoch, reverse=reverse)
    if prefix is not None:
        req.prefix = prefix
    if from_key is not None:
        req.from_key = from_key
    if to_key is not None:
        req.to_key = to_key
    pages = stream(c.stream_call(store, partition, "Scan", req))
    for page in pages:
        yield from zip(page.keys, page.values, strict=True)


class Reader:
    """Reads committed state across all partitions of a store; keys are routed with Kafka's
    default partitioner (murmur2), and scans are merged across partitions in key order. On a
    TTL store, expiry headers are stripped and expired entries skipped, as for the owner."""

    def __init__(self, client: Client, name: str) -> None:
        self._c = client
        self.name = name
        spec = self._describe()
        self.num_partitions = int(spec.num_partitions)
        self.ttl_ms = int(spec.ttl_ms)
        self.clock = ttlcodec.now_ms

    @rpc
    def _describe(self) -> pb.StoreSpec:
        resp = self._c.call(self.name, None, "DescribeStore",
                            pb.DescribeStoreRequest(store=self.name))
        return resp.spec

    def partition_for(self, key: bytes) -> int:
        return partition_for(key, self.num_partitions)

    def get(self, key: bytes) -> bytes | None:
        return self.multi_get([key])[0]

    @rpc
    def multi_get(self, keys: Sequence[bytes]) -> list[bytes | None]:
        for k in keys:
            check_key(k)
        by_part: dict[int, list[int]] = {}
        for i, k in enumerate(keys):
            by_part.setdefault(self.partition_for(k), []).append(i)
        out: list[bytes | None] = [None] * len(keys)
        now = self.clock()
        for p, idx in by_part.items():
            resp = self._c.call(
                self.name, p, "Get",
                pb.GetRequest(store=self.name, partition=p, keys=[keys[i] for i in idx]),
            )
            for i, v, f in zip(idx, resp.values, resp.found, strict=True):
                if f:
                    out[i] = ttlcodec.live_payload(v, now) if self.ttl_ms else v
        return out

    def _merged(
        self, from_key: bytes | None, to_key: bytes | None, prefix: bytes | None, reverse: bool
    ) -> Iterator[tuple[bytes, bytes]]:
        if prefix is not None:
            check_key(prefix, "prefix")
        else:
            check_bounds(from_key, to_key)
        streams = [
            scan(self._c, self.name, p, 0, from_key, to_key, prefix, reverse)
            for p in range(self.num_partitions)
        ]
        merged = heapq.merge(*streams, key=lambda kv: kv[0], reverse=reverse)
        return self._live(merged) if self.ttl_ms else merged

    def _live(self, items: Iterator[tuple[bytes, bytes]]) -> Iterator[tuple[bytes, bytes]]:
        now = self.clock()
        for k, raw in items:
            v = ttlcodec.live_payload(raw, now)
            if v is not None:
                yield k, v

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

    @rpc
    def approximate_num_entries(self) -> int:
        total = 0
        for p in range(self.num_partitions):
            resp = self._c.call(self.name, p, "Count",
                                pb.CountRequest(store=self.name, partition=p))
            total += int(resp.approximate_num_entries)
        return total

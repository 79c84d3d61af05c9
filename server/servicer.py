"""The gRPC servicer: transport only. Parses requests, calls StoreService, maps errors.

Requests arrive as raw bytes and are parsed here, so that garbage on the wire becomes
INVALID_ARGUMENT (grpc's own deserializer would answer INTERNAL) and never reaches storage.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Generator, Iterator
from typing import Any, TypeVar

import grpc
from google.protobuf.message import DecodeError, Message

from tierstore.server import errors
from tierstore.server.auth import Refusal
from tierstore.server.freshness import ReadFreshness
from tierstore.server.getstreams import GetStreams
from tierstore.server.service import StoreService
from tierstore.v1 import store_pb2 as pb

log = logging.getLogger(__name__)

SERVICE_NAME = "tierstore.v1.StateStore"

# The one table from server errors to gRPC status codes (most specific first).
STATUS_OF: tuple[tuple[type[errors.StateStoreError], grpc.StatusCode], ...] = (
    (errors.InvalidArgumentError, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.StoreNotFoundError, grpc.StatusCode.NOT_FOUND),
    (errors.FencedError, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.AbortedError, grpc.StatusCode.ABORTED),
    (errors.OffsetsNotReachedError, grpc.StatusCode.DEADLINE_EXCEEDED),
    (errors.ResourceExhaustedError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.SnapshotCorruptError, grpc.StatusCode.DATA_LOSS),
    (errors.UnavailableError, grpc.StatusCode.UNAVAILABLE),
)

TYPE_NAMES: dict[int, str] = {
    pb.STORE_TYPE_KV: "kv",
    pb.STORE_TYPE_WINDOW: "window",
    pb.STORE_TYPE_SESSION: "session",
}
TYPE_ENUMS: dict[str, Any] = {v: k for k, v in TYPE_NAMES.items()}


def status_for(exc: BaseException) -> grpc.StatusCode:
    for cls, code in STATUS_OF:
        if isinstance(exc, cls):
            return code
    return grpc.StatusCode.INTERNAL


M = TypeVar("M", bound=Message)


def _parse(cls: type[M], data: bytes) -> M:
    msg = cls()
    try:
        msg.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise errors.InvalidArgumentError(f"malformed {cls.__name__}: {exc}") from exc
    return msg


OWNER_KEY = "tierstore-owner"  # trailing metadata naming the shard's server (client redirects)
# Trailing metadata telling a min_offsets timeout apart from a client-side deadline.
ERROR_KEY = "tierstore-error"
OFFSETS_NOT_REACHED = "offsets-not-reached"
WAITS_FULL = "waits-full"  # every min_offsets wait slot is taken: the client retries


def _abort(context: grpc.ServicerContext, exc: BaseException, method: str) -> None:
    code = status_for(exc)
    if isinstance(exc, errors.WrongServerError):
        context.set_trailing_metadata(((OWNER_KEY, exc.owner),))
    elif isinstance(exc, errors.OffsetsNotReachedError):
        context.set_trailing_metadata(((ERROR_KEY, OFFSETS_NOT_REACHED),))
    elif isinstance(exc, errors.WaitsFullError):
        context.set_trailing_metadata(((ERROR_KEY, WAITS_FULL),))
    if code is grpc.StatusCode.INTERNAL:
        log.exception("internal error in %s", method)
        context.abort(code, f"internal error in {method}: {type(exc).__name__}: {exc}")
    context.abort(code, str(exc))


def _freshness(req: pb.GetRequest | pb.ScanRequest | pb.CountRequest,
               context: grpc.ServicerContext) -> ReadFreshness | None:
    """The reader options of a request; a min_offsets wait is bounded by the call's deadline
    and stops if the call is cancelled."""
    if not req.allow_stale and not req.min_offsets:
        return None
    remaining = context.time_remaining()
    return ReadFreshness(req.allow_stale, dict(req.min_offsets), req.min_offsets_wait_ms,
                         deadline_s=remaining, active=context.is_active)


def _type_name(t: int) -> str:
    name = TYPE_NAMES.get(t)
    if name is None:
        raise errors.InvalidArgumentError(f"store type must be KV, WINDOW or SESSION, got {t}")
    return name


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _stream_error(code: grpc.StatusCode, message: str) -> bytes:
    value: int = code.value[0]
    return pb.GetStreamResponse(error_code=value, error_message=message).SerializeToString()


class ScanSlots:
    """Open Scan calls: each holds a server thread until it ends, however slowly its pages are
    read, so they are capped (`max_open_scans`), and the server's thread pool has that many
    threads on top of `grpc_workers`: open scans never take the threads unary calls (commits)
    need. Beyond the cap a new scan fails with RESOURCE_EXHAUSTED."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open = 0
        self._lock = threading.Lock()

    def take(self) -> None:
        with self._lock:
            if self.open >= self.limit:
                raise errors.ResourceExhaustedError(
                    f"all {self.limit} scan slots of this server are taken (--max-open-scans): "
                    "finish or close open range iterators, or raise the limit")
            self.open += 1

    def give(self) -> None:
        with self._lock:
            self.open -= 1

    def open_count(self) -> int:
        return self.open


class Servicer:
    def __init__(self, service: StoreService, observe: Observe | None = None,
                 get_streams: GetStreams | None = None,
                 scan_slots: ScanSlots | None = None) -> None:
        self.svc = service
        self.observe = observe
        cfg = service.cfg
        self.get_streams = get_streams or GetStreams(cfg.max_get_streams, cfg.get_stream_idle_s)
        self.scan_slots = scan_slots or ScanSlots(cfg.max_open_scans)

    # Each handler takes the request bytes and returns the response bytes.
    def Open(self, data: bytes, context: grpc.ServicerContext) -> bytes:
        req = _parse(pb.OpenRequest, data)
        meta, spec = self.svc.open(
            req.store, req.partition, _type_name(req.type), req.num_partitions,
            req.window_size_ms, req.retention_ms, req.ttl_ms,
        )
        return pb.OpenResponse(
            epoch=meta.epoch,
            committed_offsets=meta.offsets,
            spec=pb.StoreSpec(
                name=spec.name, type=TYPE_ENUMS[spec.type], num_partitions=spec.num_partitions,
                window_size_ms=spec.window_size_ms, retention_ms=spec.retention_ms,
                ttl_ms=spec.ttl_ms,
            ),
            last_commit_seq=meta.commit_seq,
            max_value_bytes=self.svc.cfg.max_value_bytes,
        ).SerializeToString()

    def Stage(self, data: bytes, context: grpc.ServicerContext) -> bytes:
        req = _parse(pb.StageRequest, data)
        b = req.batch
        if b.range_begin or b.range_end:
            raise errors.InvalidArgumentError("range deletes travel with the Commit, not Stage")
        n = self.svc.stage(req.store, req.partition, req.epoch, req.commit_seq,
                           list(b.put_keys), list(b.put_values), list(b.delete_keys))
        return pb.StageResponse(staged_batches=n).SerializeToString()

    def Commit(self, data: bytes, context: grpc.ServicerContext) -> bytes:
        req = _parse(pb.CommitRequest, data)
        b = req.batch
        res = self.svc.commit(
            req.store, req.partition, req.epoch, req.commit_seq, req.staged_batches,
            # Materialise each repeated field once: every pass over a protobuf repeated bytes
            # field builds new bytes objects, and the commit path makes several passes.
            list(b.put_keys), list(b.put_values), list(b.delete_keys), dict(req.offsets),
            list(b.range_begin), list(b.range_end),
        )
        return pb.CommitResponse(
            committed_offsets=res.offsets, changelog_offset=res.changelog_offset
        ).SerializeToString()

    def Get(self, data: bytes, context: grpc.ServicerContext) -> bytes:
        return self._get(_parse(pb.GetRequest, data), context)

    def _get(self, req: pb.GetRequest, context: grpc.ServicerContext) -> bytes:
        values = self.svc.get(req.store, req.partition, req.epoch, list(req.keys),
                              _freshness(req, context))
        found = [v is not None for v in values]
        return pb.GetResponse(
            values=[v if v is not None else b"" for v in values], found=found
        ).SerializeToString()

    def _scan_page(self, req: pb.ScanRequest, context: grpc.ServicerContext) -> bytes:
        """A scan on a GetStream: the range's first page only (at most `limit` entries, at most
        one server page), and whether the range goes on after it."""
        cap = self.svc.cfg.scan_page_size
        want = min(req.limit, cap) if req.limit else cap
        # Pages of `want` entries, and at most one entry after them: its presence is `more`.
        pages = self._pages(req, context, page_size=want, limit=want + 1)
        try:
            first = next(pages, [])
            more = next(pages, None) is not None
        finally:
            pages.close()  # ends the RocksDB iterator now
        msg = pb.GetStreamResponse(more=more)
        msg.page.keys.extend([k for k, _ in first])
        msg.page.values.extend([v for _, v in first])
        return msg.SerializeToString()

    def _pages(self, req: pb.ScanRequest, context: grpc.ServicerContext, page_size: int,
               limit: int) -> Generator[list[tuple[bytes, bytes]], None, None]:
        return self.svc.scan(
            req.store, req.partition, req.epoch,
            req.from_key if req.HasField("from_key") else None,
            req.to_key if req.HasField("to_key") else None,
            req.prefix or None, req.reverse, page_size, limit, _freshness(req, context),
        )

    def GetStream(self, requests: Iterator[bytes | Refusal],
                  context: grpc.ServicerContext) -> Iterator[bytes]:
        """Answers each request in order; an error is answered in the stream (which stays
        open), as the status the unary Get would have ended with. The stream's own failures
        (no free slot) end it with that status."""
        slot = self.get_streams.enter(context)
        try:
            for item in requests:
                slot.start()
                yield self._stream_answer(item, context)
                slot.finish()
                if self.get_streams.closed:  # shutting down: end the stream after the answer
                    return
        finally:
            self.get_streams.leave(slot)

    def _stream_answer(self, item: bytes | Refusal, context: grpc.ServicerContext) -> bytes:
        started, code = time.perf_counter(), grpc.StatusCode.OK
        try:
            if isinstance(item, Refusal):  # the auth interceptor refused this request
                code = item.code
                return _stream_error(code, item.message)
            req = _parse(pb.StreamRequest, item)
            kind = req.WhichOneof("read")
            if kind == "get":
                result = self._get(req.get, context)
                # GetStreamResponse{result = <the GetResponse bytes>}: field 1, length-delimited.
                return b"\n" + _varint(len(result)) + result
            if kind == "scan":
                return self._scan_page(req.scan, context)
            raise errors.InvalidArgumentError("a StreamRequest needs `get` or `scan`")
        except Exception as exc:
            code = status_for(exc)
            if code is grpc.StatusCode.INTERNAL:
                log.exception("internal error in GetStream")
                return _stream_error(code, f"internal error in GetStream: "
                                           f"{type(exc).__name__}: {exc}")
            return _stream_error(code, str(exc))
        finally:
            if self.observe is not None:
                self.observe("GetStream", code.name, time.perf_counter() - started)

    def Scan(self, data: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        req = _parse(pb.ScanRequest, data)
        self.scan_slots.take()
        try:
            for page in self._pages(req, context, req.page_size, req.limit):
                msg = pb.ScanPage()
                msg.keys.extend([k for k, _ in page])
                msg.values.extend([v for _, v in page])
                yield msg.SerializeToString()
        finally:
            self.scan_slots.give()

    def Count(self, data: bytes, context: grpc.ServicerContext) -> bytes:
        req = _parse(pb.CountRequest, data)
        n = self.svc.count(req.store, req.partition, _freshness(req, context), req.epoch)
        return pb.CountResponse(approximate_num_entries=n).SerializeToString()

    def Close(self, data: bytes, context: grpc.ServicerContext) -> bytes:
        req = _parse(pb.CloseRequest, data)
        self.svc.close_shard(req.store, req.partition, req.epoch)
        return pb.CloseResponse().SerializeToString()

    def DescribeStore(self, data: bytes, context: grpc.ServicerContext) -> bytes:
        req = _parse(pb.DescribeStoreRequest, data)
        spec = self.svc.describe(req.store)
        return pb.DescribeStoreResponse(
            spec=pb.StoreSpec(
                name=spec.name, type=TYPE_ENUMS[spec.type], num_partitions=spec.num_partitions,
                window_size_ms=spec.window_size_ms, retention_ms=spec.retention_ms,
                ttl_ms=spec.ttl_ms,
            )
        ).SerializeToString()

    def Snapshot(self, data: bytes, context: grpc.ServicerContext) -> bytes:
        req = _parse(pb.SnapshotRequest, data)
        manifests = self.svc.snapshot(req.store, req.partition)
        return pb.SnapshotResponse(
            snapshots=[
                pb.SnapshotInfo(
                    store=m.store, partition=m.partition, snapshot_id=m.snapshot_id,
                    changelog_offset=m.changelog_offset,
                    bytes_total=sum(f.size for f in m.files),
                )
                for m in manifests
            ]
        ).SerializeToString()

    def Inspect(self, data: bytes, context: grpc.ServicerContext) -> bytes:
        req = _parse(pb.InspectRequest, data)
        st = self.svc.inspect(req.store)
        return pb.InspectResponse(
            shards=[
                pb.ShardStatus(
                    store=s.store, partition=s.partition, type=TYPE_ENUMS[s.type],
                    num_partitions=s.num_partitions, epoch=s.epoch, commit_seq=s.commit_seq,
                    changelog_offset=s.changelog_offset, committed_offsets=s.committed_offsets,
                    local_bytes=s.local_bytes, approximate_num_entries=s.approximate_num_entries,
                    commits_since_snapshot=s.commits_since_snapshot,
                    seconds_since_snapshot=s.seconds_since_snapshot,
                    idle_seconds=s.idle_seconds, load_source=s.load_source,
                    last_snapshot_id=s.last_snapshot_id,
                    last_snapshot_bytes=s.last_snapshot_bytes,
                    replayed_records=s.replayed_records, replay_seconds=s.replay_seconds,
                    broken=s.broken, standby=s.standby,
                    standby_lag_seconds=s.standby_lag_seconds,
                )
                for s in st.shards
            ],
            version=st.version, object_store=st.object_store, changelog=st.changelog,
            hot_tier_bytes=st.hot_tier_bytes,
            block_cache_usage_bytes=st.block_cache_usage_bytes,
            block_cache_capacity_bytes=st.block_cache_capacity_bytes,
            memtable_usage_bytes=st.memtable_usage_bytes,
            snapshots_taken=st.snapshots_taken, snapshots_failed=st.snapshots_failed,
            stores=st.stores,
        ).SerializeToString()


Observe = Callable[[str, str, float], None]
"""observe(method, status code name, seconds): called once per finished call (metrics)."""


def _unary(
    fn: Callable[[bytes, grpc.ServicerContext], bytes], name: str, observe: Observe | None = None
) -> Any:
    def handler(data: bytes, context: grpc.ServicerContext) -> bytes:
        try:
            return fn(data, context)
        except Exception as exc:
            _abort(context, exc, name)
            raise  # unreachable: abort raises

    if observe is None:
        return grpc.unary_unary_rpc_method_handler(handler)

    def observed(data: bytes, context: grpc.ServicerContext) -> bytes:
        started, code = time.perf_counter(), "OK"
        try:
            return fn(data, context)
        except Exception as exc:
            code = status_for(exc).name
            _abort(context, exc, name)
            raise  # unreachable: abort raises
        finally:
            observe(name, code, time.perf_counter() - started)

    return grpc.unary_unary_rpc_method_handler(observed)


def _stream(
    fn: Callable[[bytes, grpc.ServicerContext], Iterator[bytes]], name: str,
    observe: Observe | None = None,
) -> Any:
    def handler(data: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        started, code = time.perf_counter(), "OK"
        try:
            yield from fn(data, context)
        except GeneratorExit:  # the client went away mid-stream
            code = "CANCELLED"
            raise
        except Exception as exc:
            code = status_for(exc).name
            _abort(context, exc, name)
        finally:
            if observe is not None:
                observe(name, code, time.perf_counter() - started)

    return grpc.unary_stream_rpc_method_handler(handler)


def _bidi(
    fn: Callable[[Iterator[Any], grpc.ServicerContext], Iterator[bytes]], name: str,
) -> Any:
    """A stream-stream handler; only the stream's own failure ends it with a status (each
    request's outcome is answered in the stream and observed there)."""
    def handler(requests: Iterator[Any], context: grpc.ServicerContext) -> Iterator[bytes]:
        try:
            yield from fn(requests, context)
        except grpc.RpcError:  # the client went away or cancelled: the call is over
            return
        except Exception as exc:
            _abort(context, exc, name)

    return grpc.stream_stream_rpc_method_handler(handler)


def generic_handler(
    service: StoreService, observe: Observe | None = None,
    get_streams: GetStreams | None = None, scan_slots: ScanSlots | None = None,
) -> grpc.GenericRpcHandler:
    """The StateStore handlers; with `observe`, each call's method, status and duration."""
    return grpc.method_handlers_generic_handler(
        SERVICE_NAME, method_handlers(service, observe, get_streams, scan_slots))


def method_handlers(
    service: StoreService, observe: Observe | None = None,
    get_streams: GetStreams | None = None, scan_slots: ScanSlots | None = None,
) -> dict[str, grpc.RpcMethodHandler]:
    """The StateStore handlers by method name (for `add_registered_method_handlers`, or
    wrapped by `generic_handler`). `get_streams` and `scan_slots`: the bookkeeping of the calls
    that hold a thread each (the server closes the first at shutdown, metrics read both); by
    default new ones from the service's configuration."""
    s = Servicer(service, observe, get_streams, scan_slots)
    unary = {
        "Open": s.Open, "Stage": s.Stage, "Commit": s.Commit, "Get": s.Get, "Count": s.Count,
        "Close": s.Close, "DescribeStore": s.DescribeStore, "Snapshot": s.Snapshot,
        "Inspect": s.Inspect,
    }
    handlers = {name: _unary(fn, name, observe) for name, fn in unary.items()}
    handlers["Scan"] = _stream(s.Scan, "Scan", observe)
    handlers["GetStream"] = _bidi(s.GetStream, "GetStream")
    return handlers

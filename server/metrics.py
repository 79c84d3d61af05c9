"""Prometheus metrics: every metric the server exports is defined here, and only here.

Each server has its own CollectorRegistry (tests run several servers in one process). Events are
counted through plain callbacks the service, the snapshotter and the servicer expose (no storage
module imports prometheus_client); gauges are read from the service when /metrics is scraped
(StateCollector), so they cost nothing between scrapes.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import start_http_server
from prometheus_client.registry import Collector

from tierstore.server.ports import Changelog, ChangelogRecord, Header
from tierstore.server.service import StoreService
from tierstore.server.shard import Shard
from tierstore.server.snapshots import Manifest
from tierstore.server.status import server_status

log = logging.getLogger(__name__)

_LATENCY = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_RECORDS = (1, 10, 100, 1_000, 10_000, 100_000, 1_000_000)
_BYTES = tuple(float(1 << n) for n in range(10, 28, 2))  # 1 KiB .. 64 MiB
_SNAPSHOT_S = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
SHARD = ("store", "partition")


class ServerMetrics:
    """The metrics of one server. `attach` hooks them to a service; `serve` starts /metrics."""

    def __init__(self) -> None:
        disable_created_metrics()  # no `*_created` series: noise for every counter and histogram
        r = self.registry = CollectorRegistry()
        ProcessCollector(registry=r)  # process_resident_memory_bytes, cpu, open fds
        self.requests = Counter("tierstore_rpc_requests", "Finished gRPC calls by method and "
                                "status code", ["method", "code"], registry=r)
        self.latency = Histogram("tierstore_rpc_duration_seconds", "gRPC call duration by method "
                                 "and status code", ["method", "code"], buckets=_LATENCY,
                                 registry=r)
        self.fenced = Counter("tierstore_fenced_requests", "Calls refused because their epoch "
                              "is stale (FAILED_PRECONDITION)", ["method"], registry=r)
        self.commit_records = Histogram("tierstore_commit_batch_records", "Puts and deletes "
                                        "carried by each applied Commit call (staged batches "
                                        "not included)", buckets=_RECORDS, registry=r)
        self.commit_bytes = Histogram("tierstore_commit_batch_bytes", "Key and value bytes of "
                                      "each applied Commit call", buckets=_BYTES, registry=r)
        self.append_latency = Histogram("tierstore_changelog_append_seconds", "Changelog append "
                                        "of one commit (records and marker acknowledged)",
                                        ["outcome"], buckets=_LATENCY, registry=r)
        self.snapshot_seconds = Histogram("tierstore_snapshot_duration_seconds", "Checkpoint "
                                          "plus upload of one snapshot", buckets=_SNAPSHOT_S,
                                          registry=r)
        self.snapshot_bytes = Histogram("tierstore_snapshot_bytes", "Total size of each "
                                        "snapshot taken", buckets=(*_BYTES, float(1 << 30)),
                                        registry=r)
        self.snapshot_uploaded = Counter("tierstore_snapshot_uploaded_bytes", "Bytes uploaded "
                                         "to the object store by snapshots (new files only)",
                                         registry=r)
        self._http: Any = None
        self.port = 0

    # --- events -------------------------------------------------------------------------------
    def observe_rpc(self, method: str, code: str, seconds: float) -> None:
        self.requests.labels(method, code).inc()
        self.latency.labels(method, code).observe(seconds)
        if code == "FAILED_PRECONDITION":
            self.fenced.labels(method).inc()

    def observe_commit(self, records: int, nbytes: int) -> None:
        self.commit_records.observe(records)
        self.commit_bytes.observe(nbytes)

    def observe_snapshot(self, shard: Shard, manifest: Manifest, seconds: float,
                         uploaded: int | None = None) -> None:
        self.snapshot_seconds.observe(seconds)
        self.snapshot_bytes.observe(manifest.total_bytes)
        if uploaded is not None:
            self.snapshot_uploaded.inc(uploaded)

    # --- wiring -------------------------------------------------------------------------------
    def wrap_changelog(self, changelog: Changelog) -> Changelog:
        return TimedChangelog(changelog, self.append_latency)

    def attach(self, svc: StoreService) -> None:
        svc.on_commit = self.observe_commit

        def on_snapshot(shard: Shard, manifest: Manifest, seconds: float) -> None:
            stats = svc.snapshots.last_upload(shard.spec.name, shard.partition)
            uploaded = stats.bytes_uploaded if stats is not None else None
            self.observe_snapshot(shard, manifest, seconds, uploaded)

        svc.snapshotter.on_snapshot = on_snapshot
        self.registry.register(StateCollector(svc))

    def attach_calls(self, get_streams: OpenCalls, scans: OpenCalls) -> None:
        """Gauges of the calls that hold a server thread each (GetStreams, open scans)."""
        self.registry.register(CallsCollector(get_streams, scans))

    def serve(self, host: str, port: int) -> int:
        """Serve /metrics on host:port (0: a free port) in a daemon thread; returns the port."""
        self._http, _ = start_http_server(port, addr=host, registry=self.registry)
        self.port = int(self._http.server_port)
        return self.port

    def close(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


class TimedChangelog:
    """A Changelog that times append_batch; everything else goes straight to the wrapped one."""

    def __init__(self, inner: Changelog, histogram: Histogram) -> None:
        self._inner = inner
        self._ok = histogram.labels("ok")
        self._failed = histogram.labels("error")

    def ensure_topic(
        self, store: str, num_partitions: int, retention_ms: int | None = None
    ) -> None:
        self._inner.ensure_topic(store, num_partitions, retention_ms)

    def append_batch(
        self, store: str, partition: int, keys: Sequence[bytes],
        values: Sequence[bytes | None], headers: Sequence[Header], marker_value: bytes,
        marker_headers: Sequence[Header], *args: Any, **kwargs: Any,
    ) -> int:
        started = time.perf_counter()
        try:
            offset = self._inner.append_batch(store, partition, keys, values, headers,
                                              marker_value, marker_headers, *args, **kwargs)
        except BaseException:
            self._failed.observe(time.perf_counter() - started)
            raise
        self._ok.observe(time.perf_counter() - started)
        return offset

    def read(self, store: str, partition: int, start_offset: int
             ) -> Iterator[list[ChangelogRecord]]:
        return self._inner.read(store, partition, start_offset)

    def close(self) -> None:
        self._inner.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def _gauge(name: str, doc: str, labels: Sequence[str] = ()) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=list(labels))


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    """A counter without labels, with its one value."""
    c = CounterMetricFamily(name, doc)
    c.add_metric([], value)
    return c


class OpenCalls(Protocol):
    """What CallsCollector reads: server/getstreams.py GetStreams, servicer.ScanSlots."""

    limit: int

    def open_count(self) -> int: ...


class CallsCollector(Collector):
    """Open GetStreams and Scans against their budgets, read at scrape time."""

    def __init__(self, get_streams: OpenCalls, scans: OpenCalls) -> None:
        self.kinds = (("get_streams", get_streams, "GetStream calls (clients' point-read "
                       "streams)"), ("scans", scans, "Scan calls (range reads)"))

    def collect(self) -> Iterator[Metric]:
        for name, calls, what in self.kinds:
            open_now = _gauge(f"tierstore_{name}_open", f"{what} open now, each holding a "
                              "server thread")
            open_now.add_metric([], calls.open_count())
            limit = _gauge(f"tierstore_{name}_limit", f"{what} allowed open at once")
            limit.add_metric([], calls.limit)
            yield from (open_now, limit)


class StateCollector(Collector):
    """Gauges read from the service at scrape time."""

    def __init__(self, svc: StoreService) -> None:
        self.svc = svc
        self._lock = threading.Lock()  # one scrape at a time walks the shards

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            yield from self._collect()

    def _collect(self) -> Iterator[Metric]:
        st = server_status(self.svc)
        open_shards = _gauge("tierstore_open_shards", "Shards open in the hot tier")
        open_shards.add_metric([], len(st.shards))
        hot_total = _gauge("tierstore_hot_tier_bytes", "Local disk used by every open shard")
        hot_total.add_metric([], st.hot_tier_bytes)
        cache = _gauge("tierstore_block_cache_usage_bytes", "RocksDB block cache in use "
                       "(shared by every shard)")
        cache.add_metric([], st.block_cache_usage_bytes)
        capacity = _gauge("tierstore_block_cache_capacity_bytes", "RocksDB block cache size")
        capacity.add_metric([], st.block_cache_capacity_bytes)
        memtables = _gauge("tierstore_memtable_usage_bytes", "RocksDB memtables in use "
                           "(counted against the write buffer budget)")
        memtables.add_metric([], st.memtable_usage_bytes)
        taken = _counter("tierstore_snapshots_taken", "Snapshots taken", st.snapshots_taken)
        failed = _counter("tierstore_snapshots_failed", "Background snapshots that failed "
                          "(retried later)", st.snapshots_failed)
        yield from (open_shards, hot_total, cache, capacity, memtables, taken, failed)
        yield from self._cache_lookups()

        per_shard = {
            "hot_tier_shard_bytes": ("Local disk used by the shard", "local_bytes"),
            "shard_epoch": ("The shard's epoch (bumped by every claim)", "epoch"),
            "shard_commit_seq": ("Commits in the current epoch", "commit_seq"),
            "shard_changelog_offset": ("Next changelog offset not applied", "changelog_offset"),
            "shard_commits_since_snapshot": ("Commits not yet in a snapshot",
                                             "commits_since_snapshot"),
            "shard_seconds_since_snapshot": ("Seconds since the shard's last snapshot (or "
                                             "load)", "seconds_since_snapshot"),
            "shard_last_snapshot_bytes": ("Size of the shard's last snapshot taken here",
                                          "last_snapshot_bytes"),
        }
        for name, (doc, attr) in per_shard.items():
            g = _gauge(f"tierstore_{name}", doc, SHARD)
            for s in st.shards:
                g.add_metric([s.store, str(s.partition)], getattr(s, attr))
            yield g
        yield from self._restores()
        yield self._standby_lag()
        yield from self._restore_target()

    def _restore_target(self) -> Iterator[Metric]:
        """Predicted restore times (tierstore.server.restoretarget); only with a target set."""
        rt = self.svc.restore_target
        if rt is None:
            return
        predicted = _gauge("tierstore_restore_predicted_seconds", "Predicted seconds to restore "
                           "the shard on an empty disk now: snapshot download plus changelog "
                           "tail replay, at the rates measured here (NaN until calibrated)",
                           SHARD)
        for (store, partition), seconds in sorted(rt.predicted.items()):
            predicted.add_metric([store, str(partition)], seconds)
        m = rt.model
        figures = {
            "target_seconds": ("The restore-time target (--restore-target-seconds)",
                               rt.policy.target_s),
            "replay_rate_records_per_second": ("Changelog replay rate measured by restores "
                                               "and calibrations (NaN: not yet)",
                                               m.replay_rate),
            "download_rate_bytes_per_second": ("Snapshot download rate measured by restores "
                                               "of 4 MiB or more (NaN: not yet)",
                                               m.download_rate),
            "overhead_seconds": ("Fixed cost of a restore besides download and replay",
                                 m.overhead_s),
        }
        for name, (doc, value) in figures.items():
            g = _gauge(f"tierstore_restore_{name}", doc)
            g.add_metric([], math.nan if value is None else value)
            yield g
        triggered = _counter("tierstore_restore_target_snapshots", "Snapshots taken because a "
                             "shard's predicted restore time neared the target",
                             rt.snapshots_triggered)
        calibrations = _counter("tierstore_restore_calibrations", "Calibration restores (a "
                                "scratch copy of a shard, timed)", rt.calibrations)
        yield from (predicted, triggered, calibrations)

    def _cache_lookups(self) -> Iterator[Metric]:
        """Block-cache hits and misses from RocksDB statistics, summed over every shard database
        opened since start (absent with rocksdb_statistics off)."""
        counts = self.svc.hot.block_cache_counts()
        if counts is None:
            return
        hits = _counter("tierstore_block_cache_hits", "RocksDB block-cache lookups that found "
                        "the block (every shard, since start)", counts.hits)
        misses = _counter("tierstore_block_cache_misses", "RocksDB block-cache lookups that read "
                          "the block from disk", counts.misses)
        ratio = _gauge("tierstore_block_cache_hit_ratio", "hits / (hits + misses) since start "
                       "(NaN before any lookup); for a recent ratio use rate() of the counters")
        ratio.add_metric([], counts.hit_ratio)
        yield from (hits, misses, ratio)

    def _standby_lag(self) -> Metric:
        g = _gauge("tierstore_standby_lag_seconds", "Standby copies followed here: seconds "
                   "since the copy last caught up to the end of the shard's changelog", SHARD)
        standbys = self.svc.standbys
        for name, lag in sorted((standbys.lag_seconds() if standbys is not None else {}).items()):
            store, _, partition = name.rpartition("/")
            g.add_metric([store, partition], lag)
        return g

    def _restores(self) -> Iterator[Metric]:
        """The last load of each shard: snapshot download, then changelog replay."""
        items = sorted(self.svc.registry.restores.items())
        families = {
            "in_progress": _gauge("tierstore_restore_in_progress", "1 while the shard is being "
                                  "restored (download or replay)", SHARD),
            "seconds": _gauge("tierstore_restore_seconds", "Duration of the shard's last load, "
                              "or so far", SHARD),
            "bytes": _gauge("tierstore_restore_downloaded_bytes", "Snapshot bytes downloaded",
                            SHARD),
            "bytes_total": _gauge("tierstore_restore_snapshot_bytes", "Size of the snapshot "
                                  "being restored", SHARD),
            "records": _gauge("tierstore_restore_replayed_records", "Changelog records "
                              "replayed", SHARD),
            "eta": _gauge("tierstore_restore_download_eta_seconds", "Predicted seconds left "
                          "of the snapshot download (NaN before any byte; 0 when done)", SHARD),
        }
        for (store, partition), p in items:
            labels = [store, str(partition)]
            seconds = p.seconds()
            families["in_progress"].add_metric(labels, float(p.finished is None))
            families["seconds"].add_metric(labels, seconds)
            families["bytes"].add_metric(labels, p.bytes_done)
            families["bytes_total"].add_metric(labels, p.bytes_total)
            families["records"].add_metric(labels, p.records)
            families["eta"].add_metric(labels, _eta(p.phase, p.bytes_done, p.bytes_total,
                                                    seconds))
        yield from families.values()


def _eta(phase: str, done: int, total: int, seconds: float) -> float:
    if phase != "download" or (total and done >= total):
        return 0.0
    if done <= 0:
        return math.nan
    return (total - done) * seconds / done

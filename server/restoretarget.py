"""The restore-time target: snapshot each shard early enough that restoring it stays under
`--restore-target-seconds`.

Restoring a shard on an empty disk costs (docs/operations.md, "Restore-time target"):

    predicted = overhead + snapshot_bytes / download_rate + tail_records / replay_rate

where the tail is the changelog written since the snapshot a restore would start from (its
offset to the shard's changelog offset: every record a replay reads, markers included). The
three figures are measured on this server: by every shard load (a real restore), and by a
calibration, which restores a copy of the shard with the longest tail into a scratch directory
(the same code path as a load; its download and replay are timed page by page) once a tail of
`min_probe_records` exists, again each time a tail reaches 4x the last calibration's (for the
first `early_calibrations`), and then every `recalibrate_s`. Until the replay rate is known the
prediction is NaN and the target triggers nothing.

A shard whose prediction passes `snapshot_at` x target is snapshotted (in the background), as
long as the tail is worth it (its replay is at least `min_gain` x target): right after a snapshot
only the snapshot's download and the overhead remain, and a snapshot too big to download within
the target cannot be helped by snapshotting more often (that is logged once per shard).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass

from tierstore.server.errors import StateStoreError
from tierstore.server.registry import Registry, RestoreProgress
from tierstore.server.shard import Shard
from tierstore.server.snapshotter import Snapshotter

log = logging.getLogger(__name__)

MiB = 1024 * 1024


@dataclass(frozen=True)
class TargetPolicy:
    target_s: float
    snapshot_at: float = 0.5  # snapshot when the prediction passes this fraction of the target
    min_gain: float = 0.2  # ... and the tail's replay is at least this fraction of it
    period_s: float = 0.5  # how often predictions are refreshed
    min_probe_records: int = 5000  # a calibration needs a tail at least this long
    recalibrate_s: float = 600.0
    early_calibrations: int = 3  # the first ones repeat as soon as a tail is 4x the last one
    default_download_rate: float = 64 * MiB  # bytes/s, until a download of >= 4 MiB is timed
    min_rate_bytes: int = 4 * MiB  # smaller downloads are all latency: no rate from them
    min_rate_records: int = 1000  # replays shorter than this give no rate
    smoothing: float = 0.5  # weight of a new measurement (exponential moving average)


class RestoreModel:
    """The measured rates, and predictions from them. Thread-safe."""

    def __init__(self, policy: TargetPolicy) -> None:
        self.policy = policy
        self._lock = threading.Lock()
        self.replay_rate: float | None = None  # records/s
        self.download_rate: float | None = None  # bytes/s
        self.overhead_s: float = 0.0
        self.samples = 0

    def _avg(self, old: float | None, new: float) -> float:
        a = self.policy.smoothing
        return new if old is None else a * new + (1 - a) * old

    def observe(self, p: RestoreProgress) -> None:
        """Learn from one finished restore (a shard load or a calibration)."""
        if p.finished is None:
            return
        total = p.finished - p.started
        replay_started = p.replay_started or p.finished
        download_s = replay_started - p.started
        replay_s = p.finished - replay_started
        pol = self.policy
        with self._lock:
            steady = None
            if p.first_page is not None and p.last_page is not None:
                n = p.last_page[1] - p.first_page[1]
                dt = p.last_page[0] - p.first_page[0]
                if n >= pol.min_rate_records and dt > 0:
                    steady = n / dt
            if steady is not None:
                self.replay_rate = self._avg(self.replay_rate, steady)
            elif p.records >= 10 * pol.min_rate_records and replay_s > 0:
                self.replay_rate = self._avg(self.replay_rate, p.records / replay_s)
            if p.bytes_total >= pol.min_rate_bytes and download_s > 0:
                self.download_rate = self._avg(self.download_rate, p.bytes_total / download_s)
            if self.replay_rate is not None or p.records == 0:
                rest = p.bytes_total / self._download_rate() + (
                    p.records / self.replay_rate if self.replay_rate else 0.0)
                self.overhead_s = self._avg(self.overhead_s if self.samples else None,
                                            max(0.0, total - rest))
                self.samples += 1

    def _download_rate(self) -> float:
        return self.download_rate or self.policy.default_download_rate

    def predict(self, snapshot_bytes: int, tail_records: int) -> float:
        """Seconds to restore a shard (NaN until the replay rate is measured)."""
        with self._lock:
            if self.replay_rate is None:
                return math.nan
            return (self.overhead_s + snapshot_bytes / self._download_rate()
                    + tail_records / self.replay_rate)

    def tail_seconds(self, tail_records: int) -> float:
        with self._lock:
            return tail_records / self.replay_rate if self.replay_rate else math.nan


class RestoreTarget:
    """Predicts each open shard's restore time and snapshots shards that would pass the target.
    Runs a daemon thread; `stop` ends it."""

    def __init__(self, registry: Registry, snapshotter: Snapshotter, policy: TargetPolicy
                 ) -> None:
        self.registry = registry
        self.snapshotter = snapshotter
        self.policy = policy
        self.model = RestoreModel(policy)
        self.predicted: dict[tuple[str, int], float] = {}
        self.snapshots_triggered = 0
        self.calibrations = 0
        self._calibrated_at: float | None = None
        self._probe_records = 0  # the tail of the last calibration
        self._warned: set[tuple[str, int]] = set()
        self._stop = threading.Event()
        registry.on_load = self.model.observe
        self._thread = threading.Thread(target=self._run, name="restore-target", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.policy.period_s):
            try:
                self.run_once()
            except Exception:  # never let the thread die: the next period retries
                log.warning("restore-target check failed", exc_info=True)

    def run_once(self) -> None:
        shards = [s for s in self.registry.open_shards()
                  if not s.broken and not s.db.closed and not s.standby]
        tails = {id(s): self._tail(s) for s in shards}
        self._maybe_calibrate(shards, tails)
        predicted = {}
        for s in shards:
            key = (s.spec.name, s.partition)
            tail = tails[id(s)]
            p = predicted[key] = self.model.predict(s.snapshot_bytes, tail)
            if math.isnan(p) or p <= self.policy.target_s * self.policy.snapshot_at:
                continue
            if self.model.tail_seconds(tail) >= self.policy.target_s * self.policy.min_gain:
                if s.commits_since_snapshot > 0 and self.snapshotter.schedule(s):
                    self.snapshots_triggered += 1
                    log.info("%s: predicted restore %.2fs passes %.0f%% of the %.2fs target: "
                             "snapshotting", s.name, p, self.policy.snapshot_at * 100,
                             self.policy.target_s)
            elif p > self.policy.target_s and key not in self._warned:
                self._warned.add(key)
                log.warning("%s: restoring its snapshot alone is predicted to take %.2fs, over "
                            "the %.2fs restore-time target; more frequent snapshots cannot help",
                            s.name, p, self.policy.target_s)
        self.predicted = predicted

    def _tail(self, shard: Shard) -> int:
        if shard.snapshot_offset is None:  # opened from the local disk: ask the object store
            try:
                newest = next(iter(self.registry.snapshots.list_manifests(
                    shard.spec.name, shard.partition)), None)
            except StateStoreError:
                return 0
            shard.snapshot_offset = newest.changelog_offset if newest is not None else 0
            shard.snapshot_bytes = newest.total_bytes if newest is not None else 0
        return max(0, shard.meta.changelog_offset - (shard.snapshot_offset or 0))

    def _maybe_calibrate(self, shards: list[Shard], tails: dict[int, int]) -> None:
        now, pol = time.monotonic(), self.policy
        longest = max(shards, key=lambda s: tails[id(s)], default=None)
        if (self.registry.changelog is None or longest is None
                or tails[id(longest)] < pol.min_probe_records):
            return
        due = (self._calibrated_at is None or now - self._calibrated_at >= pol.recalibrate_s
               or (self.calibrations < pol.early_calibrations
                   and tails[id(longest)] >= 4 * self._probe_records))
        if not due:
            return
        self._calibrated_at, self._probe_records = now, tails[id(longest)]
        try:
            progress = self.registry.probe_restore(longest.spec, longest.partition,
                                                   longest.meta.changelog_offset)
        except (StateStoreError, OSError) as exc:
            log.warning("restore-time calibration on %s failed: %s", longest.name, exc)
            return
        self.model.observe(progress)
        self.calibrations += 1
        m = self.model
        log.info("restore-time calibration on %s: %d records, %d snapshot bytes in %.2fs; "
                 "replay %.0f records/s, download %s, overhead %.2fs", longest.name,
                 progress.records, progress.bytes_total, progress.seconds(),
                 m.replay_rate or 0.0,
                 f"{m.download_rate:.0f} B/s" if m.download_rate else "not measured",
                 m.overhead_s)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

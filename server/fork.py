"""Forking a store: a new store whose every shard starts at a past commit of another store.

The fork point is given as input offsets (`{"orders:0": 42, "orders:1": 17}`) or None (latest).
For each shard of the source store it is **the newest commit whose committed input offsets are
all at or before the given ones**: a commit is *at or before* the point when every input it names
is named by the point with an offset >= its own (inputs the point names that a shard never
commits, e.g. other partitions' topics, are ignored for that shard). Since a shard's offsets only
move forward, its commits at or before the point form a prefix of its history: the fork point is
the last commit of that prefix, and the replay stops before the first commit that passes it.

The shard's state there is built the way a server restores a shard: the newest snapshot whose
offsets are at or before the point (fallback to older ones if it is corrupt), then the changelog
from that snapshot's offset up to (not including) the first marker past the point. The result is
written as the new store's snapshot, with its changelog offset reset to 0 of the new store's own
(empty) changelog topic; `stores/NEW.json` is written last, so the new store exists only once
every shard is in place, and a server that claims it finds that state and those offsets.

The point is refused (ForkError) when it is not reachable exactly: records between the snapshot
and the point are gone from the changelog (retention or compaction leave offset gaps), a shard
commits offsets of an input the point does not name, a given offset is beyond the shard's newest
commit, or an input is named by no shard. Without a changelog only snapshots are known, so the
point must be a snapshot's offsets exactly (or latest: the newest snapshot).
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tierstore.server.errors import StateStoreError
from tierstore.server.hottier import HotTier, ShardMeta
from tierstore.server.manifest import Manifest
from tierstore.server.ports import Changelog, ChangelogRecord, ObjectStore
from tierstore.server.restore import ReadOnlyView, replay_changelog
from tierstore.server.snapshots import SnapshotStore
from tierstore.server.specs import StoreSpec, check_store_name

log = logging.getLogger(__name__)

Point = Mapping[str, int] | None  # None: the latest commit


class ForkError(StateStoreError):
    """The fork is refused: the point is not reachable, or the new store already exists."""


def parse_point(text: str) -> dict[str, int] | None:
    """`latest` -> None; `orders:0=42,orders:1=17` -> {"orders:0": 42, "orders:1": 17}.
    Raises ValueError naming the bad item."""
    if text.strip() == "latest":
        return None
    out: dict[str, int] = {}
    for item in (i.strip() for i in text.split(",")):
        name, sep, value = item.rpartition("=")
        if not sep or not name or not value.strip().isdigit():
            raise ValueError(f"bad offset {item!r}: expected INPUT=OFFSET, e.g. orders:0=42")
        if name in out:
            raise ValueError(f"input {name!r} is given twice")
        out[name.strip()] = int(value)
    return out


def at_or_before(offsets: Mapping[str, int], point: Mapping[str, int]) -> bool:
    """True when every input `offsets` names is in `point` with an offset >= its own."""
    return all(k in point and v <= point[k] for k, v in offsets.items())


@dataclass(frozen=True)
class ShardFork:
    """Where one shard of the fork stands (in the source store's terms)."""

    partition: int
    snapshot_id: int | None  # the base snapshot (None: replayed from the changelog's start)
    meta: ShardMeta  # the fork point: epoch, commit_seq, changelog offset (source), offsets
    replayed_records: int
    replayed_batches: int
    next_offsets: dict[str, int] | None  # offsets of the first commit past the point
    exact: bool  # the point's offsets for the inputs this shard names equal the commit's
    keys: int
    checkpoint: Path = field(compare=False)


class _GapWatch(ReadOnlyView):
    """A Changelog whose reads note the first offset gap: records removed by retention or
    compaction, so that the history between a snapshot and the point is incomplete."""

    def __init__(self, inner: Changelog) -> None:
        super().__init__(inner)
        self.gap: tuple[int, int] | None = None  # (expected offset, offset found)

    def read(self, store: str, partition: int, start_offset: int
             ) -> Iterator[list[ChangelogRecord]]:
        expected = start_offset
        for page in self.inner.read(store, partition, start_offset):
            if page and self.gap is None and (
                    page[0].offset != expected or page[-1].offset - expected != len(page) - 1):
                for rec in page:
                    if rec.offset != expected:
                        self.gap = (expected, rec.offset)
                        break
                    expected += 1
            if page:
                expected = page[-1].offset + 1
            yield page


def check_new_store(objects: ObjectStore, changelog: Changelog | None, spec: StoreSpec,
                    new: str) -> None:
    """Refuse (ForkError) unless `new` is a free store name: no spec, no snapshot object, and a
    changelog topic that is absent or empty (created here, with the source's partitions)."""
    try:
        check_store_name(new)
    except StateStoreError as exc:
        raise ForkError(str(exc)) from None
    if new == spec.name:
        raise ForkError("the new store must have another name than the source")
    if objects.exists(f"stores/{new}.json"):
        raise ForkError(f"store {new!r} already exists in {objects.describe()}")
    if next(iter(objects.list(f"shards/{new}/")), None) is not None:
        raise ForkError(f"store {new!r} has snapshot objects under shards/{new}/ in "
                        f"{objects.describe()} (left by an interrupted fork? delete them first)")
    if changelog is None:
        return
    try:
        changelog.ensure_topic(new, spec.num_partitions, spec.changelog_retention_ms())
    except StateStoreError as exc:
        raise ForkError(f"store {new!r}: its changelog topic exists and does not fit: "
                        f"{exc}") from None
    for p in range(spec.num_partitions):
        for page in changelog.read(new, p, 0):
            if page:
                raise ForkError(f"store {new!r}: its changelog topic already has records "
                                f"(partition {p}); choose another name")


def build_shard(
    spec: StoreSpec, partition: int, point: Point, snapshots: SnapshotStore,
    changelog: Changelog | None, hot: HotTier, work: Path,
    on_bytes: Callable[[int, int], None] | None = None,
    on_records: Callable[[int], None] | None = None,
) -> ShardFork:
    """Build one shard's state at the point under `work` (a fresh directory) and leave a
    checkpoint of it, whose changelog offset is 0, in work/checkpoint. Raises ForkError when the
    point is not reachable for this shard."""
    name = f"{spec.name}/{partition}"
    db_dir = work / "db"

    def accept(m: Manifest) -> bool:
        return point is None or at_or_before(m.committed_offsets, point)

    manifest = snapshots.restore_latest(spec.name, partition, db_dir, progress=on_bytes,
                                        accept=accept)
    if changelog is None:
        if manifest is None:
            raise ForkError(f"{name}: no snapshot at or before the point, and without the "
                            "changelog there is nothing older to start from")
        if point is not None and not _exact(manifest.committed_offsets, point,
                                            set(manifest.committed_offsets)):
            raise ForkError(f"{name}: without the changelog the point must be a snapshot; the "
                            f"newest snapshot at or before it ({manifest.snapshot_id}) has "
                            f"offsets {_show(manifest.committed_offsets)}")
    db = hot.open(db_dir)
    try:
        records = batches = 0
        next_offsets: dict[str, int] | None = None
        named: set[str] = set()
        if changelog is not None:
            watch = _GapWatch(changelog)
            until = None if point is None else (lambda m: not at_or_before(m.offsets, point))
            result = replay_changelog(db, watch, spec.name, partition, progress=on_records,
                                      spec=spec, until=until)
            stop = result.stop_marker
            if watch.gap is not None and (stop is None or watch.gap[0] < result.stopped_at):
                base = (f"snapshot {manifest.snapshot_id}" if manifest is not None
                        else "the changelog's start (no snapshot at or before the point)")
                raise ForkError(
                    f"{name}: the point is not reachable: changelog records from offset "
                    f"{watch.gap[0]} to {watch.gap[1] - 1} are gone (retention or compaction), "
                    f"between {base} and the point")
            meta = result.meta
            records, batches = result.records_read, result.batches_applied
            if stop is not None:
                next_offsets = dict(stop.offsets)
                named = set(stop.offsets)
        else:
            meta = db.read_meta()
        named |= set(meta.offsets)
        if point is not None:
            _check_shard(name, meta, next_offsets, point, changelog is not None)
        exact = point is None or _exact(meta.offsets, point, named)
        db.apply_log([], [], ShardMeta(meta.epoch, meta.commit_seq, 0, dict(meta.offsets)), [])
        keys = sum(1 for _ in db.iterate(None, None))
        db.checkpoint(work / "checkpoint")
    finally:
        db.close()
    shutil.rmtree(db_dir, ignore_errors=True)
    return ShardFork(partition, manifest.snapshot_id if manifest is not None else None, meta,
                     records, batches, next_offsets, exact, keys, work / "checkpoint")


def _check_shard(name: str, meta: ShardMeta, next_offsets: dict[str, int] | None,
                 point: Mapping[str, int], have_changelog: bool) -> None:
    if next_offsets is not None:
        unnamed = sorted(set(next_offsets) - set(point))
        if unnamed:
            raise ForkError(f"{name} commits offsets of {', '.join(unnamed)}, which the point "
                            f"does not name (its next commit has {_show(next_offsets)})")
    elif have_changelog:  # the whole history is at or before the point
        ahead = {k: v for k, v in point.items() if k in meta.offsets and v > meta.offsets[k]}
        if ahead:
            raise ForkError(f"{name}: {_show(ahead)} was never committed: the newest commit has "
                            f"{_show(meta.offsets)}")


def _exact(offsets: Mapping[str, int], point: Mapping[str, int], named: set[str]) -> bool:
    """The commit's offsets equal the point's for every input the shard names."""
    return all(k in offsets and offsets[k] == point[k] for k in named if k in point)


def _show(offsets: Mapping[str, int]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(offsets.items())) or "no offsets"


def check_point_named(point: Point, forks: Sequence[ShardFork]) -> None:
    """Every input the point names must be committed by some shard (else: a typo, or offsets
    that were never committed)."""
    if point is None:
        return
    named = set().union(*(set(f.meta.offsets) | set(f.next_offsets or {}) for f in forks))
    missing = sorted(set(point) - named)
    if missing:
        raise ForkError(f"no partition of the source store ever committed offsets of "
                        f"{', '.join(missing)}")


def publish(objects: ObjectStore, snapshots: SnapshotStore, spec: StoreSpec, new: str,
            forks: Sequence[ShardFork], point: Point,
            on_bytes: Callable[[int, int], None] | None = None) -> list[Manifest]:
    """Upload each shard's checkpoint as snapshot 1 of the new store, then write the new
    store's spec (the step that makes it exist). On failure the uploaded objects are deleted
    (best effort) and the new store does not exist."""
    new_spec = StoreSpec(new, spec.type, spec.num_partitions, spec.window_size_ms,
                         spec.retention_ms, spec.ttl_ms)
    origin = {"forked_from": spec.name,
              "fork_point": "latest" if point is None else json.dumps(dict(point),
                                                                     sort_keys=True)}
    done = [0]
    total = sum(_dir_bytes(f.checkpoint) for f in forks)

    def progress(d: int, _t: int) -> None:
        if on_bytes is not None:
            on_bytes(done[0] + d, total)

    manifests = []
    try:
        for f in forks:
            m = f.meta
            manifests.append(snapshots.upload(
                new, f.partition, f.checkpoint, epoch=m.epoch, commit_seq=m.commit_seq,
                changelog_offset=0, committed_offsets=m.offsets,
                extra={**origin, "source_changelog_offset": str(m.changelog_offset)},
                progress=progress))
            done[0] += manifests[-1].total_bytes
        objects.put_bytes(f"stores/{new}.json", new_spec.to_json())
    except BaseException:
        with contextlib.suppress(Exception):
            objects.delete_many([i.key for i in objects.list(f"shards/{new}/")])
        raise
    return manifests


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.iterdir() if p.is_file())

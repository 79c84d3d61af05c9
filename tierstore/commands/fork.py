"""`tierstore fork SRC_STORE --at-offsets OFFSETS --to NEW_STORE`: a new store from a past point.

Creates NEW_STORE holding, in each partition, the state of SRC_STORE's partition at the fork
point, with that commit's input offsets as its committed offsets: a worker that claims NEW_STORE
resumes consuming from there (blue/green deploys, backfills, debugging).

OFFSETS is `latest`, or input offsets as the workers commit them, e.g. `orders:0=42,orders:1=17`.
Each partition's fork point is its newest commit whose committed offsets are all at or before
the given ones (every input the commit names must be given, with an offset >= the commit's).
It is built from the newest snapshot at or before the point plus the changelog replayed up to
that commit's marker, then uploaded as NEW_STORE's first snapshot; NEW_STORE's changelog topic
is created empty. Nothing of SRC_STORE is changed, and it may keep running.

Refused (exit 1, nothing created) when NEW_STORE exists (spec, snapshots, or a changelog topic
with records), or when the point is not reachable exactly: the changelog lost records between
the snapshot and the point (retention, compaction), an offset is beyond the newest commit or
named by no partition, or a partition commits an input OFFSETS does not name. With --exact, also
when a partition has no commit with exactly the given offsets. Without --kafka-bootstrap only
snapshots are known: the point must be a snapshot's offsets (or `latest`: the newest snapshot).

Exit codes: 0 forked, 1 refused or failed, 2 usage.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path
from typing import Any

from tierstore.commands.common import (
    OK,
    USAGE,
    Command,
    CommandError,
    Progress,
    ServerFlags,
    SubParsers,
    add_object_store_args,
    add_output_args,
    offline_hot_tier,
    print_json,
    run_guarded,
    table,
)


def add_parser(sub: SubParsers, server_flags: ServerFlags) -> dict[str, Command]:
    p = sub.add_parser("fork", help="create a new store from another store's state at a point",
                       description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", metavar="SRC_STORE")
    p.add_argument("--at-offsets", metavar="OFFSETS", required=True,
                   help="`latest`, or INPUT=OFFSET,... e.g. orders:0=42,orders:1=17")
    p.add_argument("--to", metavar="NEW_STORE", required=True, help="name of the new store")
    p.add_argument("--exact", action="store_true",
                   help="refuse unless every partition has a commit with exactly these offsets")
    add_object_store_args(p)
    p.add_argument("--kafka-bootstrap", metavar="HOST:PORT[,...]", default=None,
                   help="the Kafka cluster of the changelogs (without it: snapshots only)")
    p.add_argument("--kafka-topic-prefix", default="tierstore-",
                   help="prefix of changelog topic names (default: tierstore-)")
    p.add_argument("--work-dir", metavar="DIR", type=Path, default=None,
                   help="local scratch space for the shards being built (default: a temporary "
                   "directory); needs room for the whole store")
    add_output_args(p)
    return {"fork": lambda args: run_guarded("fork", run, args)}


def run(args: argparse.Namespace) -> int:
    from tierstore.server.errors import ObjectNotFoundError
    from tierstore.server.fork import parse_point
    from tierstore.server.objectstore import open_object_store
    from tierstore.server.specs import StoreSpec

    try:
        point = parse_point(args.at_offsets)
    except ValueError as exc:
        raise CommandError(f"--at-offsets: {exc}", USAGE) from None
    objects = open_object_store(args.object_store, args.s3_endpoint)
    try:
        spec = StoreSpec.from_json(objects.get_bytes(f"stores/{args.source}.json"))
    except ObjectNotFoundError:
        raise CommandError(f"store {args.source!r} not found in {objects.describe()}") from None
    changelog = None
    if args.kafka_bootstrap:
        from tierstore.server.changelog_kafka import KafkaChangelog, KafkaConfig

        changelog = KafkaChangelog(KafkaConfig(bootstrap=args.kafka_bootstrap,
                                               topic_prefix=args.kafka_topic_prefix))
    work = Path(tempfile.mkdtemp(prefix="tierstore-fork-", dir=args.work_dir))
    try:
        summary = _fork(args, spec, point, objects, changelog, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if changelog is not None:
            changelog.close()
    if args.json:
        print_json(summary)
        return OK
    print(f"forked {spec.name} at {args.at_offsets} into {args.to} ({spec.type}, "
          f"{spec.num_partitions} partitions)")
    print(table(
        ["PARTITION", "BASE_SNAPSHOT", "REPLAYED", "EPOCH", "COMMIT", "EXACT", "KEYS",
         "COMMITTED_OFFSETS"],
        [[s["partition"], "-" if s["base_snapshot_id"] is None else s["base_snapshot_id"],
          s["replayed_records"], s["epoch"], s["commit_seq"], "yes" if s["exact"] else "no",
          s["keys"], s["committed_offsets"]] for s in summary["partitions"]]))
    return OK


def _fork(args: argparse.Namespace, spec: Any, point: dict[str, int] | None, objects: Any,
          changelog: Any, work: Path) -> dict[str, Any]:
    from tierstore.server import fork
    from tierstore.server.snapshots import SnapshotStore

    fork.check_new_store(objects, changelog, spec, args.to)
    snapshots = SnapshotStore(objects)
    hot = offline_hot_tier(work)
    progress = Progress(args.progress)
    forks = []
    with progress.count(f"fork {spec.name}", "partitions", spec.num_partitions) as on_shards:
        for p in range(spec.num_partitions):
            with progress.bytes(f"download {spec.name}/{p}") as on_bytes, \
                    progress.count(f"replay {spec.name}/{p}", "records") as on_records:
                forks.append(fork.build_shard(spec, p, point, snapshots, changelog, hot,
                                              work / str(p), on_bytes, on_records))
            on_shards(p + 1)
    fork.check_point_named(point, forks)
    inexact = [f.partition for f in forks if not f.exact]
    if args.exact and inexact:
        raise CommandError(f"--exact: partitions {inexact} have no commit with exactly "
                           f"{args.at_offsets}; their newest commit before it is used otherwise")
    fork.check_new_store(objects, changelog, spec, args.to)  # nobody took the name meanwhile
    with progress.bytes(f"upload {args.to}") as on_bytes:
        manifests = fork.publish(objects, snapshots, spec, args.to, forks, point, on_bytes)
    return {
        "source": spec.name, "store": args.to, "type": spec.type,
        "num_partitions": spec.num_partitions, "at_offsets": point or "latest",
        "partitions": [
            {"partition": f.partition, "base_snapshot_id": f.snapshot_id,
             "replayed_records": f.replayed_records, "replayed_commits": f.replayed_batches,
             "epoch": f.meta.epoch, "commit_seq": f.meta.commit_seq,
             "source_changelog_offset": f.meta.changelog_offset,
             "committed_offsets": dict(f.meta.offsets), "next_commit_offsets": f.next_offsets,
             "exact": f.exact, "keys": f.keys, "snapshot_id": m.snapshot_id,
             "snapshot_bytes": m.total_bytes}
            for f, m in zip(forks, manifests, strict=True)
        ],
    }

"""`tierstore restore STORE/PARTITION --to DIR`: restore one shard offline.

Downloads the newest valid snapshot of the shard from the object store into DIR (each file
checked against its sha256; a corrupt snapshot falls back to the previous one), then, with
--kafka-bootstrap, replays the changelog from the snapshot's offset to the end: exactly what a
server does when it loads a shard that is not on its disk. Only complete commits are applied.
DIR is then a RocksDB database holding the shard's committed state; a server uses it when it is
placed at DATA_DIR/shards/STORE/PARTITION.

Nothing is written anywhere but DIR: no topic is created, no snapshot changed, no shard claimed.
The work happens in a hidden directory next to DIR, renamed to DIR only once complete: a run
that fails or is killed never leaves a partial database at DIR.
"""

from __future__ import annotations

import argparse
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

from tierstore.commands.common import (
    OK,
    Command,
    CommandError,
    Progress,
    ServerFlags,
    SubParsers,
    add_object_store_args,
    add_output_args,
    offline_hot_tier,
    parse_shard,
    print_json,
    run_guarded,
)


def add_parser(sub: SubParsers, server_flags: ServerFlags) -> dict[str, Command]:
    p = sub.add_parser("restore", help="restore a shard offline from snapshots + changelog",
                       description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("shard", metavar="STORE/PARTITION")
    p.add_argument("--to", metavar="DIR", required=True, type=Path,
                   help="destination directory (absent or empty)")
    add_object_store_args(p)
    p.add_argument("--kafka-bootstrap", metavar="HOST:PORT[,...]", default=None,
                   help="replay the store's changelog from this Kafka cluster after the "
                   "snapshot (without it: the snapshot alone)")
    p.add_argument("--kafka-topic-prefix", default="tierstore-",
                   help="prefix of changelog topic names (default: tierstore-)")
    add_output_args(p)
    return {"restore": lambda args: run_guarded("restore", run, args)}


def run(args: argparse.Namespace) -> int:
    from tierstore.server.errors import ObjectNotFoundError
    from tierstore.server.objectstore import open_object_store
    from tierstore.server.snapshots import SnapshotStore
    from tierstore.server.specs import StoreSpec

    store, partition = parse_shard(args.shard, need_partition=True)
    dest: Path = args.to
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise CommandError(f"--to {dest}: exists and is not an empty directory", 2)
    objects = open_object_store(args.object_store, args.s3_endpoint)
    try:
        spec = StoreSpec.from_json(objects.get_bytes(f"stores/{store}.json"))
    except ObjectNotFoundError:
        raise CommandError(f"store {store!r} not found in {objects.describe()}") from None
    spec.check_partition(partition)
    progress = Progress(args.progress)
    work = dest.parent / f".{dest.name}.partial-{uuid.uuid4().hex[:8]}"
    try:
        with progress.bytes(f"download {store}/{partition}") as on_bytes:
            manifest = SnapshotStore(objects).restore_latest(store, partition, work,
                                                             progress=on_bytes,
                                                             mark_corrupt=False)
        if manifest is None and not args.kafka_bootstrap:
            raise CommandError(f"{store}/{partition} has no snapshot in {objects.describe()}, "
                               "and without --kafka-bootstrap there is nothing to replay")
        summary = _open_and_replay(args, store, partition, work, progress)
        if dest.exists():
            dest.rmdir()  # empty (checked above)
        os.replace(work, dest)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    summary = {
        "store": store, "partition": partition, "directory": str(dest),
        "snapshot_id": manifest.snapshot_id if manifest else None,
        "snapshot_bytes": manifest.total_bytes if manifest else 0,
        "snapshot_changelog_offset": manifest.changelog_offset if manifest else None,
        **summary,
    }
    if args.json:
        print_json(summary)
    else:
        snap = (f"snapshot {summary['snapshot_id']} ({summary['snapshot_bytes']} bytes, changelog "
                f"offset {summary['snapshot_changelog_offset']})" if manifest else "no snapshot")
        replay = (f"{summary['replayed_records']} changelog records replayed "
                  f"({summary['replayed_batches']} commits) in {summary['replay_seconds']:.2f}s"
                  if args.kafka_bootstrap else "no changelog replay")
        print(f"restored {store}/{partition} into {dest}: {snap}; {replay}")
        print(f"epoch {summary['epoch']}, commit_seq {summary['commit_seq']}, changelog_offset "
              f"{summary['changelog_offset']}, keys {summary['keys']}")
        offsets = ", ".join(f"{k}={v}" for k, v in sorted(summary["committed_offsets"].items()))
        print(f"committed offsets: {offsets or '-'}")
    return OK


def _open_and_replay(args: argparse.Namespace, store: str, partition: int, dest: Path,
                     progress: Progress) -> dict[str, Any]:
    from tierstore.server.restore import replay_changelog

    db = offline_hot_tier(dest.parent).open(dest)
    out: dict[str, Any] = {"replayed_records": 0, "replayed_batches": 0, "replay_seconds": 0.0,
                           "zombie_records": 0, "uncommitted_records": 0}
    try:
        if args.kafka_bootstrap:
            from tierstore.server.changelog_kafka import KafkaChangelog, KafkaConfig

            changelog = KafkaChangelog(KafkaConfig(bootstrap=args.kafka_bootstrap,
                                                   topic_prefix=args.kafka_topic_prefix))
            try:
                with progress.count(f"replay {store}/{partition}", "records") as on_records:
                    result = replay_changelog(db, changelog, store, partition,
                                              progress=on_records)
            finally:
                changelog.close()
            out.update(replayed_records=result.records_read,
                       replayed_batches=result.batches_applied, replay_seconds=result.seconds,
                       zombie_records=result.zombie_records,
                       uncommitted_records=len(result.uncommitted_keys))
        meta = db.read_meta()
        keys = 0
        with progress.count("counting keys", "keys") as on_keys:
            for keys, _ in enumerate(db.iterate(None, None), 1):
                if keys % 10_000 == 0:
                    on_keys(keys)
            on_keys(keys)
    finally:
        db.close()
    out.update(epoch=meta.epoch, commit_seq=meta.commit_seq,
               changelog_offset=meta.changelog_offset, committed_offsets=dict(meta.offsets),
               keys=keys)
    return out

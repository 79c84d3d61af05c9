"""`tierstore inspect`: what a running server holds, or what an object store holds.

With --server: the shards open on that server (owner epoch, commit sequence, changelog offset,
committed input offsets, local size, commits since the last snapshot, and whether the server
owns the shard or follows it as a standby, with the standby's lag) and its memory use.
With --object-store (offline, no server needed): every store and, per shard, its snapshots with
ids, ages, sizes and changelog offsets, newest first.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from tierstore.commands.common import (
    OK,
    Command,
    CommandError,
    Progress,
    ServerFlags,
    SubParsers,
    add_output_args,
    add_server_args,
    client_of,
    human_age,
    human_bytes,
    print_json,
    run_guarded,
    table,
)


def add_parser(sub: SubParsers, server_flags: ServerFlags) -> dict[str, Command]:
    p = sub.add_parser(
        "inspect", help="show the shards of a running server, or the snapshots in an object store",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_server_args(p, required=False)
    p.add_argument("--object-store", metavar="URL", default=None,
                   help="inspect this object store offline: file:///path or s3://bucket/prefix")
    p.add_argument("--s3-endpoint", metavar="URL", default=None,
                   help="S3 endpoint URL, for S3-compatible servers")
    p.add_argument("--store", default="", help="only this store")
    add_output_args(p)
    return {"inspect": lambda args: run_guarded("inspect", run, args)}


def run(args: argparse.Namespace) -> int:
    if bool(args.server) == bool(args.object_store):
        raise CommandError("give exactly one of --server HOST:PORT or --object-store URL", 2)
    if args.server:
        return _online(args)
    return _offline(args)


# --- a running server ---------------------------------------------------------------------------
def _online(args: argparse.Namespace) -> int:
    import grpc

    from tierstore.client._grpc import translate
    from tierstore.v1 import store_pb2 as pb

    with client_of(args) as client:
        try:
            resp = client.stub.Inspect(pb.InspectRequest(store=args.store),
                                       timeout=args.timeout, metadata=client.metadata)
        except grpc.RpcError as exc:
            raise translate(exc) from exc
    type_names = {pb.STORE_TYPE_KV: "kv", pb.STORE_TYPE_WINDOW: "window",
                  pb.STORE_TYPE_SESSION: "session"}
    shards = []
    for s in resp.shards:
        doc: dict[str, Any] = {f.name: getattr(s, f.name) for f in s.DESCRIPTOR.fields}
        doc["type"] = type_names.get(s.type, str(s.type))
        doc["committed_offsets"] = dict(s.committed_offsets)
        shards.append(doc)
    summary = {
        "server": args.server, "version": resp.version, "object_store": resp.object_store,
        "changelog": resp.changelog, "stores": list(resp.stores),
        "hot_tier_bytes": resp.hot_tier_bytes,
        "block_cache_usage_bytes": resp.block_cache_usage_bytes,
        "block_cache_capacity_bytes": resp.block_cache_capacity_bytes,
        "memtable_usage_bytes": resp.memtable_usage_bytes,
        "snapshots_taken": resp.snapshots_taken, "snapshots_failed": resp.snapshots_failed,
    }
    if args.json:
        print_json({**summary, "shards": shards})
        return OK
    print(f"server {args.server} (tierstore {resp.version})")
    print(f"  object store: {resp.object_store}")
    print(f"  changelog:    {resp.changelog or 'none (durability is the local disk)'}")
    print(f"  hot tier:     {human_bytes(resp.hot_tier_bytes)} in {len(shards)} open shards; "
          f"block cache {human_bytes(resp.block_cache_usage_bytes)} of "
          f"{human_bytes(resp.block_cache_capacity_bytes)}; memtables "
          f"{human_bytes(resp.memtable_usage_bytes)}")
    print(f"  snapshots:    {resp.snapshots_taken} taken, {resp.snapshots_failed} failed")
    print(f"  stores:       {', '.join(resp.stores) or '-'}")
    print()
    if not shards:
        print("no open shards")
        return OK
    print(table(
        ["STORE", "PART", "TYPE", "EPOCH", "SEQ", "CHANGELOG", "LOCAL", "KEYS~", "UNSNAPPED",
         "LAST_SNAP", "IDLE", "LOADED_FROM", "ROLE", "OFFSETS"],
        [[s["store"], s["partition"], s["type"], s["epoch"], s["commit_seq"],
          s["changelog_offset"], human_bytes(s["local_bytes"]), s["approximate_num_entries"],
          s["commits_since_snapshot"], human_age(s["seconds_since_snapshot"]) + " ago",
          human_age(s["idle_seconds"]), (s["load_source"] or "-") + (" BROKEN" * s["broken"]),
          _role(s), s["committed_offsets"]] for s in shards],
    ))
    return OK


def _role(s: dict[str, Any]) -> str:
    """"owner", or "standby (lag 0.3s)": a follower copy and how long since it caught up."""
    if not s["standby"]:
        return "owner"
    return f"standby (lag {s['standby_lag_seconds']:.1f}s)"


# --- an object store, offline -------------------------------------------------------------------
def _offline(args: argparse.Namespace) -> int:
    from tierstore.server.errors import ObjectNotFoundError
    from tierstore.server.objectstore import open_object_store
    from tierstore.server.snapshots import SnapshotStore
    from tierstore.server.specs import StoreSpec

    objects = open_object_store(args.object_store, args.s3_endpoint)
    names = sorted(
        o.key.removeprefix("stores/").removesuffix(".json")
        for o in objects.list("stores/") if o.key.endswith(".json")
    )
    if args.store:
        if args.store not in names:
            raise CommandError(f"store {args.store!r} not found in {objects.describe()}")
        names = [args.store]
    specs = []
    for name in names:
        try:
            specs.append(StoreSpec.from_json(objects.get_bytes(f"stores/{name}.json")))
        except ObjectNotFoundError:
            continue
    snapshots = SnapshotStore(objects)
    now = time.time()
    stores: list[dict[str, Any]] = []
    total = sum(s.num_partitions for s in specs)
    with Progress(args.progress).count("reading manifests", "shards", total) as progress:
        done = 0
        for spec in specs:
            parts = []
            for p in range(spec.num_partitions):
                manifests = snapshots.list_manifests(spec.name, p)
                parts.append({"partition": p, "snapshots": [
                    {"snapshot_id": m.snapshot_id, "created_at": m.created_at,
                     "age_seconds": round(now - m.created_at, 3), "bytes": m.total_bytes,
                     "files": len(m.files), "epoch": m.epoch, "commit_seq": m.commit_seq,
                     "changelog_offset": m.changelog_offset,
                     "committed_offsets": dict(m.committed_offsets)}
                    for m in manifests
                ]})
                done += 1
                progress(done)
            stores.append({"name": spec.name, "type": spec.type,
                           "num_partitions": spec.num_partitions,
                           "window_size_ms": spec.window_size_ms,
                           "retention_ms": spec.retention_ms, "partitions": parts})
    if args.json:
        print_json({"object_store": objects.describe(), "stores": stores})
        return OK
    print(f"object store {objects.describe()}: {len(stores)} stores")
    rows: list[list[object]] = []
    for st in stores:
        for part in st["partitions"]:
            if not part["snapshots"]:
                rows.append([st["name"], part["partition"], st["type"], "-", "-", "-", "-", "-",
                             "-", "-"])
            for m in part["snapshots"]:
                rows.append([st["name"], part["partition"], st["type"], m["snapshot_id"],
                             human_age(m["age_seconds"]) + " ago", human_bytes(m["bytes"]),
                             m["epoch"], m["commit_seq"], m["changelog_offset"],
                             m["committed_offsets"]])
    if rows:
        print()
        print(table(["STORE", "PART", "TYPE", "SNAPSHOT", "AGE", "SIZE", "EPOCH", "SEQ",
                     "CHANGELOG", "OFFSETS"], rows))
    return OK

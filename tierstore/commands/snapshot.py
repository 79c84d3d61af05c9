"""`tierstore snapshot STORE[/PARTITION] --server HOST:PORT`: force a snapshot now."""

from __future__ import annotations

import argparse

from tierstore.commands.common import (
    FAILED,
    OK,
    Command,
    CommandError,
    Progress,
    ServerFlags,
    SubParsers,
    add_output_args,
    add_server_args,
    client_of,
    human_bytes,
    parse_shard,
    print_json,
    run_guarded,
    table,
)


def add_parser(sub: SubParsers, server_flags: ServerFlags) -> dict[str, Command]:
    p = sub.add_parser(
        "snapshot", help="force a snapshot of a store or one shard",
        description="Snapshot STORE/PARTITION now (restoring the shard on that server first if "
        "it is not open there), or, with STORE alone, every partition of STORE the server holds "
        "on its disk. Prints each snapshot's id, changelog offset and size. Exit code 1 if the "
        "store does not exist, nothing was snapshotted, or the upload failed.",
    )
    p.add_argument("shard", metavar="STORE[/PARTITION]")
    add_server_args(p)
    add_output_args(p)
    return {"snapshot": lambda args: run_guarded("snapshot", run, args)}


def run(args: argparse.Namespace) -> int:
    import grpc

    from tierstore.client._grpc import translate
    from tierstore.v1 import store_pb2 as pb

    store, partition = parse_shard(args.shard, need_partition=False)
    with client_of(args) as client:
        try:
            with Progress(args.progress).waiting(f"snapshot {args.shard}"):
                resp = client.stub.Snapshot(
                    pb.SnapshotRequest(store=store, partition=partition),
                    timeout=max(args.timeout, 300.0), metadata=client.metadata,
                )
        except grpc.RpcError as exc:
            raise translate(exc) from exc
    snaps = [
        {"store": s.store, "partition": s.partition, "snapshot_id": s.snapshot_id,
         "changelog_offset": s.changelog_offset, "bytes_total": s.bytes_total}
        for s in resp.snapshots
    ]
    if not snaps:
        raise CommandError(f"no partition of {store!r} is on {args.server}; nothing to "
                           "snapshot (name a partition to restore and snapshot it)", FAILED)
    if args.json:
        print_json({"snapshots": snaps})
    else:
        print(table(["STORE", "PARTITION", "SNAPSHOT", "CHANGELOG_OFFSET", "SIZE"],
                    [[s["store"], s["partition"], s["snapshot_id"], s["changelog_offset"],
                      human_bytes(s["bytes_total"])] for s in snaps]))
    return OK

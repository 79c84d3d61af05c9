"""restore: claim a shard of N keys on a server with an EMPTY data dir.

Setup (server A, with a Tansu changelog and a moto S3 object store, automatic snapshots off):
- store `bench-replay`: N keys committed, never snapshotted;
- store `bench-snap`: N keys committed, a forced snapshot, then a tail of 5% of N updates.
Server A is killed with SIGKILL (a graceful stop would snapshot). Then, each on a fresh server
with an empty data dir, the claim `client.key_value_store(store, 0)` is timed:
- (a) `bench-replay`: a full changelog replay;
- (b) `bench-snap`: snapshot download plus the 5% changelog tail;
- (c) the baseline: a raw boto3 download of the snapshot's files (the newest manifest's objects)
  from the same S3 server, 4 files at a time (the server's snapshot_workers default).
Goals: (b) >= 10x faster than (a); (b) <= 2x (c).
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench.harness import Report, batch_keys, batch_values
from bench.loaders import load_remote
from bench.procs import Server, prof_path, profiled
from tests.infra import S3Server, moto_s3, tansu
from tierstore.client.errors import StateStoreError

SIZES = {"small": {"keys": 20_000}, "full": {"keys": 2_000_000}}
PER_COMMIT = 1000
TAIL = 0.05
SEED = 41
BUCKET = "bench-restore"
PREFIX = "ts"
REPLAY, SNAP = "bench-replay", "bench-snap"
DOWNLOAD_WORKERS = 4
CLAIM_TIMEOUT_S = 3600.0  # a replay on a loaded machine can be very slow (see RESULTS.md)
NO_AUTO_SNAPSHOT = ("--snapshot-every-commits", "1000000000", "--snapshot-interval-s", "1e9")


def _flags(broker: str, s3: S3Server) -> list[str]:
    return ["--kafka-bootstrap", broker, "--object-store", f"s3://{BUCKET}/{PREFIX}",
            "--s3-endpoint", s3.endpoint, *NO_AUTO_SNAPSHOT]


def _raw_download(s3: S3Server, dest: Path) -> dict[str, Any]:
    """Download the newest snapshot of SNAP/0 with plain boto3; returns seconds, bytes, files."""
    client = s3.client()
    base = f"{PREFIX}/shards/{SNAP}/0/"
    t0 = time.perf_counter()
    listed = client.list_objects_v2(Bucket=BUCKET, Prefix=base + "manifests/")
    newest = max(o["Key"] for o in listed.get("Contents", []))
    manifest = json.loads(client.get_object(Bucket=BUCKET, Key=newest)["Body"].read())
    files = manifest["files"]
    dest.mkdir(parents=True)

    def one(f: dict[str, Any]) -> None:
        client.download_file(BUCKET, base + "files/" + f["sha256"], str(dest / f["name"]))

    with ThreadPoolExecutor(DOWNLOAD_WORKERS) as pool:
        list(pool.map(one, files))
    secs = time.perf_counter() - t0
    size = sum(f.stat().st_size for f in dest.iterdir())
    return {"seconds": secs, "bytes": size, "files": len(files)}


def _expected(batch: int, j: int, total: int, tail: int) -> tuple[bytes, bytes]:
    """Key j of load batch `batch` and its committed value (after a tail of `tail` updates)."""
    n = min(PER_COMMIT, total - batch * PER_COMMIT)
    key = batch_keys(SEED, batch, n)[j]
    first = batch * PER_COMMIT
    if first + j < tail:
        return key, batch_values(SEED + 1, batch, min(PER_COMMIT, tail - first))[j]
    return key, batch_values(SEED, batch, n)[j]


def _timed_claim(root: Path, name: str, store: str, flags: list[str],
                 profile_dir: Path | None, expect: dict[bytes, bytes],
                 notes: list[str]) -> float:
    """Start a server on an empty data dir, time the claim of store/0, check some values. The
    server's own log lines about the restore (snapshot download, changelog replay) go to
    `notes`, which splits the time between the two."""
    data_dir = root / name
    with Server.serve(data_dir, *flags) as server, \
            server.client(timeout_s=CLAIM_TIMEOUT_S) as client:
        with profiled(server.pid, prof_path(profile_dir, f"restore-server-{name}")):
            t0 = time.perf_counter()
            kv = client.key_value_store(store, 0)
            secs = time.perf_counter() - t0
        keys = list(expect)
        got = kv.get_many(keys)
        if got != [expect[k] for k in keys]:
            raise AssertionError(f"restore {name}: restored values differ from the committed ones")
        kv.close()
        server.kill9()
        notes.extend(f"{name} server log: {line.split(': ', 1)[-1]}"
                     for line in server.log_tail(200_000).splitlines()
                     if "restored snapshot" in line or "replayed" in line
                     or "restore took" in line)
    return secs


def run(size: str = "small", profile_dir: Path | None = None) -> Report:
    total = SIZES[size]["keys"]
    tail = int(total * TAIL)
    rep = Report("restore", size, params={
        "keys": total, "tail_updates": tail, "puts_per_commit": PER_COMMIT,
        "changelog": "Tansu (in-memory)", "object_store": "moto S3 server (separate process)",
        "raw_download": f"boto3 download_file, {DOWNLOAD_WORKERS} files in parallel",
    })
    nb = total // PER_COMMIT
    with tempfile.TemporaryDirectory(prefix="bench-restore-") as tmp, tansu() as broker, \
            moto_s3() as s3:
        root = Path(tmp)
        s3.create_bucket(BUCKET)
        flags = _flags(broker.bootstrap, s3)
        probe = [(0, 0), (0, PER_COMMIT - 1), (nb // 2, 7), (nb - 1, PER_COMMIT - 1)]
        expect_replay = dict(_expected(b, j, total, 0) for b, j in probe)
        expect_snap = dict(_expected(b, j, total, tail) for b, j in probe)
        t_load = time.perf_counter()
        with Server.serve(root / "load", *flags) as server, server.client() as client:
            load_remote(client.key_value_store(REPLAY, 0, 1), SEED, total, PER_COMMIT)
            snap = client.key_value_store(SNAP, 0, 1)
            offset = load_remote(snap, SEED, total, PER_COMMIT)
            t_snap = time.perf_counter()
            client.snapshot(SNAP, 0)
            snapshot_s = time.perf_counter() - t_snap
            # the tail: new values for the first 5% of the keys
            put = snap.put
            for i, first in enumerate(range(0, tail, PER_COMMIT)):
                n = min(PER_COMMIT, tail - first)
                for k, v in zip(batch_keys(SEED, i, n), batch_values(SEED + 1, i, n), strict=True):
                    put(k, v)
                offset += 1
                snap.commit({"input:0": offset})
            server.kill9()
        load_s = time.perf_counter() - t_load
        raw = _raw_download(s3, root / "raw-download")
        _progress(f"setup {load_s:.1f}s; (c) raw download {raw['seconds']:.2f}s")
        a = _attempt(rep, "(a)", lambda: _timed_claim(root, "a-replay", REPLAY, flags,
                                                      profile_dir, expect_replay, rep.notes))
        b = _attempt(rep, "(b)", lambda: _timed_claim(root, "b-snapshot", SNAP, flags,
                                                      profile_dir, expect_snap, rep.notes))
    c = raw["seconds"]
    rep.columns = ["restore", "seconds", "keys/s", "vs (c)"]
    rep.rows = [
        ["(a) full changelog replay", *(_row(a, total, c))],
        ["(b) snapshot + 5% tail", *(_row(b, total, c))],
        ["(c) raw S3 download of the snapshot", c, total / c, 1.0],
    ]
    rep.results = {
        "replay_s": a, "snapshot_plus_tail_s": b, "raw_download_s": c,
        "snapshot_bytes": raw["bytes"], "snapshot_files": raw["files"],
        "raw_download_mb_per_s": raw["bytes"] / c / 1e6,
        "replay_records_per_s": (total + nb) / a if a else None,
        "load_s": load_s, "forced_snapshot_s": snapshot_s,
    }
    if a and b:
        rep.ratios = {"replay_vs_snapshot_speedup": a / b}
        rep.goal("(a)/(b) speedup of snapshot restore", a / b, ">= 10")
    else:
        rep.failed_goal("(a)/(b) speedup of snapshot restore", ">= 10")
    if b:
        rep.ratios["snapshot_vs_raw_download"] = b / c
        rep.goal("(b)/(c) snapshot restore vs raw download", b / c, "<= 2")
    else:
        rep.failed_goal("(b)/(c) snapshot restore vs raw download", "<= 2")
    rep.notes.append(f"snapshot: {raw['files']} files, {raw['bytes'] / 1e6:.1f} MB; "
                     f"setup (load + snapshot) took {load_s:.1f}s")
    return rep


def _progress(msg: str) -> None:
    print(f"restore: {msg}", flush=True)


def _attempt(rep: Report, label: str, claim: Callable[[], float]) -> float | None:
    """Seconds the claim took, or None if the restore failed (recorded as a note: a restore
    that fails is a result, not a reason to lose the others)."""
    try:
        secs = claim()
    except (StateStoreError, AssertionError) as exc:
        rep.notes.append(f"restore {label} FAILED: {type(exc).__name__}: {exc}")
        _progress(f"{label} FAILED: {exc}")
        return None
    _progress(f"{label} {secs:.2f}s")
    return secs


def _row(secs: float | None, total: int, c: float) -> list[Any]:
    return [secs, total / secs, secs / c] if secs else ["FAILED", "-", "-"]

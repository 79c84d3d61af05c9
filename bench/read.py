"""read: point-get and 100-key multi-get latency, remote against in-process rocksdict.

N keys (16-byte keys, 100-byte values) are committed to a tierstore shard (server subprocess)
and written to an in-process rocksdict set up like the server's hot tier (256 MiB block cache,
bloom filters; see loaders.embedded_options). Then, with uniformly random keys:
- remote, fresh handle: a new client claims the shard, so its write buffer is empty and every
  get goes to the server (the "cache miss"): `kv.get(k)` and `kv.get_many(100 keys)`;
- remote, reader: `client.reader(store).get(k)` and `.multi_get(100 keys)`;
- embedded: `db.get(k)` and `db.get([100 keys])` on the rocksdict.

Goals (absolute, on loopback): p99 <= 1 ms for a get, <= 2 ms for a 100-key multi-get. Each is
also printed as a ratio to the embedded p99 measured in the same run.

The floor: a bare gRPC unary echo (bench.echo: a sync grpc server subprocess like ours, raw
bytes, no protobuf) with requests and responses of the same sizes as a 1-key and a 100-key Get,
timed in the same run while our server is up. Its p50/p99 are printed next to ours, and the
JSON's ratios record ours/echo for p50 and p99: what the Python gRPC stack costs on this
machine, and what is left of ours above it. Informational; the goals stay absolute.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench.echo import EchoClient
from bench.harness import Report, latency_summary
from bench.loaders import EMBEDDED_OPTIONS, load_remote, load_rocksdict, sample_keys
from bench.procs import Server, prof_path, profiled
from tierstore.v1 import store_pb2 as pb

SIZES = {
    "small": {"keys": 20_000, "gets": 2_000, "multi_gets": 200},
    "full": {"keys": 1_000_000, "gets": 20_000, "multi_gets": 2_000},
}
PER_COMMIT = 1000
MULTI = 100
WARMUP = 300
SEED = 21
STORE = "bench-read"


def _latencies(fn: Callable[[Any], object], args: Sequence[Any]) -> list[int]:
    out = []
    clock = time.perf_counter_ns
    for a in args:
        t0 = clock()
        fn(a)
        out.append(clock() - t0)
    return out


def _check_found(fn: Callable[[Any], Any], keys: list[bytes],
                 what: str) -> None:
    values: Sequence[bytes | None] = fn(keys)
    if any(v is None for v in values):
        raise AssertionError(f"{what}: a loaded key was not found")


def run(size: str = "small", profile_dir: Path | None = None) -> Report:
    p = SIZES[size]
    total, n_get, n_multi = p["keys"], p["gets"], p["multi_gets"]
    rep = Report("read", size, params={
        "keys": total, "gets": n_get, "multi_gets": n_multi, "multi_get_keys": MULTI,
        "server": "subprocess, no changelog (reads never touch it), default HotTierConfig",
        "embedded": EMBEDDED_OPTIONS,
    })
    singles = sample_keys(SEED, total, PER_COMMIT, n_get + WARMUP)
    flat = sample_keys(SEED, total, PER_COMMIT, (n_multi + 10) * MULTI, rng_seed=8)
    multis = [flat[i : i + MULTI] for i in range(0, len(flat), MULTI)]
    lat: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-read-") as tmp:
        root = Path(tmp)
        db = load_rocksdict(root / "embedded", SEED, total, PER_COMMIT)
        try:
            _check_found(db.get, singles[:50], "embedded")
            _latencies(db.get, singles[:WARMUP])
            lat["embedded get"] = latency_summary(_latencies(db.get, singles[WARMUP:]))
            _latencies(db.get, multis[:10])
            lat["embedded multi_get"] = latency_summary(_latencies(db.get, multis[10:]))
        finally:
            db.close()
        with Server.serve(root / "server", "--snapshot-every-commits", "1000000000") as server:
            with server.client() as loader:
                load_remote(loader.key_value_store(STORE, 0, 1), SEED, total, PER_COMMIT)
            with server.client() as client, \
                    profiled(server.pid, prof_path(profile_dir, "read-server")), \
                    profiled(os.getpid(), prof_path(profile_dir, "read-client")):
                kv = client.key_value_store(STORE, 0)  # fresh handle: empty write buffer
                _check_found(kv.get_many, singles[:50], "remote")
                _latencies(kv.get, singles[:WARMUP])
                lat["remote get (fresh handle)"] = latency_summary(
                    _latencies(kv.get, singles[WARMUP:]))
                _latencies(kv.get_many, multis[:10])
                lat["remote get_many (fresh handle)"] = latency_summary(
                    _latencies(kv.get_many, multis[10:]))
                reader = client.reader(STORE)
                _latencies(reader.get, singles[:WARMUP])
                lat["remote reader.get"] = latency_summary(_latencies(reader.get, singles[WARMUP:]))
                _latencies(reader.multi_get, multis[:10])
                lat["remote reader.multi_get"] = latency_summary(
                    _latencies(reader.multi_get, multis[10:]))
                epoch = kv.epoch
                kv.close()
            lat.update(_echo_floor(root, epoch, n_get, n_multi))
    rep.columns = ["operation", "p50 ms", "p90 ms", "p99 ms", "max ms", "samples"]
    rep.rows = [[k, v["p50_ms"], v["p90_ms"], v["p99_ms"], v["max_ms"], int(v["samples"])]
                for k, v in lat.items()]
    rep.results = {"latency": lat}
    emb_get, emb_multi = lat["embedded get"]["p99_ms"], lat["embedded multi_get"]["p99_ms"]
    paths = {
        "fresh handle": ("remote get (fresh handle)", "remote get_many (fresh handle)"),
        "reader": ("remote reader.get", "remote reader.multi_get"),
    }
    for path, (get_name, multi_name) in paths.items():
        get, multi = lat[get_name], lat[multi_name]
        tag = path.replace(" ", "_")
        rep.ratios[f"get_p99_{tag}_vs_embedded"] = get["p99_ms"] / emb_get
        rep.ratios[f"multi_get_p99_{tag}_vs_embedded"] = multi["p99_ms"] / emb_multi
        rep.goal(f"get p99 ({path})", get["p99_ms"], "<= 1", unit=" ms")
        rep.goal(f"100-key multi_get p99 ({path})", multi["p99_ms"], "<= 2", unit=" ms")
    floor_get, floor_multi = lat[ECHO_GET], lat[ECHO_MULTI]
    for path, (get_name, multi_name) in paths.items():
        tag = path.replace(" ", "_")
        for q in ("p50", "p99"):
            rep.ratios[f"get_{q}_{tag}_vs_echo"] = (lat[get_name][f"{q}_ms"]
                                                   / floor_get[f"{q}_ms"])
            rep.ratios[f"multi_get_{q}_{tag}_vs_echo"] = (lat[multi_name][f"{q}_ms"]
                                                         / floor_multi[f"{q}_ms"])
    rep.notes.append(
        f"floor (bare gRPC echo, same sizes, same run): get-sized p50 "
        f"{floor_get['p50_ms']:.3f} / p99 {floor_get['p99_ms']:.3f} ms, 100-key-sized p50 "
        f"{floor_multi['p50_ms']:.3f} / p99 {floor_multi['p99_ms']:.3f} ms")
    return rep


ECHO_GET = "floor: gRPC echo, get-sized"
ECHO_MULTI = "floor: gRPC echo, 100-key-sized"


def _echo_floor(root: Path, epoch: int, n_get: int, n_multi: int) -> dict[str, dict[str, float]]:
    """The bare gRPC echo (bench.echo) with a Get's request and response sizes: 1 and MULTI
    16-byte keys in, as many 100-byte values out."""
    import sys

    sizes: dict[str, tuple[bytes, int]] = {}
    for name, n in ((ECHO_GET, 1), (ECHO_MULTI, MULTI)):
        msg = pb.GetRequest(store=STORE, partition=0, epoch=epoch, keys=[bytes(16)] * n)
        resp = pb.GetResponse(values=[bytes(100)] * n, found=[True] * n)
        sizes[name] = (msg.SerializeToString(), resp.ByteSize())
    out: dict[str, dict[str, float]] = {}
    with Server([sys.executable, "-m", "bench.echo", "serve"], root / "echo.log") as echo:
        client = EchoClient(echo.address)
        try:
            for name, count, warm in ((ECHO_GET, n_get, WARMUP), (ECHO_MULTI, n_multi, 10)):
                req, size = sizes[name]
                client.latencies(req, size, warm)
                out[name] = latency_summary(client.latencies(req, size, count))
        finally:
            client.close()
    return out

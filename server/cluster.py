"""Several servers: membership, liveness, and shard placement by rendezvous hashing.

Servers are given their peers (a static list, or `dns:NAME:PORT` resolved on every round, e.g.
a Kubernetes headless service). Each server probes its peers with the gRPC health service and
keeps the live set. A shard is placed on the live server with the highest rendezvous score for
(server, store, partition); when that server dies, the next one in score order takes over and
restores the shard. Every server computes the same placement from the same live set; fencing by
epoch keeps a hand-over safe while views briefly differ. Kafka, S3 and Kubernetes are the
distributed engines: there is no consensus here.
"""

from __future__ import annotations

import hashlib
import logging
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)


def score(server: str, store: str, partition: int) -> int:
    digest = hashlib.blake2b(f"{server}\x00{store}\x00{partition}".encode(), digest_size=8)
    return int.from_bytes(digest.digest(), "big")


def placement(servers: Sequence[str], store: str, partition: int) -> list[str]:
    """Servers in rendezvous order for the shard: the owner first, then its successors."""
    return sorted(servers, key=lambda s: (score(s, store, partition), s), reverse=True)


def resolve_peers(spec: Sequence[str], last: dict[str, list[str]] | None = None) -> list[str]:
    """Expand `dns:NAME:PORT` entries into HOST:PORT for every address NAME resolves to. With
    `last`, a lookup that fails gives the entry's last good answer (kept in `last`): a resolver
    hiccup is no evidence that the peers died, and dropping them all at once would make this
    server take every shard."""
    out: list[str] = []
    for entry in spec:
        entry = entry.strip()
        if not entry:
            continue
        if entry.startswith("dns:"):
            name, _, port = entry.removeprefix("dns:").rpartition(":")
            try:
                infos = socket.getaddrinfo(name, int(port), type=socket.SOCK_STREAM)
            except (OSError, ValueError) as exc:
                kept = last.get(entry, []) if last is not None else []
                log.warning("cannot resolve peers %s: %s%s", entry, exc,
                            f" (keeping its last answer: {', '.join(kept)})" if kept else "")
                out.extend(kept)
                continue
            found = sorted({f"{info[4][0]}:{port}" for info in infos})
            if last is not None:
                last[entry] = found
            out.extend(found)
        else:
            out.append(entry)
    return sorted(set(out))


Probe = Callable[[str, float], bool]  # (address, timeout_s) -> serving?


@dataclass(frozen=True)
class ClusterConfig:
    advertise: str  # this server's address as peers and clients reach it
    peers: tuple[str, ...] = ()  # HOST:PORT or dns:NAME:PORT; may include this server
    probe_interval_s: float = 0.5
    probe_timeout_s: float = 0.5
    failures_to_dead: int = 3


class Membership:
    """The live set as this server sees it: itself plus peers that answered recently."""

    def __init__(self, cfg: ClusterConfig, probe: Probe) -> None:
        self.cfg = cfg
        self._probe = probe
        self._lock = threading.Lock()
        self._failures: dict[str, int] = {}
        self._resolved: dict[str, list[str]] = {}  # each dns: entry's last good answer
        self._live: tuple[str, ...] = (cfg.advertise,)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.changes = 0

    @property
    def enabled(self) -> bool:
        return bool(self.cfg.peers)

    def live(self) -> tuple[str, ...]:
        with self._lock:
            return self._live

    def owner(self, store: str, partition: int) -> str:
        return placement(self.live(), store, partition)[0]

    def order(self, store: str, partition: int) -> list[str]:
        return placement(self.live(), store, partition)

    def probe_once(self) -> tuple[str, ...]:
        peers = [p for p in resolve_peers(self.cfg.peers, self._resolved)
                 if p != self.cfg.advertise]
        live = [self.cfg.advertise]
        for peer in peers:
            ok = self._probe(peer, self.cfg.probe_timeout_s)
            fails = 0 if ok else self._failures.get(peer, 0) + 1
            self._failures[peer] = fails
            # A peer is live until it fails `failures_to_dead` probes in a row; a new peer is
            # live from its first good answer.
            known = peer in self._live
            if ok or (known and fails < self.cfg.failures_to_dead):
                live.append(peer)
        new = tuple(sorted(live))
        with self._lock:
            if new != self._live:
                log.info("live servers: %s", ", ".join(new))
                self._live = new
                self.changes += 1
        return new

    def start(self) -> None:
        if not self.enabled or self._thread is not None:
            return
        self.probe_once()
        self._thread = threading.Thread(target=self._run, name="membership", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.cfg.probe_interval_s):
            try:
                self.probe_once()
            except Exception:  # never let the prober die
                log.exception("membership probe failed")

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)


class HealthProbe:
    """A membership probe: one gRPC health Check of a peer, over TLS when `credentials` are
    given (`server_name` overrides the name expected in the peer's certificate)."""

    def __init__(self, credentials: Any = None, server_name: str = "") -> None:
        self.credentials = credentials  # grpc.ChannelCredentials, or None for plaintext
        self.server_name = server_name

    def __call__(self, address: str, timeout_s: float) -> bool:
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        if self.credentials is None:
            channel = grpc.insecure_channel(address)
        else:
            opts = ([("grpc.ssl_target_name_override", self.server_name)]
                    if self.server_name else [])
            channel = grpc.secure_channel(address, self.credentials, options=opts)
        with channel:
            try:
                resp = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service=""), timeout=timeout_s
                )
            except grpc.RpcError as exc:
                log.debug("health probe of %s failed: %s", address, exc)
                return False
            return bool(resp.status == health_pb2.HealthCheckResponse.SERVING)


def wait_until(pred: Callable[[], bool], timeout_s: float, every_s: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(every_s)
    return pred()

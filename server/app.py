"""Assembling and running the server: adapters from config, gRPC server, health, shutdown."""

from __future__ import annotations

import gc
import logging
import signal
import sys
import threading
from concurrent import futures
from dataclasses import dataclass
from types import FrameType
from typing import TYPE_CHECKING

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from tierstore.server.auth import AuthInterceptor, TokenTable
from tierstore.server.cluster import ClusterConfig, HealthProbe, Membership
from tierstore.server.config import ServerConfig
from tierstore.server.getstreams import GetStreams
from tierstore.server.health import StoreHealth
from tierstore.server.ports import Changelog
from tierstore.server.service import StoreService
from tierstore.server.servicer import (
    SERVICE_NAME,
    ScanSlots,
    generic_handler,
    method_handlers,
)
from tierstore.server.tls import peer_channel_credentials, server_credentials
from tierstore.v1 import store_pb2

if TYPE_CHECKING:
    from tierstore.server.metrics import ServerMetrics

log = logging.getLogger(__name__)


def build_service(cfg: ServerConfig, metrics: ServerMetrics | None = None) -> StoreService:
    """The service with its adapters; with `metrics`, the changelog appends are timed."""
    from tierstore.server.objectstore import open_object_store

    objects = open_object_store(cfg.object_store_url(), cfg.s3_endpoint or None)
    changelog: Changelog | None = None
    if cfg.kafka_bootstrap:
        from tierstore.server.changelog_kafka import KafkaChangelog, KafkaConfig

        changelog = KafkaChangelog(
            KafkaConfig(bootstrap=cfg.kafka_bootstrap, topic_prefix=cfg.kafka_topic_prefix)
        )
        if metrics is not None:
            changelog = metrics.wrap_changelog(changelog)
    return StoreService(cfg, objects, changelog)


@dataclass
class RunningServer:
    server: grpc.Server
    port: int
    service: StoreService
    health: health.HealthServicer
    host: str
    metrics: ServerMetrics | None = None  # with cfg.metrics_listen; metrics.port is the real port
    store_health: StoreHealth | None = None
    get_streams: GetStreams | None = None

    def stop(self, grace: float | None = None, snapshot: bool = True) -> None:
        """Graceful shutdown: NOT_SERVING, drain in-flight calls, snapshot, flush, close."""
        if self.store_health is not None:
            self.store_health.stop()  # every status NOT_SERVING, stores included
        else:
            self.health.enter_graceful_shutdown()
        g = self.service.cfg.shutdown_grace_s if grace is None else grace
        if self.get_streams is not None:
            self.get_streams.close()  # idle read streams would hold the grace period up
        self.server.stop(g).wait()
        self.service.shutdown(snapshot=snapshot)
        if self.metrics is not None:
            self.metrics.close()


def create_server(cfg: ServerConfig, service: StoreService | None = None) -> RunningServer:
    """Build and start the server on cfg.listen; returns it with the real port (port 0 works).

    With cfg.tls_cert/tls_key the port speaks TLS only (mTLS with tls_client_ca); with
    cfg.auth_tokens every StateStore call needs a bearer token (tierstore.server.auth). A bad
    TLS or token file raises ConfigError before anything is opened; a port that cannot be bound
    raises OSError after the service is shut down again."""
    host, port = cfg.listen_host_port()
    creds = server_credentials(cfg.tls_cert, cfg.tls_key, cfg.tls_client_ca)
    interceptors = [AuthInterceptor(TokenTable.load(cfg.auth_tokens))] if cfg.auth_tokens else []
    metrics_at = cfg.metrics_host_port()
    metrics = _metrics() if metrics_at is not None else None
    svc = service or build_service(cfg, metrics)
    if metrics is not None and metrics_at is not None:
        metrics.attach(svc)
        try:
            metrics.serve(*metrics_at)
        except OSError as exc:
            svc.shutdown(snapshot=False)
            raise OSError(f"metrics_listen: cannot listen on {cfg.metrics_listen}: {exc}") from exc
        log.info("metrics on http://%s:%d/metrics", metrics_at[0], metrics.port)
    opts = [
        ("grpc.max_receive_message_length", cfg.max_message_bytes),
        ("grpc.max_send_message_length", cfg.max_message_bytes),
        ("grpc.max_concurrent_streams", cfg.max_concurrent_streams),
        ("grpc.so_reuseport", 0),
    ]
    server = grpc.server(
        # Each open GetStream or Scan keeps a thread: those come on top of grpc_workers, so
        # that they never take the threads unary calls need (threads start only when used).
        futures.ThreadPoolExecutor(
            max_workers=cfg.grpc_workers + cfg.max_get_streams + cfg.max_open_scans,
            thread_name_prefix="rpc"),
        options=opts,
        interceptors=interceptors,
        maximum_concurrent_rpcs=cfg.max_concurrent_rpcs,
    )
    observe = metrics.observe_rpc if metrics is not None else None
    get_streams = GetStreams(cfg.max_get_streams, cfg.get_stream_idle_s)
    scan_slots = ScanSlots(cfg.max_open_scans)
    if metrics is not None:
        metrics.attach_calls(get_streams, scan_slots)
    if hasattr(server, "add_registered_method_handlers"):  # grpcio >= 1.63
        # Registered methods: gRPC core matches the method (the client's stubs register
        # theirs too), and no generic handler is searched on each call.
        server.add_registered_method_handlers(
            SERVICE_NAME, method_handlers(svc, observe, get_streams, scan_slots))
    else:
        server.add_generic_rpc_handlers(
            (generic_handler(svc, observe, get_streams, scan_slots),))
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    health_servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    names = (
        store_pb2.DESCRIPTOR.services_by_name["StateStore"].full_name,
        health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
        reflection.SERVICE_NAME,
    )
    reflection.enable_server_reflection(names, server)
    address = f"{host}:{port}" if ":" not in host else f"[{host}]:{port}"
    try:
        bound = (server.add_secure_port(address, creds) if creds is not None
                 else server.add_insecure_port(address))
    except RuntimeError:
        bound = 0
    if bound == 0:
        svc.shutdown(snapshot=False)
        if metrics is not None:
            metrics.close()
        raise OSError(f"cannot listen on {cfg.listen}")
    server.start()
    store_health = StoreHealth(health_servicer, svc)
    store_health.start()  # "" and StateStore SERVING; a status per known store
    if cfg.peer_list():
        advertise = cfg.advertise or f"{host}:{bound}"
        svc.attach_cluster(Membership(
            ClusterConfig(advertise=advertise, peers=cfg.peer_list()),
            HealthProbe(peer_channel_credentials(cfg.tls_cert, cfg.tls_key, cfg.tls_client_ca,
                                                 cfg.peer_tls_ca), cfg.peer_tls_server_name),
        ))
    return RunningServer(server, bound, svc, health_servicer, host, metrics, store_health,
                         get_streams)


def _metrics() -> ServerMetrics:
    from tierstore.server.metrics import ServerMetrics

    return ServerMetrics()


def serve(cfg: ServerConfig) -> int:
    """Run until SIGTERM or SIGINT, then shut down gracefully. Returns the exit code."""
    running = create_server(cfg)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("signal %d: shutting down", signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    # Everything allocated so far (modules, config, the server) lives as long as the process:
    # keep it out of the cyclic GC, whose full collections would otherwise walk it (about
    # 12 ms on a 2-core machine) in the middle of a call.
    gc.collect()
    gc.freeze()
    print(f"listening on {running.host}:{running.port}", flush=True)
    sys.stdout.flush()
    # Wait in slices: a signal delivered to another thread (librdkafka's, gRPC's) does not
    # interrupt a lock wait, and CPython runs the handler only when the main thread checks.
    while not stop.wait(0.5):
        pass
    running.stop()
    log.info("stopped")
    return 0

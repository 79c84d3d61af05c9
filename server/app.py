"""Assembling and running the server: adapters from config, gRPC server, health, shutdown."""

from __future__ import annotations

import logging
import signal
import sys
import threading
from concurrent import futures
from dataclasses import dataclass
from types import FrameType

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from tierstore.server.config import ServerConfig
from tierstore.server.ports import Changelog
from tierstore.server.service import StoreService
from tierstore.server.servicer import SERVICE_NAME, generic_handler
from tierstore.v1 import store_pb2

log = logging.getLogger(__name__)


def build_service(cfg: ServerConfig) -> StoreService:
    from tierstore.server.objectstore import open_object_store

    objects = open_object_store(cfg.object_store_url(), cfg.s3_endpoint or None)
    changelog: Changelog | None = None
    if cfg.kafka_bootstrap:
        from tierstore.server.changelog_kafka import KafkaChangelog, KafkaConfig

        changelog = KafkaChangelog(
            KafkaConfig(bootstrap=cfg.kafka_bootstrap, topic_prefix=cfg.kafka_topic_prefix)
        )
    return StoreService(cfg, objects, changelog)


@dataclass
class RunningServer:
    server: grpc.Server
    port: int
    service: StoreService
    health: health.HealthServicer
    host: str

    def stop(self, grace: float | None = None, snapshot: bool = True) -> None:
        """Graceful shutdown: NOT_SERVING, drain in-flight calls, snapshot, flush, close."""
        self.health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        self.health.set(SERVICE_NAME, health_pb2.HealthCheckResponse.NOT_SERVING)
        g = self.service.cfg.shutdown_grace_s if grace is None else grace
        self.server.stop(g).wait()
        self.service.shutdown(snapshot=snapshot)


def create_server(cfg: ServerConfig, service: StoreService | None = None) -> RunningServer:
    """Build and start the server on cfg.listen; returns it with the real port (port 0 works)."""
    host, port = cfg.listen_host_port()
    svc = service or build_service(cfg)
    opts = [
        ("grpc.max_receive_message_length", cfg.max_message_bytes),
        ("grpc.max_send_message_length", cfg.max_message_bytes),
        ("grpc.so_reuseport", 0),
    ]
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=cfg.grpc_workers, thread_name_prefix="rpc"),
        options=opts,
    )
    server.add_generic_rpc_handlers((generic_handler(svc),))
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    health_servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    names = (
        store_pb2.DESCRIPTOR.services_by_name["StateStore"].full_name,
        health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
        reflection.SERVICE_NAME,
    )
    reflection.enable_server_reflection(names, server)
    bound = server.add_insecure_port(f"{host}:{port}" if ":" not in host else f"[{host}]:{port}")
    if bound == 0:
        svc.shutdown(snapshot=False)
        raise OSError(f"cannot listen on {cfg.listen}")
    server.start()
    health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    health_servicer.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
    return RunningServer(server, bound, svc, health_servicer, host)


def serve(cfg: ServerConfig) -> int:
    """Run until SIGTERM or SIGINT, then shut down gracefully. Returns the exit code."""
    running = create_server(cfg)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("signal %d: shutting down", signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    print(f"listening on {running.host}:{running.port}", flush=True)
    sys.stdout.flush()
    stop.wait()
    running.stop()
    log.info("stopped")
    return 0

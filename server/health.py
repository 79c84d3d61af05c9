"""The standard gRPC health service (grpc.health.v1), with one service name per store.

- `""` (overall): SERVING once the port is bound and until shutdown begins. Peers probe it to
  decide which servers are alive (tierstore.server.cluster), so it does not follow restores.
- `tierstore.v1.StateStore`: the same as `""`.
- `tierstore.store.<name>` for each store this server knows: SERVING when the server can serve
  the store's shards it owns, NOT_SERVING while one of them is being restored, after its load
  failed (until a load succeeds), or while one is broken (StoreService.store_readiness has the
  rules). An unknown name gets NOT_FOUND, as the standard says.

Updates are pushed by the registry when a load starts, ends or fails, or a store becomes known;
a background refresh (every `refresh_s`) catches the rest (a shard broken by a failed write).
"""

from __future__ import annotations

import logging
import threading

from grpc_health.v1 import health, health_pb2

from tierstore.server.service import StoreService
from tierstore.server.servicer import SERVICE_NAME

log = logging.getLogger(__name__)

STORE_PREFIX = "tierstore.store."
_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def store_service_name(store: str) -> str:
    return STORE_PREFIX + store


class StoreHealth:
    """Keeps a HealthServicer's statuses in step with the service's readiness."""

    def __init__(self, servicer: health.HealthServicer, svc: StoreService,
                 refresh_s: float = 1.0) -> None:
        self.servicer = servicer
        self.svc = svc
        self.refresh_s = refresh_s
        self._lock = threading.Lock()  # one update at a time, so a stale one cannot win
        self._status: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="health", daemon=True)

    def start(self) -> None:
        """Report the overall status SERVING and every known store; then keep them current."""
        self.servicer.set("", _SERVING)
        self.servicer.set(SERVICE_NAME, _SERVING)
        self.svc.registry.on_readiness = self.update
        self.refresh()
        self._thread.start()

    def update(self, store: str) -> None:
        with self._lock:
            if self._stop.is_set():
                return
            why = self.svc.store_readiness(store)
            status = _NOT_SERVING if why else _SERVING
            if self._status.get(store) != status:
                self._status[store] = status
                self.servicer.set(store_service_name(store), status)
                if why:
                    log.info("store %s: NOT_SERVING: %s", store, why)
                else:
                    log.info("store %s: SERVING", store)

    def refresh(self) -> None:
        for store in self.svc.registry.known_stores():
            self.update(store)

    def _run(self) -> None:
        while not self._stop.wait(self.refresh_s):
            try:
                self.refresh()
            except Exception:  # the refresher must survive anything
                log.exception("health refresh failed")

    def stop(self) -> None:
        """Everything NOT_SERVING from now on (graceful shutdown)."""
        with self._lock:
            self._stop.set()
            self.svc.registry.on_readiness = None
        self.servicer.enter_graceful_shutdown()

"""Settings of the Kafka changelog adapter (server/changelog_kafka.py): connection, topic and
client configuration, translated to librdkafka's property names."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

MiB = 1024 * 1024
_WEEK_MS = 7 * 24 * 3600 * 1000


@dataclass(frozen=True, slots=True)
class KafkaConfig:
    """Connection, topic and client settings. Times are milliseconds, sizes bytes."""

    bootstrap: str
    topic_prefix: str = "tierstore-"
    replication_factor: int = -1  # -1: the broker's default.replication.factor
    min_compaction_lag_ms: int = _WEEK_MS
    delete_retention_ms: int = _WEEK_MS
    max_message_bytes: int = 9 * MiB + 64 * 1024  # 8 MiB value + 64 KiB key + headers, framing
    # Records wait up to linger_ms for more, so that an append's records go out together; an
    # append waiting for its acknowledgements flushes, which sends them at once (not a delay).
    linger_ms: int = 5
    batch_size: int = 4 * MiB
    batch_num_messages: int = 10_000
    compression_type: str = "none"
    message_timeout_ms: int = 30_000  # bounds one append's wait for its acknowledgements
    request_timeout_ms: int = 10_000
    admin_timeout_ms: int = 30_000
    # A fetch at the end waits this long (the latency of EOF). 10 ms starved long reads on
    # Tansu once a changelog held ~2M records (bench/diag_fetch.py); 100 ms reads them fully.
    fetch_wait_max_ms: int = 100
    fetch_max_bytes: int = 64 * MiB
    read_page_records: int = 1_000
    read_idle_timeout_ms: int = 30_000  # a read with neither a record nor EOF this long fails
    client_id: str = "tierstore"
    extra: tuple[tuple[str, str], ...] = ()  # for all clients, e.g. (("security.protocol", "SSL"),)

    def _with(self, settings: dict[str, Any]) -> dict[str, Any]:
        # no auto-creation: the admin client is a producer inside, whose default is true
        return {"bootstrap.servers": self.bootstrap, "client.id": self.client_id,
                "allow.auto.create.topics": False, **settings, **dict(self.extra)}

    def to_confluent_producer(self) -> dict[str, Any]:
        return self._with({
            "enable.idempotence": True,  # acks=all, ordered retries without duplicates
            "acks": "all",
            "linger.ms": self.linger_ms,
            "batch.size": self.batch_size,
            "batch.num.messages": self.batch_num_messages,
            "compression.type": self.compression_type,
            "message.max.bytes": self.max_message_bytes,
            "message.timeout.ms": self.message_timeout_ms,
            "request.timeout.ms": min(self.request_timeout_ms, self.message_timeout_ms),
        })

    def to_confluent_consumer(self) -> dict[str, Any]:
        return self._with({
            "group.id": f"{self.client_id}-changelog-reader",  # required by the client; unused
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "enable.partition.eof": True,
            "auto.offset.reset": "error",  # an offset outside the log is an error, not a jump
            "isolation.level": "read_committed",
            "fetch.wait.max.ms": self.fetch_wait_max_ms,
            "max.partition.fetch.bytes": max(self.max_message_bytes, self.fetch_max_bytes // 4),
            "fetch.max.bytes": self.fetch_max_bytes,
            "fetch.queue.backoff.ms": 10,  # the default 1 s stalls long reads (4x slower)
            "receive.message.max.bytes": self.fetch_max_bytes + self.max_message_bytes + MiB,
        })

    def to_admin(self) -> dict[str, Any]:
        return self._with({})

    def topic_configs(self, retention_ms: int | None = None) -> dict[str, str]:
        """A new changelog topic's configs: compacted; with `retention_ms` (window and session
        stores) also deleting records older than that (-1: never)."""
        configs = {
            "cleanup.policy": "compact",
            "min.compaction.lag.ms": str(self.min_compaction_lag_ms),
            "delete.retention.ms": str(self.delete_retention_ms),
            "max.message.bytes": str(self.max_message_bytes),
        }
        if retention_ms is not None:
            configs["cleanup.policy"] = "compact,delete"
            configs["retention.ms"] = str(retention_ms)
        return configs

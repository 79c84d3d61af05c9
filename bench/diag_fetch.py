"""Diagnostic behind a RESULTS.md finding: how fast a consumer reads a tierstore changelog on
Tansu, by `fetch.wait.max.ms` (the server uses 10 ms; KafkaConfig.fetch_wait_max_ms).

`python -m bench.diag_fetch [RECORDS]` writes RECORDS records (default 2,000,000) through the
server's own KafkaChangelog.append_batch (1,000 per batch plus a commit marker, with headers) to
a fresh Tansu broker, then reads for 4 s from offset 0 and from 50,000 before the end with each
setting, and prints how many records each read got in those 4 s (everything there is, when
the broker answers fetches in time).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from typing import Any

from confluent_kafka import Consumer, TopicPartition

from tests.infra import tansu
from tierstore.server.changelog_kafka import KafkaChangelog, KafkaConfig
from tierstore.server.logproto import COMMIT, data_headers, marker

MiB = 1024 * 1024
WAITS_MS = (10, 100, 500)


def _read(bootstrap: str, topic: str, start: int, wait_ms: int, secs: float = 4.0) -> int:
    conf: dict[str, Any] = {
        "bootstrap.servers": bootstrap, "group.id": "diag", "enable.partition.eof": True,
        "enable.auto.commit": False, "isolation.level": "read_committed",
        "fetch.wait.max.ms": wait_ms, "fetch.max.bytes": 64 * MiB,
        "max.partition.fetch.bytes": 16 * MiB, "fetch.queue.backoff.ms": 10, "log_level": 3,
    }
    consumer = Consumer(conf)
    try:
        consumer.assign([TopicPartition(topic, 0, start)])
        t0, n = time.monotonic(), 0
        while time.monotonic() - t0 < secs:
            n += sum(1 for m in consumer.consume(1000, 0.5) if m.error() is None)
        return n
    finally:
        consumer.close()


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    records = int(args[0]) if args else 2_000_000
    with tansu() as broker:
        log = KafkaChangelog(KafkaConfig(bootstrap=broker.bootstrap))
        try:
            log.ensure_topic("diag", 1)
            value = b"v" * 100
            t0 = time.monotonic()
            for i in range(records // 1000):
                keys = [b"k%015d" % (i * 1000 + j) for j in range(1000)]
                mval, mheaders = marker(COMMIT, 1, i + 1, {"input:0": i})
                log.append_batch("diag", 0, keys, [value] * 1000, data_headers(1, i + 1), mval,
                                 mheaders)
            print(f"wrote {records:,} records in {time.monotonic() - t0:.1f}s", flush=True)
            topic = log.topic_for("diag")
            for wait in WAITS_MS:
                start = max(0, records - 50_000)
                head = _read(broker.bootstrap, topic, 0, wait)
                tail = _read(broker.bootstrap, topic, start, wait)
                print(f"fetch.wait.max.ms={wait:>3}: read {head:>9,} records in 4s from offset 0, "
                      f"{tail:>7,} of {records + records // 1000 - start:,} from offset {start:,}",
                      flush=True)
        finally:
            log.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

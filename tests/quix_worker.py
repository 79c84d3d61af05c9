"""A Quix Streams word-count worker, run as a subprocess by tests/test_quix_adapter.py.

    python -m tests.quix_worker --backend tierstore|rocksdb --bootstrap HOST:PORT
        --group G --input T --output T [--tierstore HOST:PORT] [--state-dir DIR]

Input records are keyed by word; the worker counts them per word with `sdf.apply(...,
stateful=True)` and sends `{"word": w, "count": n}` to the output topic, keyed by the word. It
prints, flushed, `FIRST <unix time>` when it processes its first record and `PROGRESS <n>`
every 200 records, so the test can time a fresh start and kill it half way through.

`--kill-at-flush N` (tierstore only) makes the worker SIGKILL itself in its Nth store flush,
which Quix runs after committing the consumer offsets: Kafka is then ahead of the state.
"""

from __future__ import annotations

import argparse
import faulthandler
import logging
import os
import signal
import sys
import time
from typing import Any

# Tansu joins a group in ~3 s with short sessions instead of ~23 s (INFRA.md); it accepts a
# 3 s session, which also bounds how long a fresh worker waits for a killed one's to expire.
GROUP_CONFIG = {
    "session.timeout.ms": 3000,
    "heartbeat.interval.ms": 500,
    "max.poll.interval.ms": 30000,
}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--backend", choices=["tierstore", "rocksdb"], required=True)
    p.add_argument("--bootstrap", required=True)
    p.add_argument("--group", required=True)
    p.add_argument("--input", required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--tierstore", default="")
    p.add_argument("--state-dir", required=True)
    p.add_argument("--commit-interval", type=float, default=0.2)
    p.add_argument("--kill-at-flush", type=int, default=0)
    p.add_argument("--guarantee", choices=["at-least-once", "exactly-once"],
                   default="at-least-once")
    args = p.parse_args(argv)

    from quixstreams import Application

    tierstore = args.backend == "tierstore"
    app = Application(
        broker_address=args.bootstrap,
        consumer_group=args.group,
        auto_offset_reset="earliest",
        state_dir=args.state_dir,
        use_changelog_topics=not tierstore,
        commit_interval=args.commit_interval,
        processing_guarantee=args.guarantee,
        consumer_extra_config=GROUP_CONFIG,
        loglevel="INFO",
    )
    if tierstore:
        from tierstore.adapters.quix import TierstorePartitionTransaction, use_tierstore
        from tierstore.client import connect

        use_tierstore(app, connect(args.tierstore))
        if args.kill_at_flush:
            _kill_at_flush(TierstorePartitionTransaction, args.kill_at_flush)

    words = app.topic(args.input, key_deserializer="str", value_deserializer="json")
    counts = app.topic(args.output, key_serializer="str", value_serializer="json")
    processed = 0

    def count(value: Any, state: Any) -> int:
        n = int(state.get("count", 0)) + 1
        state.set("count", n)
        return n

    def report(_value: Any) -> None:
        nonlocal processed
        processed += 1
        if processed == 1:
            print(f"FIRST {time.time():.6f}", flush=True)
        if processed % 200 == 0:
            print(f"PROGRESS {processed}", flush=True)

    sdf = app.dataframe(words)
    sdf = sdf.apply(count, stateful=True)
    sdf = sdf.apply(lambda n, key, ts, headers: {"word": key, "count": n}, metadata=True)
    sdf.update(report)
    sdf.to_topic(counts)
    signal.signal(signal.SIGTERM, lambda *_: app.stop())
    app.run()


def _kill_at_flush(txn_class: Any, nth: int) -> None:
    """SIGKILL this process inside the Nth store flush (step 5 of Quix's checkpoint, after the
    consumer offsets were committed in step 4), before the tierstore commit."""
    calls = 0
    original = txn_class._flush

    def flush(self: Any, changelog_offset: Any) -> None:
        nonlocal calls
        calls += 1
        if calls >= nth and not self._update_cache.is_empty():
            print("KILLING in flush", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
        original(self, changelog_offset)

    txn_class._flush = flush


if __name__ == "__main__":
    faulthandler.register(signal.SIGUSR1)  # stack dump of a stuck worker: kill -USR1 PID
    logging.basicConfig(stream=sys.stderr)
    logging.getLogger("tierstore").setLevel(logging.INFO)
    main()

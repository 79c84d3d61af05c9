"""A Faust word-count worker, run as a subprocess by tests/test_faust_store.py.

    python -m tests.faust_wordcount     (configured by the environment, see below)

It counts the words of topic WC_INPUT in table "counts" (store WC_STORE), and writes to stdout
(fd 1, which Faust does not redirect): `FIRST <unix time>` when it processes its first record,
`SEEN <n>` every 100 records, and `DONE` once Faust has committed every input partition up to
WC_END (a JSON list of end offsets), after writing the table's contents to WC_DUMP as JSON.

Settings for the Tansu test broker (docs/adapters.md explains each):
- producer_max_batch_size=1: one record per produce batch, so Tansu's high watermark (first
  offset of the last batch + 1) is the true end of the changelog and Faust's recovery reads it
  all;
- short group timeouts, so a group forms in seconds rather than 30 s.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import faust
from faust.types import TP

ENV = os.environ
PARTS = int(ENV["WC_PARTITIONS"])
END = [int(x) for x in json.loads(ENV["WC_END"])]

app = faust.App(
    ENV["WC_APP"],
    broker=f"kafka://{ENV['WC_BROKER']}",
    store=ENV["WC_STORE"],
    datadir=ENV["WC_DATADIR"],
    web_enabled=False,
    web_port=int(ENV.get("WC_WEB_PORT", "6066")),  # two workers on one machine need two
    processing_guarantee=ENV.get("WC_GUARANTEE", "at_least_once"),
    topic_partitions=PARTS,
    table_standby_replicas=0,
    producer_max_batch_size=1,
    broker_commit_interval=1.0,
    broker_rebalance_timeout=3.0,
    broker_session_timeout=3.0,
    broker_heartbeat_interval=0.5,
)
words = app.topic(ENV["WC_INPUT"], key_type=bytes, value_type=bytes, key_serializer="raw",
                  value_serializer="raw", partitions=PARTS)
counts = app.Table("counts", default=int, partitions=PARTS, key_type=str, value_type=int)
_state: dict[str, Any] = {"seen": 0, "done": False}


def say(line: str) -> None:
    os.write(1, (line + "\n").encode())


@app.agent(words, concurrency=int(ENV.get("WC_CONCURRENCY", "1")))
async def count(stream: Any) -> None:
    async for word in stream:
        counts[word.decode()] += 1
        _state["seen"] += 1
        if _state["seen"] == 1:
            say(f"FIRST {time.time():.6f}")
            app.log.info("first record processed")
        if _state["seen"] % 100 == 0:
            say(f"SEEN {_state['seen']}")


@app.timer(0.3)
async def check_done() -> None:
    if _state["done"]:
        return
    committed: Any = app.consumer._committed_offset  # type: ignore[attr-defined]
    topic = ENV["WC_INPUT"]
    if all((committed.get(TP(topic, p)) or 0) >= END[p] for p in range(PARTS)):
        _state["done"] = True
        with open(ENV["WC_DUMP"], "w") as f:
            json.dump(dict(counts.items()), f)
        say("DONE")


if __name__ == "__main__":
    app.main()

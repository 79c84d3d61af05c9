"""Word-count input shared by the adapters' end-to-end tests: a stable word -> partition map
and a writer that keeps input arriving while workers come and go."""

from __future__ import annotations

import random
import threading
import zlib
from collections import Counter
from collections.abc import Callable


def word_partition(word: str, partitions: int) -> int:
    """Every occurrence of a word goes to one partition (a stable hash), as Faust needs."""
    return zlib.crc32(word.encode()) % partitions


class PacedWords:
    """Writes random words to an existing topic from a thread, `chunk` records every
    `interval_s`, until `stop()`; `ref` and `ends` are then the reference counts and the end
    offset of each partition (input that keeps arriving while workers come and go)."""

    def __init__(self, bootstrap: str, topic: str, partitions: int, vocabulary: int, seed: int,
                 chunk: int = 50, interval_s: float = 0.1,
                 value_of: Callable[[str], bytes] = str.encode) -> None:
        from confluent_kafka import Producer

        self.ref: Counter[str] = Counter()
        self.ends = [0] * partitions
        self._producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
        self._value_of = value_of
        self._args = (topic, partitions, [f"w{i:04d}" for i in range(vocabulary)],
                      random.Random(seed), chunk, interval_s)
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._failed: list[str] = []  # delivery reports with an error
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @property
    def produced(self) -> int:
        return sum(self.ends)

    def _run(self) -> None:
        topic, partitions, vocab, rng, chunk, interval_s = self._args
        try:
            while not self._stop.is_set():
                for _ in range(chunk):
                    word = rng.choice(vocab)
                    p = word_partition(word, partitions)
                    self._producer.produce(topic, key=word.encode(),
                                           value=self._value_of(word), partition=p,
                                           on_delivery=self._delivered)
                    self.ref[word] += 1
                    self.ends[p] += 1
                self._producer.poll(0)
                self._stop.wait(interval_s)
        except Exception as exc:  # reported by stop()
            self._error = exc

    def _delivered(self, err: object, _msg: object) -> None:
        if err is not None:
            self._failed.append(str(err))

    def stop(self) -> None:
        """Stop writing and wait until every record written is acknowledged."""
        self._stop.set()
        self._thread.join(30)
        if self._error is not None:
            raise RuntimeError("the input writer failed") from self._error
        if self._producer.flush(30) != 0 or self._failed:
            raise RuntimeError(f"input records were not all delivered: {self._failed[:3]}")

"""server/replayahead.py: the changelog tail replayed while the snapshot downloads applies exactly
what a replay after the download applies (same data, metadata, uncommitted keys), holds at most
its byte bound before the database is open, and falls back (returns None, writes nothing more)
when the database is not where the manifest said or the replay ahead failed. Real RocksDB
(HotTier); the in-memory changelog of tests/memlog.py with real markers (server/logproto.py).
The whole restore path, on Kafka and S3, runs in tests/test_durability.py and the restore
benchmark."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.memlog import MemoryChangelog
from tierstore.server.cluster import wait_until
from tierstore.server.hottier import HotTier, ShardDB
from tierstore.server.logproto import COMMIT, data_headers, marker
from tierstore.server.manifest import Manifest
from tierstore.server.ports import ChangelogRecord
from tierstore.server.replayahead import ReplayAhead
from tierstore.server.restore import replay_changelog

STORE = "s"
SNAPSHOT_BATCHES = 3  # the "snapshot" holds the first batches; the tail is the rest


class FailingLog(MemoryChangelog):
    """Fails the read after `fail_after` pages when set; pages of 50 records."""

    fail_after: int | None = None

    def read(self, store: str, partition: int, start_offset: int
             ) -> Iterator[list[ChangelogRecord]]:
        records = [r for page in super().read(store, partition, start_offset) for r in page]
        for n, i in enumerate(range(0, len(records), 50)):
            if self.fail_after is not None and n == self.fail_after:
                raise ConnectionError("broker went away")
            yield records[i:i + 50]


def build_log(batches: int = 12) -> FailingLog:
    """Committed batches of 40 puts and a delete each (epoch 1, then 2 from batch 6), and an
    uncommitted tail of 5 records."""
    log = FailingLog()
    log.ensure_topic(STORE, 1)
    for b in range(batches):
        epoch = 1 if b < 6 else 2
        keys = [b"k%03d" % ((b * 7 + i) % 150) for i in range(40)] + [b"k%03d" % (b * 3)]
        values: list[bytes | None] = [b"v%d-%d" % (b, i) * 3 for i in range(40)] + [None]
        mv, mh = marker(COMMIT, epoch, b + 1, {"in:0": (b + 1) * 10})
        log.append_batch(STORE, 0, keys, values, data_headers(epoch, b + 1), mv, mh)
    with log._lock:  # an uncommitted tail: records without their marker
        tail = log.logs[(STORE, 0)]
        for i in range(5):
            tail.append(ChangelogRecord(tail[-1].offset + 1, b"t%d" % i, b"x",
                                        tuple(data_headers(2, batches + 1))))
    return log


def snapshot_db(hot: HotTier, path: Path, log: FailingLog) -> ShardDB:
    """A database standing where a snapshot of the first SNAPSHOT_BATCHES batches would."""
    db = hot.open(path)
    prefix = [r for page in log.read(STORE, 0, 0) for r in page]
    markers = [r.offset for r in prefix if r.key == b""][:SNAPSHOT_BATCHES]
    replay_changelog(db, _Prefix(log, markers[-1] + 1), STORE, 0)
    return db


class _Prefix(MemoryChangelog):
    def __init__(self, inner: MemoryChangelog, end: int) -> None:
        super().__init__()
        self.inner, self.end = inner, end

    def read(self, store: str, partition: int, start_offset: int
             ) -> Iterator[list[ChangelogRecord]]:
        for page in self.inner.read(store, partition, start_offset):
            yield [r for r in page if r.offset < self.end]


def manifest_of(db: ShardDB) -> Manifest:
    m = db.read_meta()
    return Manifest(STORE, 0, 1, time.time(), m.epoch, m.commit_seq, m.changelog_offset,
                    dict(m.offsets), ())


def contents(db: ShardDB) -> list[tuple[bytes, bytes]]:
    return list(db.iterate(None, None))


@pytest.fixture
def hot(tmp_path: Path) -> HotTier:
    return HotTier(tmp_path / "hot")


def test_replay_ahead_applies_what_a_replay_after_the_download_applies(hot: HotTier) -> None:
    log = build_log()
    direct_db = snapshot_db(hot, hot.root / "direct", log)
    manifest = manifest_of(direct_db)
    direct = replay_changelog(direct_db, log, STORE, 0)

    ahead_db = snapshot_db(hot, hot.root / "ahead", log)
    pages: list[int] = []
    ahead = ReplayAhead(log, STORE, 0, manifest, pages.append)
    assert wait_until(lambda: bool(pages) and pages[-1] == direct.records_read, 5.0)
    result = ahead.finish(ahead_db)  # the whole tail was read before the database "opened"
    assert result is not None
    assert contents(ahead_db) == contents(direct_db)
    assert ahead_db.read_meta() == direct_db.read_meta() == direct.meta
    for field in ("records_read", "records_applied", "batches_applied", "end_offset",
                  "zombie_records", "uncommitted_keys", "max_epoch"):
        assert getattr(result, field) == getattr(direct, field), field
    assert result.uncommitted_keys == {b"t0", b"t1", b"t2", b"t3", b"t4"}


def test_held_batches_are_bounded_until_the_database_opens(hot: HotTier) -> None:
    log = build_log(batches=30)
    db = snapshot_db(hot, hot.root / "db", log)
    manifest = manifest_of(db)
    expected_db = snapshot_db(hot, hot.root / "expected", log)
    replay_changelog(expected_db, log, STORE, 0)
    ahead = ReplayAhead(log, STORE, 0, manifest, max_bytes=4000)  # about two batches
    pending = ahead._pending
    assert wait_until(lambda: len(pending._held) >= 2, 5.0)
    time.sleep(0.2)  # the replay would run to the end in far less if it were not bounded
    held = len(pending._held)
    assert held < 27  # 27 batches are in the tail: the replay waits for the database
    assert pending._held_bytes <= 4000 or held == 1
    result = ahead.finish(db)
    assert result is not None and result.batches_applied == 27
    assert contents(db) == contents(expected_db)
    assert db.read_meta() == expected_db.read_meta()


def test_a_database_not_where_the_manifest_said_is_left_to_the_direct_replay(
        hot: HotTier) -> None:
    log = build_log()
    db = snapshot_db(hot, hot.root / "db", log)
    manifest = manifest_of(db)
    replay_changelog(db, _Prefix(log, manifest.changelog_offset + 42), STORE, 0)  # one more
    before = (contents(db), db.read_meta())
    ahead = ReplayAhead(log, STORE, 0, manifest)
    assert ahead.finish(db) is None
    assert (contents(db), db.read_meta()) == before  # nothing of the replay ahead written
    assert wait_until(lambda: not ahead._thread.is_alive(), 5.0)


@pytest.mark.parametrize("fail_after", [0, 2])
def test_a_failed_replay_ahead_leaves_whole_batches_and_the_direct_replay_finishes(
        hot: HotTier, fail_after: int) -> None:
    log = build_log()
    expected_db = snapshot_db(hot, hot.root / "expected", log)
    expected = replay_changelog(expected_db, log, STORE, 0)
    db = snapshot_db(hot, hot.root / "db", log)
    log.fail_after = fail_after
    ahead = ReplayAhead(log, STORE, 0, manifest_of(db))
    assert wait_until(lambda: not ahead._thread.is_alive(), 5.0)
    assert ahead.finish(db) is None
    log.fail_after = None
    applied = db.read_meta()  # whole batches only: a marker's offset, with that batch's data
    assert applied.changelog_offset in {r.offset + 1 for page in log.read(STORE, 0, 0)
                                        for r in page if r.key == b""}
    again = replay_changelog(db, log, STORE, 0)
    assert contents(db) == contents(expected_db)
    assert db.read_meta() == expected_db.read_meta()
    assert again.uncommitted_keys == expected.uncommitted_keys

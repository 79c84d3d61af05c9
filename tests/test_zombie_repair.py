"""A zombie's data record (an older epoch's, landed after a newer claim) that no owner noticed
before it crashed: restore drops it (rule 2), and must also hand its key to the next claim's
repair. Otherwise the zombie's record stays the newest of its key, compaction removes the
committed value before it, and a later restore, which drops the zombie's record again, loses
the key (docs/protocol.md, "What compaction may remove").

In-memory changelog (tests/memlog.py) with Kafka's compaction; each server has its own data dir,
so every open restores from the log."""

from __future__ import annotations

from pathlib import Path

from tests.memlog import MemoryChangelog
from tierstore.server.config import ServerConfig
from tierstore.server.logproto import data_headers
from tierstore.server.objectstore import LocalObjectStore
from tierstore.server.ports import ChangelogRecord
from tierstore.server.restore import replay_changelog
from tierstore.server.service import StoreService


def _service(tmp: Path, name: str, log: MemoryChangelog) -> StoreService:
    return StoreService(ServerConfig(data_dir=tmp / name), LocalObjectStore(tmp / "objects"), log)


def _zombie_write(log: MemoryChangelog, key: bytes, value: bytes, epoch: int) -> None:
    records = log.logs[("z", 0)]
    records.append(ChangelogRecord(records[-1].offset + 1, key, value,
                                   tuple(data_headers(epoch, 9))))


def test_a_zombie_record_found_by_restore_is_repaired(tmp_path: Path) -> None:
    log = MemoryChangelog()
    a = _service(tmp_path, "a", log)
    try:
        meta, _ = a.open("z", 0, "kv", 1)
        a.commit("z", 0, meta.epoch, 1, 0, [b"k", b"j"], [b"v1", b"w1"], [], {"in:0": 1})
        old_epoch = meta.epoch
        meta, _ = a.open("z", 0, "kv", 1)  # a new owner's claim: epoch + 1
        a.commit("z", 0, meta.epoch, 1, 0, [b"j"], [b"w2"], [], {"in:0": 2})
    finally:
        a.shutdown(snapshot=False)
    # The previous owner, a zombie by now, still gets a record into the log; no owner appends
    # again before this server is gone, so nobody's offset fence sees it.
    _zombie_write(log, b"k", b"zombie", old_epoch)

    found = replay_changelog_keys(tmp_path, log)
    assert found == (set(), {b"k"})  # nothing uncommitted at the tail; one zombie key

    # A server on a new data dir restores from the log; its claim repairs b"k".
    assert _restored(tmp_path, "b", log) == ([b"v1", b"w2"], {"in:0": 2})
    newest_k = [r for r in log.logs[("z", 0)] if r.key == b"k"][-1]
    assert newest_k.value == b"v1"  # the repair, after the zombie's record

    log.compact()  # the cleaner keeps only the newest record of each key
    assert _restored(tmp_path, "c", log) == ([b"v1", b"w2"], {"in:0": 2})


def _restored(tmp: Path, name: str, log: MemoryChangelog
              ) -> tuple[list[bytes | None], dict[str, int]]:
    """The values of b"k" and b"j" and the committed offsets a new server (data dir `name`)
    restores from the log and claims."""
    svc = _service(tmp, name, log)
    try:
        meta, _ = svc.open("z", 0, "kv", 1)
        return svc.get("z", 0, 0, [b"k", b"j"]), dict(meta.offsets)
    finally:
        svc.shutdown(snapshot=False)


def replay_changelog_keys(tmp: Path, log: MemoryChangelog) -> tuple[set[bytes], set[bytes]]:
    """(uncommitted keys, zombie keys) a restore from offset 0 finds, into a scratch shard."""
    from tierstore.server.hottier import HotTier

    tier = HotTier(tmp / "scratch")
    db = tier.open(tmp / "scratch" / "z-0")
    try:
        result = replay_changelog(db, log, "z", 0)
        return result.uncommitted_keys, result.zombie_keys
    finally:
        db.close()

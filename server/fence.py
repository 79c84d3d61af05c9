"""The changelog-side bookkeeping of one shard's appends (docs/protocol.md, "Fencing" and
"Staging ahead"): the records of a staged batch already handed to the log, and what to do when
records this server did not write turn up between its own.

Storage code: talks to the changelog only through the `Changelog` port.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tierstore.server.errors import FencedError
from tierstore.server.hottier import ShardMeta
from tierstore.server.logproto import (
    COMMIT,
    MARKER_KEY,
    data_headers,
    header_epoch,
    marker,
    parse_marker,
)
from tierstore.server.ports import Ahead

if TYPE_CHECKING:
    from tierstore.server.shard import Shard


class AheadBatch:
    """The records of the batch being staged that are already in the log, ahead of its marker.

    Until the marker lands they are uncommitted: if the batch is abandoned (a claim, a release,
    a lost stage) their keys join the shard's repair set, so that the next append overwrites
    them with their committed values before its own marker (restore applies everything before
    a marker, and compaction may keep only the newest record of a key)."""

    __slots__ = ("count", "handles", "keys")

    def __init__(self) -> None:
        self.handles: list[Ahead] = []
        self.count = 0  # records appended ahead, repairs included
        self.keys: set[bytes] = set()

    def __bool__(self) -> bool:
        return bool(self.keys)

    def add(self, handle: Ahead, keys: list[bytes]) -> None:
        self.handles.append(handle)
        self.count += len(keys)
        self.keys.update(keys)

    def take(self) -> set[bytes]:
        """Forget the batch; return the keys it wrote."""
        keys = self.keys
        self.handles, self.count, self.keys = [], 0, set()
        return keys


def foreign_records(shard: Shard, start: int, end: int, new: ShardMeta,
                    ours: set[bytes], mixed: bool = False) -> None:
    """Records this server did not write sit in the log at [start, end), before its batch; or,
    with `mixed` (records staged ahead: other writers' records may land between them), among
    its records there, which are the ones of its own epoch.

    A record of a newer epoch means another server took the shard over: its claim fences this
    batch on restore, so the commit must not be acknowledged (FencedError; the shard reloads).
    Records of older epochs are a zombie's writes, dropped on restore: this commit stands, and
    the zombie's keys are re-appended with their committed values at once, so compaction can
    never keep a zombie's record over a committed one. The caller holds the shard lock."""
    log = shard.changelog
    assert log is not None
    newest, zombie_keys = 0, set()
    for page in log.read(shard.spec.name, shard.partition, start):
        for rec in page:
            if rec.offset >= end:
                break
            m = parse_marker(rec.value, rec.headers) if rec.key == MARKER_KEY else None
            epoch = m.epoch if m is not None else (header_epoch(rec.headers) or 0)
            if mixed and epoch == new.epoch:
                continue
            newest = max(newest, epoch)
            if rec.key != MARKER_KEY:
                zombie_keys.add(rec.key)
        else:
            continue
        break
    if newest > new.epoch:
        shard.broken = (f"records of epoch {newest} at changelog offsets {start}..{end - 1}: "
                        "another server took the shard over")
        raise FencedError(
            f"shard {shard.name}: another server took it over (epoch {newest} in the "
            f"changelog); this commit is not acknowledged. Reopen the store to continue."
        )
    repair = sorted(zombie_keys - ours)
    if repair:
        mval, mheaders = marker(COMMIT, new.epoch, new.commit_seq, new.offsets)
        values = shard.db.get_many(repair)  # this commit does not touch these keys
        offset = log.append_batch(
            shard.spec.name, shard.partition, repair, values,
            data_headers(new.epoch, new.commit_seq), mval, mheaders,
        )
        shard.log_end = offset + 1 if offset >= 0 else None

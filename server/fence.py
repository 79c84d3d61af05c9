"""The fence of one shard's appends (docs/protocol.md, "Epochs and fencing"): what to do when
records this server did not write turn up in the log before its own batch.

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

if TYPE_CHECKING:
    from tierstore.server.shard import Shard


def foreign_records(shard: Shard, start: int, end: int, new: ShardMeta,
                    ours: set[bytes]) -> None:
    """Records this server did not write sit in the log at [start, end), before its batch.

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

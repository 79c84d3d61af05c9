"""The fence of one shard's appends (docs/protocol.md, "Epochs and fencing"): what to do when
records this server did not write turn up in the log before its own batch.

Storage code: talks to the changelog only through the `Changelog` port.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NoReturn

from tierstore.server.errors import FencedError, UnavailableError
from tierstore.server.hottier import ShardMeta
from tierstore.server.logproto import (
    COMMIT,
    MARKER_KEY,
    data_headers,
    header_epoch,
    marker,
    parse_marker,
)
from tierstore.server.ports import Changelog

if TYPE_CHECKING:
    from tierstore.server.shard import Shard


def foreign_records(shard: Shard, start: int, end: int, new: ShardMeta,
                    ours: set[bytes]) -> None:
    """Records this server did not write sit in the log at [start, end) (the offset of this
    append's marker), before its batch or among its records: all are read, since a newer
    owner's claim between this batch's data records and its marker fences the batch too.

    A record of a newer epoch means another server took the shard over: its claim fences this
    batch on restore, so the commit must not be acknowledged (FencedError; the shard reloads).
    Records of older epochs are a zombie's writes, dropped on restore: this commit stands, and
    the zombie's keys are re-appended with their committed values at once, so compaction can
    never keep a zombie's record over a committed one. The caller holds the shard lock."""
    log = shard.changelog
    assert log is not None
    try:
        newest, newest_marker, zombie_keys = _scan(log, shard.spec.name, shard.partition,
                                                   start, end)
    except UnavailableError as exc:
        # The commit is in the log, but whether a newer owner's records precede it is unknown:
        # reload (the replay applies the commit, or learns the newer epoch) and answer "in doubt".
        shard.broken = f"the changelog's offset fence could not read the log: {exc}"
        raise UnavailableError(
            f"shard {shard.name}: the commit is in the changelog, but checking the records "
            f"before it failed ({exc}); reopen the store to learn its outcome") from exc
    # A marker of this very epoch before ours is not ours either: another server claimed from
    # the same state (views of the membership differed) and took the same epoch. The later
    # marker loses, or both servers would acknowledge commits of one epoch.
    if newest > new.epoch or newest_marker >= new.epoch:
        fence_out(shard, max(newest, newest_marker), start, end, "commit")
    repair = sorted(zombie_keys - ours)
    if repair:
        mval, mheaders = marker(COMMIT, new.epoch, new.commit_seq, new.offsets)
        values = shard.db.get_many(repair)  # this commit does not touch these keys
        try:
            offset = log.append_batch(
                shard.spec.name, shard.partition, repair, values,
                data_headers(new.epoch, new.commit_seq), mval, mheaders,
            )
        except UnavailableError:
            # The commit stands (its marker is in the log): the next append repairs these keys
            # first, as after any failed append.
            shard._repair.update(repair)
            shard.log_end = None
            return
        shard.log_end = offset + 1 if offset >= 0 else None


def fence_out(shard: Shard, newest: int, start: int, end: int, what: str) -> NoReturn:
    """Another server took the shard over (records of epoch `newest` at [start, end)): the shard
    reloads on its next use, and this append is not acknowledged."""
    shard.broken = (f"records of epoch {newest} at changelog offsets {start}..{end - 1}: "
                    "another server took the shard over")
    raise FencedError(
        f"shard {shard.name}: another server took it over (epoch {newest} in the "
        f"changelog); this {what} is not acknowledged. Reopen the store to continue."
    )


def _scan(log: Changelog, store: str, partition: int, start: int, end: int
          ) -> tuple[int, int, set[bytes]]:
    """The newest epoch among the records at [start, end), the newest among their markers,
    and their user keys."""
    newest, newest_marker, keys = 0, 0, set[bytes]()
    for page in log.read(store, partition, start):
        for rec in page:
            if rec.offset >= end:
                return newest, newest_marker, keys
            m = parse_marker(rec.value, rec.headers) if rec.key == MARKER_KEY else None
            newest = max(newest, m.epoch if m is not None else (header_epoch(rec.headers) or 0))
            if m is not None:
                newest_marker = max(newest_marker, m.epoch)
            if rec.key != MARKER_KEY:
                keys.add(rec.key)
    return newest, newest_marker, keys

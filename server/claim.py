"""The claim of a shard (docs/protocol.md, "The claim"): claim, then catch up, then repair.

1. The claim marker goes to the log FIRST, alone (no data records). From it on, restore drops
   every record of an older epoch, so the previous owner is fenced.
2. The claimer then catches up: it replays the log from its local changelog offset up to its
   own marker exactly as restore would (server/restore.py, `until`), so the previous owner's
   commits that landed whole before the claim (after this server loaded the shard) are
   applied, not undone. Records of a newer epoch, or a marker of our epoch or newer, before our
   marker mean another server took the shard over: FencedError, as in server/fence.py.
3. Keys left uncommitted in the log (found by the catch-up, or already known to the shard) are
   re-appended with their now-committed values, with a commit marker carrying the caught-up
   offsets (the shape of a TTL sweep: epoch and commit number stay valid for the owner).

Storage code: talks to the changelog only through the `Changelog` port. The caller holds the
shard lock.
"""

from __future__ import annotations

import os
from collections.abc import Set as AbstractSet
from typing import TYPE_CHECKING

from tierstore.server.errors import UnavailableError
from tierstore.server.fence import fence_out
from tierstore.server.hottier import ShardMeta
from tierstore.server.logproto import CLAIM, COMMIT, data_headers, marker
from tierstore.server.restore import replay_changelog

if TYPE_CHECKING:
    from tierstore.server.shard import Shard


def claim_shard(shard: Shard, min_epoch: int = 0) -> ShardMeta:
    """Bump the epoch and record the claim durably; returns the shard's meta after the claim
    (the new epoch, commit number 0, and the committed offsets caught up to the claim)."""
    m = shard.meta
    new = ShardMeta(
        epoch=max(m.epoch, shard.epoch_floor, min_epoch) + 1,
        commit_seq=0,
        changelog_offset=m.changelog_offset,
        offsets=dict(m.offsets),
    )
    log = shard.changelog
    if log is None:  # no log to catch up with: the fsynced local write is the claim
        shard._append_and_apply([], [], [], new, kind=CLAIM)
        return new
    repair, shard._repair = shard._repair, set()
    claim_id = os.urandom(8).hex()
    mval, mheaders = marker(CLAIM, new.epoch, 0, new.offsets, base=m.changelog_offset,
                            claim_id=claim_id)
    start = shard.log_end
    try:
        offset = log.append_batch(shard.spec.name, shard.partition, [], [],
                                  data_headers(new.epoch, 0), mval, mheaders)
    except UnavailableError:
        # In doubt: the marker may be in the log, and restore then drops every later record of
        # an older epoch. So the old epoch is fenced here as well, and the next claim takes a
        # newer one. The keys to repair stay with the shard.
        _in_doubt(shard, new.epoch, repair)
        shard.log_end = None
        raise
    if start is not None and offset == start:
        # Nothing landed between what this server applied or knows of and its marker: the
        # catch-up would find only the tail already in `repair`.
        caught, uncommitted = m, set[bytes]()
    else:
        caught, offset, uncommitted = _catch_up(shard, new, claim_id, start, offset, repair)
    meta = ShardMeta(new.epoch, 0, offset + 1, dict(caught.offsets))
    try:
        shard.db.apply_log([], [], meta)
    except UnavailableError as exc:
        shard.broken = f"local write failed after the claim's changelog append: {exc}"
        _in_doubt(shard, new.epoch)
        raise
    shard.meta = meta
    shard.log_end = offset + 1
    _repair(shard, meta, repair | uncommitted, new.offsets)
    return ShardMeta(meta.epoch, meta.commit_seq, meta.changelog_offset, dict(meta.offsets))


def _in_doubt(shard: Shard, epoch: int, repair: AbstractSet[bytes] = frozenset()) -> None:
    """The claim of `epoch` may be in the log: fence the older epochs here too (restore drops
    their later records), and keep the keys still to repair with the shard."""
    shard.epoch_floor = max(shard.epoch_floor, epoch)
    shard._repair |= repair


def _catch_up(shard: Shard, new: ShardMeta, claim_id: str, start: int | None, offset: int,
              repair: set[bytes]) -> tuple[ShardMeta, int, set[bytes]]:
    """Replay the log up to our claim marker (restore's rules); returns the caught-up meta, the
    marker's true offset (the append's may be made up: a retried marker taken for a duplicate)
    and the keys left uncommitted before it. Fences the claim if another server's epoch is
    there first."""
    assert shard.changelog is not None
    try:
        result = replay_changelog(shard.db, shard.changelog, shard.spec.name, shard.partition,
                                  spec=shard.spec, until=lambda mk: mk.epoch >= new.epoch)
    except UnavailableError as exc:
        # The claim is in the log, but what precedes it is unknown: reload (its replay applies
        # everything up to the claim) and answer "in doubt".
        shard.broken = f"the claim's catch-up could not read the changelog: {exc}"
        _in_doubt(shard, new.epoch, repair)
        raise UnavailableError(
            f"shard {shard.name}: the claim is in the changelog, but reading the records "
            f"before it failed ({exc}); reopen the store") from exc
    stop = result.stop_marker
    if stop is None or stop.claim_id != claim_id or result.max_epoch >= new.epoch:
        newest = max(result.max_epoch, stop.epoch if stop is not None else 0, new.epoch)
        shard.epoch_floor = max(shard.epoch_floor, newest)
        end = result.stopped_at if stop is not None else result.end_offset
        fence_out(shard, newest, start if start is not None else shard.meta.changelog_offset,
                  max(end, offset), "claim")
    return result.meta, result.stopped_at, result.keys_to_repair()


def _repair(shard: Shard, meta: ShardMeta, keys: set[bytes], claimed: dict[str, int]) -> None:
    """Step 3: re-append `keys` with their committed values (None: a tombstone), under a commit
    marker with the caught-up offsets. Also when only the offsets moved in the catch-up, so that
    the newest marker carries them even if compaction removes the commit they came from. A
    failed append leaves the keys in `_repair` (the next append repairs them first); the claim
    stands."""
    if not keys and meta.offsets == claimed:
        return
    shard._repair = set(keys)
    batch = ShardMeta(meta.epoch, meta.commit_seq, meta.changelog_offset, dict(meta.offsets))
    try:
        shard._append_and_apply([], [], [], batch, kind=COMMIT)
    except UnavailableError:
        if shard.broken:  # the fence could not check the log: reload before the next use
            raise

"""Segment drops of window and session stores, on the server: checking the range deletes a commit
carries, and re-deriving them on restore (the changelog cannot carry them).

A window or session store's client drops whole expired segments with range deletes at commit
(tierstore.windowkeys). Kafka has no range tombstone, so range deletes are never logged;
instead the drop is a pure function of the store spec and the stream time, which *is* logged
(as the ordinary key ``windowkeys.STREAM_TIME_KEY``): every segment below
``first_live_segment(stream_time, retention, segment_interval_ms(retention))`` is dropped. So:

- a commit may only range-delete data keys below that bound, for the stream time the commit
  leaves behind (`check_ranges`), and may not put an entry there (the client drops such late
  puts): then the state after a commit is exactly "the records, minus the expired segments";
- restore (`SegmentDrops`) tracks the stream time as it applies committed batches, and at each
  marker deletes the segments the new stream time expired, in the same WriteBatch, and leaves
  out the batch's records that fall in them. See docs/protocol.md, "Segment drops".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from tierstore import windowkeys as wk
from tierstore.server.errors import InvalidArgumentError
from tierstore.server.hottier import ShardDB
from tierstore.server.keys import check_keys
from tierstore.server.specs import StoreSpec

Range = tuple[bytes, bytes]


def decode_stream_time(raw: bytes | None) -> int:
    """The stream time stored under STREAM_TIME_KEY (-1: none yet)."""
    if raw is None:
        return -1
    if len(raw) != 8:
        raise InvalidArgumentError(
            f"the stream time (key {wk.STREAM_TIME_KEY!r}) must be 8 bytes, got {len(raw)}"
        )
    return wk.decode_time(raw)


def live_bound(spec: StoreSpec, stream_time: int) -> bytes:
    """The smallest data key that is not in a wholly expired segment at `stream_time`."""
    interval = wk.segment_interval_ms(spec.retention_ms)
    return wk.segment_prefix(wk.first_live_segment(stream_time, spec.retention_ms, interval))


def batch_stream_time(
    put_keys: Sequence[bytes], put_values: Sequence[bytes], delete_keys: Sequence[bytes],
    stage: Mapping[bytes, bytes | None], db: ShardDB,
) -> int:
    """The stream time a commit leaves behind: its own STREAM_TIME_KEY put, else the staged
    one, else the stored one. InvalidArgumentError if the commit would delete it or move it
    back: restore derives the segment drops from its newest value and never brings a dropped
    segment back, so a lower stream time would let the live server take puts (and show
    windows) that a restore drops."""
    key = wk.STREAM_TIME_KEY
    stored = decode_stream_time(db.get(key))
    raw: bytes | None = None
    for k, v in zip(reversed(put_keys), reversed(put_values), strict=True):
        if k == key:
            raw = v
            break
    else:
        if key in delete_keys or (key in stage and stage[key] is None):
            raise InvalidArgumentError(
                f"a commit may not delete the stream time (key {key!r}) of a window or session "
                "store"
            )
        if key not in stage:
            return stored
        raw = stage[key]
    new = decode_stream_time(raw)
    if new > wk.MAX_TIME:
        raise InvalidArgumentError(f"the stream time {new} ms is beyond 2**63 - 1 ms")
    if new < stored:
        raise InvalidArgumentError(
            f"the commit sets the stream time to {new} ms, before the stored {stored} ms: "
            "stream time never goes back (segment drops are derived from it)"
        )
    return new


def check_ranges(
    spec: StoreSpec, begins: Sequence[bytes], ends: Sequence[bytes], stream_time: int
) -> list[Range]:
    """The commit's range deletes as pairs, or InvalidArgumentError: only window and session
    stores take them, each must be a non-empty [begin, end) of data keys, and lie below the
    segments still live at the commit's stream time (restore could not re-derive any other)."""
    if not begins and not ends:
        return []
    if len(begins) != len(ends):
        raise InvalidArgumentError(
            f"batch has {len(begins)} range begins but {len(ends)} range ends"
        )
    if not spec.windowed:
        raise InvalidArgumentError(
            f"store {spec.name!r} is a {spec.type} store: range deletes are only for window and "
            "session stores (they drop expired segments; a changelog cannot carry them)"
        )
    check_keys(begins, "range begin")
    check_keys(ends, "range end")
    bound = live_bound(spec, stream_time)
    ranges = list(zip(begins, ends, strict=True))
    for b, e in ranges:
        if b >= e:
            raise InvalidArgumentError(
                f"empty or inverted range delete: begin {b[:32]!r} is not before end {e[:32]!r}"
            )
        if b < wk.DATA_LO or e > bound:
            raise InvalidArgumentError(
                f"range delete [{b[:32]!r}, {e[:32]!r}) reaches beyond the segments expired at "
                f"stream time {stream_time} (everything below {bound!r})"
            )
    return ranges


def check_no_expired_puts(spec: StoreSpec, put_keys: Sequence[bytes], stream_time: int) -> None:
    """Refuse a put into a segment already expired at the commit's stream time."""
    if not spec.windowed or stream_time < spec.retention_ms:
        return
    bound = live_bound(spec, stream_time)
    lo = wk.DATA_LO
    for k in put_keys:
        if lo <= k < bound:
            raise InvalidArgumentError(
                f"put of {k[:32]!r} into a segment expired at stream time {stream_time}: late "
                "puts are dropped by the client, never committed"
            )


def in_ranges(key: bytes, ranges: Sequence[Range]) -> bool:
    return any(b <= key < e for b, e in ranges)


class SegmentDrops:
    """Restore's side: follows the stream time of the committed batches it applies and yields
    the range delete (at most one per batch) that the client's commits made at the same point.

    `skip(key)` tells whether a record can be dropped as it is read, because its segment is
    already gone; `at_marker()` is called with the batch's pending records when a marker
    commits them, and returns them filtered plus the ranges to delete first."""

    def __init__(self, spec: StoreSpec, db: ShardDB) -> None:
        self.spec = spec
        st = decode_stream_time(db.get(wk.STREAM_TIME_KEY))
        self._bound = live_bound(spec, st)  # everything below is dropped already
        self._pending_time: bytes | None = None
        self.skipped = 0

    def skip(self, key: bytes) -> bool:
        """True for a data record of a segment dropped by an applied batch."""
        if wk.DATA_LO <= key < self._bound:
            self.skipped += 1
            return True
        if key == wk.STREAM_TIME_KEY:
            self._pending_time = b""  # seen; its value is taken at the marker
        return False

    def at_marker(
        self, keys: list[bytes], values: list[bytes | None]
    ) -> tuple[list[bytes], list[bytes | None], list[Range]]:
        if self._pending_time is None:
            return keys, values, []
        self._pending_time = None
        raw = None
        for k, v in zip(reversed(keys), reversed(values), strict=True):
            if k == wk.STREAM_TIME_KEY:
                raw = v
                break
        if raw is None:
            return keys, values, []
        new = live_bound(self.spec, decode_stream_time(raw))
        if new <= self._bound:
            return keys, values, []
        old, self._bound = self._bound, new
        lo = wk.DATA_LO
        kept = [i for i, k in enumerate(keys) if not lo <= k < new]
        if len(kept) != len(keys):
            self.skipped += len(keys) - len(kept)
            keys = [keys[i] for i in kept]
            values = [values[i] for i in kept]
        return keys, values, [(max(old, lo), new)]

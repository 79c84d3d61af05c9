"""Property tests of the segment-first window and session key encodings (tierstore.windowkeys)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tierstore import windowkeys as wk

# Keys drawn from a small alphabet that stresses the escaping: 0x00, 0x01, 0xff and one
# ordinary byte, so prefixes of one another and embedded terminators come up constantly.
tricky_keys = st.binary(min_size=1, max_size=12) | st.lists(
    st.sampled_from([0x00, 0x01, 0xFF, 0x61]), min_size=1, max_size=10
).map(bytes)
times = st.integers(min_value=0, max_value=wk.MAX_TIME) | st.sampled_from(
    [0, 1, 255, 256, 59_999, 60_000, 2**32, wk.MAX_TIME - 1, wk.MAX_TIME]
)
# Segment intervals as stores derive them from their retention (so >= 60 s)...
retentions = st.integers(min_value=1, max_value=wk.MAX_TIME) | st.sampled_from(
    [1, 60_000, 120_000, 120_001, 3_600_000, wk.MAX_TIME]
)
intervals = retentions.map(wk.segment_interval_ms)
# ... and times clustered in a few segments of a 60 s interval, so that entries often share one.
near_times = st.integers(min_value=0, max_value=4 * 60_000) | times


def test_segment_interval_is_kafka_streams_rule() -> None:
    assert wk.segment_interval_ms(3_600_000) == 1_800_000
    assert wk.segment_interval_ms(100_000) == 60_000  # never below a minute
    assert wk.segment_interval_ms(1) == 60_000
    assert wk.segment_interval_ms(wk.MAX_TIME) == wk.MAX_TIME // 2


@settings(max_examples=300)
@given(st.lists(st.tuples(tricky_keys, near_times), min_size=2, max_size=30), intervals)
def test_window_order_is_segment_then_key_time(
    entries: list[tuple[bytes, int]], interval: int
) -> None:
    enc = {e: wk.window_key(*e, interval) for e in entries}
    # Within a segment, byte order is (key, time) order; segments come first.
    assert sorted(entries, key=enc.__getitem__) == sorted(
        entries, key=lambda e: (e[1] // interval, e[0], e[1])
    )
    # The bytes after the segment prefix sort in (key, time) order across all segments: the
    # merge key of multi-segment reads.
    n = wk.SEGMENT_PREFIX_LEN
    assert sorted(entries, key=lambda e: enc[e][n:]) == sorted(entries)


@settings(max_examples=300)
@given(st.lists(st.tuples(tricky_keys, near_times, near_times), min_size=2, max_size=30),
       intervals)
def test_session_order_is_end_segment_then_key_end_start(
    entries: list[tuple[bytes, int, int]], interval: int
) -> None:
    sessions = [(k, min(a, b), max(a, b)) for k, a, b in entries]
    enc = {s: wk.session_key(*s, interval) for s in sessions}
    assert sorted(sessions, key=enc.__getitem__) == sorted(
        sessions, key=lambda e: (e[2] // interval, e[0], e[2], e[1])
    )
    n = wk.SEGMENT_PREFIX_LEN
    assert sorted(sessions, key=lambda e: enc[e][n:]) == sorted(
        sessions, key=lambda e: (e[0], e[2], e[1])
    )


@settings(max_examples=500)
@given(tricky_keys, times, times, intervals)
def test_round_trip(key: bytes, a: int, b: int, interval: int) -> None:
    w = wk.window_key(key, a, interval)
    assert wk.decode_window_key(w) == (key, a)
    assert wk.window_time(w) == a
    assert wk.segment_of_key(w) == a // interval
    s, e = min(a, b), max(a, b)
    enc = wk.session_key(key, s, e, interval)
    assert wk.decode_session_key(enc) == (key, s, e)
    assert wk.session_times(enc) == (s, e)
    assert wk.segment_of_key(enc) == e // interval  # sessions are segmented by end


@settings(max_examples=600)
@given(tricky_keys, tricky_keys, near_times, near_times, near_times, intervals)
def test_a_keys_range_never_captures_another_keys_entries(
    k1: bytes, k2: bytes, t: int, t0: int, t1: int, interval: int
) -> None:
    seg = t0 // interval
    first, last = wk.segment_span(seg, interval)
    lo_t, hi_t = sorted((t0, max(first, min(t1, last))))
    lo, hi = wk.window_range(k1, seg, lo_t, hi_t)
    enc = wk.window_key(k2, t, interval)
    assert (lo <= enc <= hi) == (k1 == k2 and lo_t <= t <= hi_t)
    # the whole segment range of k1 captures exactly k1's windows of that segment
    lo, hi = wk.window_range(k1, seg, first, last)
    assert (lo <= enc <= hi) == (k1 == k2 and t // interval == seg)
    # and the same for sessions, for every end >= earliest_end in the segment
    s_lo, s_hi = wk.session_find_range(k1, seg, lo_t)
    senc = wk.session_key(k2, min(t, hi_t), max(t, hi_t), interval)
    end = max(t, hi_t)
    assert (s_lo <= senc <= s_hi) == (k1 == k2 and end >= lo_t and end // interval == seg)


@settings(max_examples=300)
@given(tricky_keys, tricky_keys, tricky_keys, near_times, near_times, near_times, intervals)
def test_key_range_bounds(
    kf: bytes, kt: bytes, k: bytes, t: int, t0: int, t1: int, interval: int
) -> None:
    kf, kt = min(kf, kt), max(kf, kt)
    seg = t // interval
    first, last = wk.segment_span(seg, interval)
    lo_t, hi_t = sorted((max(first, min(t0, last)), max(first, min(t1, last))))
    enc = wk.window_key(k, t, interval)
    for a, b in [(kf, kt), (None, kt), (kf, None), (None, None)]:
        lo, hi = wk.window_key_range(a, b, seg, lo_t, hi_t)
        in_keys = (a is None or a <= k) and (b is None or k <= b)
        if in_keys and lo_t <= t <= hi_t:  # never misses a wanted window
            assert lo <= enc <= hi
        if not in_keys:  # never brings a key outside the key range
            assert not lo <= enc <= hi
        # never brings another segment's entries
        other = wk.window_key(k, t + interval if t <= wk.MAX_TIME - interval else 0, interval)
        assert not lo <= other <= hi
    senc = wk.session_key(k, 0, t, interval)
    s_lo, s_hi = wk.session_key_range(kf, kt, seg, lo_t)
    if kf <= k <= kt and t >= lo_t:
        assert s_lo <= senc <= s_hi
    if not kf <= k <= kt:
        assert not s_lo <= senc <= s_hi


@settings(max_examples=500)
@given(tricky_keys, times, st.integers(min_value=0, max_value=2**40), st.integers(0, 2**40),
       intervals)
def test_one_range_per_run_of_segments(key: bytes, t: int, a: int, b: int, interval: int) -> None:
    a, b = min(a, b), max(a, b)
    lo, hi = wk.segment_prefix(a), wk.segment_prefix(b)  # [a, b) as a delete_range
    for enc in (wk.window_key(key, t, interval), wk.session_key(key, 0, t, interval)):
        assert (lo <= enc < hi) == (a <= t // interval < b)
        assert wk.DATA_LO <= enc <= wk.DATA_HI


@settings(max_examples=500)
@given(st.integers(min_value=-1, max_value=wk.MAX_TIME), retentions, times)
def test_first_live_segment(stream_time: int, retention: int, t: int) -> None:
    interval = wk.segment_interval_ms(retention)
    first = wk.first_live_segment(stream_time, retention, interval)
    expired = t <= stream_time - retention
    if t // interval < first:  # a dropped segment holds expired times only
        assert expired
    if not expired:
        assert t // interval >= first
    # the first live segment still holds a live time (or nothing is expired yet)
    assert wk.segment_span(first, interval)[1] > stream_time - retention


@given(tricky_keys, times, intervals)
def test_metadata_sorts_apart_from_data(key: bytes, t: int, interval: int) -> None:
    for meta in (wk.STREAM_TIME_KEY, wk.SPEC_KEY):
        assert meta < wk.DATA_LO < wk.segment_prefix(0) <= wk.window_key(key, t, interval)
        assert wk.window_key(key, t, interval) <= wk.DATA_HI
        assert meta < wk.session_key(key, 0, t, interval)
    assert not wk.window_key(key, t, interval).startswith(wk.META_PREFIX)


def test_bad_times_and_malformed_keys() -> None:
    with pytest.raises(ValueError, match="negative"):
        wk.window_key(b"k", -1, 60_000)
    with pytest.raises(ValueError, match="2\\*\\*63"):
        wk.window_key(b"k", 2**63, 60_000)
    with pytest.raises(ValueError, match="int"):
        wk.check_time(1.5, "t")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="int"):
        wk.check_time(True, "t")
    with pytest.raises(ValueError):
        wk.decode_window_key(wk.STREAM_TIME_KEY)
    with pytest.raises(ValueError, match="malformed"):
        wk.decode_window_key(wk.segment_prefix(0) + b"a\x00\x01b\x00\x01" + bytes(8))
    with pytest.raises(ValueError, match="not an encoded session"):
        wk.decode_session_key(wk.segment_prefix(0) + b"a\x00\x01")


def test_examples_of_the_layout() -> None:
    minute = 60_000
    assert wk.window_key(b"a", 1, minute) == b"\x01" + bytes(8) + b"a\x00\x01" + bytes(7) + b"\x01"
    assert wk.window_key(b"\x00", minute, minute) == (
        b"\x01" + bytes(7) + b"\x01" + b"\x00\xff\x00\x01" + minute.to_bytes(8, "big")
    )
    assert wk.session_key(b"a", 5, 2 * minute, minute)[:9] == wk.segment_prefix(2)
    # a key that is a prefix of another sorts first, whatever the times, within a segment
    t_max = minute - 1
    assert wk.window_key(b"a", t_max, minute) < wk.window_key(b"a\x00", 0, minute)
    assert wk.window_key(b"a\x00", t_max, minute) < wk.window_key(b"a\x00\x00", 0, minute)
    assert wk.window_key(b"a\x00", t_max, minute) < wk.window_key(b"a\x01", 0, minute)
    # and a later segment sorts after every key of an earlier one
    assert wk.window_key(b"\xff" * 5, t_max, minute) < wk.window_key(b"\x00", minute, minute)

"""Property tests of the window and session key encodings (tierstore.windowkeys)."""

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
    [0, 1, 255, 256, 2**32, wk.MAX_TIME - 1, wk.MAX_TIME]
)


@settings(max_examples=500)
@given(st.lists(st.tuples(tricky_keys, times), min_size=2, max_size=30))
def test_window_order_matches_key_time_order(entries: list[tuple[bytes, int]]) -> None:
    by_encoding = sorted(entries, key=lambda e: wk.window_key(*e))
    assert by_encoding == sorted(entries)


@settings(max_examples=500)
@given(st.lists(st.tuples(tricky_keys, times, times), min_size=2, max_size=30))
def test_session_order_is_key_end_start(entries: list[tuple[bytes, int, int]]) -> None:
    sessions = [(k, min(a, b), max(a, b)) for k, a, b in entries]
    by_encoding = sorted(sessions, key=lambda e: wk.session_key(*e))
    assert by_encoding == sorted(sessions, key=lambda e: (e[0], e[2], e[1]))


@settings(max_examples=500)
@given(tricky_keys, times, times)
def test_round_trip(key: bytes, a: int, b: int) -> None:
    assert wk.decode_window_key(wk.window_key(key, a)) == (key, a)
    assert wk.window_time(wk.window_key(key, a)) == a
    s, e = min(a, b), max(a, b)
    enc = wk.session_key(key, s, e)
    assert wk.decode_session_key(enc) == (key, s, e)
    assert wk.session_times(enc) == (s, e)


@settings(max_examples=1000)
@given(tricky_keys, tricky_keys, times, times, times)
def test_a_keys_range_never_captures_another_keys_entries(
    k1: bytes, k2: bytes, t: int, t0: int, t1: int
) -> None:
    lo_t, hi_t = min(t0, t1), max(t0, t1)
    lo, hi = wk.window_range(k1, lo_t, hi_t)
    enc = wk.window_key(k2, t)
    assert (lo <= enc <= hi) == (k1 == k2 and lo_t <= t <= hi_t)
    # the whole range of k1 (every time) captures exactly k1's windows
    lo, hi = wk.window_range(k1, 0, wk.MAX_TIME)
    assert (lo <= enc <= hi) == (k1 == k2)
    assert enc.startswith(wk.key_prefix(k1)) == (k1 == k2)
    # and the same for sessions, for every end >= earliest_end
    s_lo, s_hi = wk.session_find_range(k1, lo_t)
    senc = wk.session_key(k2, min(t, hi_t), max(t, hi_t))
    assert (s_lo <= senc <= s_hi) == (k1 == k2 and max(t, hi_t) >= lo_t)


@settings(max_examples=300)
@given(tricky_keys, tricky_keys, tricky_keys, times, times, times)
def test_key_range_bounds(kf: bytes, kt: bytes, k: bytes, t: int, t0: int, t1: int) -> None:
    kf, kt = min(kf, kt), max(kf, kt)
    lo_t, hi_t = min(t0, t1), max(t0, t1)
    lo, hi = wk.window_key_range(kf, kt, lo_t, hi_t)
    enc = wk.window_key(k, t)
    wanted = kf <= k <= kt and lo_t <= t <= hi_t
    if wanted:  # never misses a wanted window (extra ones are filtered by the caller)
        assert lo <= enc <= hi
    if not kf <= k <= kt:  # never brings a key outside the key range
        assert not lo <= enc <= hi
    lo, hi = wk.window_key_range(None, None, lo_t, hi_t)
    assert lo <= enc <= hi


@given(tricky_keys, times)
def test_metadata_sorts_apart_from_data(key: bytes, t: int) -> None:
    for meta in (wk.STREAM_TIME_KEY, wk.PURGED_THROUGH_KEY, wk.SPEC_KEY):
        assert meta < wk.DATA_LO <= wk.window_key(key, t) <= wk.DATA_HI
        assert meta < wk.session_key(key, 0, t)
    assert not wk.window_key(key, t).startswith(wk.META_PREFIX)


def test_bad_times_and_malformed_keys() -> None:
    with pytest.raises(ValueError, match="negative"):
        wk.window_key(b"k", -1)
    with pytest.raises(ValueError, match="2\\*\\*63"):
        wk.window_key(b"k", 2**63)
    with pytest.raises(ValueError, match="int"):
        wk.check_time(1.5, "t")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="int"):
        wk.check_time(True, "t")
    with pytest.raises(ValueError):
        wk.decode_window_key(wk.STREAM_TIME_KEY)
    with pytest.raises(ValueError, match="malformed"):
        wk.decode_window_key(b"\x01a\x00\x01b\x00\x01" + bytes(8))
    with pytest.raises(ValueError, match="short"):
        wk.decode_session_key(b"\x01a\x00\x01")


def test_examples_of_the_layout() -> None:
    assert wk.window_key(b"a", 1) == b"\x01a\x00\x01" + bytes(7) + b"\x01"
    assert wk.window_key(b"\x00", 0) == b"\x01\x00\xff\x00\x01" + bytes(8)
    # a key that is a prefix of another sorts first, whatever the times
    assert wk.window_key(b"a", wk.MAX_TIME) < wk.window_key(b"a\x00", 0)
    assert wk.window_key(b"a\x00", wk.MAX_TIME) < wk.window_key(b"a\x00\x00", 0)
    assert wk.window_key(b"a\x00", wk.MAX_TIME) < wk.window_key(b"a\x01", 0)

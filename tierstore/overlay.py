"""Merging uncommitted writes over committed state, in key order.

Used by the server (staged writes over RocksDB) and by the client (its write-back cache over the
server's stream), so read-your-writes has one implementation.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

Overlay = list[tuple[bytes, bytes | None]]  # sorted; None marks a delete


def _prefix_end(prefix: bytes) -> bytes | None:
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return None
    return stripped[:-1] + bytes([stripped[-1] + 1])


def select_range(
    writes: Mapping[bytes, bytes | None],
    from_key: bytes | None,
    to_key: bytes | None,
    prefix: bytes | None,
    reverse: bool,
) -> Overlay:
    """The writes whose keys fall in [from_key, to_key] (inclusive) or under `prefix`, sorted."""
    if prefix:
        end = _prefix_end(prefix)
        items = [
            (k, v) for k, v in writes.items() if k >= prefix and (end is None or k < end)
        ]
    else:
        items = [
            (k, v)
            for k, v in writes.items()
            if (from_key is None or k >= from_key) and (to_key is None or k <= to_key)
        ]
    items.sort(reverse=reverse)
    return items


def overlay_items(
    base: Iterable[tuple[bytes, bytes]], over: Overlay, reverse: bool = False
) -> Iterator[tuple[bytes, bytes]]:
    """Merge sorted `base` with sorted `over`; `over` wins on equal keys and None deletes."""
    if not over:
        yield from base
        return
    i, n = 0, len(over)
    for k, v in base:
        while i < n:
            ok, ov = over[i]
            if (ok > k) if reverse else (ok < k):
                if ov is not None:
                    yield ok, ov
                i += 1
                continue
            break
        if i < n and over[i][0] == k:
            ov = over[i][1]
            i += 1
            if ov is not None:
                yield k, ov
            continue
        yield k, v
    while i < n:
        ok, ov = over[i]
        if ov is not None:
            yield ok, ov
        i += 1

"""Key validation and key-range helpers shared by the hot tier, the servicer and restore."""

from __future__ import annotations

from collections.abc import Sequence

from tierstore.server.errors import InvalidArgumentError

MAX_KEY_BYTES = 64 * 1024
DEFAULT_MAX_VALUE_BYTES = 8 * 1024 * 1024


def check_keys(keys: Sequence[bytes], what: str = "key") -> None:
    """Raise InvalidArgumentError if any key is empty or longer than 64 KiB (C-speed checks)."""
    if not keys:
        return
    lengths = list(map(len, keys))
    if min(lengths) == 0:
        raise InvalidArgumentError(f"empty {what}: keys must be 1 byte to 64 KiB")
    longest = max(lengths)
    if longest > MAX_KEY_BYTES:
        raise InvalidArgumentError(
            f"{what} of {longest} bytes exceeds the 65536-byte limit"
        )


def check_values(values: Sequence[bytes], max_value_bytes: int) -> None:
    if values:
        longest = max(map(len, values))
        if longest > max_value_bytes:
            raise InvalidArgumentError(
                f"value of {longest} bytes exceeds the configured maximum of {max_value_bytes}"
            )


def check_range(from_key: bytes | None, to_key: bytes | None) -> None:
    if from_key is not None:
        check_keys([from_key], "range bound")
    if to_key is not None:
        check_keys([to_key], "range bound")
    if from_key is not None and to_key is not None and from_key > to_key:
        raise InvalidArgumentError(
            f"inverted range: from {from_key[:32]!r} is after to {to_key[:32]!r}"
        )


def next_key(key: bytes) -> bytes:
    """The smallest key strictly greater than `key` (an exclusive upper bound for `<= key`)."""
    return key + b"\x00"


def prefix_upper_bound(prefix: bytes) -> bytes | None:
    """The smallest key greater than every key starting with `prefix`; None if there is none."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return None
    return stripped[:-1] + bytes([stripped[-1] + 1])

"""Store specifications: the parameters fixed when a store is created by its first claim."""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass

from tierstore.server.errors import InvalidArgumentError

STORE_TYPES = ("kv", "window", "session")
_NAME = re.compile(r"[A-Za-z0-9._-]{1,200}")
MAX_PARTITIONS = 10_000
MAX_MS = 2**63 - 1
# A windowed store's changelog topic keeps records this long past the store's retention
# (Kafka Streams' windowstore.changelog.additional.retention.ms default).
CHANGELOG_EXTRA_RETENTION_MS = 24 * 3600 * 1000


def check_store_name(name: str) -> None:
    # fullmatch, not match with "$" (which accepts a trailing newline); "." and ".." would be
    # path components, and ".tmp." is the object store's prefix for uploads in progress.
    if (not isinstance(name, str) or not _NAME.fullmatch(name) or name in (".", "..")
            or name.startswith(".tmp.")):
        raise InvalidArgumentError(
            f"bad store name {name!r}: use 1 to 200 characters from A-Z a-z 0-9 . _ - "
            f"(not '.' or '..', and not starting with '.tmp.')"
        )


@dataclass(frozen=True)
class StoreSpec:
    name: str
    type: str
    num_partitions: int
    window_size_ms: int = 0
    retention_ms: int = 0
    ttl_ms: int = 0  # kv stores: the default TTL; 0: not a TTL store

    @property
    def windowed(self) -> bool:
        return self.type in ("window", "session")

    def changelog_retention_ms(self) -> int | None:
        """retention.ms of the store's changelog topic: None (compaction only) for kv stores;
        for window and session stores the store's retention plus a day (-1: unlimited, when
        that is beyond Kafka's range), so that Kafka also forgets expired windows."""
        if not self.windowed:
            return None
        total = self.retention_ms + CHANGELOG_EXTRA_RETENTION_MS
        return -1 if total > MAX_MS else total

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> StoreSpec:
        d = json.loads(data)
        return cls(
            name=str(d["name"]),
            type=str(d["type"]),
            num_partitions=int(d["num_partitions"]),
            window_size_ms=int(d.get("window_size_ms", 0)),
            retention_ms=int(d.get("retention_ms", 0)),
            ttl_ms=int(d.get("ttl_ms", 0)),
        )

    def check_partition(self, partition: int) -> None:
        if not 0 <= partition < self.num_partitions:
            raise InvalidArgumentError(
                f"partition {partition} is out of range: store {self.name!r} has "
                f"{self.num_partitions} partitions (0..{self.num_partitions - 1})"
            )


def _check_type_params(
    name: str, type_: str, window_size_ms: int, retention_ms: int, creating: bool,
    ttl_ms: int = 0,
) -> None:
    """The window size, retention and TTL a claim of a `type_` store may give (0: not given)."""
    if ttl_ms and type_ != "kv":
        raise InvalidArgumentError(
            f"store {name!r}: a {type_} store takes no ttl_ms (got {ttl_ms}); its entries "
            "expire by retention_ms"
        )
    if type_ == "kv":
        if window_size_ms or retention_ms:
            raise InvalidArgumentError(
                f"store {name!r}: a kv store takes no window_size_ms or retention_ms (got "
                f"{window_size_ms} and {retention_ms})"
            )
    elif type_ == "window":
        if creating and window_size_ms <= 0:
            raise InvalidArgumentError(
                f"new window store {name!r} needs window_size_ms > 0, got {window_size_ms}"
            )
        if (creating or (window_size_ms and retention_ms)) and retention_ms < window_size_ms:
            raise InvalidArgumentError(
                f"window store {name!r}: retention_ms {retention_ms} is smaller than "
                f"window_size_ms {window_size_ms}"
            )
    else:  # session
        if window_size_ms:
            raise InvalidArgumentError(
                f"store {name!r}: a session store takes no window_size_ms (got {window_size_ms})"
            )
        if creating and retention_ms <= 0:
            raise InvalidArgumentError(
                f"new session store {name!r} needs retention_ms > 0, got {retention_ms}"
            )


def reconcile(
    existing: StoreSpec | None,
    name: str,
    type_: str,
    num_partitions: int,
    window_size_ms: int,
    retention_ms: int,
    ttl_ms: int = 0,
) -> StoreSpec:
    """The spec a claim resolves to: the existing one (checked against the request) or a new one.

    Zero for num_partitions / window size / retention / TTL means "use the existing value".
    """
    check_store_name(name)
    if type_ not in STORE_TYPES:
        raise InvalidArgumentError(f"unknown store type {type_!r}; expected one of {STORE_TYPES}")
    if num_partitions < 0 or num_partitions > MAX_PARTITIONS:
        raise InvalidArgumentError(
            f"num_partitions must be 1 to {MAX_PARTITIONS}, got {num_partitions}"
        )
    if window_size_ms < 0 or retention_ms < 0 or ttl_ms < 0:
        raise InvalidArgumentError("window size, retention and TTL must be non-negative")
    if existing is None:
        _check_type_params(name, type_, window_size_ms, retention_ms, True, ttl_ms)
        return StoreSpec(name, type_, num_partitions or 1, window_size_ms, retention_ms, ttl_ms)
    if existing.type != type_:
        raise InvalidArgumentError(
            f"store {name!r} is a {existing.type} store, not a {type_} store"
        )
    _check_type_params(name, type_, window_size_ms, retention_ms, False, ttl_ms)
    if num_partitions and num_partitions != existing.num_partitions:
        raise InvalidArgumentError(
            f"store {name!r} has {existing.num_partitions} partitions, not {num_partitions}"
        )
    if window_size_ms and window_size_ms != existing.window_size_ms:
        raise InvalidArgumentError(
            f"store {name!r} has window size {existing.window_size_ms} ms, not {window_size_ms}"
        )
    if retention_ms and retention_ms != existing.retention_ms:
        raise InvalidArgumentError(
            f"store {name!r} has retention {existing.retention_ms} ms, not {retention_ms}"
        )
    if ttl_ms and ttl_ms != existing.ttl_ms:
        have = f"TTL {existing.ttl_ms} ms" if existing.ttl_ms else "no TTL"
        raise InvalidArgumentError(f"store {name!r} has {have}, not {ttl_ms} ms")
    return existing

"""Local key-value store: in-process RocksDB (rocksdict), the embedded default.

It uses the server's own hot-tier code, so data and committed offsets are written in one
fsynced WriteBatch at commit, exactly as the server does without a changelog.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from tierstore.client.buffered import BufferedKeyValueStore, Ranges, check_ttl
from tierstore.client.errors import InvalidArgumentError, UnavailableError
from tierstore.server import errors as server_errors
from tierstore.server.hottier import HotTier, HotTierConfig, ShardMeta


class LocalKeyValueStore(BufferedKeyValueStore):
    """A key-value store in the directory `path`; only one process may open it at a time.

    `ttl_ms` makes a new store a TTL store with that default TTL; the choice is kept in the
    database, so a reopen may omit it, and one giving a different TTL is refused
    (InvalidArgumentError), as the server does for remote stores."""

    def __init__(
        self, path: str | Path, hot: HotTierConfig | None = None, *, ttl_ms: int | None = None
    ) -> None:
        want = None if ttl_ms is None else check_ttl(ttl_ms)
        super().__init__()
        p = Path(path)
        try:
            self._db = HotTier(p.parent, hot or HotTierConfig(
                block_cache_bytes=32 << 20, write_buffer_bytes=32 << 20
            )).open(p)
        except server_errors.StateStoreError as exc:
            raise UnavailableError(str(exc)) from exc
        try:
            self._ttl_ms = self._resolve_ttl(want)
        except BaseException:
            self._db.close()
            raise
        self._meta = self._db.read_meta()
        self._offsets = dict(self._meta.offsets)

    def _resolve_ttl(self, want: int | None) -> int:
        spec = self._db.read_local_spec()
        if spec is None:
            if want and next(iter(self._db.iterate(None, None)), None) is not None:
                raise InvalidArgumentError(
                    f"store {self._db.path} was created without TTL, not with ttl_ms {want}"
                )
            self._db.write_local_spec({"ttl_ms": want or 0})
            return want or 0
        have = int(spec.get("ttl_ms", 0))
        if want is not None and want != have:
            raise InvalidArgumentError(
                f"store {self._db.path} has ttl_ms {have} (0: no TTL), not {want}"
            )
        return have

    def _backend_get(self, keys: list[bytes]) -> list[bytes | None]:
        return self._db.get_many(keys)

    def _backend_scan(
        self, from_key: bytes | None, to_key: bytes | None, prefix: bytes | None, reverse: bool
    ) -> Iterator[tuple[bytes, bytes]]:
        return self._db.iterate(from_key, to_key, reverse, prefix)

    def _backend_count(self) -> int:
        return self._db.approximate_num_entries()

    def _backend_commit(
        self, writes: dict[bytes, bytes | None], offsets: dict[str, int], ranges: Ranges
    ) -> dict[str, int]:
        merged = dict(self._offsets)
        merged.update(offsets)
        meta = ShardMeta(self._meta.epoch, self._meta.commit_seq + 1, 0, merged)
        pk = [k for k, v in writes.items() if v is not None]
        pv: list[bytes] = [v for v in writes.values() if v is not None]
        dk = [k for k, v in writes.items() if v is None]
        try:
            self._db.apply(pk, pv, dk, meta, sync=True, ranges=ranges)
        except server_errors.StateStoreError as exc:
            raise UnavailableError(f"commit failed, nothing applied: {exc}") from exc
        self._meta = meta
        return merged

    def _backend_close(self) -> None:
        self._db.close()

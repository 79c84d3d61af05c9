"""Snapshot manifests and object keys: the format of what a snapshot writes.

A manifest lists a checkpoint's files (name, size, sha256), the changelog offset it covers,
the epoch, commit sequence and committed input offsets, and embeds a sha256 of its own
canonical body, so a corrupted manifest is detected (SnapshotCorruptError).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar, cast

from tierstore.server.errors import SnapshotCorruptError

FORMAT_VERSION = 1

_T = TypeVar("_T")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_READ_CHUNK = 1 << 20


def shard_prefix(store: str, partition: int) -> str:
    if not store or "/" in store or store in (".", "..") or store.startswith(".tmp."):
        raise ValueError(f"invalid store name {store!r}")
    if isinstance(partition, bool) or not isinstance(partition, int) or partition < 0:
        raise ValueError(f"invalid partition {partition!r}")
    return f"shards/{store}/{partition}/"


def manifest_key(store: str, partition: int, snapshot_id: int) -> str:
    return f"{shard_prefix(store, partition)}manifests/{snapshot_id:020d}.json"


def file_key(store: str, partition: int, sha256: str) -> str:
    return f"{shard_prefix(store, partition)}files/{sha256}"


def corrupt_mark_key(store: str, partition: int, sha256: str) -> str:
    """Where a restore notes that the object `file_key(..., sha256)` failed verification: the
    next snapshot that has the file uploads it again instead of trusting the object's size."""
    return f"{shard_prefix(store, partition)}corrupt/{sha256}"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_READ_CHUNK):
            h.update(chunk)  # hashlib releases the GIL: threads hash in parallel
    return h.hexdigest()


@dataclass(frozen=True, slots=True)
class SnapshotFile:
    name: str  # file name inside the checkpoint directory
    size: int
    sha256: str  # lowercase hex; also the object's name under files/


@dataclass(frozen=True, slots=True)
class Manifest:
    """One snapshot. `committed_offsets` and `extra` are private copies: treat them as read-only
    (they are left out of hash())."""

    store: str
    partition: int
    snapshot_id: int
    created_at: float  # unix seconds
    epoch: int
    commit_seq: int
    changelog_offset: int  # replay the changelog from here
    committed_offsets: dict[str, int] = field(hash=False)
    files: tuple[SnapshotFile, ...]
    extra: dict[str, str] = field(default_factory=dict, hash=False)
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        object.__setattr__(self, "committed_offsets", dict(self.committed_offsets))
        object.__setattr__(self, "extra", dict(self.extra))
        object.__setattr__(self, "files", tuple(self.files))

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    def to_json(self) -> str:
        """Every field plus ``body_sha256``, the sha256 of the other fields' canonical JSON."""
        body = asdict(self)
        return json.dumps({**body, "body_sha256": _body_sha256(body)}, sort_keys=True, indent=1)

    @classmethod
    def from_json(cls, data: str | bytes) -> Manifest:
        """Parse and verify. Raises SnapshotCorruptError on bad JSON, a checksum mismatch, a
        missing or mistyped field, an unsafe file name, or an unsupported format_version."""
        try:
            doc = json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise SnapshotCorruptError(f"manifest is not valid JSON: {exc}") from exc
        if not isinstance(doc, dict):
            raise SnapshotCorruptError("manifest is not a JSON object")
        version = doc.get("format_version")
        if isinstance(version, int) and version > FORMAT_VERSION:
            raise SnapshotCorruptError(f"manifest format_version {version} is not supported")
        checksum = doc.pop("body_sha256", None)
        try:
            ok = isinstance(checksum, str) and checksum == _body_sha256(doc)
        except ValueError:  # NaN or infinity
            ok = False
        if not ok:
            raise SnapshotCorruptError("manifest checksum mismatch (body_sha256)")
        try:
            if _get(doc, "format_version", int) != FORMAT_VERSION:
                raise ValueError(f"format_version {version} is not supported")
            files = tuple(_parse_file(f) for f in _get(doc, "files", list))
            if len({f.name for f in files}) != len(files):
                raise ValueError("duplicate file names")
            offsets = _get(doc, "committed_offsets", dict)
            extra = _get(doc, "extra", dict)
            return cls(
                _get(doc, "store", str), _get(doc, "partition", int),
                _get(doc, "snapshot_id", int), float(_get(doc, "created_at", (int, float))),
                _get(doc, "epoch", int), _get(doc, "commit_seq", int),
                _get(doc, "changelog_offset", int),
                {_check(k, str): _check(v, int) for k, v in offsets.items()},
                files, {_check(k, str): _check(v, str) for k, v in extra.items()},
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise SnapshotCorruptError(f"manifest is malformed: {exc!r}") from exc


def _body_sha256(body: Mapping[str, Any]) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _check(v: Any, t: type[_T] | tuple[type, ...]) -> _T:
    """`v` if it is a `t` (a bool is not an int), else TypeError."""
    if not isinstance(v, t) or (isinstance(v, bool) and t is not bool):
        raise TypeError(f"expected {t}, got {v!r}")
    return cast(_T, v)


def _get(d: Mapping[str, Any], name: str, t: type[_T] | tuple[type, ...]) -> _T:
    try:
        return _check(d[name], t)
    except TypeError as exc:
        raise TypeError(f"field {name!r}: {exc}") from None


def _parse_file(f: object) -> SnapshotFile:
    d = _check(f, dict)
    name, size, sha = _get(d, "name", str), _get(d, "size", int), _get(d, "sha256", str)
    if not name or "/" in name or "\\" in name or name in (".", "..") or "\0" in name:
        raise ValueError(f"unsafe file name {name!r}")
    if size < 0 or not _HEX64.fullmatch(sha):
        raise ValueError(f"bad size or sha256 for {name!r}")
    return SnapshotFile(name, size, sha)

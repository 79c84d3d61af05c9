"""Object-store adapters: a local directory and S3 (the only module that imports boto3).

Both implement :class:`~tierstore.server.ports.ObjectStore`. Keys are relative, ``/``-separated
strings such as ``shards/counts/0/files/<sha256>``.

Atomicity and failure, for both backends:

- ``put_bytes``/``put_file`` replace an object atomically: a reader sees the old object or the
  new one, never a mix. On failure the old object (if any) is left as it was.
- ``get_file`` writes the destination whole or not at all: it downloads into a temporary file in
  the destination's directory, fsyncs it and renames it over ``path``. On failure ``path`` is left
  as it was and the temporary file is removed. The destination directory must exist.
- ``delete_many`` ignores keys that do not exist; it is not atomic across keys.
- Every failure is raised as :class:`ObjectStoreError` (the cause kept as ``__cause__``), or as
  :class:`ObjectNotFoundError` when the object does not exist; the message names the key and the
  location. Invalid keys raise ``ValueError``.
"""

from __future__ import annotations

import builtins
import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Literal
from urllib.parse import unquote, urlsplit

import boto3
import boto3.exceptions
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    IncompleteReadError,
    ReadTimeoutError,
    ResponseStreamingError,
)

from tierstore.server.errors import ObjectNotFoundError, ObjectStoreError
from tierstore.server.ports import ObjectInfo, ObjectStore

_TMP_PREFIX = ".tmp."  # temporary files of atomic writes; never listed, never a valid key segment
_COPY_CHUNK = 1 << 20
_STREAM_CHUNK = 1 << 20  # read size of a streamed download (each read releases the GIL)
_DELETE_CHUNK = 1000  # the most keys one DeleteObjects request accepts
_NOT_FOUND_CODES = frozenset({"404", "NoSuchKey", "NotFound"})
_BODY_ERRORS = (ResponseStreamingError, IncompleteReadError, ReadTimeoutError)


def _fsync_path(path: Path | str, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomically(path: Path, fill: Callable[[str], object]) -> None:
    """Create a temp file next to `path`, let `fill(tmp_path)` write it, fsync, rename over `path`
    and fsync the directory. The temp file is removed on any failure."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_TMP_PREFIX)
    os.close(fd)
    try:
        fill(tmp)
        _fsync_path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # durability of the rename; not supported everywhere
        _fsync_path(path.parent, directory=True)


class LocalObjectStore:
    """Objects as files under `root` (``file:///path``). Keys map to paths below root.

    Writes are atomic (temp file in the same directory, fsync, rename). Empty directories left
    by deletes are not removed. Temporary files start with ``.tmp.`` and are never listed.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root).absolute()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ObjectStoreError(
                f"cannot create object store directory {self.root}: {exc}"
            ) from exc

    def describe(self) -> str:
        return f"file://{self.root}"

    def _path(self, key: str) -> Path:
        parts = key.split("/")
        if not key or any(p in ("", ".", "..") or p.startswith(_TMP_PREFIX) for p in parts):
            raise ValueError(f"invalid object key {key!r}")
        return self.root.joinpath(*parts)

    def _fail(self, op: str, key: str, exc: OSError) -> ObjectStoreError:
        return ObjectStoreError(f"{op} of key {key!r} in {self.describe()} failed: {exc}")

    def put_bytes(self, key: str, data: bytes) -> None:
        path = self._path(key)

        def fill(tmp: str) -> None:
            with open(tmp, "wb") as f:
                f.write(data)

        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            _write_atomically(path, fill)
        except OSError as exc:
            raise self._fail("put", key, exc) from exc

    def put_file(self, key: str, path: Path) -> None:
        dest = self._path(key)
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            _write_atomically(dest, lambda tmp: shutil.copyfile(path, tmp))
        except OSError as exc:
            raise self._fail(f"put of file {path}", key, exc) from exc

    def get_bytes(self, key: str) -> bytes:
        path = self._path(key)
        try:
            return path.read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
            raise ObjectNotFoundError(f"key {key!r} not found in {self.describe()}") from exc
        except OSError as exc:
            raise self._fail("get", key, exc) from exc

    def get_file(self, key: str, path: Path) -> None:
        self._get_into(key, path, lambda src, out: shutil.copyfileobj(src, out, _COPY_CHUNK))

    def _get_into(self, key: str, path: Path, copy: Callable[[BinaryIO, BinaryIO], None]) -> None:
        src_path = self._path(key)
        try:
            src = open(src_path, "rb")  # noqa: SIM115 - closed below; opened first to tell 404s
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
            raise ObjectNotFoundError(f"key {key!r} not found in {self.describe()}") from exc
        except OSError as exc:
            raise self._fail("get", key, exc) from exc

        def fill(tmp: str) -> None:
            with open(tmp, "wb") as out:
                copy(src, out)

        try:
            with src:
                _write_atomically(Path(path), fill)
        except OSError as exc:
            raise self._fail(f"get into {path}", key, exc) from exc

    def get_file_sha256(self, key: str, path: Path) -> str:
        h = hashlib.sha256()

        def copy(src: BinaryIO, out: BinaryIO) -> None:
            while chunk := src.read(_COPY_CHUNK):
                h.update(chunk)
                out.write(chunk)

        self._get_into(key, path, copy)
        return h.hexdigest()

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        """All objects whose key starts with `prefix` (a plain string prefix), sorted by key."""
        base = prefix.rpartition("/")[0]
        if ".." in base.split("/"):
            raise ValueError(f"invalid list prefix {prefix!r}")
        start = self.root.joinpath(*base.split("/")) if base else self.root
        found: builtins.list[ObjectInfo] = []
        try:
            self._walk(start, base + "/" if base else "", prefix, found)
        except OSError as exc:
            raise self._fail("list", prefix, exc) from exc
        found.sort(key=lambda o: o.key)
        return iter(found)

    def _walk(self, directory: Path, rel: str, prefix: str, out: builtins.list[ObjectInfo]) -> None:
        try:
            entries = list(os.scandir(directory))
        except (FileNotFoundError, NotADirectoryError):
            return
        for entry in entries:
            if entry.name.startswith(_TMP_PREFIX):
                continue
            key = rel + entry.name
            # descend only into directories that can hold keys with this prefix
            if not (key.startswith(prefix) or prefix.startswith(key + "/")):
                continue
            try:
                if entry.is_dir(follow_symlinks=False):
                    self._walk(Path(entry.path), key + "/", prefix, out)
                elif key.startswith(prefix):
                    st = entry.stat()
                    out.append(ObjectInfo(key, st.st_size, st.st_mtime))
            except FileNotFoundError:  # deleted while listing
                continue

    def delete_many(self, keys: Sequence[str]) -> None:
        for key in keys:
            try:
                self._path(key).unlink()
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise self._fail("delete", key, exc) from exc


@dataclass(frozen=True, slots=True)
class S3Config:
    """Knobs of :class:`S3ObjectStore`. Retries use botocore's ``standard`` mode; `max_attempts`
    counts the first attempt. Transfers above `multipart_threshold` bytes go multipart with
    `max_concurrency` threads per file."""

    max_attempts: int = 5
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 60.0
    max_pool_connections: int = 64
    multipart_threshold: int = 16 * 1024 * 1024
    multipart_chunksize: int = 16 * 1024 * 1024
    max_concurrency: int = 8
    addressing_style: Literal["auto", "virtual", "path"] = "auto"
    # "when_required" for S3-compatible servers that reject the newer default CRC checksums
    checksums: Literal["when_supported", "when_required"] = "when_supported"


class S3ObjectStore:
    """Objects in ``s3://bucket/prefix``. Credentials and region come from boto3's usual chain
    (``AWS_*`` environment variables, config files, instance roles). Thread-safe: one boto3
    client is shared by all threads."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        endpoint_url: str | None = None,
        config: S3Config | None = None,
    ) -> None:
        if not bucket or "/" in bucket:
            raise ValueError(f"invalid S3 bucket name {bucket!r}")
        self.bucket = bucket
        prefix = prefix.strip("/")
        self.prefix = prefix + "/" if prefix else ""
        self.config = config or S3Config()
        cfg = self.config
        botocore_config = Config(
            retries={"max_attempts": cfg.max_attempts, "mode": "standard"},
            connect_timeout=cfg.connect_timeout_s,
            read_timeout=cfg.read_timeout_s,
            max_pool_connections=cfg.max_pool_connections,
            s3={"addressing_style": cfg.addressing_style},
            request_checksum_calculation=cfg.checksums,
            response_checksum_validation=cfg.checksums,
        )
        try:
            session = boto3.session.Session()
            self._client = session.client("s3", endpoint_url=endpoint_url, config=botocore_config)
        except (BotoCoreError, ValueError) as exc:
            raise ObjectStoreError(f"cannot create S3 client for {self.describe()}: {exc}") from exc
        self._transfer = TransferConfig(
            multipart_threshold=cfg.multipart_threshold,
            multipart_chunksize=cfg.multipart_chunksize,
            max_concurrency=cfg.max_concurrency,
            use_threads=True,
            preferred_transfer_client="classic",
        )

    def describe(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    def _key(self, key: str) -> str:
        if not key or key.startswith("/"):
            raise ValueError(f"invalid object key {key!r}")
        return self.prefix + key

    @contextlib.contextmanager
    def _errors(self, op: str, key: str) -> Iterator[None]:
        """Turn every boto3/botocore (and local file) error into ObjectStoreError."""
        try:
            yield
        except ClientError as exc:
            err: Any = exc.response.get("Error", {})
            code = str(err.get("Code", ""))
            if code in _NOT_FOUND_CODES:
                raise ObjectNotFoundError(
                    f"key {key!r} not found in bucket {self.bucket!r} ({self.describe()})"
                ) from exc
            raise ObjectStoreError(
                f"{op} of key {key!r} in bucket {self.bucket!r} failed: {exc}"
            ) from exc
        except (BotoCoreError, boto3.exceptions.Boto3Error, OSError) as exc:
            raise ObjectStoreError(
                f"{op} of key {key!r} in bucket {self.bucket!r} failed: {exc}"
            ) from exc

    def put_bytes(self, key: str, data: bytes) -> None:
        with self._errors("put", key):
            self._client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)

    def put_file(self, key: str, path: Path) -> None:
        with self._errors(f"put of file {path}", key):
            self._client.upload_file(str(path), self.bucket, self._key(key), Config=self._transfer)

    def get_bytes(self, key: str) -> bytes:
        # botocore retries a request, but not the reading of its streamed body: a connection
        # lost mid-body is retried here, as download_file (s3transfer) does for files.
        for attempt in range(1, self.config.max_attempts + 1):
            with self._errors("get", key):
                resp = self._client.get_object(Bucket=self.bucket, Key=self._key(key))
                try:
                    body: bytes = resp["Body"].read()
                except _BODY_ERRORS:
                    if attempt >= self.config.max_attempts:
                        raise
                    continue
                return body
        raise AssertionError("unreachable")  # pragma: no cover - for type checkers

    def get_file(self, key: str, path: Path) -> None:
        path = Path(path)

        def fill(tmp: str) -> None:
            self._client.download_file(self.bucket, self._key(key), tmp, Config=self._transfer)

        with self._errors(f"get into {path}", key):
            _write_atomically(path, fill)

    def get_file_sha256(self, key: str, path: Path) -> str:
        """One streamed GET per file, hashed and written as it arrives: on loopback (moto) this
        was faster than s3transfer's ranged parts and it needs no second read to verify. A
        connection lost mid-body restarts the file (as get_bytes does); botocore checks the
        body's length (and its checksum, where the object has one)."""
        path = Path(path)
        digest: list[str] = []

        def fill(tmp: str) -> None:
            for attempt in range(1, self.config.max_attempts + 1):
                h = hashlib.sha256()
                body = self._client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"]
                try:
                    with open(tmp, "wb") as out:
                        while chunk := body.read(_STREAM_CHUNK):
                            h.update(chunk)
                            out.write(chunk)
                except _BODY_ERRORS:
                    if attempt >= self.config.max_attempts:
                        raise
                    continue
                finally:
                    body.close()
                digest.append(h.hexdigest())
                return

        with self._errors(f"get into {path}", key):
            _write_atomically(path, fill)
        return digest[-1]

    def exists(self, key: str) -> bool:
        try:
            with self._errors("head", key):
                self._client.head_object(Bucket=self.bucket, Key=self._key(key))
        except ObjectNotFoundError:
            return False
        return True

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        """All objects whose key starts with `prefix`, in key order, fetched page by page as the
        iterator is consumed (errors surface during iteration)."""
        full = self.prefix + prefix
        skip = len(self.prefix)
        with self._errors("list", prefix):
            paginator = self._client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=full):
                for obj in page.get("Contents", []):
                    yield ObjectInfo(
                        obj["Key"][skip:], int(obj["Size"]), obj["LastModified"].timestamp()
                    )

    def delete_many(self, keys: Sequence[str]) -> None:
        """DeleteObjects in chunks of 1000. Not atomic: on failure, earlier chunks are gone."""
        for i in range(0, len(keys), _DELETE_CHUNK):
            chunk = keys[i : i + _DELETE_CHUNK]
            with self._errors("delete", chunk[0]):
                resp = self._client.delete_objects(
                    Bucket=self.bucket,
                    Delete={"Objects": [{"Key": self._key(k)} for k in chunk], "Quiet": True},
                )
            errors = [e for e in resp.get("Errors", []) if e.get("Code") not in _NOT_FOUND_CODES]
            if errors:
                first = errors[0]
                raise ObjectStoreError(
                    f"delete of {len(errors)} key(s) in bucket {self.bucket!r} failed, first "
                    f"{first.get('Key')!r}: {first.get('Code')} {first.get('Message')}"
                )


def open_object_store(
    url: str, s3_endpoint: str | None = None, s3_config: S3Config | None = None
) -> ObjectStore:
    """Open ``file:///abs/path``, a plain path (relative paths are made absolute), or
    ``s3://bucket[/prefix]`` (with `s3_endpoint` for S3-compatible servers). Anything else raises
    ``ValueError`` naming the URL."""
    if not url:
        raise ValueError("empty object store URL")
    parts = urlsplit(url)
    if parts.scheme == "":
        return LocalObjectStore(Path(url).absolute())
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
            raise ValueError(f"object store URL {url!r}: expected file:///absolute/path")
        if parts.query or parts.fragment:
            raise ValueError(f"object store URL {url!r}: query or fragment not allowed")
        return LocalObjectStore(Path(unquote(parts.path)))  # as Path.as_uri() quotes it
    if parts.scheme == "s3":
        if not parts.netloc or parts.query or parts.fragment:
            raise ValueError(f"object store URL {url!r}: expected s3://bucket/prefix")
        return S3ObjectStore(parts.netloc, parts.path, endpoint_url=s3_endpoint, config=s3_config)
    raise ValueError(
        f"unsupported object store URL {url!r}: use file:///path, a path, or s3://bucket/prefix"
    )

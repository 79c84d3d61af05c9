"""ObjectStore contract: every test runs against a local directory and a real moto S3 server."""

from __future__ import annotations

import hashlib
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, cast

import pytest
from botocore.exceptions import IncompleteReadError

from tests.infra import S3_ENV, S3Server, free_port
from tierstore.server.errors import ObjectNotFoundError, ObjectStoreError
from tierstore.server.objectstore import (
    LocalObjectStore,
    S3Config,
    S3ObjectStore,
    open_object_store,
)
from tierstore.server.ports import HashingDownload, ObjectStore

MiB = 1024 * 1024
# small parts so that a few-MiB file exercises multipart transfers
S3_TEST_CONFIG = S3Config(
    max_attempts=2, multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB, max_concurrency=4
)


@pytest.fixture
def s3_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Credentials and region through boto3's usual chain (environment variables)."""
    for k, v in S3_ENV.items():
        monkeypatch.setenv(k, v)


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.s3)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    if request.param == "local":
        return LocalObjectStore(tmp_path / "objects")
    request.getfixturevalue("s3_env")
    server: S3Server = request.getfixturevalue("s3_server")
    bucket: str = request.getfixturevalue("s3_bucket")
    return S3ObjectStore(bucket, "some/prefix", endpoint_url=server.endpoint, config=S3_TEST_CONFIG)


def test_bytes_roundtrip_and_overwrite(store: ObjectStore) -> None:
    store.put_bytes("a/b/c", b"one")
    assert store.get_bytes("a/b/c") == b"one"
    store.put_bytes("a/b/c", b"two")
    assert store.get_bytes("a/b/c") == b"two"
    store.put_bytes("empty", b"")
    assert store.get_bytes("empty") == b""


def test_file_roundtrip_multipart(store: ObjectStore, tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    data = os.urandom(12 * MiB + 123)  # three parts on S3
    src.write_bytes(data)
    store.put_file("files/big", src)
    dest = tmp_path / "out" / "big"
    dest.parent.mkdir()
    store.get_file("files/big", dest)
    assert dest.read_bytes() == data
    assert os.listdir(dest.parent) == ["big"]  # no temp files left behind
    [info] = list(store.list("files/"))
    assert (info.key, info.size) == ("files/big", len(data))


def test_missing_key(store: ObjectStore, tmp_path: Path) -> None:
    with pytest.raises(ObjectNotFoundError, match="nope"):
        store.get_bytes("dir/nope")
    dest = tmp_path / "dest"
    with pytest.raises(ObjectNotFoundError, match="nope"):
        store.get_file("dir/nope", dest)
    assert not dest.exists()
    # written whole or not at all: an existing destination keeps its content
    dest.write_bytes(b"old")
    with pytest.raises(ObjectNotFoundError):
        store.get_file("dir/nope", dest)
    assert dest.read_bytes() == b"old"
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".tmp.")]  # temp file removed
    assert not store.exists("dir/nope")


def test_exists(store: ObjectStore) -> None:
    store.put_bytes("x/y", b"1")
    assert store.exists("x/y")
    assert not store.exists("x")  # a "directory" is not an object
    assert not store.exists("x/z")


def test_list_sorted_with_prefix_and_metadata(store: ObjectStore) -> None:
    before = time.time()
    for key in ["b/2", "a/1", "b/10", "ba/x", "b/1/deep", "c"]:
        store.put_bytes(key, key.encode() * 3)
    keys = [o.key for o in store.list("")]
    assert keys == sorted(keys) == ["a/1", "b/1/deep", "b/10", "b/2", "ba/x", "c"]
    assert [o.key for o in store.list("b/")] == ["b/1/deep", "b/10", "b/2"]
    assert [o.key for o in store.list("b")] == ["b/1/deep", "b/10", "b/2", "ba/x"]
    assert [o.key for o in store.list("b/1")] == ["b/1/deep", "b/10"]
    assert list(store.list("zzz/")) == []
    for o in store.list(""):
        assert o.size == len(o.key) * 3
        # S3 timestamps have one-second resolution; allow for that and a little clock skew
        assert before - 5 <= o.last_modified <= time.time() + 5


def test_many_keys_paged_list_and_chunked_delete(store: ObjectStore) -> None:
    keys = [f"many/{i:05d}" for i in range(1100)]  # more than one S3 page / delete chunk
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda k: store.put_bytes(k, b"x"), keys))
    store.put_bytes("other", b"keep")
    assert [o.key for o in store.list("many/")] == keys
    store.delete_many([*keys, "many/missing"])  # missing keys are ignored
    assert list(store.list("many/")) == []
    assert store.get_bytes("other") == b"keep"
    store.delete_many([])


def test_describe(store: ObjectStore, tmp_path: Path) -> None:
    d = store.describe()
    assert d.startswith(("file:///", "s3://"))
    if isinstance(store, LocalObjectStore):
        assert d == f"file://{tmp_path / 'objects'}"
    else:
        assert d.endswith("/some/prefix/")


@pytest.mark.s3
def test_s3_prefix_isolation(s3_env: None, s3_server: S3Server, s3_bucket: str) -> None:
    a = S3ObjectStore(s3_bucket, "tenant-a", endpoint_url=s3_server.endpoint)
    b = S3ObjectStore(s3_bucket, "/tenant-b/", endpoint_url=s3_server.endpoint)
    a.put_bytes("k", b"a")
    b.put_bytes("k", b"b")
    assert (a.get_bytes("k"), b.get_bytes("k")) == (b"a", b"b")
    assert [o.key for o in a.list("")] == ["k"]
    raw = s3_server.client().list_objects_v2(Bucket=s3_bucket)["Contents"]
    assert sorted(o["Key"] for o in raw) == ["tenant-a/k", "tenant-b/k"]
    a.delete_many(["k"])
    assert b.exists("k") and not a.exists("k")


@pytest.mark.s3
def test_s3_errors_name_key_and_bucket(
    s3_env: None, s3_server: S3Server, tmp_path: Path
) -> None:
    store = S3ObjectStore("no-such-bucket", "p", endpoint_url=s3_server.endpoint)
    with pytest.raises(ObjectStoreError, match="no-such-bucket") as info:
        store.put_bytes("the/key", b"x")
    assert "the/key" in str(info.value)
    assert not isinstance(info.value, ObjectNotFoundError)
    assert info.value.__cause__ is not None
    src = tmp_path / "f"
    src.write_bytes(b"data")
    with pytest.raises(ObjectStoreError, match="the/file"):
        store.put_file("the/file", src)
    with pytest.raises(ObjectStoreError):
        list(store.list(""))


@pytest.mark.s3
def test_s3_unreachable_endpoint(s3_env: None) -> None:
    cfg = S3Config(max_attempts=2, connect_timeout_s=1, read_timeout_s=1)
    store = S3ObjectStore("b", endpoint_url=f"http://127.0.0.1:{free_port()}", config=cfg)
    with pytest.raises(ObjectStoreError, match=r"'k'.*'b'") as info:
        store.get_bytes("k")
    assert info.value.__cause__ is not None
    assert not store.describe().endswith("//")


def test_local_rejects_bad_keys(tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path)
    for key in ["", "/abs", "a//b", "../up", "a/../b", "a/.", ".tmp.x", "a/.tmp.y"]:
        with pytest.raises(ValueError, match="invalid object key"):
            store.put_bytes(key, b"x")


def test_local_write_is_atomic_and_hides_temp_files(tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path)
    store.put_bytes("d/k", b"v")
    (tmp_path / "d" / ".tmp.leftover").write_bytes(b"partial")  # as after a crash mid-write
    assert [o.key for o in store.list("")] == ["d/k"]
    missing = tmp_path / "missing.bin"
    with pytest.raises(ObjectStoreError):
        store.put_file("d/k", missing)
    assert store.get_bytes("d/k") == b"v"
    assert sorted(os.listdir(tmp_path / "d")) == [".tmp.leftover", "k"]


def test_open_object_store_urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    local = open_object_store(f"file://{tmp_path}/snap", None)
    assert isinstance(local, LocalObjectStore) and local.root == tmp_path / "snap"
    assert open_object_store(tmp_path.as_uri(), None).describe() == f"file://{tmp_path}"
    spaced = open_object_store((tmp_path / "a b%").as_uri(), None)  # as_uri() percent-quotes
    assert isinstance(spaced, LocalObjectStore) and spaced.root == tmp_path / "a b%"
    plain = open_object_store(str(tmp_path / "plain"), None)
    assert isinstance(plain, LocalObjectStore) and plain.root == tmp_path / "plain"
    monkeypatch.chdir(tmp_path)
    rel = open_object_store("rel/dir", None)
    assert isinstance(rel, LocalObjectStore) and rel.root == tmp_path / "rel" / "dir"
    for k, v in S3_ENV.items():
        monkeypatch.setenv(k, v)
    s3 = open_object_store("s3://bucket/some/prefix", "http://127.0.0.1:1")
    assert isinstance(s3, S3ObjectStore)
    assert (s3.bucket, s3.prefix, s3.describe()) == (
        "bucket", "some/prefix/", "s3://bucket/some/prefix/"
    )
    bare = open_object_store("s3://bucket", None)
    assert isinstance(bare, S3ObjectStore) and bare.prefix == ""
    for bad in ["", "http://x/y", "s3://", "s3:///prefix", "file://host/x", "file:rel", "gs://b/p"]:
        with pytest.raises(ValueError) as info:
            open_object_store(bad, None)
        assert repr(bad) in str(info.value) or bad == ""


def test_hashed_download(store: ObjectStore, tmp_path: Path) -> None:
    """get_file_sha256 (the restore's download): the file written whole and the sha256 of
    what was written, computed as it streamed; a missing key leaves nothing behind."""
    assert isinstance(store, HashingDownload)
    src = tmp_path / "src.bin"
    data = os.urandom(6 * MiB + 7)  # more than one read chunk
    src.write_bytes(data)
    store.put_file("files/f", src)
    dest = tmp_path / "out" / "f"
    dest.parent.mkdir()
    assert store.get_file_sha256("files/f", dest) == hashlib.sha256(data).hexdigest()
    assert dest.read_bytes() == data
    assert os.listdir(dest.parent) == ["f"]
    dest.write_bytes(b"old")
    with pytest.raises(ObjectNotFoundError, match="nope"):
        store.get_file_sha256("files/nope", dest)
    assert dest.read_bytes() == b"old"
    assert os.listdir(dest.parent) == ["f"]


@pytest.mark.s3
def test_s3_hashed_download_restarts_a_broken_body(
    s3_env: None, s3_server: S3Server, s3_bucket: str, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A connection lost mid-body restarts the file from its start: the hash and the file
    hold each byte once."""
    store = S3ObjectStore(s3_bucket, "p", endpoint_url=s3_server.endpoint,
                          config=S3_TEST_CONFIG)
    data = os.urandom(3 * MiB)
    store.put_bytes("k", data)
    real = store._client.get_object
    calls = []

    class Broken:
        def __init__(self, body: Any) -> None:
            self.body, self.reads = body, 0

        def read(self, n: int) -> bytes:
            self.reads += 1
            if self.reads == 2:
                raise IncompleteReadError(actual_bytes=MiB, expected_bytes=len(data))
            return cast(bytes, self.body.read(n))

        def close(self) -> None:
            self.body.close()

    def get_object(**kw: Any) -> Any:
        resp = real(**kw)
        calls.append(kw["Key"])
        if len(calls) == 1:
            resp["Body"] = Broken(resp["Body"])
        return resp

    monkeypatch.setattr(store._client, "get_object", get_object)
    dest = tmp_path / "f"
    assert store.get_file_sha256("k", dest) == hashlib.sha256(data).hexdigest()
    assert dest.read_bytes() == data
    assert calls == ["p/k", "p/k"]

"""Configuration: defaults < TOML file < TIERSTORE_* variables < flags; unknown keys and bad values
refused at start-up naming the key (exit 2); `tierstore config show` with secrets masked; JSON
logs. The CLI runs as a real subprocess, as an operator would run it."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.serverproc import ServerProc
from tierstore.server.config import FLAGS, ConfigError, ServerConfig, env_name, load_config
from tierstore.server.configload import MASK, key_types, parse_size
from tierstore.server.logs import JsonFormatter, configure_logging

MiB = 1024 * 1024


def tierstore(*args: str, env: dict[str, str] | None = None,
              cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TIERSTORE_")}
    return subprocess.run([sys.executable, "-m", "tierstore", *args], capture_output=True,
                          text=True, timeout=60, env={**clean, **(env or {})}, cwd=cwd)


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_precedence_defaults_file_env_flags(tmp_path: Path) -> None:
    toml = write(tmp_path / "ts.toml", """
snapshot_keep = 5
grpc_workers = 8
block_cache_bytes = "64MiB"
write_buffer_bytes = 33554432
log_format = "json"
kafka_topic_prefix = "from-file-"
""")
    env = {"TIERSTORE_SNAPSHOT_KEEP": "6", "TIERSTORE_GRPC_WORKERS": "9",
           "TIERSTORE_KAFKA_TOPIC_PREFIX": ""}  # empty: ignored
    cfg = load_config({"grpc_workers": "10", "listen": None}, environ=env, config_file=toml)
    assert cfg.snapshot_keep == 6  # variable over file
    assert cfg.grpc_workers == 10  # flag over variable
    assert cfg.hot.block_cache_bytes == 64 * MiB  # file over default, with a size suffix
    assert cfg.hot.write_buffer_bytes == 32 * MiB
    assert cfg.log_format == "json"
    assert cfg.kafka_topic_prefix == "from-file-"
    assert cfg.listen == ServerConfig().listen  # default
    # the file may also be named by the --config flag's key or by TIERSTORE_CONFIG
    assert load_config({"config": str(toml)}, environ={}).snapshot_keep == 5
    assert load_config({}, environ={"TIERSTORE_CONFIG": str(toml)}).snapshot_keep == 5
    # memory budget flags land in HotTierConfig
    flags = {"block_cache_bytes": "1GiB", "write_buffer_bytes": "256m"}
    hot = load_config(flags, environ={}).hot
    assert (hot.block_cache_bytes, hot.write_buffer_bytes) == (1024 * MiB, 256 * MiB)
    # RocksDB statistics (the block-cache hit metrics) are on unless the file turns them off
    assert hot.rocksdb_statistics is True
    off = write(tmp_path / "off.toml", "rocksdb_statistics = false\n")
    assert load_config({}, environ={}, config_file=off).hot.rocksdb_statistics is False
    # the memtable bloom filter is off unless the file sets it
    assert hot.memtable_bloom_ratio == 0
    bloom = write(tmp_path / "bloom.toml", "memtable_bloom_ratio = 0.1\n")
    assert load_config({}, environ={}, config_file=bloom).hot.memtable_bloom_ratio == 0.1
    with pytest.raises(ConfigError, match=r"^rocksdb_statistics: expected true or false"):
        load_config({}, environ={}, config_file=write(tmp_path / "bad.toml",
                                                       "rocksdb_statistics = 3\n"))


def test_every_flag_has_a_config_key_and_a_variable() -> None:
    keys = key_types()
    for flag, key in FLAGS.items():
        assert key == "config" or key in keys, flag
        assert flag == "--" + key.replace("_", "-")
        assert env_name(key) == "TIERSTORE_" + key.upper()


def test_config_show_reports_precedence_and_sources(tmp_path: Path) -> None:
    toml = write(tmp_path / "ts.toml", 'snapshot_keep = 5\ngrpc_workers = 8\n'
                 'block_cache_bytes = "64MiB"\n')
    out = tierstore("config", "show", "--config", str(toml), "--grpc-workers", "10",
                    env={"TIERSTORE_SNAPSHOT_KEEP": "6"})
    assert out.returncode == 0, out.stderr
    shown = tomllib.loads(out.stdout)
    assert shown["snapshot_keep"] == 6 and shown["grpc_workers"] == 10
    assert shown["block_cache_bytes"] == 64 * MiB
    lines = {ln.split(" = ")[0]: ln for ln in out.stdout.splitlines() if " = " in ln}
    assert lines["snapshot_keep"].endswith("# variable TIERSTORE_SNAPSHOT_KEEP")
    assert lines["grpc_workers"].endswith("# flag --grpc-workers")
    assert lines["block_cache_bytes"].endswith(f"# file {toml}")
    assert lines["listen"].endswith("# default")
    # the output is a config file that loads to the same configuration
    again = write(tmp_path / "again.toml", out.stdout)
    assert load_config({}, environ={}, config_file=again) == load_config(
        {"grpc_workers": "10"}, environ={"TIERSTORE_SNAPSHOT_KEEP": "6"}, config_file=toml)


def test_config_show_masks_secrets(tmp_path: Path) -> None:
    cert = write(tmp_path / "server.pem", "cert")
    key = write(tmp_path / "server-key.pem", "key")
    tokens = write(tmp_path / "tokens-secret-path.toml", "")
    out = tierstore("config", "show", "--tls-cert", str(cert), "--tls-key", str(key),
                    "--auth-tokens", str(tokens),
                    "--object-store", "s3://alice:hunter2@bucket/prefix")
    assert out.returncode == 0, out.stderr
    shown = tomllib.loads(out.stdout)
    assert shown["tls_key"] == MASK and shown["auth_tokens"] == MASK
    assert shown["object_store"] == f"s3://alice:{MASK}@bucket/prefix"
    assert shown["tls_cert"] == str(cert)  # a certificate is public
    assert "hunter2" not in out.stdout and "tokens-secret-path" not in out.stdout
    assert str(key) not in out.stdout


@pytest.mark.parametrize("text,key,hint", [
    ("snapshot_kept = 3\n", "snapshot_kept", "did you mean snapshot_keep"),
    ("[hot]\nblock_cache_bytes = 1\n", "hot", "top-level"),
    ('snapshot_keep = "three"\n', "snapshot_keep", "expected an integer"),
    ("block_cache_bytes = -5\n", "block_cache_bytes", "must be positive"),
    ('write_buffer_bytes = "lots"\n', "write_buffer_bytes", "size in bytes"),
    ('log_format = "xml"\n', "log_format", "not one of"),
    ("snapshot_interval_s = true\n", "snapshot_interval_s", "expected a number"),
    ('metrics_listen = "nowhere"\n', "metrics_listen", "HOST:PORT"),
    ("listen = \n", "config", "not valid TOML"),
    ("snapshot_gc_grace_s = -1\n", "snapshot_gc_grace_s", "0 or more"),
    ("memtable_bloom_ratio = 0.5\n", "memtable_bloom_ratio", "from 0 (no filter) to 0.25"),
    ('object_store = "s3://"\n', "object_store", "s3://bucket/prefix"),
    ('object_store = "s3://bucket?region=x"\n', "object_store", "s3://bucket/prefix"),
    ('object_store = "file://relative/dir"\n', "object_store", "file:///absolute/path"),
])
def test_bad_config_file_is_refused_at_start_naming_the_key(
    tmp_path: Path, text: str, key: str, hint: str
) -> None:
    toml = write(tmp_path / "bad.toml", text)
    with pytest.raises(ConfigError, match=key):
        load_config({}, environ={}, config_file=toml)
    for cmd in (["serve", "--data-dir", str(tmp_path / "d")], ["config", "show"]):
        result = tierstore(*cmd, "--config", str(toml))
        assert result.returncode == 2, result.stderr
        assert f"configuration error: {key}:" in result.stderr
        assert hint in result.stderr
    assert not (tmp_path / "d").exists()  # refused before anything was created


@pytest.mark.parametrize("args,env,key", [
    (["--block-cache-bytes", "lots"], {}, "block_cache_bytes"),
    ([], {"TIERSTORE_WRITE_BUFFER_BYTES": "-1"}, "write_buffer_bytes"),
    (["--log-level", "LOUD"], {}, "log_level"),
    ([], {"TIERSTORE_LOG_FORMAT": "yaml"}, "log_format"),
    (["--config", "/no/such/file.toml"], {}, "config"),
])
def test_bad_flag_or_variable_is_refused_naming_the_key(
    tmp_path: Path, args: list[str], env: dict[str, str], key: str
) -> None:
    result = tierstore("serve", "--data-dir", str(tmp_path / "d"), *args, env=env)
    assert result.returncode == 2
    assert f"configuration error: {key}:" in result.stderr
    where = (f"flag {args[0]}" if args and args[0] != "--config" else
             f"variable {next(iter(env))}" if env else "")
    assert where in result.stderr


def test_unknown_key_given_to_load_config_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"^shard_count: unknown configuration key"):
        load_config({"shard_count": "3"}, environ={})


def test_parse_size() -> None:
    assert parse_size("123") == 123
    assert parse_size("64k") == parse_size("64KiB") == parse_size("64 KB") == 64 * 1024
    assert parse_size("256MiB") == 256 * MiB and parse_size("1_000") == 1000
    assert parse_size("2g") == 2048 * MiB
    for bad in ("", "-1", "1.5MiB", "MiB", "12 parsecs", "1iB"):
        assert parse_size(bad) is None, bad


def test_json_log_lines_carry_ts_level_logger_msg_and_extra_fields() -> None:
    stream = io.StringIO()
    configure_logging("DEBUG", "json", stream)
    try:
        logging.getLogger("tierstore.test").info("hello %s", "world", extra={"shard": "a/1"})
        try:
            raise ValueError("boom")
        except ValueError:
            logging.getLogger("tierstore.test").exception("failed")
    finally:
        configure_logging("WARNING", "text")
    first, second = (json.loads(ln) for ln in stream.getvalue().splitlines())
    assert first["msg"] == "hello world" and first["level"] == "INFO"
    assert first["logger"] == "tierstore.test" and first["shard"] == "a/1"
    assert first["ts"].endswith("+00:00")
    assert second["level"] == "ERROR" and "ValueError: boom" in second["exc"]
    assert JsonFormatter().format(logging.makeLogRecord({"msg": "x"})).startswith("{")


def test_server_runs_with_a_config_file_and_logs_json(tmp_path: Path) -> None:
    toml = write(tmp_path / "ts.toml", f"""
data_dir = "{tmp_path / 'data'}"
listen = "127.0.0.1:0"
log_format = "json"
log_level = "DEBUG"
snapshot_keep = 2
""")
    srv = ServerProc(tmp_path / "data", args=["--config", str(toml)])
    try:
        with srv.client() as client:
            kv = client.key_value_store("cfg", partition=0)
            kv.put(b"k", b"v")
            kv.commit({"in:0": 1})
            kv.close()
        assert srv.terminate() == 0
        assert (tmp_path / "data" / "shards" / "cfg" / "0").is_dir()  # data_dir from the file
        lines = srv.log_path.read_text().splitlines()
        records = [json.loads(ln) for ln in lines if ln.startswith("{")]
        assert records, srv.log()
        assert all({"ts", "level", "logger", "msg"} <= set(r) for r in records)
        assert any(r["logger"].startswith("tierstore.") for r in records)
    finally:
        srv.close()


def test_unusable_data_dir_is_a_clear_error_not_a_traceback(tmp_path: Path) -> None:
    not_a_dir = write(tmp_path / "file", "x")
    result = tierstore("serve", "--listen", "127.0.0.1:0", "--data-dir", str(not_a_dir))
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stderr.startswith("tierstore serve: error: ")
    assert str(not_a_dir) in result.stderr

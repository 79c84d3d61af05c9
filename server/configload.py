"""Reading the configuration: defaults < TOML file < TIERSTORE_* environment < flags.

The keys are the same everywhere: a flag `--block-cache-bytes`, the variable
`TIERSTORE_BLOCK_CACHE_BYTES` and the TOML key `block_cache_bytes`. The TOML file is flat (no
tables): every ServerConfig field is a top-level key, and so are the hot-tier budget keys
(config.HOT_KEYS), which go into ServerConfig.hot. An unknown key or a bad value is refused with
a ConfigError whose message starts with the key and says where the value came from.

`render_toml` prints an effective configuration as TOML that this module reads back, with each
value's source as a comment and secrets masked.
"""

from __future__ import annotations

import difflib
import json
import math
import re
import tomllib
import types
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints
from urllib.parse import urlsplit

from tierstore.server.config import (
    FLAGS,
    HOT_KEYS,
    ConfigError,
    ServerConfig,
    env_name,
)
from tierstore.server.hottier import HotTierConfig

CONFIG_KEY = "config"  # the flag/variable naming the TOML file; not a key inside it
MASK = "********"
# Keys whose values are secrets or point at them: tokens, keys, passwords, credentials.
SECRET_KEY = re.compile(
    r"(^|_)(token|tokens|password|passwd|secret|secrets|credential|credentials|key|apikey)(_|$)"
)
_SIZE = re.compile(r"(\d+)\s*([kmgt]?)(i?)(b?)", re.I)
_SIZE_UNITS = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4}
_BOOLS = {"true": True, "1": True, "yes": True, "on": True,
          "false": False, "0": False, "no": False, "off": False}


def _base_type(t: Any) -> Any:
    """`X | None` -> X."""
    if get_origin(t) in (Union, types.UnionType):
        args = [a for a in get_args(t) if a is not type(None)]
        return args[0] if len(args) == 1 else t
    return t


def key_types() -> dict[str, Any]:
    """Every configuration key -> its Python type, in ServerConfig field order."""
    hints = get_type_hints(ServerConfig)
    out = {f.name: _base_type(hints[f.name]) for f in fields(ServerConfig) if f.name != "hot"}
    hot = get_type_hints(HotTierConfig)
    out.update({k: _base_type(hot[k]) for k in HOT_KEYS})
    return out


def parse_size(text: str) -> int | None:
    """`268435456`, `256MiB`, `256M`, `1g`, `64k` -> bytes (binary units); None if malformed."""
    m = _SIZE.fullmatch(text.strip().replace("_", ""))
    if m is None or (m.group(3) and not m.group(2)):
        return None
    return int(m.group(1)) * 1024 ** _SIZE_UNITS[m.group(2).lower()]


def coerce(key: str, value: object, where: str) -> object:
    """The value for `key` from a TOML value or a string (flag, variable); ConfigError if bad."""
    typ = key_types()[key]

    def bad(expected: str) -> ConfigError:
        return ConfigError(f"{key}: expected {expected}, got {value!r} ({where})")

    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _BOOLS:
            return _BOOLS[value.strip().lower()]
        raise bad("true or false")
    if typ is int:
        sizes = key.endswith("_bytes")
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            n = parse_size(value) if sizes else _int_or_none(value)
            if n is not None:
                return n
        raise bad("a size in bytes such as 268435456 or 256MiB" if sizes else "an integer")
    if typ is float:
        number: float | None = None
        if isinstance(value, int | float) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                number = None
        if number is None or not math.isfinite(number):
            raise bad("a number")
        return number
    if typ is Path:
        if isinstance(value, str):
            return Path(value)
        raise bad("a path (a string)")
    if typ is str and not isinstance(value, str):
        raise bad("a string")
    return value


def _int_or_none(text: str) -> int | None:
    try:
        return int(text.strip())
    except ValueError:
        return None


def _unknown(key: str, where: str, value: object = None) -> ConfigError:
    msg = f"{key}: unknown configuration key ({where})"
    if isinstance(value, dict):
        return ConfigError(msg + "; the file has no tables: every setting is a top-level key")
    close = difflib.get_close_matches(key, list(key_types()), 1)
    return ConfigError(msg + (f"; did you mean {close[0]}?" if close else ""))


def read_config_file(path: Path) -> dict[str, object]:
    """The TOML file's settings, each checked and converted. Raises ConfigError."""
    try:
        doc = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"{CONFIG_KEY}: cannot read {path}: {exc.strerror or exc}") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{CONFIG_KEY}: {path} is not valid TOML: {exc}") from exc
    known = key_types()
    out: dict[str, object] = {}
    for key, value in doc.items():
        if key not in known:
            raise _unknown(key, f"in {path}", value)
        out[key] = coerce(key, value, f"in {path}")
    return out


@dataclass(frozen=True)
class ResolvedConfig:
    config: ServerConfig
    sources: Mapping[str, str]  # key -> where its value came from; keys at their default absent
    config_file: Path | None


def resolve_config(
    flags: Mapping[str, object],
    environ: Mapping[str, str] | None = None,
    config_file: str | Path | None = None,
) -> ResolvedConfig:
    """See config.load_config; also says where each value came from."""
    import os

    env = os.environ if environ is None else environ
    flag_of = {key: flag for flag, key in FLAGS.items()}
    path_value = config_file or flags.get(CONFIG_KEY) or env.get(env_name(CONFIG_KEY)) or None
    path = Path(str(path_value)) if path_value else None
    values: dict[str, object] = {}
    sources: dict[str, str] = {}
    if path is not None:
        for key, value in read_config_file(path).items():
            values[key], sources[key] = value, f"file {path}"
    for key in FLAGS.values():
        raw = env.get(env_name(key)) if key != CONFIG_KEY else None
        if raw:  # empty variables are ignored
            where = f"variable {env_name(key)}"
            values[key], sources[key] = coerce(key, raw, where), where
    known = key_types()
    for key, given in flags.items():
        if given is None or key == CONFIG_KEY:
            continue
        where = f"flag {flag_of[key]}" if key in flag_of else "argument"
        if key not in known:
            raise _unknown(key, where)
        text = given if isinstance(given, str) else str(given)
        values[key], sources[key] = coerce(key, text, where), where
    hot = {k: values.pop(k) for k in HOT_KEYS if k in values}
    cfg = ServerConfig(**values, hot=HotTierConfig(**hot))  # type: ignore[arg-type]
    try:
        cfg.validate()
    except ConfigError as exc:  # say where the refused value came from
        key = str(exc).partition(":")[0]
        if key in sources:
            raise ConfigError(f"{exc} ({sources[key]})") from exc
        raise
    return ResolvedConfig(cfg, sources, path)


# --- rendering --------------------------------------------------------------------------------
def flatten(cfg: ServerConfig) -> dict[str, object]:
    """Every configuration key -> its value in `cfg`."""
    out: dict[str, object] = {}
    for key in key_types():
        out[key] = getattr(cfg.hot, key) if key in HOT_KEYS else getattr(cfg, key)
    return out


def mask(key: str, value: object) -> object:
    """Hide secrets: the whole value of a secret-named key, the password inside a URL."""
    if SECRET_KEY.search(key) and value not in ("", None):
        return MASK
    if isinstance(value, str) and "://" in value and "@" in value:
        parts = urlsplit(value)
        if parts.password:
            host = parts.netloc.rpartition("@")[2]
            return parts._replace(netloc=f"{parts.username}:{MASK}@{host}").geturl()
    return value


def toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return json.dumps(str(value))  # a TOML basic string: JSON's escapes are valid TOML


def render_toml(resolved: ResolvedConfig) -> str:
    """The effective configuration as TOML, secrets masked, each line's source as a comment."""
    lines = [
        "# tierstore: effective server configuration",
        "# precedence: defaults < config file < TIERSTORE_* variables < flags",
    ]
    if resolved.config_file is not None:
        lines.append(f"# config file: {resolved.config_file}")
    for key, value in flatten(resolved.config).items():
        source = resolved.sources.get(key, "default")
        lines.append(f"{key} = {toml_value(mask(key, value))}  # {source}")
    return "\n".join(lines) + "\n"

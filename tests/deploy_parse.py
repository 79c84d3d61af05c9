"""Text-level parsers for deploy/, shared by the deploy checks (tests/deploy_checks*.py).

Nothing here knows about the repository layout: each function takes text or already-parsed YAML
and is unit-tested on literal input in tests/test_deploy_parsers.py. Covered: Dockerfile
instructions (stages, ARG/ENV, exec form, COPY, HEALTHCHECK), compose values (environment,
argv), `tierstore serve` command lines and their flags, TIERSTORE_* names in free text,
.dockerignore matching, ```sh blocks in markdown and the KRaft cluster id.
"""

from __future__ import annotations

import ast
import base64
import contextlib
import fnmatch
import json
import re
import shlex
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ENV_RE = re.compile(r"\bTIERSTORE_[A-Z0-9_]*[A-Z0-9]\b")
SHELL_BLOCK_RE = re.compile(r"```(?:sh|bash|console)\n(.*?)```", re.S)



# ------------------------------------------------------------------------------------------
# Dockerfile


@dataclass(frozen=True)
class Instr:
    keyword: str
    args: str
    line: int


def parse_dockerfile(text: str) -> list[Instr]:
    """Instructions with continuation lines joined; comments and blank lines dropped."""
    out: list[Instr] = []
    buf, start = "", 0
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if not buf:
            start = number
        if line.endswith("\\"):
            buf += line[:-1].strip() + " "
            continue
        buf += line
        keyword, _, args = buf.partition(" ")
        out.append(Instr(keyword.upper(), args.strip(), start))
        buf = ""
    return out


def stages(instrs: list[Instr]) -> list[list[Instr]]:
    """Build stages, each starting with its FROM; instructions before the first FROM dropped."""
    out: list[list[Instr]] = []
    for ins in instrs:
        if ins.keyword == "FROM":
            out.append([])
        if out:
            out[-1].append(ins)
    return out


def global_args(instrs: list[Instr]) -> dict[str, str]:
    args: dict[str, str] = {}
    for ins in instrs:
        if ins.keyword == "FROM":
            break
        if ins.keyword == "ARG":
            name, _, default = ins.args.partition("=")
            args[name.strip()] = default.strip()
    return args


def expand(value: str, variables: Mapping[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)",
                  lambda m: variables.get(m.group(1) or m.group(2), m.group(0)), value)


def parse_env(args: str) -> dict[str, str]:
    tokens = shlex.split(args)
    if tokens and "=" not in tokens[0]:  # legacy form: ENV KEY value with spaces
        return {tokens[0]: args.split(None, 1)[1] if len(tokens) > 1 else ""}
    return dict(tok.split("=", 1) for tok in tokens)


def exec_form(args: str) -> list[str] | None:
    """The JSON array of an exec-form instruction, None for shell form."""
    if not args.startswith("["):
        return None
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
    return value


def strip_options(args: str) -> str:
    """`--opt=value --flag rest` -> `rest` (options of COPY, HEALTHCHECK, ...)."""
    while args.startswith("--"):
        args = args.split(None, 1)[1] if " " in args else ""
    return args


def healthcheck_command(args: str) -> list[str] | None:
    """HEALTHCHECK [OPTIONS] CMD command -> its argv; None for HEALTHCHECK NONE."""
    rest = strip_options(args)
    if rest.upper() == "NONE":
        return None
    assert rest.upper().startswith("CMD "), args
    rest = rest[4:].strip()
    form = exec_form(rest)
    return form if form is not None else ["/bin/sh", "-c", rest]


def copy_parts(args: str) -> tuple[dict[str, str], list[str], str]:
    """COPY [--from=x ...] src... dest -> (options, sources, dest)."""
    opts: dict[str, str] = {}
    tokens = shlex.split(args)
    while tokens and tokens[0].startswith("--"):
        key, _, value = tokens.pop(0)[2:].partition("=")
        opts[key] = value
    form = exec_form(" ".join(tokens)) if tokens and tokens[0].startswith("[") else None
    if form is not None:
        tokens = form
    return opts, tokens[:-1], tokens[-1]


# ------------------------------------------------------------------------------------------
# compose values and Python constants


def compose_env(svc: Mapping[str, Any]) -> dict[str, str]:
    env = svc.get("environment") or {}
    if isinstance(env, list):
        pairs = [str(e).partition("=") for e in env]
        return {key: value for key, _, value in pairs}
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def compose_argv(value: Any) -> list[str]:
    if value is None:
        return []
    return shlex.split(value) if isinstance(value, str) else [str(v) for v in value]


def module_constants(source: str) -> dict[str, Any]:
    """Top-level `NAME = literal` assignments of a Python file, read without importing it."""
    out: dict[str, Any] = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign | ast.AnnAssign) and node.value is not None:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                if isinstance(target, ast.Name):
                    with contextlib.suppress(ValueError):
                        out[target.id] = ast.literal_eval(node.value)
    return out


# ------------------------------------------------------------------------------------------
# Command lines, variable names, .dockerignore, markdown


def port_of(address: str) -> int:
    _, sep, port = address.rpartition(":")
    assert sep and port.isdigit(), f"expected HOST:PORT, got {address!r}"
    return int(port)


def unknown_env_vars(text: str, known: Iterable[str]) -> list[str]:
    """Every TIERSTORE_* name in `text` that is not a real variable."""
    return sorted(set(ENV_RE.findall(text)) - set(known))


def flags_in(argv: Iterable[str]) -> list[str]:
    """The `--flag` names in an argv (`--flag=value` counts as `--flag`)."""
    return [a.split("=", 1)[0] for a in argv if a.startswith("-") and a != "-"]


def unknown_flags(argv: Iterable[str], known: Iterable[str]) -> list[str]:
    allowed = set(known)
    return [f for f in flags_in(argv) if f not in allowed]


def serve_args(argv: list[str], script: str = "tierstore") -> list[str] | None:
    """The arguments after `tierstore serve` (or after a tierstore image name in `docker run`),
    None when argv runs neither."""
    for i, token in enumerate(argv):
        if token == "serve" and i > 0 and Path(argv[i - 1]).name == script:
            return argv[i + 1:]
        if re.fullmatch(r"(?:[\w.-]+/)*tierstore:[\w.-]+", token) and argv[0] == "docker":
            return argv[i + 1:]
    return None


def flag_values(args: list[str], flags: Mapping[str, str]) -> dict[str, str]:
    """`--flag value` / `--flag=value` pairs -> {field: value} (for load_config)."""
    out: dict[str, str] = {}
    i = 0
    while i < len(args):
        name, eq, value = args[i].partition("=")
        if name in flags:
            if not eq and i + 1 < len(args):
                value = args[i + 1]
                i += 1
            out[flags[name]] = value
        i += 1
    return out


def _ignore_pattern_matches(path: str, pattern: str) -> bool:
    parts = path.split("/")
    for i in range(1, len(parts) + 1):  # a pattern matching a directory excludes its contents
        if fnmatch.fnmatchcase("/".join(parts[:i]), pattern):
            return True
        if pattern.startswith("**/") and any(
            fnmatch.fnmatchcase("/".join(parts[j:i]), pattern[3:]) for j in range(i)
        ):
            return True
    return False


def dockerignored(path: str, patterns: Iterable[str]) -> bool:
    """Docker's .dockerignore semantics, as far as this repo needs them: later patterns win,
    `!` re-includes, a directory pattern excludes everything below it, `**/` any depth."""
    ignored = False
    for raw in patterns:
        pattern = raw.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        if _ignore_pattern_matches(path, pattern.lstrip("!").strip("/")):
            ignored = not negate
    return ignored


def shell_commands(markdown: str) -> list[list[str]]:
    """Every command in the ```sh blocks of a markdown text, continuation lines joined."""
    commands: list[list[str]] = []
    for block in SHELL_BLOCK_RE.findall(markdown):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #", 1)[0].strip()
            if line and not line.startswith("#"):
                commands.append(shlex.split(line))
    return commands


def valid_kraft_cluster_id(value: str) -> bool:
    try:
        return len(base64.urlsafe_b64decode(value + "==")) == 16 and len(value) == 22
    except ValueError:
        return False

"""deploy/ is checked against the code, so it cannot drift from it.

There is no Docker engine or Kubernetes cluster here: every file under deploy/ is parsed and
checked against what the code really defines (`tierstore.server.config.FLAGS` and `env_name`,
`DEFAULT_LISTEN`, the gRPC health service names, `[project.scripts]` in pyproject.toml).
Each check is a function `check(code, deploy) -> list[str]` of problems; the tests at the bottom
run them against simulated code changes and broken files to show that they do fail.
`deploy/healthcheck.py` runs for real against an in-process server.
"""

from __future__ import annotations

import ast
import base64
import contextlib
import copy
import dataclasses
import fnmatch
import json
import os
import re
import shlex
import socket
import subprocess
import sys
import tomllib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from grpc_health.v1 import health_pb2

from tests.clihelp import script_options
from tierstore.server.app import create_server
from tierstore.server.config import (
    DEFAULT_LISTEN,
    FLAGS,
    ConfigError,
    ServerConfig,
    env_name,
    load_config,
)
from tierstore.server.servicer import SERVICE_NAME

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
HEALTHCHECK = DEPLOY / "healthcheck.py"

ENV_RE = re.compile(r"\bTIERSTORE_[A-Z0-9_]*[A-Z0-9]\b")
SHELL_BLOCK_RE = re.compile(r"```(?:sh|bash|console)\n(.*?)```", re.S)
SERVER_UID = 10001  # the image's USER; Kubernetes runAsUser must agree


# ------------------------------------------------------------------------------------------
# What the code defines


@dataclass(frozen=True)
class Code:
    flags: Mapping[str, str]  # flag -> ServerConfig field
    default_listen: str
    health_services: frozenset[str]
    scripts: Mapping[str, str]  # console script -> entry point
    shutdown_grace_s: float
    env_name: Callable[[str], str] = env_name

    @property
    def env_vars(self) -> frozenset[str]:
        return frozenset(self.env_name(f) for f in self.flags.values())

    @property
    def default_port(self) -> int:
        return port_of(self.default_listen)

    def allowed_flags(self) -> frozenset[str]:
        return frozenset(self.flags) | {"--help", "-h"}


def real_code() -> Code:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return Code(
        flags=dict(FLAGS),
        default_listen=DEFAULT_LISTEN,
        health_services=frozenset({"", SERVICE_NAME}),
        scripts=dict(pyproject["project"]["scripts"]),
        shutdown_grace_s=ServerConfig().shutdown_grace_s,
    )


# ------------------------------------------------------------------------------------------
# Parsing deploy/


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


@dataclass
class Deploy:
    texts: dict[str, str]  # path relative to the repo root -> text, every file under deploy/
    dockerfile: list[Instr]
    compose: dict[str, Any]
    k8s: list[dict[str, Any]]
    kustomization: dict[str, Any]
    dockerignore: list[str]
    healthcheck_default_port: int
    healthcheck_service: str

    # --- Dockerfile
    def final_stage(self) -> list[Instr]:
        return stages(self.dockerfile)[-1]

    def image_env(self) -> dict[str, str]:
        env: dict[str, str] = {}
        for ins in self.final_stage():
            if ins.keyword == "ENV":
                env.update(parse_env(ins.args))
        return env

    def image_argv(self) -> list[str]:
        """ENTRYPOINT + CMD of the final stage (exec form)."""
        argv: list[str] = []
        for keyword in ("ENTRYPOINT", "CMD"):
            found = [i for i in self.final_stage() if i.keyword == keyword]
            if found:
                form = exec_form(found[-1].args)
                assert form is not None, f"{keyword} must use the exec form: {found[-1].args}"
                argv += form
        return argv

    # --- compose
    def services(self) -> dict[str, dict[str, Any]]:
        services: dict[str, dict[str, Any]] = self.compose.get("services") or {}
        return services

    def builds_server_image(self, svc: Mapping[str, Any]) -> bool:
        build = svc.get("build")
        if build is None:
            return False
        if isinstance(build, str):
            build = {"context": build}
        context = DEPLOY / build.get("context", ".")
        return (context / build.get("dockerfile", "Dockerfile")).resolve() == (
            DEPLOY / "Dockerfile"
        ).resolve()

    def server_images(self) -> set[str]:
        return {str(s.get("image", "")) for s in self.services().values()
                if self.builds_server_image(s)} - {""}

    def compose_servers(self) -> dict[str, dict[str, Any]]:
        """Services running the server image with its own entry point (`tierstore serve`)."""
        images = self.server_images()
        return {
            name: svc for name, svc in self.services().items()
            if (self.builds_server_image(svc) or svc.get("image") in images)
            and "entrypoint" not in svc
        }

    # --- Kubernetes
    def kinds(self, kind: str) -> list[dict[str, Any]]:
        return [o for o in self.k8s if o.get("kind") == kind]

    def configmaps(self) -> dict[str, dict[str, Any]]:
        return {o["metadata"]["name"]: o for o in self.kinds("ConfigMap")}

    def secrets(self) -> dict[str, dict[str, Any]]:
        return {o["metadata"]["name"]: o for o in self.kinds("Secret")}

    def server_containers(self) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
        """(workload, container) for every container running the server image."""
        for obj in self.kinds("StatefulSet") + self.kinds("Deployment"):
            for c in obj["spec"]["template"]["spec"].get("containers", []):
                if str(c.get("image", "")).split("/")[-1].startswith("tierstore"):
                    yield obj, c


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


def container_env(dep: Deploy, container: Mapping[str, Any]) -> dict[str, str]:
    """What envFrom + env give the container (literal values only)."""
    env: dict[str, str] = {}
    for src in container.get("envFrom", []):
        if "configMapRef" in src:
            cm = dep.configmaps().get(src["configMapRef"]["name"], {})
            env.update({k: str(v) for k, v in (cm.get("data") or {}).items()})
        if "secretRef" in src:
            secret = dep.secrets().get(src["secretRef"]["name"], {})
            env.update({k: str(v) for k, v in (secret.get("stringData") or {}).items()})
            env.update({k: "<data>" for k in (secret.get("data") or {})})
    for item in container.get("env", []):
        env[item["name"]] = str(item.get("value", "<valueFrom>"))
    return env


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


def load_deploy(root: Path = ROOT) -> Deploy:
    deploy = root / "deploy"
    texts = {
        str(p.relative_to(root)): p.read_text()
        for p in sorted(deploy.rglob("*")) if p.is_file() and "__pycache__" not in p.parts
    }
    compose = yaml.safe_load((deploy / "compose.yaml").read_text())
    k8s: list[dict[str, Any]] = []
    kustomization: dict[str, Any] = {}
    for path in sorted((deploy / "k8s").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc:
                continue
            if doc.get("kind") == "Kustomization":
                kustomization = doc
            else:
                k8s.append(doc)
    constants = module_constants((deploy / "healthcheck.py").read_text())
    return Deploy(
        texts=texts,
        dockerfile=parse_dockerfile((deploy / "Dockerfile").read_text()),
        compose=compose,
        k8s=k8s,
        kustomization=kustomization,
        dockerignore=(root / ".dockerignore").read_text().splitlines(),
        healthcheck_default_port=int(constants["DEFAULT_PORT"]),
        healthcheck_service=str(constants["SERVICE"]),
    )


# ------------------------------------------------------------------------------------------
# Small helpers, unit-tested below


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


def effective_listen(code: Code, env: Mapping[str, str], args: list[str]) -> str:
    """The listen address a server gets: flag, else env var, else the code's default."""
    listen_flag = next((f for f, fld in code.flags.items() if fld == "listen"), "--listen")
    from_flag = flag_values(args, {listen_flag: "listen"}).get("listen")
    return from_flag or env.get(code.env_name("listen")) or code.default_listen


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


# ------------------------------------------------------------------------------------------
# The checks: each returns a list of problems, empty when deploy/ agrees with the code


def check_env_vars(code: Code, dep: Deploy) -> list[str]:
    """Every TIERSTORE_* name anywhere in deploy/ is the env var of a real flag."""
    return [
        f"{path}: {name} is not a tierstore variable (known: {sorted(code.env_vars)})"
        for path, text in sorted(dep.texts.items())
        for name in unknown_env_vars(text, code.env_vars)
    ]


def server_invocations(code: Code, dep: Deploy) -> list[tuple[str, list[str]]]:
    """(where, args after `tierstore serve`) for every place deploy/ starts the server."""
    out: list[tuple[str, list[str]]] = []
    script = next(iter(code.scripts), "tierstore")
    image = dep.image_argv()
    image_args = serve_args(image, script) or []
    out.append(("deploy/Dockerfile ENTRYPOINT/CMD", image_args))
    for name, svc in dep.compose_servers().items():
        command = compose_argv(svc.get("command"))
        out.append((f"compose {name} command", command if command else image_args))
    for wl, c in dep.server_containers():
        argv = [*compose_argv(c.get("command")), *compose_argv(c.get("args"))]
        if c.get("command"):
            argv = serve_args(argv, script) or argv
        elif not c.get("args"):
            argv = image_args
        out.append((f"k8s {wl['kind']}/{wl['metadata']['name']} container {c['name']}", argv))
    for path, text in dep.texts.items():
        if path.endswith(".md"):
            for cmd in shell_commands(text):
                args = serve_args(cmd, script)
                if args is not None:
                    out.append((f"{path}: {shlex.join(cmd)}", args))
    return out


def check_flags(code: Code, dep: Deploy) -> list[str]:
    """Every `--flag` given to `tierstore serve` anywhere in deploy/ is a real flag."""
    return [
        f"{where}: {flag} is not a flag of `tierstore serve` (known: {sorted(code.flags)})"
        for where, args in server_invocations(code, dep)
        for flag in unknown_flags(args, code.allowed_flags())
    ]


def check_ports(code: Code, dep: Deploy) -> list[str]:
    """Every port used for the server is the port it really listens on: TIERSTORE_LISTEN (or
    --listen) where deploy/ sets it, else the code's DEFAULT_LISTEN."""
    problems: list[str] = []

    def expect(where: str, port: Any, listen: str) -> None:
        if not isinstance(port, int) or port != port_of(listen):
            problems.append(f"{where}: port {port!r}, but the server listens on {listen}")

    if dep.healthcheck_default_port != code.default_port:
        problems.append(
            f"deploy/healthcheck.py: DEFAULT_PORT {dep.healthcheck_default_port}, but the "
            f"server's default is {code.default_listen} (tierstore.server.config.DEFAULT_LISTEN)"
        )

    image_env = dep.image_env()
    image_args = serve_args(dep.image_argv(), next(iter(code.scripts), "tierstore")) or []
    image_listen = effective_listen(code, image_env, image_args)
    for ins in dep.final_stage():
        if ins.keyword == "EXPOSE":
            for tok in ins.args.split():
                expect(f"deploy/Dockerfile:{ins.line} EXPOSE", int(tok.split("/")[0]),
                       image_listen)

    servers = dep.compose_servers()
    listens: dict[str, str] = {}
    for name, svc in servers.items():
        env = {**image_env, **compose_env(svc)}
        command = compose_argv(svc.get("command")) or image_args
        listen = listens[name] = effective_listen(code, env, command)
        for spec in svc.get("ports", []):
            target = spec.get("target") if isinstance(spec, dict) else str(spec).split(":")[-1]
            expect(f"compose {name} ports {spec!r}", int(str(target).split("/")[0]), listen)
        for spec in svc.get("expose", []):
            expect(f"compose {name} expose {spec!r}", int(str(spec).split("/")[0]), listen)
    # other services reaching a server by name (the example worker)
    for other, svc in dep.services().items():
        text = yaml.safe_dump(svc)
        for name, listen in listens.items():
            for m in re.finditer(rf"(?<![\w.-]){re.escape(name)}:(\d+)", text):
                expect(f"compose {other}: {m.group(0)}", int(m.group(1)), listen)

    container_ports: dict[str, int] = {}
    for wl, c in dep.server_containers():
        where = f"k8s {wl['kind']}/{wl['metadata']['name']} {c['name']}"
        args = compose_argv(c.get("args")) or image_args
        listen = effective_listen(code, {**image_env, **container_env(dep, c)}, args)
        for p in c.get("ports", []):
            expect(f"{where} containerPort", p.get("containerPort"), listen)
            if "name" in p:
                container_ports[p["name"]] = p.get("containerPort")
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            if probe in c:
                how = c[probe].get("grpc") or c[probe].get("tcpSocket")
                if how is None:
                    problems.append(f"{where} {probe}: neither grpc nor tcpSocket")
                else:
                    expect(f"{where} {probe}", how.get("port"), listen)
        for svc in dep.kinds("Service"):
            for p in svc["spec"].get("ports", []):
                swhere = f"k8s Service/{svc['metadata']['name']} port {p.get('name', '')}"
                expect(swhere, p.get("port"), listen)
                target = p.get("targetPort", p.get("port"))
                expect(f"{swhere} targetPort {target!r}",
                       container_ports.get(target, target), listen)
    return problems


def check_health_services(code: Code, dep: Deploy) -> list[str]:
    """Every gRPC health service name deploy/ asks for is one the server registers."""
    used: list[tuple[str, str]] = [("deploy/healthcheck.py SERVICE", dep.healthcheck_service)]
    for ins in dep.final_stage():
        if ins.keyword == "HEALTHCHECK":
            argv = healthcheck_command(ins.args) or []
            script = [i for i, a in enumerate(argv) if a.endswith("healthcheck.py")]
            if script:
                used += [(f"deploy/Dockerfile:{ins.line}", a) for a in argv[script[0] + 1:]]
    for name, svc in dep.services().items():
        argv = compose_argv((svc.get("healthcheck") or {}).get("test"))
        script = [i for i, a in enumerate(argv) if a.endswith("healthcheck.py")]
        if script:
            used += [(f"compose {name} healthcheck", a) for a in argv[script[0] + 1:]]
    for wl, c in dep.server_containers():
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            grpc_probe = (c.get(probe) or {}).get("grpc")
            if grpc_probe is not None:
                used.append((f"k8s {wl['metadata']['name']} {probe}",
                             grpc_probe.get("service", "")))
    return [f"{where}: health service {name!r} is not one of {sorted(code.health_services)}"
            for where, name in used if name not in code.health_services]


def check_dockerfile(code: Code, dep: Deploy) -> list[str]:
    problems: list[str] = []
    all_stages = stages(dep.dockerfile)
    args = global_args(dep.dockerfile)
    if len(all_stages) < 2:
        problems.append("Dockerfile: not multi-stage")
        return problems
    bases = [expand(s[0].args.split()[0], args) for s in all_stages]
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    minimum = tuple(int(x) for x in requires.removeprefix(">=").split("."))
    for base in bases:
        m = re.fullmatch(r"python:(\d+)\.(\d+)(?:\.\d+)?-slim(?:-\w+)?", base)
        if m is None:
            problems.append(f"Dockerfile: base image {base} is not python:X.Y-slim")
        elif (int(m.group(1)), int(m.group(2))) < minimum:
            problems.append(f"Dockerfile: {base} does not satisfy requires-python {requires}")
    final = dep.final_stage()
    keywords = [i.keyword for i in final]
    if not any(i.keyword == "COPY" and "from" in copy_parts(i.args)[0] for i in final):
        problems.append("Dockerfile: the final stage copies nothing from the builder")
    if any(i.keyword == "RUN" and re.search(r"\bpip\b", i.args) for i in final):
        problems.append("Dockerfile: the final stage runs pip; install in the builder")
    users = [i.args for i in final if i.keyword == "USER"]
    if not users or users[-1].split(":")[0] != str(SERVER_UID):
        problems.append(f"Dockerfile: the final USER must be uid {SERVER_UID}, got {users}")
    env = dep.image_env()
    data_dir = env.get(code.env_name("data_dir"))
    volumes = [v for i in final if i.keyword == "VOLUME"
               for v in (exec_form(i.args) or i.args.split())]
    if not data_dir or data_dir not in volumes:
        problems.append(f"Dockerfile: VOLUME {volumes} does not hold the data dir {data_dir}")
    listen = env.get(code.env_name("listen"), "")
    if listen.rpartition(":")[0] not in ("0.0.0.0", "[::]", "::"):
        problems.append(f"Dockerfile: TIERSTORE_LISTEN={listen!r} is unreachable from outside")
    if "EXPOSE" not in keywords:
        problems.append("Dockerfile: no EXPOSE")

    argv = dep.image_argv()
    if len(argv) < 2 or argv[0] not in code.scripts or argv[1] != "serve":
        problems.append(f"Dockerfile: ENTRYPOINT {argv} does not run `<console script> serve` "
                        f"(scripts: {sorted(code.scripts)})")

    copies = {copy_parts(i.args)[2]: copy_parts(i.args)[1] for i in final if i.keyword == "COPY"}
    health = [i for i in final if i.keyword == "HEALTHCHECK"]
    if not health:
        problems.append("Dockerfile: no HEALTHCHECK")
    for ins in health:
        cmd = healthcheck_command(ins.args) or []
        script = next((a for a in cmd if a.endswith("healthcheck.py")), None)
        if script is None or copies.get(script) != ["deploy/healthcheck.py"]:
            problems.append(f"Dockerfile:{ins.line}: HEALTHCHECK {cmd} does not run "
                            f"deploy/healthcheck.py as copied into the image ({copies})")

    # everything the stages COPY from the context exists and is in the context
    copied: set[str] = set()
    for ins in dep.dockerfile:
        if ins.keyword == "COPY":
            opts, sources, _ = copy_parts(ins.args)
            if "from" in opts:
                continue
            for src in sources:
                copied.add(src.strip("/").removeprefix("./"))
                if not (ROOT / src).exists():
                    problems.append(f"Dockerfile:{ins.line}: COPY {src}: no such path")
                elif dockerignored(src.strip("/"), dep.dockerignore):
                    problems.append(f"Dockerfile:{ins.line}: COPY {src} is in .dockerignore")
    # the package's symlinked subpackages (tierstore/server -> ../server) must come along
    for top in [c for c in copied if (ROOT / c).is_dir()]:
        for link in (ROOT / top).rglob("*"):
            if link.is_symlink():
                target = link.resolve().relative_to(ROOT).as_posix()
                if not any(target == c or target.startswith(c + "/") for c in copied):
                    problems.append(f"Dockerfile: {link.relative_to(ROOT)} links to {target}, "
                                    "which the builder does not COPY")
    for needed in (".venv", "tierstore-data", ".git"):
        if not dockerignored(needed, dep.dockerignore):
            problems.append(f".dockerignore: {needed} is not excluded")
    return problems


def check_compose(code: Code, dep: Deploy) -> list[str]:
    problems: list[str] = []
    services = dep.services()
    servers = dep.compose_servers()
    image_env = dep.image_env()
    if len(servers) != 3:
        problems.append(f"compose: expected 3 tierstore servers, found {sorted(servers)}")

    kafka = {n: s for n, s in services.items() if "kafka" in str(s.get("image", ""))}
    minio = {n: s for n, s in services.items() if "minio/minio" in str(s.get("image", ""))}
    mc = {n: s for n, s in services.items() if "minio/mc" in str(s.get("image", ""))}
    if len(kafka) != 1:
        problems.append(f"compose: expected one Kafka service, found {sorted(kafka)}")
    if len(minio) != 1:
        problems.append(f"compose: expected one MinIO service, found {sorted(minio)}")
    if len(mc) != 1:
        problems.append(f"compose: expected one `mc` bucket-creating service, found {sorted(mc)}")
    if "example-worker" not in services:
        problems.append("compose: no example-worker service")

    advertised: set[str] = set()
    for name, svc in kafka.items():
        env = compose_env(svc)
        roles = set(env.get("KAFKA_PROCESS_ROLES", "").split(","))
        if roles != {"broker", "controller"}:
            problems.append(f"compose {name}: KAFKA_PROCESS_ROLES must be broker,controller "
                            "(KRaft combined mode)")
        for key in ("KAFKA_NODE_ID", "KAFKA_CONTROLLER_QUORUM_VOTERS",
                    "KAFKA_CONTROLLER_LISTENER_NAMES", "KAFKA_LISTENERS"):
            if key not in env:
                problems.append(f"compose {name}: {key} missing (KRaft)")
        if not valid_kraft_cluster_id(env.get("CLUSTER_ID", "")):
            problems.append(f"compose {name}: CLUSTER_ID is not a base64 UUID")
        for listener in env.get("KAFKA_ADVERTISED_LISTENERS", "").split(","):
            advertised.add(listener.split("://", 1)[-1])
    minio_env = {k: v for s in minio.values() for k, v in compose_env(s).items()}
    mc_text = " ".join(yaml.safe_dump(s) for s in mc.values())

    volumes_used: dict[str, str] = {}
    declared = set((dep.compose.get("volumes") or {}).keys())
    for name, svc in servers.items():
        env = {**image_env, **compose_env(svc)}
        cfg_env = {k: v for k, v in env.items() if k in code.env_vars}
        for host_port in env.get(code.env_name("kafka_bootstrap"), "").split(","):
            if host_port not in advertised:
                problems.append(f"compose {name}: Kafka bootstrap {host_port!r} is not an "
                                f"advertised listener of the Kafka service ({advertised})")
        store = urlsplit(env.get(code.env_name("object_store"), ""))
        if store.scheme != "s3":
            problems.append(f"compose {name}: object store {store.geturl()!r} is not s3://")
        elif not re.search(rf"\bmb\b.*\b\w+/{re.escape(store.netloc)}\b", mc_text):
            problems.append(f"compose {name}: bucket {store.netloc!r} is not created by `mc mb`")
        endpoint = urlsplit(env.get(code.env_name("s3_endpoint"), ""))
        if endpoint.hostname not in minio:
            problems.append(f"compose {name}: S3 endpoint {endpoint.geturl()!r} is not MinIO")
        for aws, root in (("AWS_ACCESS_KEY_ID", "MINIO_ROOT_USER"),
                          ("AWS_SECRET_ACCESS_KEY", "MINIO_ROOT_PASSWORD")):
            if env.get(aws) is None or env.get(aws) != minio_env.get(root):
                problems.append(f"compose {name}: {aws} does not match MinIO's {root}")
        if "AWS_DEFAULT_REGION" not in env:
            problems.append(f"compose {name}: AWS_DEFAULT_REGION missing")
        data_dir = cfg_env.get(code.env_name("data_dir"), "")
        mounts = [str(v).split(":") for v in svc.get("volumes", [])]
        own = [m[0] for m in mounts if len(m) >= 2 and m[1] == data_dir]
        if len(own) != 1 or own[0] not in declared:
            problems.append(f"compose {name}: no declared named volume at its data dir "
                            f"{data_dir!r} ({svc.get('volumes')})")
        else:
            if own[0] in volumes_used:
                problems.append(f"compose {name}: shares volume {own[0]} with "
                                f"{volumes_used[own[0]]}")
            volumes_used[own[0]] = name
        test = compose_argv((svc.get("healthcheck") or {}).get("test"))
        if not any(a.endswith("healthcheck.py") for a in test):
            problems.append(f"compose {name}: healthcheck does not use healthcheck.py")
        needs = svc.get("depends_on") or {}
        for dep_name in [*kafka, *minio]:
            if (needs.get(dep_name) or {}).get("condition") != "service_healthy":
                problems.append(f"compose {name}: does not wait for {dep_name} to be healthy")
        for dep_name in mc:
            if (needs.get(dep_name) or {}).get("condition") != "service_completed_successfully":
                problems.append(f"compose {name}: does not wait for {dep_name} to complete")

    conditions = {"service_started", "service_healthy", "service_completed_successfully"}
    for name, svc in services.items():
        needs = svc.get("depends_on") or {}
        for target, how in (needs.items() if isinstance(needs, dict) else
                            ((t, {}) for t in needs)):
            condition = (how or {}).get("condition", "service_started")
            if target not in services:
                problems.append(f"compose {name}: depends on unknown service {target}")
            elif condition not in conditions:
                problems.append(f"compose {name}: unknown condition {condition}")
            elif condition == "service_healthy" and "healthcheck" not in services[target] and \
                    target not in servers:
                problems.append(f"compose {name}: waits for {target} to be healthy, "
                                "but it has no healthcheck")
    for name in mc:
        if str(services[name].get("restart", "no")) != "no":
            problems.append(f"compose {name}: one-shot service must not restart")

    worker = services.get("example-worker", {})
    if worker:
        if not any((worker.get("depends_on") or {}).get(s, {}).get("condition") ==
                   "service_healthy" for s in servers):
            problems.append("compose example-worker: does not wait for a healthy server")
        argv = [*compose_argv(worker.get("entrypoint")), *compose_argv(worker.get("command"))]
        problems += _check_worker_argv(argv, dep)
    return problems


def _check_worker_argv(argv: list[str], dep: Deploy) -> list[str]:
    """The worker runs a script the image copies from the repository, with options it has."""
    if argv[:1] != ["python"] or len(argv) < 2 or not argv[1].endswith(".py"):
        return [f"compose example-worker: {argv[:2]} does not run a python script"]
    copies = {copy_parts(i.args)[2].rstrip("/"): copy_parts(i.args)[1]
              for i in dep.final_stage() if i.keyword == "COPY"}
    source = next((f"{src[0].rstrip('/')}/{argv[1][len(dest) + 1:]}"
                   for dest, src in copies.items()
                   if len(src) == 1 and argv[1].startswith(dest + "/")), None)
    if source is None or not (ROOT / source).is_file():
        return [f"compose example-worker: {argv[1]} is not copied into the image from a file of "
                f"the repository ({copies})"]
    known = script_options(source)
    return [f"compose example-worker: {source} has no option {a}"
            for a in argv[2:] if a.startswith("--") and a.split("=")[0] not in known]


def check_k8s(code: Code, dep: Deploy) -> list[str]:
    problems: list[str] = []
    sts = dep.kinds("StatefulSet")
    services = dep.kinds("Service")
    headless = [s for s in services if s["spec"].get("clusterIP") == "None"]
    client = [s for s in services if s["spec"].get("clusterIP") != "None"]
    pdbs = dep.kinds("PodDisruptionBudget")
    for kind, found in (("StatefulSet", sts), ("headless Service (clusterIP: None)", headless),
                        ("client Service", client), ("PodDisruptionBudget", pdbs),
                        ("ConfigMap", dep.kinds("ConfigMap")), ("Secret", dep.kinds("Secret"))):
        if len(found) != 1:
            problems.append(f"k8s: expected one {kind}, found {len(found)}")
    if problems:
        return problems
    (ss,) = sts
    spec = ss["spec"]
    pod = spec["template"]["spec"]
    labels = spec["template"]["metadata"].get("labels", {})

    def selects(selector: Mapping[str, str], where: str) -> None:
        if not selector or any(labels.get(k) != v for k, v in selector.items()):
            problems.append(f"{where}: selector {dict(selector)} does not match the pods")

    if spec.get("replicas") != 3:
        problems.append(f"k8s StatefulSet: replicas {spec.get('replicas')}, expected 3")
    if spec.get("serviceName") != headless[0]["metadata"]["name"]:
        problems.append("k8s StatefulSet: serviceName is not the headless Service")
    selects(spec["selector"].get("matchLabels", {}), "k8s StatefulSet")
    for svc in services:
        selects(svc["spec"].get("selector", {}), f"k8s Service/{svc['metadata']['name']}")
        if not any(p.get("name") == "grpc" for p in svc["spec"].get("ports", [])):
            problems.append(f"k8s Service/{svc['metadata']['name']}: no port named grpc")
    pdb = pdbs[0]["spec"]
    selects(pdb.get("selector", {}).get("matchLabels", {}), "k8s PodDisruptionBudget")
    if pdb.get("maxUnavailable") != 1:
        problems.append("k8s PodDisruptionBudget: maxUnavailable must be 1")

    grace = pod.get("terminationGracePeriodSeconds", 30)
    if grace < max(30, code.shutdown_grace_s + 20):
        problems.append(f"k8s: terminationGracePeriodSeconds {grace} leaves no time for the "
                        f"shutdown snapshot (server grace {code.shutdown_grace_s}s)")
    psc = pod.get("securityContext", {})
    if psc.get("runAsNonRoot") is not True or psc.get("runAsUser") != SERVER_UID:
        problems.append(f"k8s: pod securityContext must be runAsNonRoot, uid {SERVER_UID}")
    if psc.get("fsGroup") is None:
        problems.append("k8s: no fsGroup: the data volume is not writable by the server")

    containers = list(dep.server_containers())
    if len(containers) != 1:
        problems.append(f"k8s: expected one tierstore container, found {len(containers)}")
        return problems
    _, c = containers[0]
    env = {**dep.image_env(), **container_env(dep, c)}
    for src in c.get("envFrom", []):
        ref = src.get("configMapRef") or src.get("secretRef") or {}
        pool = dep.configmaps() if "configMapRef" in src else dep.secrets()
        if ref.get("name") not in pool:
            problems.append(f"k8s: envFrom references missing {ref.get('name')}")
    if not any("configMapRef" in s for s in c.get("envFrom", [])) or \
            not any("secretRef" in s for s in c.get("envFrom", [])):
        problems.append("k8s: the container must take envFrom the ConfigMap and the Secret")
    for cm in dep.kinds("ConfigMap"):
        for key, value in (cm.get("data") or {}).items():
            if not isinstance(value, str):
                problems.append(f"k8s ConfigMap {key}: value {value!r} must be a string")
    for secret in dep.kinds("Secret"):
        if not secret.get("stringData"):
            problems.append("k8s Secret: credentials go in stringData")
        for key in (secret.get("stringData") or {}):
            if key in code.env_vars:
                problems.append(f"k8s Secret: {key} is not secret; put it in the ConfigMap")
    for probe in ("readinessProbe", "livenessProbe"):
        if "grpc" not in (c.get(probe) or {}):
            problems.append(f"k8s: {probe} must use the native grpc probe")
    resources = c.get("resources", {})
    if not {"cpu", "memory"} <= set(resources.get("requests", {})):
        problems.append("k8s: resources.requests must set cpu and memory")
    if "memory" not in resources.get("limits", {}):
        problems.append("k8s: resources.limits must set memory")
    data_dir = env.get(code.env_name("data_dir"), "")
    claims = {t["metadata"]["name"] for t in spec.get("volumeClaimTemplates", [])}
    mounted = {m["name"] for m in c.get("volumeMounts", []) if m.get("mountPath") == data_dir}
    if not claims & mounted:
        problems.append(f"k8s: no volumeClaimTemplate is mounted at the data dir {data_dir!r}")
    listen = env.get(code.env_name("listen"), code.default_listen)
    if listen.rpartition(":")[0] in ("127.0.0.1", "localhost", "[::1]"):
        problems.append(f"k8s: TIERSTORE_LISTEN {listen} is unreachable from outside the pod")

    namespaces = {o["metadata"].get("namespace") for o in dep.k8s if o["kind"] != "Namespace"}
    if len(namespaces) != 1:
        problems.append(f"k8s: objects in several namespaces {namespaces}")
    listed = set(dep.kustomization.get("resources", []))
    files = {Path(p).name for p in dep.texts if p.startswith("deploy/k8s/")
             and p.endswith(".yaml") and Path(p).name != "kustomization.yaml"}
    if listed != files:
        problems.append(f"k8s/kustomization.yaml: resources {sorted(listed)} != files "
                        f"{sorted(files)}")
    return problems


def check_readme_table(code: Code, dep: Deploy) -> list[str]:
    """deploy/README.md lists exactly the real flags with their variables."""
    text = dep.texts["deploy/README.md"]
    rows = set(re.findall(r"^\| `(--[a-z0-9-]+)` \| `(TIERSTORE_[A-Z0-9_]+)` \|", text, re.M))
    want = {(flag, code.env_name(fld)) for flag, fld in code.flags.items()}
    problems = [f"deploy/README.md: row for {f} / {e} is missing" for f, e in sorted(want - rows)]
    problems += [f"deploy/README.md: row for {f} / {e} is not a real flag"
                 for f, e in sorted(rows - want)]
    return problems


CHECKS: list[Callable[[Code, Deploy], list[str]]] = [
    check_env_vars, check_flags, check_ports, check_health_services, check_dockerfile,
    check_compose, check_k8s, check_readme_table,
]


# ------------------------------------------------------------------------------------------
# Tests: deploy/ agrees with the code


@pytest.fixture(scope="module")
def code() -> Code:
    return real_code()


@pytest.fixture(scope="module")
def dep() -> Deploy:
    return load_deploy()


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
def test_deploy_agrees_with_code(
    check: Callable[[Code, Deploy], list[str]], code: Code, dep: Deploy
) -> None:
    assert check(code, dep) == []


def test_every_server_configuration_in_deploy_loads(code: Code, dep: Deploy) -> None:
    """The settings each deployed server gets are accepted by the real config loader."""
    image_env = dep.image_env()
    contexts: dict[str, tuple[dict[str, str], list[str]]] = {
        "Dockerfile": (image_env, serve_args(dep.image_argv()) or []),
    }
    for name, svc in dep.compose_servers().items():
        contexts[f"compose {name}"] = ({**image_env, **compose_env(svc)},
                                       compose_argv(svc.get("command")))
    for wl, c in dep.server_containers():
        contexts[f"k8s {wl['metadata']['name']}"] = (
            {**image_env, **container_env(dep, c)}, compose_argv(c.get("args")))
    assert len(contexts) == 5
    for where, (env, args) in contexts.items():
        try:
            cfg = load_config(flag_values(args, code.flags), environ=env)
        except ConfigError as exc:
            pytest.fail(f"{where}: {exc}")
        assert cfg.listen_host_port()[1] == code.default_port, where


def test_every_deploy_yaml_parses() -> None:
    paths = sorted(DEPLOY.rglob("*.yaml")) + sorted(DEPLOY.rglob("*.yml"))
    assert len(paths) >= 8
    for path in paths:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
        assert docs, path
        for doc in docs:
            assert isinstance(doc, dict), path
            if path.parent.name == "k8s":
                assert {"apiVersion", "kind"} <= set(doc), path
                if doc["kind"] != "Kustomization":
                    assert doc["metadata"]["name"], path


# ------------------------------------------------------------------------------------------
# deploy/healthcheck.py, for real


def _run_healthcheck(listen: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(HEALTHCHECK), *args],
        env={**os.environ, "TIERSTORE_LISTEN": listen},
        capture_output=True, text=True, timeout=30,
    )


def _closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def test_healthcheck_against_a_real_server(tmp_path: Path) -> None:
    running = create_server(ServerConfig(listen="127.0.0.1:0", data_dir=tmp_path))
    try:
        ok = _run_healthcheck(f"127.0.0.1:{running.port}")
        assert ok.returncode == 0, ok.stderr
        ok = _run_healthcheck(f"0.0.0.0:{running.port}", SERVICE_NAME)  # wildcard: loopback
        assert ok.returncode == 0, ok.stderr
        unknown = _run_healthcheck(f"127.0.0.1:{running.port}", "no.such.Service")
        assert unknown.returncode == 1 and "NOT_FOUND" in unknown.stderr
        # NOT_SERVING, as during a graceful shutdown
        running.health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        draining = _run_healthcheck(f"127.0.0.1:{running.port}")
        assert draining.returncode == 1 and "NOT_SERVING" in draining.stderr
    finally:
        running.stop(grace=0, snapshot=False)


def test_healthcheck_fails_on_a_closed_port() -> None:
    result = _run_healthcheck(f"127.0.0.1:{_closed_port()}")
    assert result.returncode == 1
    assert "UNAVAILABLE" in result.stderr


# ------------------------------------------------------------------------------------------
# The checks can fail: simulated code changes and broken files are reported


def _mutated(dep: Deploy, edit: Callable[[Deploy], object]) -> Deploy:
    other = copy.deepcopy(dep)
    edit(other)
    return other


def test_checker_reports_a_wrong_env_var_name() -> None:
    doc = "env:\n  TIERSTORE_KAFKA_BROKERS: kafka:9092\n  TIERSTORE_LISTEN: 0.0.0.0:7070\n"
    assert unknown_env_vars(doc, real_code().env_vars) == ["TIERSTORE_KAFKA_BROKERS"]
    assert unknown_env_vars("MY_TIERSTORE_X=1 TIERSTORE_* $TIERSTORE_DATA_DIR",
                            real_code().env_vars) == []


def test_checker_reports_a_wrong_flag() -> None:
    argv = ["tierstore", "serve", "--listen=0.0.0.0:7070", "--kafka-brokers", "k:9092"]
    assert unknown_flags(serve_args(argv) or [], real_code().allowed_flags()) == [
        "--kafka-brokers"
    ]
    assert serve_args(["docker", "run", "--rm", "tierstore:dev", "--listen", "x:1"]) == [
        "--listen", "x:1"]
    assert serve_args(["kubectl", "apply", "-k", "deploy/k8s"]) is None


def test_a_flag_renamed_in_the_code_is_caught(code: Code, dep: Deploy) -> None:
    renamed = dict(code.flags)
    del renamed["--kafka-bootstrap"]
    renamed["--kafka-brokers"] = "kafka_brokers"
    changed = dataclasses.replace(code, flags=renamed)
    env_problems = check_env_vars(changed, dep)
    assert any("TIERSTORE_KAFKA_BOOTSTRAP is not a tierstore variable" in p
               for p in env_problems)
    assert any("--kafka-bootstrap" in p for p in check_readme_table(changed, dep))
    # and a flag passed on a command line
    with_args = _mutated(dep, lambda d: d.services()["tierstore-2"].update(
        command=["--kafka-bootstrap", "kafka:9092"]))
    assert any("--kafka-bootstrap is not a flag" in p for p in check_flags(changed, with_args))
    assert check_flags(code, with_args) == []


def test_a_port_changed_in_the_code_is_caught(code: Code, dep: Deploy) -> None:
    changed = dataclasses.replace(code, default_listen="127.0.0.1:8080")
    assert any("healthcheck.py: DEFAULT_PORT 7070" in p for p in check_ports(changed, dep))


def test_a_wrong_port_in_deploy_is_caught(code: Code, dep: Deploy) -> None:
    def edit(d: Deploy) -> None:
        d.services()["tierstore-3"]["ports"] = ["127.0.0.1:7073:7071"]
        _, container = next(d.server_containers())
        container["readinessProbe"]["grpc"]["port"] = 7071
        d.kinds("Service")[0]["spec"]["ports"][0]["targetPort"] = 9999
        d.services()["example-worker"]["command"][-1] = "tierstore-1:7000"
        d.dockerfile.append(Instr("EXPOSE", "7071", 99))

    problems = check_ports(code, _mutated(dep, edit))
    assert len(problems) == 5, problems
    moved = _mutated(dep, lambda d: d.compose["services"]["tierstore-1"]["environment"].update(
        TIERSTORE_LISTEN="0.0.0.0:7071"))
    assert any("compose tierstore-1 ports" in p for p in check_ports(code, moved))


def test_a_renamed_health_service_or_console_script_is_caught(code: Code, dep: Deploy) -> None:
    renamed = dataclasses.replace(code, health_services=frozenset({"", "tierstore.v2.Store"}))
    assert any("readinessProbe" in p for p in check_health_services(renamed, dep))
    script = dataclasses.replace(code, scripts={"tierstored": "tierstore.cli:main"})
    assert any("ENTRYPOINT" in p for p in check_dockerfile(script, dep))


def test_broken_compose_and_k8s_are_caught(code: Code, dep: Deploy) -> None:
    two = _mutated(dep, lambda d: d.services().pop("tierstore-3"))
    assert any("expected 3 tierstore servers" in p for p in check_compose(code, two))
    shared = _mutated(dep, lambda d: d.services()["tierstore-2"].update(
        volumes=["tierstore-1-data:/data"]))
    assert any("shares volume" in p for p in check_compose(code, shared))
    no_bucket = _mutated(dep, lambda d: d.services()["tierstore-1"]["environment"].update(
        TIERSTORE_OBJECT_STORE="s3://other-bucket/x"))
    assert any("other-bucket" in p for p in check_compose(code, no_bucket))

    def drop_probe(d: Deploy) -> None:
        _, container = next(d.server_containers())
        del container["livenessProbe"]

    assert any("livenessProbe" in p for p in check_k8s(code, _mutated(dep, drop_probe)))
    not_headless = _mutated(dep, lambda d: d.k8s.remove(next(
        s for s in d.kinds("Service") if s["spec"].get("clusterIP") == "None")))
    assert any("headless" in p for p in check_k8s(code, not_headless))
    numeric = _mutated(dep, lambda d: d.kinds("ConfigMap")[0]["data"].update(
        TIERSTORE_SNAPSHOT_KEEP=3))
    assert any("must be a string" in p for p in check_k8s(code, numeric))


def test_dockerignore_matching() -> None:
    patterns = [".venv", "**/__pycache__", "*.egg-info", "build", "!build/keep", "# comment"]
    assert dockerignored(".venv", patterns)
    assert dockerignored(".venv/bin/python", patterns)
    assert dockerignored("server/__pycache__/app.cpython-311.pyc", patterns)
    assert dockerignored("tierstore.egg-info/PKG-INFO", patterns)
    assert dockerignored("build/x", patterns)
    assert not dockerignored("build/keep", patterns)
    assert not dockerignored("server/app.py", patterns)
    assert not dockerignored("README.md", patterns)


def test_dockerfile_parser() -> None:
    text = "# c\nARG B=python:3.11-slim\nFROM ${B} AS builder\nRUN a \\\n  # inner\n  && b\n" \
           'FROM ${B}\nENV A=1 \\\n    B="two words"\nENTRYPOINT ["x", "serve"]\n'
    instrs = parse_dockerfile(text)
    assert [i.keyword for i in instrs] == ["ARG", "FROM", "RUN", "FROM", "ENV", "ENTRYPOINT"]
    assert instrs[2].args == "a && b"
    assert expand(stages(instrs)[-1][0].args, global_args(instrs)) == "python:3.11-slim"
    assert parse_env(instrs[4].args) == {"A": "1", "B": "two words"}
    assert healthcheck_command('--interval=5s CMD ["python", "h.py"]') == ["python", "h.py"]
    assert copy_parts("--from=builder /opt/venv /opt/venv") == (
        {"from": "builder"}, ["/opt/venv"], "/opt/venv")
    assert valid_kraft_cluster_id("MkU3OEVBNTcwNTJENDM2Qk")
    assert not valid_kraft_cluster_id("tierstore-cluster")


def test_a_wrong_example_worker_is_caught(code: Code, dep: Deploy) -> None:
    renamed = _mutated(dep, lambda d: d.services()["example-worker"].update(
        command=["--bootstrapp", "kafka:9092"]))
    assert any("has no option --bootstrapp" in p for p in check_compose(code, renamed))
    moved = _mutated(dep, lambda d: d.services()["example-worker"].update(
        entrypoint=["python", "/opt/tierstore/examples/nope.py"]))
    assert any("is not copied into the image" in p for p in check_compose(code, moved))

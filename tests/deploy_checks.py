"""The checks that cut across every deploy artifact (variables, flags, ports, health services,
the README's flag table) and CHECKS, the list of all checks including the per-artifact ones
in tests/deploy_checks_image.py, tests/deploy_checks_compose.py and tests/deploy_checks_k8s.py.

Each check is `check(code, deploy) -> list[str]` of problems, empty when deploy/ agrees
with the code; tests/test_deploy_agreement.py runs them all (deploy_checks.CHECKS).
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable
from typing import Any

import yaml

from tests.deploy_checks_compose import check_compose
from tests.deploy_checks_image import check_dockerfile
from tests.deploy_checks_k8s import check_k8s
from tests.deploy_model import Code, Deploy, container_env, effective_listen
from tests.deploy_parse import (
    compose_argv,
    compose_env,
    healthcheck_command,
    port_of,
    serve_args,
    shell_commands,
    unknown_env_vars,
    unknown_flags,
)


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

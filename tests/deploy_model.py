"""What the code defines and what deploy/ holds, as the two sides every deploy check compares.

`Code` collects the facts taken from the code (`tierstore.server.config.FLAGS` and `env_name`,
`DEFAULT_LISTEN`, the gRPC health service names, `[project.scripts]` in pyproject.toml);
`Deploy` holds every file under deploy/ parsed (Dockerfile, compose.yaml, k8s/, .dockerignore,
healthcheck.py's constants) with accessors for the server's image, services and containers.
Both are plain data, so tests can change a copy to simulate drift (tests/test_deploy_mutations.py).
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.deploy_parse import (
    Instr,
    exec_form,
    flag_values,
    module_constants,
    parse_dockerfile,
    parse_env,
    port_of,
    stages,
)
from tierstore.server.config import DEFAULT_LISTEN, FLAGS, ServerConfig, env_name
from tierstore.server.servicer import SERVICE_NAME

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
HEALTHCHECK = DEPLOY / "healthcheck.py"

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
        """The server's variables (one per flag), and the command line's token variable."""
        from tierstore.commands.common import TOKEN_ENV

        return frozenset(self.env_name(f) for f in self.flags.values()) | {TOKEN_ENV}

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


def effective_listen(code: Code, env: Mapping[str, str], args: list[str]) -> str:
    """The listen address a server gets: flag, else env var, else the code's default."""
    listen_flag = next((f for f, fld in code.flags.items() if fld == "listen"), "--listen")
    from_flag = flag_values(args, {listen_flag: "listen"}).get("listen")
    return from_flag or env.get(code.env_name("listen")) or code.default_listen


# ------------------------------------------------------------------------------------------
# What deploy/ holds


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

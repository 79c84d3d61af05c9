"""The check of the server image: deploy/Dockerfile and .dockerignore.

Each check is `check(code, deploy) -> list[str]` of problems, empty when deploy/ agrees
with the code; tests/test_deploy_agreement.py runs them all (deploy_checks.CHECKS).
"""

from __future__ import annotations

import re
import tomllib

from tests.deploy_model import ROOT, SERVER_UID, Code, Deploy
from tests.deploy_parse import (
    copy_parts,
    dockerignored,
    exec_form,
    expand,
    global_args,
    healthcheck_command,
    stages,
)


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

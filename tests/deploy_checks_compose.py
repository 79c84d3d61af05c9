"""The check of deploy/compose.yaml: Kafka (KRaft), MinIO and its bucket, three servers with
their own volumes and health checks, and the example worker.

Each check is `check(code, deploy) -> list[str]` of problems, empty when deploy/ agrees
with the code; tests/test_deploy_agreement.py runs them all (deploy_checks.CHECKS).
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

import yaml

from tests.clihelp import script_options
from tests.deploy_model import ROOT, Code, Deploy
from tests.deploy_parse import compose_argv, compose_env, copy_parts, valid_kraft_cluster_id


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

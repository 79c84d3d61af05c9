"""The check of the Kubernetes manifests in deploy/k8s/: StatefulSet, Services, PodDisruptionBudget,
ConfigMap and Secret, probes, resources, volumes and the kustomization.

Each check is `check(code, deploy) -> list[str]` of problems, empty when deploy/ agrees
with the code; tests/test_deploy_agreement.py runs them all (deploy_checks.CHECKS).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from tests.deploy_model import SERVER_UID, Code, Deploy, container_env


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

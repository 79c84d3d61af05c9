"""deploy/ is checked against the code, so it cannot drift from it.

There is no Docker engine or Kubernetes cluster here: every file under deploy/ is parsed and
checked against what the code really defines (tests/deploy_model.py). The checks themselves live
in tests/deploy_checks*.py; tests/test_deploy_mutations.py shows that they do fail.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import yaml

from tests.deploy_checks import CHECKS
from tests.deploy_model import DEPLOY, Code, Deploy, container_env
from tests.deploy_parse import compose_argv, compose_env, flag_values, serve_args
from tierstore.server.config import ConfigError, load_config


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

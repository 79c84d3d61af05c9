"""The deploy checks can fail: simulated code changes and broken deploy files are reported.

Each test changes a copy of the real `Code` or `Deploy` (tests/deploy_model.py) and asserts
that the check responsible for it reports the problem.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable

from tests.deploy_checks import (
    check_env_vars,
    check_flags,
    check_health_services,
    check_ports,
    check_readme_table,
)
from tests.deploy_checks_compose import check_compose
from tests.deploy_checks_image import check_dockerfile
from tests.deploy_checks_k8s import check_k8s
from tests.deploy_model import Code, Deploy
from tests.deploy_parse import Instr


def _mutated(dep: Deploy, edit: Callable[[Deploy], object]) -> Deploy:
    other = copy.deepcopy(dep)
    edit(other)
    return other


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


def test_a_wrong_example_worker_is_caught(code: Code, dep: Deploy) -> None:
    renamed = _mutated(dep, lambda d: d.services()["example-worker"].update(
        command=["--bootstrapp", "kafka:9092"]))
    assert any("has no option --bootstrapp" in p for p in check_compose(code, renamed))
    moved = _mutated(dep, lambda d: d.services()["example-worker"].update(
        entrypoint=["python", "/opt/tierstore/examples/nope.py"]))
    assert any("is not copied into the image" in p for p in check_compose(code, moved))

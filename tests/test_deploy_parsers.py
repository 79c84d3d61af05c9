"""The parsers behind the deploy checks (tests/deploy_parse.py), on literal input: Dockerfile
instructions, `tierstore serve` command lines, TIERSTORE_* names and .dockerignore patterns.
"""

from __future__ import annotations

from tests.deploy_model import real_code
from tests.deploy_parse import (
    copy_parts,
    dockerignored,
    expand,
    global_args,
    healthcheck_command,
    parse_dockerfile,
    parse_env,
    serve_args,
    stages,
    unknown_env_vars,
    unknown_flags,
    valid_kraft_cluster_id,
)


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

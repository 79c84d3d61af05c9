"""The documents cannot drift from the code.

- Every `tierstore ...` command in README.md and docs/*.md names a real subcommand, and every
  `--flag` on it (or standing alone in a code span) is one that `tierstore ... --help` lists.
- Every TOML block parses and uses only real configuration keys; every TIERSTORE_* variable is
  real.
- Every metric the server exports is described in docs/operations.md, and every metric name the
  documents mention is exported.
- The quickstart's workers run as written: the list worker against the embedded default, the
  Kafka worker against a real broker, killed and restarted without counting anything twice.
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from tests.clihelp import FLAG_RE, script_options
from tests.infra import Broker
from tests.serverproc import ServerProc
from tierstore.client import connect, errors
from tierstore.server.app import create_server
from tierstore.server.config import FLAGS, ServerConfig, env_name
from tierstore.server.configload import key_types

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK_RE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
SPAN_RE = re.compile(r"`([^`\n]+)`")
COMMAND_RE = re.compile(r"(?:^|[\s/])(?:tierstore +([a-z]+)(?: +show)?|python -m (bench))\b")
EXAMPLE_RE = re.compile(r"\bexamples/([a-z_]+)\.py\b")
METRIC_RE = re.compile(r"\b(?:tierstore|process)_[a-z0-9_]*[a-z0-9]\b")
ENV_RE = re.compile(r"\bTIERSTORE_[A-Z0-9_]*[A-Z0-9]\b")
# Placeholders the documents use on purpose: "# flag --x" shows the shape of config show's
# source comments, TIERSTORE_X that of a variable.
PLACEHOLDERS = {"--x", "TIERSTORE_X"}


def _help(*args: str) -> str:
    """What `tierstore ARGS --help` prints (run in-process: the same parser, faster)."""
    from tierstore.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
        main([*args, "--help"])
    return out.getvalue()


@functools.cache
def cli_options() -> dict[str, frozenset[str]]:
    """Subcommand ("config show", "bench", ...) -> the options its --help lists."""
    top = _help()
    subs = re.findall(r"^    ([a-z]+)  ", top, re.M)
    assert {"serve", "config", "inspect", "snapshot", "restore", "bench"} <= set(subs), top
    out = {"": frozenset(FLAG_RE.findall(top))}
    for sub in subs:
        helptext = _help(*{"config": ("config", "show")}.get(sub, (sub,)))
        assert "usage: " in helptext, f"tierstore {sub} --help printed {helptext!r}"
        out[sub] = frozenset(FLAG_RE.findall(helptext))
    return out


def code_of(text: str) -> Iterator[tuple[str, str]]:
    """(kind, code) for every fenced block ("sh", "python", "toml", ...) and inline span
    ("span"); a shell line continued with a backslash is joined to the next."""
    for kind, body in BLOCK_RE.findall(text):
        yield kind, body.replace("\\\n", " ")
    for span in SPAN_RE.findall(BLOCK_RE.sub("", text)):
        yield "span", span


def flag_problems(where: str, text: str, options: dict[str, frozenset[str]]) -> list[str]:
    every = frozenset().union(*options.values())
    problems = []
    for kind, code in code_of(text):
        if kind in ("python", "toml", "json"):
            continue
        for line in code.splitlines():
            line = line.split(" #")[0]  # comments in shell blocks
            if example := EXAMPLE_RE.search(line):
                known = script_options(f"examples/{example.group(1)}.py")
                problems += [f"{where}: `{line.strip()}`: examples/{example.group(1)}.py has "
                             f"no option {flag}" for flag in FLAG_RE.findall(line[example.end():])
                             if flag not in known and flag not in PLACEHOLDERS]
                continue
            commands = list(COMMAND_RE.finditer(line))
            if not commands:
                problems += [f"{where}: {flag} is not an option of any tierstore command"
                             for flag in FLAG_RE.findall(line)
                             if flag not in every and flag not in PLACEHOLDERS]
                continue
            for m, nxt in zip(commands, [*commands[1:], None], strict=True):
                sub = m.group(1) or m.group(2)
                args = line[m.end(): nxt.start() if nxt else None]
                if sub not in options:
                    problems.append(f"{where}: `{line.strip()}`: no command `{sub}`")
                    continue
                problems += [f"{where}: `{line.strip()}`: {sub} has no option {flag}"
                             for flag in FLAG_RE.findall(args)
                             if flag not in options[sub] and flag not in PLACEHOLDERS]
    return problems


def test_every_command_and_flag_in_the_docs_is_real() -> None:
    options = cli_options()
    assert "--block-cache-bytes" in options["serve"] and "--to" in options["restore"]
    problems = [p for doc in DOCS
                for p in flag_problems(doc.relative_to(ROOT).as_posix(), doc.read_text(),
                                       options)]
    assert not problems, "\n".join(problems)


def test_the_flag_check_fails_on_a_renamed_flag() -> None:
    options = cli_options()
    doc = ("```sh\ntierstore serve --listen 0.0.0.0:7070 \\\n    --block-cash-bytes 1GiB\n```\n"
           "Use `--kafka-bootstrapper` or `tierstore inspect --to DIR`; `tierstore frobnicate`.")
    problems = flag_problems("doc", doc, options)
    assert any("serve has no option --block-cash-bytes" in p for p in problems), problems
    assert any("--kafka-bootstrapper is not an option" in p for p in problems), problems
    assert any("inspect has no option --to" in p for p in problems), problems
    example = "```sh\npython examples/wordcount.py --input words --bootstrapp x:1\n```\n"
    ex_problems = flag_problems("doc", example, options)
    assert ex_problems == ["doc: `python examples/wordcount.py --input words --bootstrapp x:1`: "
                           "examples/wordcount.py has no option --bootstrapp"], ex_problems
    assert any("no command `frobnicate`" in p for p in problems), problems
    assert not flag_problems("doc", "`tierstore restore S/0 --to DIR --json`", options)
    assert not flag_problems("doc", "`python -m tierstore serve --listen H:1`", options)
    assert flag_problems("doc", "`python -m bench write --listen H:1`", options)


def test_toml_keys_and_variables_in_the_docs_are_real() -> None:
    import tomllib

    keys = set(key_types())
    real_env = {env_name(k) for k in FLAGS.values()}
    sources = [*(ROOT / "tests").rglob("*.py"), *(ROOT / "bench").rglob("*.py")]
    test_env = {v for p in sources for v in ENV_RE.findall(p.read_text())}
    problems = []
    for doc in DOCS:
        text = doc.read_text()
        for kind, code in code_of(text):
            if kind == "toml":
                problems += [f"{doc.name}: TOML key {k} is not a configuration key"
                             for k in tomllib.loads(code) if k not in keys]
        problems += [f"{doc.name}: {v} is not a variable the server or tests read"
                     for v in set(ENV_RE.findall(text)) - real_env - test_env - PLACEHOLDERS]
    assert not problems, "\n".join(problems)


def exported_metrics(tmp_path: Path) -> set[str]:
    """Every metric family of a server with metrics on, as exposed (counters with _total)."""
    running = create_server(ServerConfig(listen="127.0.0.1:0", data_dir=tmp_path,
                                         metrics_listen="127.0.0.1:0",
                                         restore_target_seconds=60.0))
    try:
        assert running.metrics is not None
        return {f.name + ("_total" if f.type == "counter" else "")
                for f in running.metrics.registry.collect()}
    finally:
        running.stop(grace=0, snapshot=False)


def test_every_metric_is_documented_and_every_documented_metric_exists(tmp_path: Path) -> None:
    exported = exported_metrics(tmp_path)
    assert {"tierstore_rpc_requests_total", "tierstore_block_cache_hit_ratio"} <= exported
    ops = (ROOT / "docs" / "operations.md").read_text()
    own = {m for m in exported if m.startswith("tierstore_")}
    missing = sorted(m for m in own if f"`{m}`" not in ops)
    assert not missing, f"metrics not described in docs/operations.md: {missing}"
    suffix = re.compile(r"_(bucket|sum|count)$")
    unknown = sorted({f"{doc.name}: {name}" for doc in DOCS
                      for name in METRIC_RE.findall(doc.read_text())
                      if name not in exported and suffix.sub("", name) not in exported
                      and not name.startswith("tierstore_v")})  # tierstore_v1 (protobuf)
    assert not unknown, f"documented metrics the server does not export: {unknown}"


def python_block(doc: str, first_line: str) -> str:
    for kind, code in code_of((ROOT / "docs" / doc).read_text()):
        if kind == "python" and code.startswith(first_line):
            return code
    raise AssertionError(f"no python block starting {first_line!r} in docs/{doc}")


def test_quickstart_first_worker_runs_and_resumes(tmp_path: Path) -> None:
    code = python_block("quickstart.md", "# worker.py")
    assert 'connect("127.0.0.1:7070")' in code
    srv = ServerProc(tmp_path / "data")  # on a free port: other tests may hold 7070
    script = tmp_path / "worker.py"
    script.write_text(code.replace("127.0.0.1:7070", srv.address))
    try:
        outputs = [subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                                  timeout=60, cwd=tmp_path) for _ in range(2)]
        for out in outputs:
            assert out.returncode == 0, out.stderr
            assert out.stdout.strip() == "[('apple', 3), ('banana', 2), ('cherry', 1)]"
        with connect(srv.address) as client:
            assert client.key_value_store("word-counts").committed_offsets == {"words:0": 6}
    finally:
        srv.close()


@pytest.mark.kafka
def test_quickstart_kafka_worker_counts_and_resumes_after_kill(
    tmp_path: Path, broker: Broker
) -> None:
    worker = tmp_path / "kafka_worker.py"
    worker.write_text(python_block("quickstart.md", "# kafka_worker.py"))
    produce = tmp_path / "produce.py"
    produce.write_text(python_block("quickstart.md", "# produce.py"))
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    admin.create_topics([NewTopic("words", num_partitions=8, replication_factor=1)])[
        "words"].result(30)
    srv = ServerProc(tmp_path / "data", kafka=broker.bootstrap)
    env = {**os.environ, "TIERSTORE": srv.address, "KAFKA": broker.bootstrap}
    procs: dict[int, subprocess.Popen[bytes]] = {}
    partitions = range(8)

    def start_workers() -> None:
        for p in partitions:
            with open(tmp_path / f"worker-{p}.log", "ab") as log:
                procs[p] = subprocess.Popen([sys.executable, str(worker), str(p)], env=env,
                                            stderr=log, stdout=log)

    def workers_gone() -> str:
        """The log tails of the workers that exited (a failed wait says why)."""
        return "".join(f"\nworker {p} exited {proc.returncode}: "
                       f"{(tmp_path / f'worker-{p}.log').read_text()[-1500:]}"
                       for p, proc in procs.items() if proc.poll() is not None)

    # Generous bounds (the waits end as soon as the condition holds): 8 worker processes, the
    # server and the broker share 2 cores in CI, and 45 s was once not enough under other load.
    def wait_counts(want: dict[bytes, bytes], timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        got: dict[bytes, bytes | None] = {}
        with connect(srv.address) as client:
            reader = client.reader("word-counts")
            while time.monotonic() < deadline:
                try:
                    got = {w: reader.get(w) for w in want}
                except Exception:  # the store is created by the first worker's claim
                    got = {}
                if got == want:
                    return
                time.sleep(0.2)
        raise AssertionError(f"counts {got}, expected {want}{workers_gone()}")

    def wait_store(timeout_s: float = 120.0) -> None:
        """Until a worker's claim has created the store (produce.py reads it at once)."""
        deadline = time.monotonic() + timeout_s
        with connect(srv.address) as client:
            while True:
                try:
                    client.reader("word-counts").approximate_num_entries()
                    return
                except errors.StoreNotFoundError:
                    if time.monotonic() >= deadline:
                        raise
                    time.sleep(0.1)

    try:
        start_workers()
        wait_store()  # as a user starts the workers before producing
        out = subprocess.run([sys.executable, str(produce)], env=env, capture_output=True,
                             text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        wait_counts({b"apple": b"3", b"banana": b"1", b"cherry": b"1"})
        for proc in procs.values():
            proc.kill()
            proc.wait(10)
        producer = Producer({"bootstrap.servers": broker.bootstrap,
                             "partitioner": "murmur2_random"})
        for word in [b"apple", b"cherry", b"durian"]:
            producer.produce("words", key=word, value=b"")
        producer.flush(30)
        start_workers()  # each resumes at its committed offset: nothing counted twice
        wait_counts({b"apple": b"4", b"banana": b"1", b"cherry": b"2", b"durian": b"1"})
    finally:
        for proc in procs.values():
            proc.kill()
            proc.wait(10)
        srv.close()

"""`tierstore config show`: the effective server configuration, as TOML, secrets masked."""

from __future__ import annotations

import argparse
import sys

from tierstore.commands.common import Command, ServerFlags, SubParsers


def add_parser(sub: SubParsers, server_flags: ServerFlags) -> dict[str, Command]:
    p = sub.add_parser("config", help="show the effective server configuration",
                       description="Configuration commands.")
    actions = p.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    show = actions.add_parser(
        "show", help="print the configuration `tierstore serve` would run with",
        description="Print, as TOML, the configuration `tierstore serve` would run with given "
        "the same --config file, TIERSTORE_* variables and flags: defaults < config file < "
        "variables < flags. Each line says where its value came from. Secrets (tokens, keys, "
        "passwords, passwords inside URLs) are masked. The output is a valid config file. "
        "Exit code 2 if the configuration would be refused, naming the key.",
    )
    server_flags(show)
    return {"config": run}


def run(args: argparse.Namespace) -> int:
    from tierstore.server.config import FLAGS, ConfigError
    from tierstore.server.configload import render_toml, resolve_config

    try:
        resolved = resolve_config({f: getattr(args, f) for f in FLAGS.values()})
    except ConfigError as exc:
        print(f"tierstore config show: configuration error: {exc}", file=sys.stderr)
        return 2
    sys.stdout.write(render_toml(resolved))
    return 0

"""`sipedge ...`: check a config, run a node, place and list calls through a node's API."""

from __future__ import annotations

import argparse
import logging
import sys

from gateway import __version__
from gateway.config import load_config, summary, warnings
from gateway.errors import ConfigError

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def _check_config(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.file)
    except ConfigError as exc:
        for line in exc.problems:
            print(line, file=sys.stderr)
        return 2
    print(f"{args.file}: OK")
    print(summary(config))
    for warning in warnings(config):
        print(f"{args.file}: warning: {warning}", file=sys.stderr)
    return 0


def _run(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        for line in exc.problems:
            print(line, file=sys.stderr)
        return 2
    from gateway.node.supervisor import run_node

    return run_node(config, args.config)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sipedge", description="SIP edge gateway for voice AI")
    parser.add_argument("--version", action="version", version=f"sipedge {__version__}")
    parser.add_argument(
        "--log-level",
        default="INFO",
        type=str.upper,
        choices=LOG_LEVELS,
        help=f"one of {', '.join(LOG_LEVELS)} (default %(default)s)",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check-config", help="validate a config file and summarise it")
    check.add_argument("file")
    check.set_defaults(func=_check_config)
    run = sub.add_parser("run", help="run a node")
    run.add_argument("--config", required=True)
    run.set_defaults(func=_run)
    from gateway.cli.client import add_commands

    add_commands(sub)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())

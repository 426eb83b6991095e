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


def _front_config(args: argparse.Namespace) -> int:
    """The SIP front's Kamailio files for an operator who runs Kamailio (sip.front external)."""
    try:
        config = load_config(args.file)
    except ConfigError as exc:
        for line in exc.problems:
            print(line, file=sys.stderr)
        return 2
    from pathlib import Path

    from gateway.config import worker_slots
    from gateway.front.render import FrontPaths, render

    if config.sip.front.mode == "none":
        print(f"{args.file}: sip.front.mode is none: this node has no SIP front", file=sys.stderr)
        return 2
    paths = FrontPaths(Path(args.out or args.dir).resolve())
    files = render(config, worker_slots(config), paths, args.front_log_level)
    if args.out is None:
        print(files.kamailio_cfg, end="")
        print(f"# dispatcher.list ({paths.dispatcher_list}): `--out {args.dir}` writes it",
              file=sys.stderr)  # fmt: skip
        return 0
    paths.directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.by_name().items():
        (paths.directory / name).write_text(text)
        print(paths.directory / name)
    print(f"run: kamailio -DD -E -f {paths.config}", file=sys.stderr)
    return 0


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
    front = sub.add_parser(
        "front-config",
        help="print the SIP front's Kamailio config (for sip.front.mode external)",
    )
    front.add_argument("file", help="the node's config file")
    front.add_argument(
        "--dir",
        default="/etc/kamailio/sipedge",
        help="where Kamailio will find dispatcher.list and put its control socket "
        "(default %(default)s)",
    )
    front.add_argument("--out", help="write kamailio.cfg and dispatcher.list into this directory")
    front.add_argument(
        "--front-log-level",
        default="INFO",
        type=str.upper,
        choices=LOG_LEVELS,
        help="Kamailio's log level, as a sipedge level (default %(default)s)",
    )
    front.set_defaults(func=_front_config)
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

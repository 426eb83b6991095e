"""`sipedge ...`: check a config, run a node, place and list calls through a node's API."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import TYPE_CHECKING

from gateway import __version__
from gateway.config import load_config, summary, warnings
from gateway.errors import ConfigError

if TYPE_CHECKING:
    from gateway.front.render import FrontPaths

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
    """The SIP front's Kamailio files for an operator who runs Kamailio (sip.front external):
    from one node's config, or from several nodes' that share the front (a cluster)."""
    try:
        configs = [load_config(file) for file in args.files]
    except ConfigError as exc:
        for line in exc.problems:
            print(line, file=sys.stderr)
        return 2
    from pathlib import Path

    from gateway.front.cluster import ClusterNode, render_cluster
    from gateway.front.render import FrontPaths
    from gateway.front.security import front_environment

    for file, config in zip(args.files, configs, strict=True):
        if config.sip.front.mode == "none":
            print(f"{file}: sip.front.mode is none: this node has no SIP front", file=sys.stderr)
            return 2
    if args.reload and args.out is None:
        print("--reload needs --out DIR, the directory the running front reads", file=sys.stderr)
        return 2
    paths = FrontPaths(Path(args.out or args.dir).resolve())
    nodes = [ClusterNode(file, config) for file, config in zip(args.files, configs, strict=True)]
    try:
        files = render_cluster(nodes, paths, args.front_log_level)
    except ConfigError as exc:
        for line in exc.problems:
            print(line, file=sys.stderr)
        return 2
    if args.out is None:
        print(files.kamailio_cfg, end="")
        print(f"# dispatcher.list ({paths.dispatcher_list}): `--out {args.dir}` writes it",
              file=sys.stderr)  # fmt: skip
        return 0
    paths.directory.mkdir(parents=True, exist_ok=True)
    before = paths.config.read_text() if paths.config.exists() else None
    for written in files.write(paths):
        print(written)
    needed = sorted(front_environment(configs[0]))
    if needed:
        print(f"the front reads inbound digest passwords from its environment: set "
              f"{', '.join(needed)} for Kamailio", file=sys.stderr)  # fmt: skip
    if not args.reload:
        print(f"run: kamailio -DD -E -f {paths.config}", file=sys.stderr)
        return 0
    if before is not None and before != files.kamailio_cfg:
        print(f"{paths.config} changed: restart Kamailio to apply it (a reload applies "
              "dispatcher.list only)", file=sys.stderr)  # fmt: skip
    return _reload_front(paths)


def _reload_front(paths: FrontPaths) -> int:
    """The running front reads dispatcher.list again: nodes added or removed, no restart."""
    from gateway.front.health import parse_dispatcher
    from gateway.front.rpc import FrontRpc, FrontRpcError

    rpc = FrontRpc(paths.rpc_socket, timeout=3.0)
    try:
        rpc.call_now("dispatcher.reload")
        workers = parse_dispatcher(rpc.call_now("dispatcher.list"))
    except FrontRpcError as exc:
        print(f"the front did not reload: {exc}", file=sys.stderr)
        return 1
    print(f"front reloaded: dispatching over {len(workers)} workers", file=sys.stderr)
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
    front.add_argument(
        "files",
        nargs="+",
        metavar="FILE",
        help="the node's config file; several: one front for the workers of those nodes",
    )
    front.add_argument(
        "--dir",
        default="/etc/kamailio/sipedge",
        help="where Kamailio will find dispatcher.list and put its control socket "
        "(default %(default)s)",
    )
    front.add_argument("--out", help="write kamailio.cfg and dispatcher.list into this directory")
    front.add_argument(
        "--reload",
        action="store_true",
        help="then tell the front running on --out to read dispatcher.list again (nodes "
        "added or removed, without a restart)",
    )
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

"""`sipedge call`, `sipedge calls` and `sipedge status`: talk to a running node's HTTP API,
print tables.

URL and key come from `--url`/`--api-key` or SIPEDGE_API_URL/SIPEDGE_API_KEY; the key is
never printed.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any, TextIO

import httpx

DEFAULT_URL = "http://127.0.0.1:8080"
CALL_COLUMNS = (
    ("ID", "id"), ("STATUS", "status"), ("DIR", "direction"), ("FROM", "from"), ("TO", "to"),
    ("TRUNK", "trunk"), ("AGENT", "agent"), ("CREATED", "created_at"), ("SECS", "duration"),
    ("REASON", "end_reason"),
)  # fmt: skip
WORKER_COLUMNS = (
    ("WORKER", "worker"), ("STATE", "state"), ("PID", "pid"), ("CALLS", "active_calls"),
    ("FREE", "free_slots"), ("CAPACITY", "capacity"), ("RESTARTS", "restarts"),
    ("TRUNKS", "trunks"),
)  # fmt: skip


class ApiError(Exception):
    def __init__(self, status: int, body: Any) -> None:
        error = body.get("error") if isinstance(body, dict) else None
        if isinstance(error, dict):
            message = f"{error.get('code')}: {error.get('message')}"
        else:
            message = str(body)[:200]
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.body = body


def add_connection_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url", default=os.environ.get("SIPEDGE_API_URL", DEFAULT_URL),
        help="node API URL (env SIPEDGE_API_URL, default %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--api-key", default=None, help="bearer key (env SIPEDGE_API_KEY; never printed)"
    )
    parser.add_argument("--json", action="store_true", help="print the raw JSON response")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds")


def request(
    args: argparse.Namespace, method: str, path: str, *,
    params: dict[str, Any] | None = None, body: Any = None, headers: dict[str, str] | None = None,
) -> Any:  # fmt: skip
    key = args.api_key or os.environ.get("SIPEDGE_API_KEY", "")
    all_headers = {"Authorization": f"Bearer {key}", **(headers or {})} if key else headers
    url = args.url.rstrip("/") + path
    response = httpx.request(method, url, params=params, json=body, headers=all_headers,
                             timeout=args.timeout)  # fmt: skip
    try:
        payload = response.json()
    except ValueError:
        payload = response.text
    if response.status_code >= 400:
        raise ApiError(response.status_code, payload)
    return payload


def table(rows: Sequence[Sequence[str]], out: TextIO) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        out.write("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
        out.write("\n")


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.1f}"
    if isinstance(value, str) and value.endswith("Z") and "T" in value:
        return value.replace("T", " ")[:19]  # ISO 8601 UTC, to the second
    return str(value)


def parse_vars(pairs: Sequence[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--var expects key=value (got {pair!r})")
        out[key] = value
    return out


def _run(args: argparse.Namespace, action: Any) -> int:
    logging.getLogger("httpx").setLevel(logging.WARNING)  # no request lines between tables
    try:
        return int(action(args))
    except ApiError as exc:
        if args.json:
            print(json.dumps(exc.body, indent=2))
        print(f"sipedge: {exc}", file=sys.stderr)
        return 1
    except httpx.HTTPError as exc:
        print(f"sipedge: cannot reach {args.url}: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:
        print(f"sipedge: {exc}", file=sys.stderr)
        return 2


def _call(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"to": args.to, "agent": args.agent}
    for name, value in (("from", args.from_), ("trunk", args.trunk),
                        ("ring_timeout", args.ring_timeout)):  # fmt: skip
        if value is not None:
            body[name] = value
    if args.var:
        body["variables"] = parse_vars(args.var)
    headers = {"Idempotency-Key": args.idempotency_key} if args.idempotency_key else None
    reply = request(args, "POST", "/v1/calls", body=body, headers=headers)
    if args.json:
        print(json.dumps(reply, indent=2))
        return 0
    call = reply["data"]
    rows = [("FIELD", "VALUE")]
    for name in ("id", "status", "to", "from", "trunk", "agent"):
        rows.append((name, _cell(call.get(name))))
    for key, value in (call.get("variables") or {}).items():
        rows.append((f"var {key}", str(value)))
    table(rows, sys.stdout)
    return 0


def _calls(args: argparse.Namespace) -> int:
    params = {
        "status": args.status, "direction": args.direction, "trunk": args.trunk,
        "agent": args.agent, "number": args.number, "date_from": args.date_from,
        "date_to": args.date_to, "sort": args.sort, "page": args.page, "per_page": args.per_page,
    }  # fmt: skip
    reply = request(args, "GET", "/v1/calls", params={k: v for k, v in params.items() if v})
    if args.json:
        print(json.dumps(reply, indent=2))
        return 0
    rows = [tuple(title for title, _ in CALL_COLUMNS)]
    rows += [tuple(_cell(call.get(key)) for _, key in CALL_COLUMNS) for call in reply["data"]]
    table(rows, sys.stdout)
    meta = reply["meta"]
    pages = max(1, -(-meta["total"] // meta["per_page"]))
    print(f"page {meta['page']} of {pages}, {meta['total']} calls")
    return 0


def _reload(args: argparse.Namespace) -> int:
    """POST /v1/node/reload: the node reads its config file again, as on SIGHUP."""
    try:
        reply = request(args, "POST", "/v1/node/reload")
    except ApiError as exc:
        details = exc.body.get("error", {}).get("details") if isinstance(exc.body, dict) else None
        if exc.status != 422 or not details or args.json:
            raise
        for entry in details:  # the lines check-config prints
            print(entry.get("message"), file=sys.stderr)
        print("sipedge: the node refused the config and runs on the one it had", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(reply, indent=2))
        return 0
    data = reply["data"]
    print(f"reloaded: changed {', '.join(data['changed']) or 'nothing'}")
    for key in ("trunks_added", "trunks_removed", "trunks_changed"):
        if data[key]:
            print(f"{key.replace('_', ' ')}: {', '.join(data[key])}")
    return 0


def status_text(health: dict[str, Any]) -> str:
    """/health as `sipedge status` prints it: the node, its checks, one row per SIP worker."""
    workers = health.get("workers") or []
    up = sum(1 for w in workers if w.get("state") == "running")
    lines = [
        f"node: {health.get('status')}, {health.get('active_calls', 0)} active calls, capacity "
        f"{health.get('capacity', 0)}, {up} of {len(workers)} SIP workers running",
        "checks: " + " ".join(f"{k}={v}" for k, v in (health.get("checks") or {}).items()),
    ]
    lines += [f"reason: {reason}" for reason in health.get("reasons") or ()]
    out = io.StringIO()
    if workers:
        rows = [tuple(title for title, _ in WORKER_COLUMNS)]
        rows += [
            tuple((",".join(w[k]) or "-") if k == "trunks" else _cell(w.get(k))
                  for _, k in WORKER_COLUMNS)
            for w in workers
        ]  # fmt: skip
        table(rows, out)
    return "\n".join(lines) + "\n" + out.getvalue()


def _status(args: argparse.Namespace) -> int:
    try:
        health = request(args, "GET", "/health")
    except ApiError as exc:  # 503 still says why: print it
        if exc.status != 503 or not isinstance(exc.body, dict) or "status" not in exc.body:
            raise
        health = exc.body
    if args.json:
        print(json.dumps(health, indent=2))
    else:
        sys.stdout.write(status_text(health))
    return 0 if health.get("status") == "ok" else 1


def add_commands(sub: Any) -> None:
    """Add `call`, `calls`, `status` and `reload` to the `sipedge` subcommands."""
    call = sub.add_parser("call", help="place an outbound call through a running node's API")
    call.add_argument("--to", required=True, help="E.164 number to dial")
    call.add_argument("--agent", required=True, help="agent id")
    call.add_argument("--from", dest="from_", help="caller id (E.164)")
    call.add_argument("--trunk", help="trunk id")
    call.add_argument("--var", action="append", default=[], metavar="KEY=VALUE",
                      help="custom variable (repeatable)")  # fmt: skip
    call.add_argument("--ring-timeout", type=int, help="seconds")
    call.add_argument("--idempotency-key", help="replaying the same key returns the same call")
    add_connection_args(call)
    call.set_defaults(func=lambda a: _run(a, _call))
    calls = sub.add_parser("calls", help="list calls (the call log) of a running node")
    calls.add_argument("--status", choices=["dialing", "ringing", "answered", "completed",
                                            "failed"])  # fmt: skip
    calls.add_argument("--direction", choices=["inbound", "outbound"])
    calls.add_argument("--trunk")
    calls.add_argument("--agent")
    calls.add_argument("--number", help="matches the from or the to number")
    calls.add_argument("--date-from", help="ISO 8601, e.g. 2024-05-01T00:00:00Z")
    calls.add_argument("--date-to", help="ISO 8601 (exclusive)")
    calls.add_argument("--sort", help="e.g. -created_at (default), duration")
    calls.add_argument("--page", type=int)
    calls.add_argument("--per-page", type=int)
    add_connection_args(calls)
    calls.set_defaults(func=lambda a: _run(a, _calls))
    status = sub.add_parser("status", help="a running node's health and its SIP workers")
    add_connection_args(status)
    status.set_defaults(func=lambda a: _run(a, _status))
    reload = sub.add_parser(
        "reload", help="a running node reads its config file again (as on SIGHUP), no call dropped"
    )
    add_connection_args(reload)
    reload.set_defaults(func=lambda a: _run(a, _reload))

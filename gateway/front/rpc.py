"""The front's control socket: JSON-RPC 2.0 over a Unix datagram socket (Kamailio's
jsonrpcs module), for its health, its counters, and telling it to drain."""

from __future__ import annotations

import asyncio
import itertools
import json
import socket
from pathlib import Path
from typing import Any

from gateway.errors import SipedgeError
from gateway.front.health import (
    FrontHealth,
    parse_dispatcher,
    parse_htable_item,
    parse_statistics,
)

REPLY_BYTES = 256 * 1024


class FrontRpcError(SipedgeError):
    """The front did not answer its control socket, or answered with an error."""


class FrontRpc:
    def __init__(self, path: Path, timeout: float = 1.0) -> None:
        self.path = path
        self.timeout = timeout
        self._ids = itertools.count(1)

    async def call(self, method: str, *params: Any) -> Any:
        return await asyncio.to_thread(self.call_now, method, *params)

    def call_now(self, method: str, *params: Any) -> Any:
        """One request and its reply (blocking, at most `timeout` seconds)."""
        rid = next(self._ids)
        request = {"jsonrpc": "2.0", "method": method, "params": list(params), "id": rid}
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.bind("")  # Linux autobind: an abstract address the front can answer
            sock.settimeout(self.timeout)
            try:
                sock.sendto(json.dumps(request).encode(), str(self.path))
                while True:
                    reply = json.loads(sock.recv(REPLY_BYTES))
                    if reply.get("id") == rid:
                        break
            except (OSError, ValueError) as exc:
                raise FrontRpcError(f"front control socket {self.path}: {exc}") from None
        if "error" in reply:
            error = reply["error"] or {}
            raise FrontRpcError(f"front RPC {method}: {error.get('message') or error}")
        return reply.get("result")

    async def health(self, mode: str) -> FrontHealth:
        """The front's workers and counters; `up` false when it does not answer."""
        try:
            workers = parse_dispatcher(await self.call("dispatcher.list"))
            stats = parse_statistics(await self.call("stats.get_statistics", "all"))
            draining = await self.call("htable.get", "front", "draining")
        except FrontRpcError:
            return FrontHealth(mode=mode, up=False)
        return FrontHealth(mode=mode, up=True, workers=workers, stats=stats,
                           draining=parse_htable_item(draining) == 1)  # fmt: skip

    async def drain(self) -> None:
        """New INVITEs get 503 from now on; in-dialog requests still pass."""
        await self.call("htable.seti", "front", "draining", 1)

    async def set_worker(self, uri: str, active: bool) -> None:
        """Take a worker out of rotation at once (it died), or back (it answers again)."""
        await self.call("dispatcher.set_state", "ap" if active else "ip", 1, uri)

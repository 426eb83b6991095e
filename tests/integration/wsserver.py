"""A WebSocket server for agents in tests: its own asyncio loop on a thread, on a free port of
127.0.0.1, ready when constructed; subclasses handle each connection in `_handle`."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading

from websockets.asyncio.server import ServerConnection, serve

HOST = "127.0.0.1"


def _free_tcp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


class ThreadedWsServer:
    def __init__(self) -> None:
        self.port = _free_tcp_port()
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()

        async def main() -> None:
            self.server = await serve(self._handle, HOST, self.port)
            ready.set()
            await self.server.serve_forever()

        def run() -> None:
            with contextlib.suppress(asyncio.CancelledError):
                self.loop.run_until_complete(main())

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        assert ready.wait(5), "the agent's WebSocket server did not start"

    async def _handle(self, ws: ServerConnection) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Stop listening and end the loop's thread (idempotent)."""
        if self.thread.is_alive():
            self.loop.call_soon_threadsafe(self.server.close)
            self.thread.join(5)

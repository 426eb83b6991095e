"""A webhook receiver for integration tests: an HTTP server on 127.0.0.1 that keeps every POST
it gets, answers with the status it is told to, can hold its answers back (a delivery in
flight), and can go down and come back on the same port."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.integration.peers import HOST, free_port


@dataclass(frozen=True)
class Received:
    headers: dict[str, str]
    body: bytes

    @property
    def event(self) -> dict[str, Any]:
        event: dict[str, Any] = json.loads(self.body)
        return event


class HookReceiver:
    def __init__(self) -> None:
        self.port = free_port("tcp")
        self.url = f"http://{HOST}:{self.port}/hooks"
        self.status = 204
        self.received: list[Received] = []
        self.release = threading.Event()  # while held: answers wait until this is set
        self.release.set()
        self._cond = threading.Condition()
        self._server: ThreadingHTTPServer | None = None

    def start(self) -> HookReceiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with receiver._cond:
                    receiver.received.append(Received(dict(self.headers.items()), body))
                    receiver._cond.notify_all()
                receiver.release.wait(30)
                self.send_response(receiver.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        ThreadingHTTPServer.allow_reuse_address = True
        self._server = ThreadingHTTPServer((HOST, self.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        """Down: connections to the port are refused until start() again."""
        server, self._server = self._server, None
        if server is not None:
            self.release.set()
            server.shutdown()
            server.server_close()

    def events(self) -> list[dict[str, Any]]:
        with self._cond:
            return [r.event for r in self.received]

    def wait(self, predicate: Callable[[], Any], timeout: float = 60.0, what: str = "") -> Any:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                result = predicate()
                if result:
                    return result
                left = deadline - time.monotonic()
                if left <= 0:
                    types = [(e["call_id"], e["type"]) for e in (r.event for r in self.received)]
                    raise AssertionError(f"timed out waiting for {what or predicate}; got {types}")
                self._cond.wait(left)

    def __enter__(self) -> HookReceiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

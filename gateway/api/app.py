"""The node's HTTP API: FastAPI app (auth, rate limit, error envelope, operational endpoints)
and the uvicorn server the supervisor runs on its own event loop.

Resource routes live in `calls` (calls, events, recordings) and `resources` (trunks,
numbers, agents); both reach the node through `request.app.state.node`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from fastapi_offline import FastAPIOffline
from pydantic import ValidationError
from starlette.exceptions import HTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway import __version__
from gateway.api.auth import ApiKeys, RateLimiter, bearer_token
from gateway.api.common import ApiNode, error_response, request_errors, trunk_states
from gateway.api.models import Health, NodeHealth, Version, WorkerHealth
from gateway.config import ApiSettings
from gateway.errors import HTTP_STATUS, detail
from gateway.events.commands import MAX_REQUEST_BYTES
from gateway.events.schema import CommandError
from gateway.front.health import prometheus
from gateway.metrics import NodeSnapshot, WorkerGauge, render

log = logging.getLogger("sipedge.api")

DOCS_STATIC = "/docs/static"  # Swagger UI's files, served from the fastapi-offline package
PUBLIC_PATHS = frozenset({
    "/health", "/readiness", "/liveness", "/version", "/metrics", "/openapi.json", "/docs",
    "/docs/oauth2-redirect",
})  # fmt: skip
_CODE_OF_STATUS = {status: code for code, status in HTTP_STATUS.items()}

DESCRIPTION = """\
The HTTP API of one sipedge node: place and control calls, read the call log with its events
and recordings, see trunks, numbers and agents, and watch the node's health and metrics.

* `/v1/...` needs `Authorization: Bearer <key>` (keys from the node's config).
* Success bodies are `{"data": ...}`; lists add `"meta": {"total", "page", "per_page"}`.
* Every error is `{"error": {"code", "message", "details"}}`; `details` is always a list of
  `{"location", "field", "message", "type", "limit"}`. The codes and their statuses are the
  same for MQTT command replies.
* A request body may hold at most 64 KiB (413 `payload_too_large`); malformed JSON is 400
  `invalid_json`; unknown body fields and query parameters are refused by name (422).
* Every response carries `X-RateLimit-Limit`, `X-RateLimit-Remaining` and `X-RateLimit-Reset`
  (Unix time the one-minute window ends); past the limit, 429 with `Retry-After`.
"""


def create_app(
    node: ApiNode, settings: ApiSettings, clock: Callable[[], float] = time.time
) -> FastAPI:
    from gateway.api.analytics import router as analytics_router
    from gateway.api.calls import router as calls_router
    from gateway.api.campaigns import router as campaigns_router
    from gateway.api.recordings import router as recordings_router
    from gateway.api.resources import router as resources_router
    from gateway.api.webhooks import router as webhooks_router

    app = FastAPIOffline(
        title="sipedge", version=__version__, description=DESCRIPTION,
        openapi_url="/openapi.json", docs_url="/docs", redoc_url=None, static_url=DOCS_STATIC,
    )  # fmt: skip
    app.state.node = node
    app.state.keys = ApiKeys(settings.api_keys)
    app.state.limiter = RateLimiter(settings.rate_limit_per_minute, clock)
    app.include_router(calls_router)
    app.include_router(resources_router)
    app.include_router(campaigns_router)
    app.include_router(webhooks_router)
    app.include_router(analytics_router)
    app.include_router(recordings_router)
    _install_errors(app)
    app.add_middleware(BodyLimit, limit=MAX_REQUEST_BYTES)  # inside the guard: auth comes first
    _install_guard(app)
    _install_operations(app)
    return app


# --- errors -------------------------------------------------------------------------------


def _too_large(limit: int, size: int | None) -> CommandError:
    got = f" (got {size})" if size is not None else ""
    message = f"request body exceeds {limit} bytes{got}"
    return CommandError(
        "payload_too_large",
        message,
        [detail(message, location="body", type="too_large", limit=limit)],
    )


class _BodyTooLarge(HTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body exceeds {limit} bytes")
        self.limit = limit


class BodyLimit:
    """Refuses a request body over `limit` bytes with 413: by Content-Length before anything
    is read, and by counting while the route reads (a chunked body has no length)."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.limit:
            error = _too_large(self.limit, int(length))
            response = error_response(error.code, error.message, error.details,
                                      {"Connection": "close"})  # fmt: skip
            await response(scope, receive, send)
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise _BodyTooLarge(self.limit)  # FastAPI re-raises it from body parsing
            return message

        await self.app(scope, counted, send)


_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def allowed_methods(app: FastAPI, scope: Scope) -> list[str]:
    """Every method some route serves at this path (Starlette's 405 names only the methods
    of the first route that matched the path), asked of the router itself."""
    return [
        method for method in _METHODS
        if any(route.matches({**scope, "method": method})[0] is Match.FULL
               for route in app.router.routes)
    ]  # fmt: skip


def _install_errors(app: FastAPI) -> None:
    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        path = request.url.path
        headers = dict(exc.headers or {})
        if isinstance(exc, _BodyTooLarge):
            error = _too_large(exc.limit, None)
        elif exc.status_code == 404:
            error = CommandError("resource_not_found", f"no such resource: {path}")
        elif exc.status_code == 405:
            allow = ", ".join(allowed_methods(app, request.scope))
            headers["Allow"] = allow
            message = f"{request.method} is not allowed on {path} (allowed: {allow})"
            error = CommandError("method_not_allowed", message,
                                 [detail(message, type="method_not_allowed")])  # fmt: skip
        elif exc.status_code == 400:  # FastAPI could not parse the body at all (not UTF-8)
            message = "request body is not valid JSON (UTF-8 text expected)"
            error = CommandError(
                "invalid_json", message, [detail(message, location="body", type="json_invalid")]
            )
        else:
            code = _CODE_OF_STATUS.get(exc.status_code, "invalid_parameter")
            error = CommandError(code, str(exc.detail))
        return error_response(error.code, error.message, error.details, headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> Response:
        details = request_errors(exc.errors())
        malformed = any(d["type"] == "json_invalid" for d in details)
        code = "invalid_json" if malformed else "invalid_parameter"
        return error_response(code, details[0]["message"] if details else "invalid request",
                              details)  # fmt: skip

    @app.exception_handler(ValidationError)
    async def invalid_args(request: Request, exc: ValidationError) -> Response:
        details = request_errors(exc.errors(include_url=False, include_input=False))
        return error_response("invalid_parameter", details[0]["message"], details)

    @app.exception_handler(CommandError)
    async def command_error(request: Request, exc: CommandError) -> Response:
        headers = None
        if exc.retryable:
            headers = {"Retry-After": str(request.app.state.node.config.limits.retry_after)}
        return error_response(exc.code, exc.message, exc.details, headers)


# --- authentication and rate limit --------------------------------------------------------


def _install_guard(app: FastAPI) -> None:
    keys: ApiKeys = app.state.keys
    limiter: RateLimiter = app.state.limiter

    @app.middleware("http")
    async def guard(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        started = time.monotonic()
        path = request.url.path
        key_id = keys.identify(bearer_token(request.headers.get("authorization")))
        bucket = key_id or f"ip:{request.client.host if request.client else '-'}"
        now = limiter.clock()
        limited = path not in PUBLIC_PATHS and not path.startswith(DOCS_STATIC + "/")
        quota = limiter.hit(bucket) if limited else limiter.peek(bucket)
        response: Response
        if not quota.allowed:
            response = error_response(
                "rate_limit_exceeded", f"more than {quota.limit} requests a minute"
            )
        elif limited and key_id is None:
            response = error_response("unauthorized", "a valid API key is required "
                                      "(Authorization: Bearer <key>)", None,
                                      {"WWW-Authenticate": "Bearer"})  # fmt: skip
        else:
            try:
                response = await call_next(request)
            except Exception:  # any bug must still answer in the envelope, and be logged
                log.exception("event=api_error method=%s path=%s", request.method, path)
                response = error_response("internal_error", "internal error")
        response.headers.update(quota.headers(now))
        level = logging.INFO if limited else logging.DEBUG
        log.log(level, "event=api_request method=%s path=%s status=%d key=%s ms=%.1f",
                request.method, path, response.status_code, key_id or "-",
                (time.monotonic() - started) * 1000)  # fmt: skip
        return response


# --- health, readiness, liveness, version, metrics ---------------------------------------

_HEALTH_RESPONSES: dict[int | str, dict[str, Any]] = {
    503: {"model": Health, "description": "not healthy or not ready; `reasons` says why"},
}
_NODE_HEALTH_RESPONSES: dict[int | str, dict[str, Any]] = {
    503: {"model": NodeHealth, "description": "not healthy; `reasons` says why"},
}


def _health(node: ApiNode) -> tuple[dict[str, str], list[str]]:
    checks: dict[str, str] = {}
    reasons: list[str] = []
    # One worker down is not unhealthy: the others take calls while the node restarts it
    # (an orchestrator restarting the whole node would end every call). None up is.
    workers = node.workers.states()
    up = sum(1 for w in workers if w.running)
    checks["sip_worker"] = "ok" if up == len(workers) else "degraded" if up else "down"
    if not up:
        many = len(workers) > 1
        reasons.append(f"all {len(workers)} SIP workers are down" if many else "SIP worker is down")
    writable = node.store.writable()
    checks["store"] = "ok" if writable else "unwritable"
    if not writable:
        reasons.append("store is not writable")
    publisher = node.publisher
    # MQTT being away is not unhealthy: events wait in the outbox. Reported for operators.
    checks["mqtt"] = (
        "connected" if publisher is not None and publisher.connected else "disconnected"
    )
    return checks, reasons


async def _front_health(node: ApiNode, checks: dict[str, str], reasons: list[str]) -> None:
    """The SIP front's part of /health: down is unhealthy (nothing reaches the workers); how
    many workers it dispatches to is reported. An external front is the operator's to watch."""
    front = await node.front_health()
    if front is None:
        return
    if front.mode == "external":
        checks["sip_front"] = "external"
        return
    checks["sip_front"] = "ok" if front.up else "down"
    if not front.up:
        reasons.append("SIP front is down")
        return
    active = sum(1 for w in front.workers if w.active)
    checks["sip_front_workers"] = f"{active}/{len(front.workers)} active"


def _install_operations(app: FastAPI) -> None:
    node: ApiNode = app.state.node

    @app.get(
        "/health",
        tags=["operations"],
        response_model=NodeHealth,
        responses=_NODE_HEALTH_RESPONSES,
        summary="200 when a SIP worker runs and the store is writable, else 503; the workers",
    )
    async def health() -> Response:
        checks, reasons = _health(node)
        await _front_health(node, checks, reasons)
        workers = node.workers.states()
        body = NodeHealth(
            status="unhealthy" if reasons else "ok", checks=checks, reasons=reasons,
            active_calls=len(node.ledger.active),
            capacity=node.workers.capacity,
            workers=[WorkerHealth.model_validate(w.as_dict()) for w in workers],
        )  # fmt: skip
        return JSONResponse(body.model_dump(), status_code=503 if reasons else 200)

    @app.get(
        "/readiness",
        tags=["operations"],
        response_model=Health,
        responses=_HEALTH_RESPONSES,
        summary="200 when the node takes calls; 503 while starting or draining",
    )
    async def readiness() -> Response:
        checks, reasons = _health(node)
        await _front_health(node, checks, reasons)
        if node.draining:
            reasons.insert(0, "node is draining")
        if not node.workers.ready.is_set():
            reasons.insert(0, "trunks are not loaded yet (SIP worker starting)")
        checks["draining"] = "yes" if node.draining else "no"
        body = Health(status="not_ready" if reasons else "ready", checks=checks, reasons=reasons)
        return JSONResponse(body.model_dump(), status_code=503 if reasons else 200)

    @app.get(
        "/liveness",
        tags=["operations"],
        response_model=Health,
        summary="200 while the node's event loop answers",
    )
    async def liveness() -> Health:
        return Health(status="alive")

    @app.get("/version", tags=["operations"], response_model=Version)
    async def version() -> Version:
        return Version(version=__version__, node=node.config.node.id)

    @app.get(
        "/metrics",
        tags=["operations"],
        response_class=PlainTextResponse,
        summary="Prometheus text exposition format 0.0.4",
    )
    async def metrics() -> Response:
        text = render(snapshot(node), node.metrics)
        front = await node.front_health()
        if front is not None and front.mode == "embedded":
            text += prometheus(front)
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4; charset=utf-8")


def snapshot(node: ApiNode) -> NodeSnapshot:
    publisher = node.publisher
    workers = node.workers.states()
    return NodeSnapshot(
        node=node.config.node.id, version=__version__, active_calls=len(node.ledger.active),
        capacity=node.workers.capacity,
        draining=node.draining, worker_up=any(w.running for w in workers),
        uptime=time.time() - node.started_at, outbox_backlog=node.store.backlog(),
        mqtt_connected=publisher is not None and publisher.connected,
        trunks=trunk_states(node),
        workers=tuple(WorkerGauge(index=w.index, running=w.running, active_calls=w.active_calls,
                                  capacity=w.capacity, restarts=w.restarts) for w in workers),
    )  # fmt: skip


# --- the server ---------------------------------------------------------------------------


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # The node owns SIGTERM/SIGINT (it drains); uvicorn must not take them over.
        yield


class ApiServer:
    """uvicorn on the node's running loop, on a socket bound here so errors are ours."""

    def __init__(self, node: ApiNode, settings: ApiSettings) -> None:
        self.settings = settings
        self.app = create_app(node, settings)
        self._server: _Server | None = None
        self._task: Any = None

    async def start(self) -> None:
        settings = self.settings
        family = (
            socket.AF_INET6
            if ipaddress.ip_address(settings.listen).version == 6
            else socket.AF_INET
        )
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((settings.listen, settings.port))
        except OSError as exc:
            sock.close()
            raise RuntimeError(f"HTTP API cannot listen on {settings.listen}:{settings.port}: "
                               f"{exc.strerror}") from None  # fmt: skip
        sock.listen(128)
        sock.setblocking(False)
        config = uvicorn.Config(self.app, lifespan="off", log_config=None, access_log=False,
                                timeout_graceful_shutdown=2, server_header=False)  # fmt: skip
        self._server = _Server(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]))
        while not self._server.started and not self._task.done():
            await asyncio.sleep(0.01)
        if self._task.done():
            raise RuntimeError(f"HTTP API did not start: {self._task.exception()!r}")
        if not len(self.app.state.keys):
            log.warning("event=api_no_keys detail=every /v1 request will get 401")
        log.info("event=api_listening address=http://%s:%d", settings.listen, settings.port)

    async def stop(self, timeout: float = 5.0) -> None:
        if self._server is None or self._task is None:
            return
        self._server.should_exit = True
        try:
            await asyncio.wait_for(asyncio.shield(self._task), timeout)
        except TimeoutError:
            self._server.force_exit = True
            self._task.cancel()
        except (Exception, SystemExit) as exc:  # uvicorn exits via SystemExit on some errors
            log.error("event=api_stop_failed error=%r", exc)
        log.info("event=api_stopped")

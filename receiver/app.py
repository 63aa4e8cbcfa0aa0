"""create_app(config) -> the Starlette application; its lifespan runs the workers."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable

import httpx
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from receiver import api, callbacks, metrics
from receiver.bodies import BodyBudget
from receiver.config import Config
from receiver.logs import ACCESS_NOTES
from receiver.media import serve as media
from receiver.proxy import AllowedHosts, PathPrefix
from receiver.responses import JSON, error
from receiver.runtime import Runtime
from receiver.server import CLOSING
from receiver.store import DatabaseUnavailable
from receiver.web.dashboard import Dashboard, home
from receiver.web.dashboard import mount as dashboard_routes

log = logging.getLogger("vidhook.http")
# Seconds /readyz waits for its write; a write takes milliseconds when all is well.
READY_WAIT = 1.0


async def healthz(request: Request) -> Response:
    return JSON({"status": "ok"})


async def readyz(request: Request) -> Response:
    runtime: Runtime = request.app.state.runtime
    # A write, not a read: a database that can be read but not written cannot store a
    # callback. Bounded: a probe behind a lock is answered, never left hanging.
    problem = await runtime.store.heartbeat(timeout=READY_WAIT)
    checks = {"workers": runtime.ready, "database": problem is None}
    ok = all(checks.values())
    body: dict[str, object] = {"status": "ok" if ok else "unavailable", "checks": checks}
    if problem is not None:
        body["problems"] = {"database": problem}
    return JSON(body, 200 if ok else 503)


async def database_unavailable(request: Request, exc: Exception) -> Response:
    """A write the database refused: nothing was stored, and the sender should try again."""
    assert isinstance(exc, DatabaseUnavailable)
    response = error(
        503,
        "database_unavailable",
        f"the database cannot take this write right now ({exc.reason}); nothing was "
        f"stored: send it again in {exc.retry_after} s",
    )
    response.headers["Retry-After"] = str(exc.retry_after)
    return response


async def not_found(request: Request, exc: Exception) -> Response:
    return error(404, "not_found", "no such endpoint")


async def method_not_allowed(request: Request, exc: Exception) -> Response:
    response = error(405, "method_not_allowed", f"{request.method} is not allowed here")
    if isinstance(exc, HTTPException) and exc.headers and "Allow" in exc.headers:
        response.headers["Allow"] = exc.headers["Allow"]
    return response


async def server_error(request: Request, exc: Exception) -> Response:
    return error(500, "internal_error", "vidhook failed to handle this request; see its log")


class AccessLog:
    """One line per request, with callback tokens cut out of the path.

    A handler may add to the line through ``logs.access_note``; the callback endpoint says there
    which job the callback was for and what became of it.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        notes: list[str] = []
        scope[ACCESS_NOTES] = notes

        async def record(message: dict[str, object]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])  # type: ignore[call-overload]
            await send(message)

        try:
            await self.app(scope, receive, record)  # type: ignore[arg-type]
        finally:
            log.info(
                "%s %s %d %.1fms%s",
                scope["method"],
                redact_path(scope["path"]),
                status,
                (time.perf_counter() - started) * 1000,
                "".join(f" {note}" for note in notes),
            )


def redact_path(path: str) -> str:
    parts = path.split("/")
    # .../callbacks/{provider}/{token}: the token is a per-job secret.
    if "callbacks" in parts:
        at = parts.index("callbacks") + 2
        if at < len(parts):
            parts[at] = "***"
    return "/".join(parts)


def create_app(
    config: Config,
    *,
    clock: Callable[[], float] = time.time,
    transport: httpx.AsyncBaseTransport | None = None,
) -> Starlette:
    runtime = Runtime(config, clock=clock, transport=transport)
    dashboard = Dashboard(runtime)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, object]]:
        await runtime.start()
        dashboard.start()
        try:
            yield {CLOSING: runtime.events.close}
        finally:
            await dashboard.stop()
            await runtime.stop()

    app = Starlette(
        routes=[
            # First: the router tries each route in turn, and callbacks are most requests.
            Route("/callbacks/{provider}/{token}", callbacks.receive, methods=["POST"]),
            Route("/callbacks/{provider}", callbacks.receive_account, methods=["POST"]),
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            Route("/metrics", metrics.endpoint),
            Mount("/api", routes=api.routes),
            Mount("/media", routes=media.routes),
            Route("/", home),
            dashboard_routes(),
        ],
        exception_handlers={
            404: not_found,
            405: method_not_allowed,
            500: server_error,
            DatabaseUnavailable: database_unavailable,
        },
        lifespan=lifespan,
    )
    app.state.runtime = runtime
    app.state.dashboard = dashboard
    app.state.bodies = BodyBudget(config.server.max_body_memory)
    # Added last runs first: forwarding headers, then the Host check, then the prefix.
    # Each is left out where it would do nothing: every request passes through them all.
    app.add_middleware(AccessLog)
    if config.public_path.rstrip("/"):
        app.add_middleware(PathPrefix, prefix=config.public_path)
    if "*" not in config.allowed_hosts:
        app.add_middleware(AllowedHosts, hosts=config.allowed_hosts)
    if config.server.trusted_proxies:
        trusted = list(config.server.trusted_proxies)
        app.add_middleware(ProxyHeadersMiddleware, trusted_hosts=trusted)
    return app

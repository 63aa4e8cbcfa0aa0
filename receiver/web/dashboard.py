"""The dashboard's shared state (templates, job counts, the security policy) and its routes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send

from receiver.store.pages import JobCounts
from receiver.web import deliveries, job, jobs, login, new, providers
from receiver.web.guard import page, problem
from receiver.web.security import SecurityHeaders, content_security_policy
from receiver.web.templating import STATIC, Pages, base_path

if TYPE_CHECKING:
    from receiver.runtime import Runtime

log = logging.getLogger("vidhook.web")


class Dashboard:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.pages = Pages()
        self.counts = JobCounts()
        self.content_security_policy = content_security_policy()
        self._counting: asyncio.Future[dict[tuple[str, str], int]] | None = None
        self._warming: asyncio.Task[None] | None = None

    async def job_counts(self) -> dict[tuple[str, str], int]:
        """Jobs per (provider, status). Callers at the same moment share one read: the
        first one after a start counts the whole table, which takes a while."""
        if self._counting is None or self._counting.done():
            self._counting = asyncio.ensure_future(self.runtime.store.read(self.counts.refresh))
        return await asyncio.shield(self._counting)

    def start(self) -> None:
        self._warming = asyncio.create_task(self._warm())

    async def stop(self) -> None:
        if self._warming is not None:
            self._warming.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._warming

    async def _warm(self) -> None:
        storage = self.runtime.archive.storage
        if storage is not None and storage.remote:
            # /media redirects to the storage's own URLs, which the player must be let load.
            probe = await storage.redirect("probe", 60)
            origin = "{0.scheme}://{0.netloc}".format(urlsplit(probe))
            self.content_security_policy = content_security_policy([origin])
        try:
            await self.job_counts()
        except Exception:
            log.exception("counting the jobs for the dashboard failed; the next page tries again")


class StaticAssets:
    """The stylesheet and scripts; their URLs carry a hash of their content, so they may
    be cached for good."""

    def __init__(self) -> None:
        self.files = StaticFiles(directory=STATIC)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def cached(message: dict[str, object]) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))  # type: ignore[call-overload]
                headers.append((b"cache-control", b"public, max-age=31536000, immutable"))
                message["headers"] = headers
            await send(message)

        await self.files(scope, receive, cached)  # type: ignore[arg-type]


async def home(request: Request) -> Response:
    return RedirectResponse(f"{base_path(request)}/ui/", status_code=307)


@page
async def not_found(request: Request) -> Response:
    return problem(request, 404, "Not found", "There is no page here.")


def mount() -> Mount:
    return Mount(
        "/ui",
        routes=[
            Route("/", jobs.page, methods=["GET"]),
            Route("/login", login.form, methods=["GET"]),
            Route("/login", login.submit, methods=["POST"]),
            Route("/logout", login.logout, methods=["POST"]),
            Route("/new", new.page, methods=["GET"]),
            Route("/new", new.submit, methods=["POST"]),
            Route("/jobs/{job_id}", job.page, methods=["GET"]),
            Route("/jobs/{job_id}/refresh", job.refresh, methods=["POST"]),
            Route("/jobs/{job_id}/cancel", job.cancel, methods=["POST"]),
            Route("/jobs/{job_id}/archive", job.keep_again, methods=["POST"]),
            Route("/jobs/{job_id}/again", job.again, methods=["POST"]),
            Route("/deliveries", deliveries.page, methods=["GET"]),
            Route("/deliveries/retry", deliveries.retry_channel, methods=["POST"]),
            Route("/deliveries/{delivery_id}/retry", deliveries.retry_one, methods=["POST"]),
            Route("/providers", providers.page, methods=["GET"]),
            Mount("/static", app=StaticAssets()),
            Route("/{path:path}", not_found),
        ],
        middleware=[Middleware(SecurityHeaders)],
    )

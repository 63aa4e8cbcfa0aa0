"""What every fake provider shares: a request log, failure injection, background tasks.

A fake is a :class:`FakeProvider` subclass that lists its routes and says how its API
spells an error. Failure injection (``Faults``) sits in front of every route, so a test
can make any fake answer 429 with Retry-After, burst 5xx, hang past the client's
timeout, or send malformed JSON, and then read ``requests`` to see what the client did.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Coroutine, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from receiver.sandbox.media import FileSettings

MALFORMED_BODY = b'{"status": "processing", "data": {'


class RecordedRequest(NamedTuple):
    time: float  # time.monotonic() when the request arrived
    method: str
    path: str
    status_code: int
    task_id: str | None


@dataclass
class Faults:
    """Misbehaviour on demand. Mutable on purpose: tests change it while the server runs.

    Counters (``rate_limit``, ``error_burst``, ``slow``, ``malformed``) apply to the next
    N requests whose path matches ``paths`` (a regular expression; None matches all) and
    count down. ``outage`` answers ``error_status`` to every matching request until
    cleared; ``hang`` delays every matching request by ``slow_delay``.
    """

    rate_limit: int = 0
    retry_after: float = 1.0
    error_burst: int = 0
    error_status: int = 500
    slow: int = 0
    slow_delay: float = 30.0
    malformed: int = 0
    outage: bool = False
    hang: bool = False
    paths: str | None = None


@dataclass
class Timing:
    """How long a fake task spends in each stage, in seconds."""

    queue_delay: float = 0.2
    start_delay: float = 0.3
    run_time: float = 0.5
    slow_factor: float = 10.0  # multiplies every stage of a task marked [slow]

    def stages(self, scenario: frozenset[str]) -> tuple[float, float, float]:
        factor = self.slow_factor if "slow" in scenario else 1.0
        return (self.queue_delay * factor, self.start_delay * factor, self.run_time * factor)


# What each prompt marker makes a fake do; each fake lists the markers it knows (MARKERS
# in its module), and `vidhook sandbox` prints them with these words.
MARKER_MEANINGS: dict[str, str] = {
    "fail": "the provider fails the job",
    "slow": "every stage of the job takes ten times longer",
    "unknown": "the provider reports a status word its docs do not list, then goes on",
    "never": "the job never ends (until vidhook's deadline fails it)",
    "429": "the submission is refused: 429 Too Many Requests",
    "500": "the submission is refused: 500 Internal Server Error",
    "policy": "the submission is refused for the content policy",
    "lost": "no callback arrives: vidhook learns the end by polling",
    "duplicate": "every callback is sent twice",
    "out-of-order": "the processing callback arrives after the final one",
    "early": "a callback claims success before the provider's status says so",
    "busy": "the submission is refused for now: the account's concurrent jobs are all taken",
    "arrears": "the submission is refused: the account is in arrears",
    "list": "the result comes as a list of URLs rather than one",
    "badjson": "the webhook says the result could not be sent as JSON",
    "moderation": "the generated video fails the provider's content moderation",
    "concurrent": "the submission is refused for now: too many jobs at once",
    "filtered": "the provider's safety filter withholds the video",
    "inline": "the video comes inline in the answer rather than as a link",
}


def scenario_of(prompt: object, markers: Sequence[str]) -> frozenset[str]:
    """The ``[marker]``s present in a prompt."""
    text = prompt if isinstance(prompt, str) else ""
    return frozenset(m for m in markers if f"[{m}]" in text)


@dataclass
class FakeSettings:
    api_keys: list[str] = field(default_factory=list)  # empty: any non-empty key
    timing: Timing = field(default_factory=Timing)
    faults: Faults = field(default_factory=Faults)
    files: FileSettings = field(default_factory=FileSettings)


class FakeProvider:
    """Base of the fake providers; ``app`` is the ASGI app to mount under ``prefix``."""

    prefix = ""

    def __init__(self, settings: FakeSettings | None = None) -> None:
        self.settings = settings or FakeSettings()
        self.tasks: dict[str, Any] = {}
        self.requests: list[RecordedRequest] = []
        self._background: set[asyncio.Task[None]] = set()
        self.app = self._build_app()

    # -- what a subclass provides --

    def routes(self) -> list[BaseRoute]:
        raise NotImplementedError

    def error_response(
        self, status: int, message: str, headers: dict[str, str] | None = None
    ) -> Response:
        """An error in this provider's own shape (used by failure injection too)."""
        raise NotImplementedError

    # -- shared machinery --

    def key_allowed(self, key: str) -> bool:
        return bool(key) and (not self.settings.api_keys or key in self.settings.api_keys)

    def spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    async def aclose(self) -> None:
        tasks = list(self._background)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def requests_to(self, pattern: str) -> list[RecordedRequest]:
        """Recorded requests whose path matches a regular expression."""
        return [r for r in self.requests if re.search(pattern, r.path)]

    def _build_app(self) -> Starlette:
        @asynccontextmanager
        async def lifespan(app: Starlette) -> AsyncIterator[None]:
            yield
            await self.aclose()

        app = Starlette(routes=self.routes(), lifespan=lifespan)
        app.add_middleware(_InjectFaults, fake=self)
        app.add_middleware(_RecordRequests, fake=self)
        app.state.sandbox = self
        return app


class _InjectFaults:
    def __init__(self, app: ASGIApp, fake: FakeProvider) -> None:
        self.app, self.fake = app, fake

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        faults = self.fake.settings.faults
        if scope["type"] != "http" or (
            faults.paths is not None and not re.search(faults.paths, scope["path"])
        ):
            await self.app(scope, receive, send)
            return
        if faults.hang or faults.slow > 0:
            faults.slow = max(0, faults.slow - 1)
            await asyncio.sleep(faults.slow_delay)
        response: Response | None = None
        if faults.rate_limit > 0:
            faults.rate_limit -= 1
            retry = {"Retry-After": f"{faults.retry_after:g}"}
            response = self.fake.error_response(429, "too many requests", retry)
        elif faults.outage or faults.error_burst > 0:
            faults.error_burst = max(0, faults.error_burst - 1)
            response = self.fake.error_response(faults.error_status, "upstream failure")
        elif faults.malformed > 0:
            faults.malformed -= 1
            response = Response(MALFORMED_BODY, media_type="application/json")
        if response is not None:
            await response(scope, receive, send)
        else:
            await self.app(scope, receive, send)


class _RecordRequests:
    """Record every request, including those refused by failure injection."""

    def __init__(self, app: ASGIApp, fake: FakeProvider) -> None:
        self.app, self.fake = app, fake

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, status = time.monotonic(), 500
        # Handlers set request.state.task_id, which lives in this same dict.
        state = scope.setdefault("state", {})

        async def send_and_record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            self.fake.requests.append(
                RecordedRequest(
                    started, scope["method"], scope["path"], status, state.get("task_id")
                )
            )


def bearer_key(request: Request) -> str:
    scheme, _, key = request.headers.get("authorization", "").partition(" ")
    return key.strip() if scheme.lower() == "bearer" else ""

"""A stand-in for vidhook's callback endpoint: records what a fake provider POSTs."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from receiver.sandbox.server import ServerThread


class Received:
    def __init__(self, body: bytes) -> None:
        self.time = time.monotonic()
        self.body = body
        self.json: Any = json.loads(body)


class HookReceiver:
    """POST /cb/{answer}/{token}, where answer says how to reply.

    ``ok``: 200, echoing a ``challenge``; ``mute``: 200 with an empty object; ``slow``: as
    ok, after ``slow_delay`` seconds; ``picky``: as ok to a challenge, 500 to the rest;
    ``plain``: 200 with the text ``ok``; a number: that HTTP status.
    """

    def __init__(self, slow_delay: float = 3.5) -> None:
        self.slow_delay = slow_delay
        self._received: dict[str, list[Received]] = {}
        self._lock = threading.Lock()
        route = Route("/cb/{answer}/{token}", self._record, methods=["POST"])
        self.server = ServerThread(Starlette(routes=[route]))

    async def _record(self, request: Request) -> Response:
        received = Received(await request.body())
        with self._lock:
            self._received.setdefault(request.path_params["token"], []).append(received)
        answer = request.path_params["answer"]
        if answer.isdigit():
            return Response(status_code=int(answer))
        if answer == "mute":
            return JSONResponse({})
        if answer == "plain":
            return Response("ok", media_type="text/plain")
        if answer == "slow":
            await asyncio.sleep(self.slow_delay)
        body = received.json
        challenge = body.get("challenge") if isinstance(body, dict) else None
        if answer == "picky" and not challenge:
            return Response(status_code=500)
        return JSONResponse({"challenge": challenge} if challenge else {"ok": True})

    def url(self, answer: str | int = "ok") -> str:
        return f"{self.server.url}/cb/{answer}/{uuid.uuid4().hex}"

    def received(self, url: str) -> list[Received]:
        with self._lock:
            return list(self._received.get(url.rsplit("/", 1)[1], []))

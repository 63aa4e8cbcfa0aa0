"""A webhook receiver on loopback for the fakes' tests: records what each URL was sent."""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from receiver.sandbox.server import ServerThread


@dataclass(frozen=True)
class Delivery:
    headers: dict[str, str]
    body: bytes


class Hooks:
    """Records the requests POSTed to /hook/{status}/{token}, answering {status}."""

    def __init__(self) -> None:
        self.seen: dict[str, list[Delivery]] = {}
        self.lock = threading.Lock()
        route = Route("/hook/{status:int}/{token}", self.record, methods=["POST"])
        self.server = ServerThread(Starlette(routes=[route]))

    async def record(self, request: Request) -> Response:
        delivery = Delivery(dict(request.headers), await request.body())
        with self.lock:
            self.seen.setdefault(request.path_params["token"], []).append(delivery)
        return Response(status_code=request.path_params["status"])

    def url(self, status: int = 200) -> str:
        return f"{self.server.url}/hook/{status}/{uuid.uuid4().hex}"

    def deliveries(self, url: str) -> list[Delivery]:
        with self.lock:
            return list(self.seen.get(url.rsplit("/", 1)[1], []))

    def wait(self, url: str, count: int, timeout: float = 5.0) -> list[Delivery]:
        deadline = time.monotonic() + timeout
        while len(got := self.deliveries(url)) < count:
            assert time.monotonic() < deadline, f"{len(got)} of {count} deliveries"
            time.sleep(0.01)
        return got

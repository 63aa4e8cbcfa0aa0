"""Request bodies read into memory, each within its own limit and all within one budget.

Every request that reads a body holds its bytes until its answer is sent. Under a flood of
slow uploads those bytes add up across requests; the budget bounds their sum, and a
request that would pass it is answered 503 with Retry-After instead of being read.
"""

from __future__ import annotations

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from receiver.responses import error

RETRY_AFTER = 5  # seconds; a provider's own retry schedule usually waits longer anyway


class BodyTooLarge(Exception):
    pass


class OverBudget(Exception):
    """Reading this body would hold more than the server's budget for bodies in memory."""


class BodyBudget:
    """Bytes of request bodies held at once, across all requests (one event loop: no lock)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.held = 0

    def take(self, size: int) -> bool:
        if self.held + size > self.capacity:
            return False
        self.held += size
        return True

    def give_back(self, size: int) -> None:
        self.held -= size


def declared_length(request: Request) -> int | None:
    declared = request.headers.get("content-length")
    # isascii(): str.isdigit() also takes digits such as "²" that int() refuses.
    if declared and declared.isascii() and declared.isdigit():
        return int(declared[:20])
    return None


class HeldBody:
    """A body read whole, and its bytes counted against the budget until ``release``."""

    __slots__ = ("_budget", "content", "taken")

    def __init__(self, content: bytes, taken: int, budget: BodyBudget) -> None:
        self.content = content
        self.taken = taken
        self._budget = budget

    def release(self) -> None:
        self._budget.give_back(self.taken)
        self.taken = 0


async def hold_body(request: Request, limit: int, budget: BodyBudget) -> HeldBody:
    """The whole body, counted against ``budget`` until the caller releases it.

    A declared length is taken from the budget before a byte is read; a chunked body is
    taken as it arrives. Raises BodyTooLarge past ``limit``, OverBudget past the budget
    (having given back what it took), ClientDisconnect if the client goes away.
    """
    declared = declared_length(request)
    if declared is not None and declared > limit:
        raise BodyTooLarge
    taken = 0
    try:
        if declared:
            if not budget.take(declared):
                raise OverBudget
            taken = declared
        chunks: list[bytes] = []
        size = 0
        # The ASGI messages read directly: Request.stream() is an async generator, and
        # its machinery was a tenth of the event loop's time per callback under a burst.
        while True:
            message = await request.receive()
            if message["type"] != "http.request":
                raise ClientDisconnect
            chunk = message.get("body", b"")
            if chunk:
                size += len(chunk)
                if size > limit:
                    raise BodyTooLarge
                if size > taken:
                    if not budget.take(size - taken):
                        raise OverBudget
                    taken = size
                chunks.append(chunk)
            if not message.get("more_body", False):
                break
    except BaseException:
        budget.give_back(taken)
        raise
    return HeldBody(chunks[0] if len(chunks) == 1 else b"".join(chunks), taken, budget)


def closing(response: Response) -> Response:
    """The answer, and the end of the connection: what is left of the body is not read."""
    response.headers["Connection"] = "close"
    return response


def over_budget() -> Response:
    response = error(
        503, "busy", "vidhook holds too many request bodies in memory right now; retry shortly"
    )
    response.headers["Retry-After"] = str(RETRY_AFTER)
    return closing(response)

"""The HTTP server in front of the app: uvicorn on httptools and uvloop, guarded.

What a stranger can make the server hold is bounded here, before the app sees a request:

- a request head (request line and header fields) over 16 KiB or over 100 fields is
  answered 431 and the connection closed, having parsed no more than 16 KiB of it;
- a connection that has not sent a whole request head within ``header_timeout`` seconds
  of connecting (or of starting its next request) is closed;
- past ``max_connections`` open connections, the oldest connections with no request in
  hand are closed to make room; when every one has a request in hand, a request is
  answered 503 with Retry-After;
- errors from accepting connections (out of file descriptors) are logged once a minute at
  most, with a count, instead of once per try.

The bodies the app reads are bounded by ``receiver.bodies``.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import httptools
import uvicorn
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from receiver.bodies import RETRY_AFTER
from receiver.config import ServerConfig
from receiver.responses import dumps

log = logging.getLogger("vidhook.http")

HEAD_MAX_BYTES = 16 * 1024
HEAD_MAX_FIELDS = 100
# uvicorn on httptools and uvloop (the default), or on h11 and the stock asyncio loop: the
# pure-Python stack, kept for measuring the default against (bench/callbacks.py --compare).
Stack = Literal["httptools", "h11"]
_OUT_OF_RESOURCES = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}


class Every:
    """A log line said at most once per ``interval`` seconds, with how many were held back."""

    def __init__(self, interval: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self.clock = clock
        self._next = 0.0
        self._held = 0

    def log(self, level: int, message: str, *args: object) -> None:
        now = self.clock()
        if now < self._next:
            self._held += 1
            return
        if self._held:
            message += f" ({self._held} more like it in the last {self.interval:.0f} s)"
        self._held = 0
        self._next = now + self.interval
        log.log(level, message, *args)


@dataclass(frozen=True)
class Limits:
    max_connections: int
    header_timeout: float
    head_bytes: int = HEAD_MAX_BYTES
    head_fields: int = HEAD_MAX_FIELDS


def _raw_answer(status: str, code: str, message: str, *extra: str) -> bytes:
    body = dumps({"error": {"code": code, "message": message}})
    head = [
        f"HTTP/1.1 {status}",
        "content-type: application/json",
        f"content-length: {len(body)}",
        "connection: close",
        *extra,
    ]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


_HEAD_TOO_LARGE = _raw_answer(
    "431 Request Header Fields Too Large",
    "headers_too_large",
    f"a request head is limited to {HEAD_MAX_BYTES} bytes and {HEAD_MAX_FIELDS} header fields",
)
_MALFORMED = _raw_answer("400 Bad Request", "malformed_request", "this is not valid HTTP/1.1")
_BUSY_BODY = dumps(
    {"error": {"code": "busy", "message": "vidhook has too many connections open; retry shortly"}}
)


async def busy(scope: Scope, receive: Receive, send: Send) -> None:
    """The answer past max_connections, in place of the app."""
    await send(
        {
            "type": "http.response.start",
            "status": 503,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(_BUSY_BODY)).encode()),
                (b"retry-after", str(RETRY_AFTER).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": _BUSY_BODY})


class HeadTooLarge(Exception):
    pass


class CorkedTransport:
    """A request's transport that holds its first write (the response head) until the
    next one, or the loop's next turn, so that a small answer leaves in one syscall and
    one TCP segment: the two writes were a sixth of the event loop's time per callback."""

    __slots__ = ("_held", "_loop", "_transport", "_used")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: bytes | None = None
        self._used = False

    def write(self, data: bytes) -> None:
        if self._held is not None:
            self._transport.writelines((self._held, data))
            self._held = None
        elif self._used:
            self._transport.write(data)
        else:
            self._used = True
            self._held = data
            self._loop.call_soon(self.flush)

    def flush(self) -> None:
        if self._held is not None:
            self._transport.write(self._held)
            self._held = None

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class GuardedHttpTools(HttpToolsProtocol):
    """uvicorn's httptools protocol with the limits above; one instance per connection."""

    limits: ClassVar[Limits]
    notes: ClassVar[dict[str, Every]]
    # The server's connections with no request in hand (waiting for a head, or idle
    # between requests), oldest first: the ones closed to make room past the limit.
    idle: ClassVar[dict[GuardedHttpTools, None]]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Answered by on_headers_complete below, in vidhook's error format.
        self.limit_concurrency = None
        self._awaiting_head = True
        self._head_timer: asyncio.TimerHandle | None = None
        self._head_fed = 0  # bytes given to the parser since the head began
        self._head_size = 0  # bytes of request target and fields, as the parser hands them
        self._head_fields = 0
        self._heads = 0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()
        self._make_room()
        self.idle[self] = None

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self.idle.pop(self, None)
        super().connection_lost(exc)

    def _make_room(self) -> bool:
        """Close the oldest idle connections while more than max_connections are open.

        A flood of connections that send nothing (or half a head) then costs the newest
        of them their place, not the requests that arrive whole. False if the
        connections over the limit all have a request in hand.
        """
        limit = self.limits.max_connections
        while len(self.connections) > limit:
            oldest = next(iter(self.idle), None)
            if oldest is None:
                return False
            oldest.evict()
        return True

    def evict(self) -> None:
        self.idle.pop(self, None)
        self._disarm()
        self.connections.discard(self)  # at once: the transport says goodbye a turn later
        if not self.transport.is_closing():
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        self._unset_keepalive_if_required()
        if self._awaiting_head:
            self._arm()
            room = self.limits.head_bytes - self._head_fed
            if len(data) > room:
                # Parse no more than the limit while the head is unfinished: httptools
                # would otherwise buffer a long header value whole before calling back.
                heads = self._heads
                if not self._feed(data[:room]) or self.transport.is_closing():
                    return
                if self._heads == heads:
                    self._refuse_head()
                    return
                data = data[room:]
            else:
                self._head_fed += len(data)
        self._feed(data)

    def _feed(self, data: bytes) -> bool:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            if isinstance(exc.__context__, HeadTooLarge):
                self._refuse_head()
            else:
                self._malformed()
            return False
        except httptools.HttpParserUpgrade:
            pass  # no protocol to upgrade to: the request is served as plain HTTP
        except httptools.HttpParserError:
            self._malformed()
            return False
        return True

    def _refuse_head(self) -> None:
        self.notes["head"].log(logging.WARNING, "refused a request head over the limits (431)")
        self._close_with(_HEAD_TOO_LARGE)

    def _malformed(self) -> None:
        self.notes["malformed"].log(logging.WARNING, "refused a malformed request (400)")
        self._close_with(_MALFORMED)

    def _close_with(self, answer: bytes) -> None:
        self._disarm()
        if not self.transport.is_closing():
            self.transport.write(answer)
            self.transport.close()

    def _arm(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.limits.header_timeout, self._head_late)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_late(self) -> None:
        self._head_timer = None
        if self._awaiting_head and not self.transport.is_closing():
            self.transport.close()

    # -- parser callbacks --

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_size = 0
        self._head_fields = 0
        self._arm()

    def on_url(self, url: bytes) -> None:
        self._head_size += len(url)
        if self._head_size > self.limits.head_bytes:
            raise HeadTooLarge
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_fields += 1
        self._head_size += len(name) + len(value) + 4
        if self._head_fields > self.limits.head_fields or self._head_size > self.limits.head_bytes:
            raise HeadTooLarge
        # uvicorn's own on_header, inlined: it runs for every field of every request.
        name = name.lower()
        value = value.rstrip(b" \t")  # llhttp keeps trailing whitespace, not part of a value
        if name == b"expect" and value.lower() == b"100-continue":
            self.expect_100_continue = True
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._disarm()
        self._awaiting_head = False
        self._heads += 1
        self.idle.pop(self, None)
        limit = self.limits.max_connections
        # This connection is one of self.connections; this request's task is not yet one
        # of self.tasks.
        if not self._make_room() or len(self.tasks) >= limit:
            self.notes["busy"].log(
                logging.WARNING,
                "%d connections open: answering 503 past %d",
                len(self.connections),
                limit,
            )
            app, self.app = self.app, busy
            try:
                super().on_headers_complete()
            finally:
                self.app = app
        else:
            super().on_headers_complete()
        if self.cycle is not None:
            self.cycle.transport = CorkedTransport(self.transport, self.loop)  # type: ignore[assignment]

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._awaiting_head = True
        self._head_fed = 0

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self._awaiting_head and not self.pipeline and not self.transport.is_closing():
            self.idle[self] = None


def guarded_protocol(limits: Limits) -> type[GuardedHttpTools]:
    """GuardedHttpTools bound to ``limits``, with its own rate-limited log lines."""
    notes = {kind: Every() for kind in ("head", "malformed", "busy")}
    state = {"limits": limits, "notes": notes, "idle": {}}
    return type("GuardedHttpTools", (GuardedHttpTools,), state)


def accept_errors(every: Every) -> Callable[[asyncio.AbstractEventLoop, dict[str, Any]], None]:
    """An event loop exception handler that says "out of file descriptors" once a minute.

    Under a connection flood the loop fails to accept again and again; each failure would
    otherwise be logged with its traceback.
    """

    def handle(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if isinstance(exc, OSError) and exc.errno in _OUT_OF_RESOURCES:
            every.log(logging.ERROR, "cannot accept connections: %s", exc.strerror or exc)
            return
        loop.default_exception_handler(context)

    return handle


# The lifespan state key of a function to call when the server begins to shut down,
# before it waits for the responses under way: a response that never ends by itself (an
# event stream) ends then, rather than holding the shutdown up to its timeout.
CLOSING = "vidhook.closing"


def begin_closing(server: uvicorn.Server) -> None:
    lifespan = getattr(server, "lifespan", None)
    closing = getattr(lifespan, "state", {}).get(CLOSING)
    if callable(closing):
        closing()


class Server(uvicorn.Server):
    """uvicorn's server, ending with a return rather than the signal that stopped it.

    uvicorn raises SIGTERM (or SIGINT) again once it has shut down, so that the process
    ends as killed by it; a clean shutdown is a success here, and `vidhook serve` exits 0.
    Open event streams are ended as the shutdown begins (``CLOSING``).
    """

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        begin_closing(self)
        await super().shutdown(sockets)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        handled = (signal.SIGINT, signal.SIGTERM)
        original = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        asyncio.get_running_loop().set_exception_handler(accept_errors(Every()))
        await super().startup(sockets)


def uvicorn_config(
    app: ASGIApp,
    server: ServerConfig,
    *,
    host: str,
    port: int,
    log_level: str,
    stack: Stack = "httptools",
) -> uvicorn.Config:
    limits = Limits(max_connections=server.max_connections, header_timeout=server.header_timeout)
    http: type[asyncio.Protocol] | str = guarded_protocol(limits) if stack == "httptools" else "h11"
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        http=http,
        loop="uvloop" if stack == "httptools" else "asyncio",
        ws="none",
        lifespan="on",
        limit_concurrency=server.max_connections,
        # h11 only: it parses a complete head whatever its size; this bounds an incomplete one.
        h11_max_incomplete_event_size=HEAD_MAX_BYTES,
        access_log=False,
        log_level=log_level,
        # None: uvicorn installs no handlers of its own; its records reach the redacting one.
        log_config=None,
        timeout_graceful_shutdown=10,
        # The app reads forwarding headers itself, from [server] trusted_proxies only.
        proxy_headers=False,
    )


def serve(config: uvicorn.Config) -> int:
    """Run until SIGTERM or SIGINT, then shut down cleanly: 0."""
    Server(config).run()
    return 0

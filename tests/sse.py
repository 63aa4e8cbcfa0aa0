"""A server-sent events client of the tests' own, on a raw socket: HTTP/1.1, chunked
bodies and the event stream format read here, independently of the code under test.

``Stream`` reads on a thread of its own; ``Parser`` is the part that turns bytes into
events, for tests that drive many streams from one event loop.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from tests.conftest import ADMIN_TOKEN


@dataclass(frozen=True)
class Event:
    id: int | None
    type: str
    data: str

    @property
    def job(self) -> dict[str, Any]:
        value = json.loads(self.data)
        assert isinstance(value, dict)
        return value


def request_bytes(url: str, path: str, token: str | None = ADMIN_TOKEN, **headers: str) -> bytes:
    host = urlsplit(url).netloc
    lines = [f"GET {path} HTTP/1.1", f"Host: {host}", "Accept: text/event-stream"]
    if token is not None:
        lines.append(f"Authorization: Bearer {token}")
    lines += [f"{name.replace('_', '-')}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


class Parser:
    """Bytes of one response in, its status, headers and events out."""

    def __init__(self) -> None:
        self.status: int | None = None
        self.headers: dict[str, str] = {}
        self.body = b""  # the decoded body, for an answer that is not a stream
        self.events: list[Event] = []
        self.comments: list[str] = []
        self.retry: int | None = None
        self.last_id: int | None = None  # as a browser's EventSource keeps it
        self.ended = False  # the body's last chunk came
        self._raw = b""
        self._text = b""
        self._type = "message"
        self._data: list[str] = []

    def feed(self, data: bytes) -> None:
        self._raw += data
        if self.status is None:
            if b"\r\n\r\n" not in self._raw:
                return
            head, self._raw = self._raw.split(b"\r\n\r\n", 1)
            status_line, *fields = head.decode("latin-1").split("\r\n")
            self.status = int(status_line.split()[1])
            for field in fields:
                name, _, value = field.partition(":")
                self.headers[name.strip().lower()] = value.strip()
        if self.headers.get("transfer-encoding") != "chunked":
            self.body += self._raw
            self._raw = b""
            return
        while not self.ended and b"\r\n" in self._raw:
            size_line, rest = self._raw.split(b"\r\n", 1)
            size = int(size_line.split(b";")[0], 16)
            if len(rest) < size + 2:
                return
            self._raw = rest[size + 2 :]
            if size == 0:
                self.ended = True
            else:
                self._lines(rest[:size])

    def _lines(self, chunk: bytes) -> None:
        self.body += chunk
        self._text += chunk
        *lines, self._text = self._text.split(b"\n")
        for raw in lines:
            line = raw.decode().removesuffix("\r")
            if not line:
                if self._data:
                    data = "\n".join(self._data)
                    self.events.append(Event(self.last_id, self._type, data))
                self._type, self._data = "message", []
            elif line.startswith(":"):
                self.comments.append(line[1:].strip())
            else:
                name, _, value = line.partition(":")
                value = value.removeprefix(" ")
                if name == "data":
                    self._data.append(value)
                elif name == "event":
                    self._type = value
                elif name == "id":
                    self.last_id = int(value)
                elif name == "retry":
                    self.retry = int(value)

    def job_events(self) -> list[Event]:
        return [e for e in self.events if e.type == "job"]


class Stream:
    """``GET path`` on ``url`` read on a thread; ``read=False`` never reads (a stuck client)."""

    def __init__(
        self,
        url: str,
        path: str = "/api/events",
        *,
        token: str | None = ADMIN_TOKEN,
        read: bool = True,
        receive_buffer: int | None = None,
        **headers: str,
    ) -> None:
        parts = urlsplit(url)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if receive_buffer is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        self.sock.connect((parts.hostname, parts.port))
        self.sock.sendall(request_bytes(url, path, token, **headers))
        self.parser = Parser()
        self.closed = False  # the server closed the connection
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if read:
            self.start_reading()

    def start_reading(self) -> None:
        self.sock.settimeout(0.1)
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                break
            if not data:
                break
            with self._lock:
                self.parser.feed(data)
        self.closed = True

    def __getattr__(self, name: str) -> Any:
        with self.__dict__["_lock"]:
            return getattr(self.__dict__["parser"], name)

    def job_events(self) -> list[Event]:
        with self._lock:
            return self.parser.job_events()

    def ids(self) -> list[int | None]:
        return [e.id for e in self.job_events()]

    def wait(self, predicate: Any, timeout: float = 10.0, what: str = "events") -> Any:
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                value = predicate(self.parser)
            if value:
                return value
            if time.monotonic() > deadline:
                with self._lock:
                    seen = [(e.id, e.type) for e in self.parser.events]
                raise AssertionError(f"timed out waiting for {what}; got {seen}")
            time.sleep(0.02)

    def subscribed(self, timeout: float = 10.0) -> Stream:
        """Wait for the stream's first block: from then on, every new event comes."""
        self.wait(lambda p: p.retry is not None, timeout, "the stream to start")
        return self

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        self.sock.close()

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

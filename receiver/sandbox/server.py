"""Run an ASGI app with uvicorn in a background thread on loopback.

Used by ``vidhook demo`` and by tests that need a real HTTP server (the sandbox
providers, a callback receiver, the receiver itself).
"""

from __future__ import annotations

import socket
import threading
import time
from types import TracebackType

import uvicorn
from starlette.types import ASGIApp

from receiver.server import Server

__all__ = ["ServerThread"]

_STARTUP_TIMEOUT = 10.0
_STOP_TIMEOUT = 10.0


class ServerThread:
    """One uvicorn server on its own thread and event loop.

    The socket is bound here rather than by uvicorn so that ``port=0`` yields a
    free port that is known before the server starts, with no bind race. An app
    that must know its own URL can be built in between: ``ServerThread(None)``,
    ``.bind()``, read ``.url``, set ``.app``, then ``.start()``.
    """

    def __init__(self, app: ASGIApp | None, host: str = "127.0.0.1", port: int = 0) -> None:
        self.app = app
        self.host = host
        self._requested_port = port
        self._sock: socket.socket | None = None
        self._port: int | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("ServerThread is not bound yet; call bind() or start()")
        return self._port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def bind(self) -> ServerThread:
        """Reserve the port now; start() does this itself if it was not done."""
        if self._sock is not None:
            return self
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        # An explicit IPPROTO_TCP, because asyncio only sets TCP_NODELAY on accepted
        # sockets whose proto says TCP; with proto 0 every response waited ~40 ms on
        # Nagle plus delayed ACK.
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, self._requested_port))
        except OSError:
            sock.close()
            raise
        self._sock = sock
        self._port = sock.getsockname()[1]
        return self

    def start(self) -> ServerThread:
        if self._thread is not None:
            raise RuntimeError("ServerThread already started")
        if self.app is None:
            raise RuntimeError("ServerThread has no app to serve")
        self.bind()
        config = uvicorn.Config(
            self.app,
            log_level="warning",
            access_log=False,
            lifespan="on",
            # Bounded so that stop() can finish within its own timeout even if a
            # client keeps a connection open.
            timeout_graceful_shutdown=5,
        )
        # vidhook's server: it ends event streams as it shuts down.
        self._server = Server(config)
        self._thread = threading.Thread(
            target=self._run, name=f"ServerThread:{self.port}", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + _STARTUP_TIMEOUT
        while not self._server.started:
            if not self._thread.is_alive():
                self._close_socket()
                raise RuntimeError(f"server on {self.url} failed to start") from self._error
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"server on {self.url} did not start within {_STARTUP_TIMEOUT}s")
            time.sleep(0.01)
        return self

    def _run(self) -> None:
        assert self._server is not None and self._sock is not None
        try:
            self._server.run(sockets=[self._sock])
        except BaseException as exc:
            # uvicorn reports a failed lifespan startup with sys.exit(); keep it for
            # start() to chain instead of letting the thread die silently.
            self._error = exc

    def stop(self) -> None:
        server, thread = self._server, self._thread
        if server is None or thread is None:
            self._close_socket()  # bound but never started
            return
        server.should_exit = True
        thread.join(_STOP_TIMEOUT)
        if thread.is_alive():
            server.force_exit = True
            thread.join(1.0)
        self._close_socket()
        if thread.is_alive():
            raise RuntimeError(f"server on {self.url} did not stop within {_STOP_TIMEOUT}s")

    def _close_socket(self) -> None:
        if self._sock is not None:
            self._sock.close()

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

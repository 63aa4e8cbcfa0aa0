"""The HTTP server in front of the app, as a real `vidhook serve` process on the default stack.

Each limit is met the way a stranger on the internet would meet it: raw bytes on a socket.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import resource
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from receiver.config import ServerConfig
from receiver.server import Every, accept_errors, uvicorn_config
from tests.conftest import ENV, free_port, wait_for

REPO = Path(__file__).resolve().parents[1]
_OVERRIDES = ("VIDHOOK_CONFIG", "VIDHOOK_PUBLIC_URL", "VIDHOOK_DATABASE", "VIDHOOK_URL")

pytestmark = pytest.mark.slow


class Served:
    """`python -m receiver serve` with ``server`` lines in its [server] table."""

    def __init__(
        self, folder: Path, server: str = "", args: tuple[str, ...] = (), nofile: int = 0
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.db_path = folder / "vidhook.db"
        self.log_path = folder / "vidhook.log"
        config = folder / "vidhook.toml"
        config.write_text(
            f'public_url = "{self.url}"\ndatabase = {json.dumps(str(self.db_path))}\n'
            f'[server]\nhost = "127.0.0.1"\nport = {self.port}\n{server}\n'
            '[providers.vidu]\nbase_url = "http://127.0.0.1:9/vidu"\n'
            'api_key_env = "VIDU_API_KEY"\n',
            encoding="utf-8",
        )
        env = {k: v for k, v in os.environ.items() if k not in _OVERRIDES} | ENV

        def limit_files() -> None:
            if nofile:
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

        command = [sys.executable, "-m", "receiver", "serve", "--config", str(config), *args]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                preexec_fn=limit_files,
            )  # fmt: skip
        wait_for(self.ready, timeout=20, what=f"vidhook serve on {self.url}")

    def ready(self) -> bool:
        assert self.proc.poll() is None, self.log()
        try:
            return httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def count(self, table: str) -> int:
        conn = sqlite3.connect(self.db_path)
        try:
            return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
        finally:
            conn.close()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=30)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def connect(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=5)


@pytest.fixture
def served(tmp_path):
    started: list[Served] = []

    def start(server: str = "", args: tuple[str, ...] = (), nofile: int = 0) -> Served:
        started.append(Served(tmp_path / str(len(started)), server, args, nofile))
        return started[-1]

    for folder in range(4):
        (tmp_path / str(folder)).mkdir()
    yield start
    for one in started:
        one.kill()


def exchange(sock: socket.socket, payload: bytes) -> bytes:
    """Send ``payload`` in one write; everything answered until the server closes."""
    sock.sendall(payload)
    answer = b""
    while chunk := sock.recv(65536):
        answer += chunk
    return answer


def status_and_body(answer: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, body


def request_with(fields: list[str], target: str = "/healthz") -> bytes:
    return (f"GET {target} HTTP/1.1\r\n" + "".join(f + "\r\n" for f in fields) + "\r\n").encode()


def padded_to(size: int) -> bytes:
    """A complete GET /healthz head of exactly ``size`` bytes (one long header)."""
    bare = request_with(["Host: 127.0.0.1", "Connection: close", "X-Pad: "])
    return bare.replace(b"X-Pad: ", b"X-Pad: " + b"p" * (size - len(bare)))


# -- 431: heads over 16 KiB or 100 fields ---------------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(request_with(["Host: 127.0.0.1", "X-Big: " + "b" * 100_000]), id="100KB"),
        pytest.param(
            request_with(["Host: 127.0.0.1", *(f"X-H{i}: v" for i in range(10_000))]),
            id="10000-fields",
        ),
        pytest.param(
            request_with(["Host: 127.0.0.1", *(f"X-H{i}: v" for i in range(100))]), id="101-fields"
        ),
        pytest.param(padded_to(16 * 1024 + 1), id="16KiB+1"),
        pytest.param(
            request_with(["Host: 127.0.0.1"], "/callbacks/vidu/" + "t" * 17_000), id="long-target"
        ),
    ],
)
def test_a_head_over_16_kib_or_100_fields_is_refused_431_before_the_app_sees_it(served, payload):
    service = served()
    with service.connect() as sock:
        status, headers, body = status_and_body(exchange(sock, payload))

    assert status == 431
    assert headers["connection"] == "close"
    assert headers["content-type"] == "application/json"
    assert json.loads(body)["error"]["code"] == "headers_too_large"
    # The app never saw it: no access line, nothing stored.
    assert "/healthz" not in service.log() and "/callbacks" not in service.log()
    assert service.count("callbacks") == 0


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(
            request_with(
                ["Host: 127.0.0.1", "Connection: close", *(f"X-H{i}: v" for i in range(98))]
            ),
            id="100-fields",
        ),
        pytest.param(padded_to(16 * 1024), id="16KiB"),
    ],
)
def test_a_head_at_the_limits_is_served(served, payload):
    service = served()
    with service.connect() as sock:
        status, _, body = status_and_body(exchange(sock, payload))
    assert status == 200, body
    # A second request on the same server, in several writes, is served as well.
    with service.connect() as sock:
        for part in (payload[:10], payload[10:5000], payload[5000:]):
            sock.sendall(part)
            time.sleep(0.02)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert status_and_body(answer)[0] == 200


# -- heads that never come ------------------------------------------------------------------


def closed_within(sock: socket.socket, seconds: float) -> float:
    """How long until the server closed ``sock``; fails past ``seconds``."""
    began = time.monotonic()
    sock.settimeout(seconds)
    try:
        while sock.recv(4096):
            pass
    except TimeoutError:
        pytest.fail(f"the connection was still open after {seconds} s")
    except ConnectionResetError:
        pass
    return time.monotonic() - began


def test_a_connection_without_a_whole_head_is_closed_after_header_timeout(served):
    service = served("header_timeout = 0.5")
    silent = service.connect()
    partial = service.connect()
    partial.sendall(b"POST /callbacks/vidu/abc HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    kept_alive = service.connect()
    kept_alive.sendall(request_with(["Host: 127.0.0.1"]))
    assert kept_alive.recv(4096).startswith(b"HTTP/1.1 200")
    time.sleep(0.3)
    kept_alive.sendall(b"GET /healthz HTTP/1.1\r\n")  # the next request, never finished

    with silent, partial, kept_alive:
        for sock in (silent, partial, kept_alive):
            assert closed_within(sock, 3.0) < 3.0
    # Meanwhile, and after, whole requests are served.
    assert httpx.get(f"{service.url}/healthz").status_code == 200


def test_a_slow_but_steady_head_is_cut_off_at_the_timeout(served):
    service = served("header_timeout = 0.6")
    with service.connect() as sock:
        began = time.monotonic()
        sock.sendall(b"GET /healthz HTTP/1.1\r\n")
        sock.setblocking(False)
        closed = False
        while not closed and time.monotonic() - began < 5:
            time.sleep(0.1)  # a field every 0.1 s never resets the clock
            try:
                sock.sendall(b"X-Drip: 1\r\n")
                closed = sock.recv(4096) == b""
            except BlockingIOError:
                pass
            except OSError:
                closed = True
    assert closed
    assert time.monotonic() - began < 3.0


# -- max_connections -------------------------------------------------------------------------


def test_past_max_connections_the_oldest_idle_connection_makes_room(served):
    service = served("max_connections = 3\nheader_timeout = 30")
    held = []
    for _ in range(3):
        held.append(service.connect())
        time.sleep(0.05)  # in this order
    try:
        with service.connect() as sock:
            answer = exchange(sock, request_with(["Host: 127.0.0.1", "Connection: close"]))
        assert status_and_body(answer)[0] == 200
        assert closed_within(held[0], 3.0) < 3.0  # the oldest, and only it
        for sock in held[1:]:
            sock.settimeout(0.3)
            with pytest.raises(TimeoutError):
                sock.recv(1)
    finally:
        for sock in held:
            sock.close()


def test_past_max_connections_with_requests_in_hand_a_request_gets_503(served):
    service = served("max_connections = 3\nheader_timeout = 30")
    # Three requests in hand: each promised a body and sent none of it.
    stuck = (
        "POST /api/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {ENV['VIDHOOK_ADMIN_TOKEN']}\r\nContent-Length: 100\r\n\r\n"
    ).encode()
    held = [service.connect() for _ in range(3)]
    try:
        for sock in held:
            sock.sendall(stuck)
        time.sleep(0.3)
        with service.connect() as sock:
            answer = exchange(sock, request_with(["Host: 127.0.0.1"]))
        status, headers, body = status_and_body(answer)
        assert status == 503
        assert headers["retry-after"].isdigit()
        assert headers["connection"] == "close"
        assert json.loads(body)["error"]["code"] == "busy"
    finally:
        for sock in held:
            sock.close()
    wait_for(
        lambda: httpx.get(f"{service.url}/healthz").status_code == 200,
        timeout=5,
        what="a request once the held connections closed",
    )
    assert service.count("jobs") == 0


# -- accept errors ----------------------------------------------------------------------------


def flood(service: Served, count: int, seconds: float) -> None:
    socks = []
    try:
        for _ in range(count):
            socks.append(socket.create_connection(("127.0.0.1", service.port), timeout=5))
        time.sleep(seconds)
    finally:
        for sock in socks:
            sock.close()


@pytest.mark.parametrize("stack", ["httptools", "h11"])
def test_running_out_of_file_descriptors_writes_a_line_a_minute_at_most(served, stack):
    service = served("header_timeout = 30", args=("--http-stack", stack), nofile=64)
    before = len(service.log())

    flood(service, 150, 3.5)

    written = service.log()[before:]
    assert written.count("cannot accept connections") <= 1
    assert "out of system resource" not in written
    wait_for(
        lambda: httpx.get(f"{service.url}/healthz", timeout=2).status_code == 200,
        timeout=10,
        what="a request once the flood ended",
    )


def test_every_says_a_line_once_an_interval_with_the_count_held_back(caplog):
    now = [100.0]
    every = Every(60.0, clock=lambda: now[0])
    with caplog.at_level(logging.INFO, logger="vidhook.http"):
        for _ in range(5):
            every.log(logging.ERROR, "cannot accept connections: %s", "Too many open files")
        now[0] += 61
        every.log(logging.ERROR, "cannot accept connections: %s", "Too many open files")
    assert [r.getMessage() for r in caplog.records] == [
        "cannot accept connections: Too many open files",
        "cannot accept connections: Too many open files (4 more like it in the last 60 s)",
    ]


def test_the_loop_handler_passes_on_every_other_error(caplog):
    loop = asyncio.new_event_loop()
    try:
        handle = accept_errors(Every())
        with caplog.at_level(logging.ERROR):
            for _ in range(3):
                handle(loop, {"message": "accept", "exception": OSError(errno.EMFILE, "Too many")})
            handle(loop, {"message": "something else broke", "exception": ValueError("x")})
    finally:
        loop.close()
    messages = [r.getMessage() for r in caplog.records]
    assert messages.count("cannot accept connections: Too many") == 1
    assert any("something else broke" in m for m in messages)


# -- the stack, and how it ends -----------------------------------------------------------------


def test_the_default_stack_is_httptools_on_uvloop_with_the_configured_limits():
    config = uvicorn_config(
        lambda: None,  # type: ignore[arg-type, return-value]
        ServerConfig(max_connections=7),
        host="127.0.0.1",
        port=0,
        log_level="info",
    )
    assert config.loop == "uvloop"
    assert isinstance(config.http, type) and issubclass(config.http, HttpToolsProtocol)
    assert config.limit_concurrency == 7
    plain = uvicorn_config(
        lambda: None,  # type: ignore[arg-type, return-value]
        ServerConfig(),
        host="127.0.0.1",
        port=0,
        log_level="info",
        stack="h11",
    )
    assert (plain.loop, plain.http) == ("asyncio", "h11")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_ends_serve_cleanly_with_exit_code_0(served, sig):
    service = served()
    assert httpx.get(f"{service.url}/healthz").status_code == 200
    service.proc.send_signal(sig)
    assert service.proc.wait(timeout=30) == 0
    assert "Application shutdown complete" in service.log()

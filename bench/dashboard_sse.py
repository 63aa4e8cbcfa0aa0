"""The dashboard's costs: the live event stream's fan-out (``--sse``).

    .venv/bin/python -m bench.dashboard --sse [--clients N] [--sse-rounds R] ...

``--sse``, all on 127.0.0.1:

1. Pre-creates one Vidu job per round (and a few for the warm-up) straight into a fresh
   database (bench.common.precreate_jobs), then starts ``vidhook serve`` on it (one Vidu
   provider that nothing polls during the run, the archive off, ``max_connections``
   raised so that ``--clients`` streams fit in the half of it that streams may take).
2. Starts the baseline (``--serve-bare-sse``): a bare Starlette app, served as vidhook is
   (receiver.server), whose ``POST /fire`` hands its body to every open ``GET /events``
   stream through an asyncio queue per stream, with no database at all.
3. Opens ``--clients`` event streams to each, from this process's event loop on raw
   sockets, and waits until every one has started.
4. Rounds, vidhook then the baseline (the first ``--warmup`` rounds not counted): vidhook
   is sent a signed Vidu ``processing`` callback for a fresh job, which moves the job
   (one transition, one event); the baseline is sent an event of the same size. A
   round's time runs from just before the request is sent (so it includes the callback's
   own handling, up to its commit) to when each client has the whole event; the next
   round starts once every client has it, after ``--gap`` seconds.
5. Prints per server the p50 and p99 over the rounds of the time until the last client
   had the event (fan-out), the p50 and p99 over every client of every round, the
   callback's own answer time, and the server's CPU time per round.

bench/dashboard.py's RESULT line carries sse_fanout_p99_ms and sse_clients: vidhook's p99 over
the rounds of the time from the callback to the last of the clients having its event.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench.callbacks import callback_body
from bench.common import (
    ADMIN_TOKEN,
    API_KEY,
    PYTHON,
    REPO,
    BenchJob,
    ServiceProcess,
    cpu_seconds,
    free_port,
    percentile,
    precreate_jobs,
    provider_toml,
    rss_mb,
)
from signing import vidu as vidu_signing

EVENT_MARK = b"\nevent: job\n"


# -- the bare baseline ----------------------------------------------------------------------


def serve_bare_sse(port: int, log_level: str) -> None:
    """Streams fed from memory: what fan-out costs with no database and no rendering."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response, StreamingResponse
    from starlette.routing import Route

    from receiver import logs
    from receiver.config import ServerConfig
    from receiver.server import serve, uvicorn_config

    queues: set[asyncio.Queue[bytes]] = set()

    async def events(request: Request) -> Response:
        queue: asyncio.Queue[bytes] = asyncio.Queue()
        queues.add(queue)

        async def body() -> object:
            try:
                yield b"retry: 2000\n\n"
                while True:
                    yield await queue.get()
            finally:
                queues.discard(queue)

        return StreamingResponse(body(), media_type="text/event-stream")

    async def fire(request: Request) -> Response:
        block = await request.body()
        for queue in queues:
            queue.put_nowait(block)
        return Response(status_code=204)

    logs.configure(log_level, "text")
    routes = [Route("/events", events), Route("/fire", fire, methods=["POST"])]
    server = ServerConfig(max_connections=10_000)
    serve(uvicorn_config(Starlette(routes=routes), server, host="127.0.0.1", port=port,
                         log_level=log_level))  # fmt: skip


class BareSse:
    def __init__(self, folder: Path, log_level: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = folder / "bare.log"
        self.log_level = log_level
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None, "not started"
        return self.proc.pid

    def start(self) -> None:
        command = [PYTHON, "-m", "bench.dashboard", "--serve-bare-sse", str(self.port)]
        command += ["--log-level", self.log_level]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 15
        while True:
            try:
                httpx.post(f"{self.url}/fire", content=b"", timeout=0.5)
                return
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the bare server did not start")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=20)


# -- the clients ----------------------------------------------------------------------------


class Client:
    """One event stream on a raw socket: when each whole ``job`` event arrived."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer  # held: a writer collected closes its connection
        self.started = False
        self.arrivals: list[float] = []
        self._raw = b""
        self._head = True

    def feed(self, data: bytes, now: float) -> None:
        self._raw += data
        if self._head:
            if b"\r\n\r\n" not in self._raw:
                return
            head, self._raw = self._raw.split(b"\r\n\r\n", 1)
            if not head.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(f"the stream was refused: {head.decode(errors='replace')}")
            self._head = False
        # Chunked: a chunk is counted once whole, and each holds whole events.
        while b"\r\n" in self._raw:
            size_line, rest = self._raw.split(b"\r\n", 1)
            size = int(size_line, 16)
            if len(rest) < size + 2:
                return
            chunk, self._raw = rest[:size], rest[size + 2 :]
            if b"retry:" in chunk:
                self.started = True
            self.arrivals += [now] * chunk.count(EVENT_MARK)


async def open_streams(url: str, path: str, count: int, token: str | None) -> list[Client]:
    host, port = url.removeprefix("http://").split(":")
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    request = (f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n{auth}\r\n").encode()
    clients = []
    for _ in range(count):
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(request)
        client = Client(writer)
        clients.append(client)
        asyncio.get_running_loop().create_task(_follow(reader, client))
    deadline = time.monotonic() + 30
    while not all(c.started for c in clients):
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {sum(c.started for c in clients)} streams of {count} began")
        await asyncio.sleep(0.05)
    return clients


async def _follow(reader: asyncio.StreamReader, client: Client) -> None:
    while data := await reader.read(65536):
        client.feed(data, time.perf_counter())


# -- the rounds -----------------------------------------------------------------------------


@dataclass
class Series:
    name: str
    fanout_ms: list[float] = field(default_factory=list)  # to the last client, per round
    each_ms: list[float] = field(default_factory=list)  # to every client, every round
    answer_ms: list[float] = field(default_factory=list)  # the triggering request's answer
    lost: int = 0  # clients that did not get a round's event within the timeout
    cpu_s: float = 0.0

    def describe(self, clients: int) -> str:
        rounds = len(self.fanout_ms)
        last = percentile(self.fanout_ms, 50), percentile(self.fanout_ms, 99)
        each = percentile(self.each_ms, 50), percentile(self.each_ms, 99)
        return (
            f"{self.name}: {rounds} rounds to {clients} streams: to the last client"
            f" p50 {last[0]:.1f} ms, p99 {last[1]:.1f} ms, max {max(self.fanout_ms):.1f} ms;"
            f" to each client p50 {each[0]:.1f} ms, p99 {each[1]:.1f} ms;"
            f" trigger answered p50 {percentile(self.answer_ms, 50):.1f} ms;"
            f" server CPU {1000 * self.cpu_s / max(rounds, 1):.1f} ms per round; lost {self.lost}"
        )


async def one_round(
    http: httpx.AsyncClient,
    clients: Sequence[Client],
    send: tuple[str, dict[str, str], bytes],
    series: Series | None,
    timeout: float,
) -> None:
    want = [len(c.arrivals) + 1 for c in clients]
    path, headers, body = send
    began = time.perf_counter()
    response = await http.post(path, headers=headers, content=body)
    answered = time.perf_counter()
    if response.status_code not in (200, 204):
        raise RuntimeError(f"POST {path} answered {response.status_code}: {response.text}")
    deadline = began + timeout
    while any(len(c.arrivals) < n for c, n in zip(clients, want, strict=True)):
        if time.perf_counter() > deadline:
            break
        await asyncio.sleep(0.001)
    if series is None:
        return
    arrived = [
        c.arrivals[n - 1] for c, n in zip(clients, want, strict=True) if len(c.arrivals) >= n
    ]
    series.lost += len(clients) - len(arrived)
    series.answer_ms.append((answered - began) * 1000)
    series.each_ms += [(t - began) * 1000 for t in arrived]
    series.fanout_ms.append((max(arrived, default=deadline) - began) * 1000)


def signed_callback(job: BenchJob) -> tuple[str, dict[str, str], bytes]:
    assert job.callback_url is not None
    headers = vidu_signing.sign(API_KEY, "POST", job.callback_url)
    headers["Content-Type"] = "application/json"
    path = "/" + job.callback_url.split("/", 3)[3]
    return path, headers, callback_body(job, "processing", "").encode()


@dataclass
class SseResult:
    clients: int
    vidhook: Series
    bare: Series

    @property
    def fanout_p99_ms(self) -> float:
        return percentile(self.vidhook.fanout_ms, 99)


async def drive(
    args: argparse.Namespace, service: ServiceProcess, bare: BareSse, jobs: list[BenchJob]
) -> SseResult:
    vidhook_clients = await open_streams(service.url, "/api/events", args.clients, ADMIN_TOKEN)
    bare_clients = await open_streams(bare.url, "/events", args.clients, None)
    print(f"{args.clients} streams open to each server", flush=True)
    vidhook, baseline = Series("vidhook"), Series("bare")
    block = b""
    timeout = args.timeout
    async with (
        httpx.AsyncClient(base_url=service.url, timeout=30) as to_vidhook,
        httpx.AsyncClient(base_url=bare.url, timeout=30) as to_bare,
    ):
        assert service.pid is not None
        for number, job in enumerate(jobs):
            counted = number >= args.warmup
            if number == args.warmup:
                cpu = cpu_seconds(service.pid)[1], cpu_seconds(bare.pid)[1]
            await one_round(
                to_vidhook, vidhook_clients, signed_callback(job), vidhook if counted else None,
                timeout,
            )  # fmt: skip
            if not block:
                block = await first_block(service.url)
            await asyncio.sleep(args.gap)
            await one_round(
                to_bare, bare_clients, ("/fire", {}, block), baseline if counted else None,
                timeout,
            )  # fmt: skip
            await asyncio.sleep(args.gap)
        vidhook.cpu_s = cpu_seconds(service.pid)[1] - cpu[0]
        baseline.cpu_s = cpu_seconds(bare.pid)[1] - cpu[1]
    return SseResult(args.clients, vidhook, baseline)


async def first_block(url: str) -> bytes:
    """An event as vidhook sends it (the newest, resumed from the one before): the
    baseline sends blocks of the same size."""
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}", "Last-Event-ID": "0"}
    async with (
        httpx.AsyncClient(base_url=url, timeout=10) as http,
        http.stream("GET", "/api/events", headers=headers) as response,
    ):
        text = b""
        async for chunk in response.aiter_bytes():
            text += chunk
            if EVENT_MARK in text and text.endswith(b"\n\n"):
                break
    start = text.index(b"id: ", text.index(b"retry:"))
    return text[start : text.index(b"\n\n", start) + 2]


def run_sse(args: argparse.Namespace, folder: Path) -> SseResult:
    # Streams take at most half of max_connections; keys before the first table after
    # ServiceProcess's [server] header belong to it.
    server = f"max_connections = {max(1000, 3 * args.clients)}\n\n"
    vidu = provider_toml(
        "vidu", "http://127.0.0.1:9/vidu", reconcile_after=3600, poll_interval=3600,
        poll_max_interval=3600, timeout=5,
    )  # fmt: skip
    service = ServiceProcess(
        folder / "vidhook", tables=server + vidu + '[archive]\nstore = "off"\n',
        log_level=args.log_level,
    )  # fmt: skip
    jobs = precreate_jobs(service.config(), "vidu", args.warmup + args.sse_rounds)
    bare = BareSse(folder, args.log_level)
    with service:
        service.start()
        bare.start()
        try:
            result = asyncio.run(drive(args, service, bare, jobs))
            assert service.pid is not None
            print(f"vidhook: peak RSS {rss_mb(service.pid, peak=True):.0f} MiB", flush=True)
        finally:
            bare.stop()
            code = service.stop()
            print(f"vidhook: exit code {code} after SIGTERM with {args.clients} streams open")
    moved = service.rows(
        "SELECT count(*) FROM transitions WHERE source = 'callback' AND to_status = 'processing'"
    )[0][0]
    print(f"check: {moved} of {len(jobs)} callbacks moved their job")
    return result

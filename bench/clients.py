"""HTTP clients side by side: the CPU a client spends per request, for polls and downloads.

    .venv/bin/python -m bench.clients [--rounds 3] [--requests 3000] [--rate 250] ...

A server in its own process (uvicorn on httptools and uvloop, a bare ASGI app, so that it
costs as little as it can) answers ``GET /status`` with a small JSON body like a provider's
status answer, and ``GET /file`` with ``--size`` bytes sent in 1 MiB chunks. In this
process, on uvloop as ``vidhook serve`` runs (``--loop asyncio`` for the stock loop), each
client in turn:

- ``burst``: ``--requests`` status requests, ``--concurrency`` in flight, back to back;
- ``paced``: the same number started at ``--rate`` a second (at most ``--concurrency`` in
  flight), as polls come: with a pause between requests, a pool's idle work per request
  shows that back-to-back requests hide;
- ``download``: ``--files`` files of ``--size`` bytes, four at a time, each streamed and
  its chunks dropped.

The figures are this process's CPU time (user + system, ``getrusage``) per request, and
per GB for downloads, with the rate reached; the server's CPU is not counted. Each round
runs every client once, in an order rotated from one round to the next; the table gives
the median over the rounds.

Clients: ``httpx`` (httpx's default transport, httpcore), ``httpcore`` (httpcore's pool
used directly), ``httpx-aiohttp`` (httpx on the httpx-aiohttp package's transport, if
installed), ``httpx-vidhook-transport`` (httpx's client on ``receiver.http.AiohttpTransport``),
``vidhook`` (``receiver.http.ServiceClient`` on that transport: vidhook's client),
``aiohttp`` (aiohttp's session alone).

The last line is ``RESULT`` with each client's CPU per paced request in microseconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import httpx

from bench.common import PYTHON, REPO, free_port, machine, wait_http

STATUS = json.dumps(
    {
        "success": True,
        "data": {
            "jobId": "vid_1733450000000_a1b2c3",
            "status": "processing",
            "progress": 42,
            "videoUrl": None,
            "coverUrl": None,
            "credits": 20,
            "createdAt": "2026-12-06T00:00:00Z",
            "params": {"prompt": "a cat on a skateboard", "model": "v2", "resolution": "720p"},
        },
    }
).encode()
CHUNK = 1024 * 1024
DOWNLOADS_AT_ONCE = 4

Fetch = Callable[[str], Awaitable[Any]]
Stream = Callable[[str], Awaitable[int]]


# -- the server, in its own process ---------------------------------------------------------


def serve(port: int, size: int) -> None:
    import uvicorn

    block = os.urandom(CHUNK)
    status_head = {
        "type": "http.response.start",
        "status": 200,
        "headers": [(b"content-type", b"application/json")],
    }

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        path = scope["path"]
        if path == "/file":
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [
                        (b"content-type", b"video/mp4"),
                        (b"content-length", str(size).encode()),
                    ],
                }
            )
            left = size
            while left > 0:
                part = block if left >= CHUNK else block[:left]
                left -= len(part)
                await send({"type": "http.response.body", "body": part, "more_body": left > 0})
            return
        await send(status_head)
        await send({"type": "http.response.body", "body": STATUS})

    uvicorn.run(
        app, host="127.0.0.1", port=port, log_level="warning", access_log=False,
        http="httptools", loop="uvloop", lifespan="off",
    )  # fmt: skip


# -- the clients ----------------------------------------------------------------------------


class Client:
    """One client under test: ``get_json`` for a poll, ``download`` for a file."""

    name = ""

    async def open(self, base: str, concurrency: int) -> None:
        raise NotImplementedError

    async def get_json(self, path: str) -> Any:
        raise NotImplementedError

    async def download(self, path: str) -> int:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError


class HttpxClient(Client):
    name = "httpx"

    def transport(self, limits: httpx.Limits) -> httpx.AsyncBaseTransport | None:
        return None

    async def open(self, base: str, concurrency: int) -> None:
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        self.client = httpx.AsyncClient(
            base_url=base, limits=limits, timeout=30, transport=self.transport(limits)
        )

    async def get_json(self, path: str) -> Any:
        response = await self.client.get(path, params={"jobId": "vid_1"})
        return response.json()

    async def download(self, path: str) -> int:
        size = 0
        async with self.client.stream("GET", path) as response:
            async for chunk in response.aiter_raw():
                size += len(chunk)
        return size

    async def close(self) -> None:
        await self.client.aclose()


class HttpxAiohttpPackage(HttpxClient):
    name = "httpx-aiohttp"

    def transport(self, limits: httpx.Limits) -> httpx.AsyncBaseTransport | None:
        from httpx_aiohttp import AiohttpTransport

        return AiohttpTransport(limits=limits)


class VidhookTransport(HttpxClient):
    name = "httpx-vidhook-transport"

    def transport(self, limits: httpx.Limits) -> httpx.AsyncBaseTransport | None:
        from receiver.http import AiohttpTransport

        return AiohttpTransport(limits=limits)


class VidhookClient(HttpxClient):
    name = "vidhook"

    async def open(self, base: str, concurrency: int) -> None:
        from receiver.http import AiohttpTransport, ServiceClient

        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        self.base = base
        self.client = ServiceClient(AiohttpTransport(limits=limits))

    async def get_json(self, path: str) -> Any:
        response = await self.client.get(
            f"{self.base}{path}", params={"jobId": "vid_1"}, timeout=30
        )
        return response.json()

    async def download(self, path: str) -> int:
        size = 0
        async with self.client.stream("GET", f"{self.base}{path}", timeout=30) as response:
            async for chunk in response.aiter_raw():
                size += len(chunk)
        return size


class HttpcoreClient(Client):
    name = "httpcore"

    async def open(self, base: str, concurrency: int) -> None:
        import httpcore

        self.base = base
        self.pool = httpcore.AsyncConnectionPool(
            max_connections=concurrency, max_keepalive_connections=concurrency
        )

    async def get_json(self, path: str) -> Any:
        response = await self.pool.request("GET", f"{self.base}{path}?jobId=vid_1")
        return json.loads(response.content)

    async def download(self, path: str) -> int:
        size = 0
        async with self.pool.stream("GET", f"{self.base}{path}") as response:
            async for chunk in response.aiter_stream():
                size += len(chunk)
        return size

    async def close(self) -> None:
        await self.pool.aclose()


class AiohttpClient(Client):
    name = "aiohttp"

    async def open(self, base: str, concurrency: int) -> None:
        import aiohttp

        self.base = base
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=concurrency),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=30),
        )

    async def get_json(self, path: str) -> Any:
        async with self.session.get(f"{self.base}{path}", params={"jobId": "vid_1"}) as response:
            return json.loads(await response.read())

    async def download(self, path: str) -> int:
        size = 0
        async with self.session.get(f"{self.base}{path}") as response:
            while chunk := await response.content.readany():
                size += len(chunk)
        return size

    async def close(self) -> None:
        await self.session.close()


CLIENTS: dict[str, type[Client]] = {
    cls.name: cls
    for cls in (
        HttpxClient,
        HttpcoreClient,
        HttpxAiohttpPackage,
        VidhookTransport,
        VidhookClient,
        AiohttpClient,
    )
}


def available(name: str) -> bool:
    if name != "httpx-aiohttp":
        return True
    try:
        import httpx_aiohttp  # noqa: F401
    except ImportError:
        return False
    return True


# -- measuring ------------------------------------------------------------------------------


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def burst(client: Client, count: int, concurrency: int) -> int:
    todo = iter(range(count))
    done = 0

    async def worker() -> None:
        nonlocal done
        for _ in todo:
            await client.get_json("/status")
            done += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done


async def paced(client: Client, count: int, concurrency: int, rate: float) -> int:
    slots = asyncio.Semaphore(concurrency)
    done = 0

    async def one() -> None:
        nonlocal done
        try:
            await client.get_json("/status")
            done += 1
        finally:
            slots.release()

    loop = asyncio.get_running_loop()
    start = loop.time()
    tasks = []
    for i in range(count):
        delay = start + i / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        await slots.acquire()
        tasks.append(asyncio.create_task(one()))
    await asyncio.gather(*tasks)
    return done


async def downloads(client: Client, files: int) -> int:
    todo = iter(range(files))
    total = 0

    async def worker() -> None:
        nonlocal total
        for _ in todo:
            total += await client.download("/file")

    await asyncio.gather(*(worker() for _ in range(DOWNLOADS_AT_ONCE)))
    return total


async def measure(name: str, args: argparse.Namespace, base: str) -> dict[str, float]:
    client = CLIENTS[name]()
    await client.open(base, args.concurrency)
    try:
        await burst(client, 100, args.concurrency)  # connections made, code warmed
        figures: dict[str, float] = {}
        for pattern in ("burst", "paced"):
            used, began = cpu(), time.monotonic()
            if pattern == "burst":
                count = await burst(client, args.requests, args.concurrency)
            else:
                count = await paced(client, args.requests, args.concurrency, args.rate)
            elapsed, used = time.monotonic() - began, cpu() - used
            figures[f"{pattern}_us"] = used / count * 1e6
            figures[f"{pattern}_rps"] = count / elapsed
        if args.files:
            used, began = cpu(), time.monotonic()
            got = await downloads(client, args.files)
            elapsed, used = time.monotonic() - began, cpu() - used
            figures["download_s_per_gb"] = used / got * 1e9
            figures["download_mb_s"] = got / elapsed / 1e6
        return figures
    finally:
        await client.close()


def run_loop(coro: Awaitable[Any], loop_name: str) -> Any:
    if loop_name == "uvloop":
        import uvloop

        return uvloop.run(coro)  # type: ignore[arg-type]
    return asyncio.run(coro)  # type: ignore[arg-type]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.clients",
        description="HTTP clients' CPU per request for polls and downloads, side by side.",
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds (3)")
    parser.add_argument("--requests", type=int, default=3000, help="status requests a pattern")
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight (8)")
    parser.add_argument("--rate", type=float, default=250.0, help="paced requests a second")
    parser.add_argument("--files", type=int, default=8, help="files downloaded (8); 0: none")
    parser.add_argument("--size", type=int, default=50_000_000, help="bytes a file (50 MB)")
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    parser.add_argument(
        "--clients", default=",".join(CLIENTS), help=f"comma-separated ({','.join(CLIENTS)})"
    )
    parser.add_argument("--serve", type=int, metavar="PORT", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve:
        serve(args.serve, args.size)
        return 0
    names = [n for n in args.clients.split(",") if n in CLIENTS and available(n)]
    print(f"machine: {machine()}; load average {os.getloadavg()[0]:.1f}", flush=True)
    port = free_port()
    server = subprocess.Popen(
        [PYTHON, "-m", "bench.clients", "--serve", str(port), "--size", str(args.size)], cwd=REPO
    )
    base = f"http://127.0.0.1:{port}"
    results: dict[str, list[dict[str, float]]] = {name: [] for name in names}
    try:
        wait_http(f"{base}/status", proc=server)
        for round_ in range(args.rounds):
            order = names[round_ % len(names) :] + names[: round_ % len(names)]
            for name in order:
                figures = run_loop(measure(name, args, base), args.loop)
                results[name].append(figures)
                print(
                    f"round {round_ + 1} {name}: "
                    + ", ".join(f"{k} {v:.0f}" for k, v in figures.items()),
                    flush=True,
                )
    finally:
        server.terminate()
        server.wait(10)
    print(f"medians over {args.rounds} rounds ({args.loop}); load average now "
          f"{os.getloadavg()[0]:.1f}", flush=True)  # fmt: skip
    header = ["client", "burst us/req", "burst req/s", "paced us/req", "paced req/s"]
    if args.files:
        header += ["download CPU s/GB", "download MB/s"]
    print(" | ".join(header))
    for name in names:
        keys = ["burst_us", "burst_rps", "paced_us", "paced_rps"]
        if args.files:
            keys += ["download_s_per_gb", "download_mb_s"]
        row = [statistics.median(r[k] for r in results[name]) for k in keys]
        shown = [
            f"{v:.2f}" if k == "download_s_per_gb" else f"{v:.0f}"
            for k, v in zip(keys, row, strict=True)
        ]
        print(" | ".join([name, *shown]))
    print(
        "RESULT "
        + " ".join(
            f"{name.replace('-', '_')}_paced_us="
            f"{statistics.median(r['paced_us'] for r in results[name]):.0f}"
            for name in names
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Notification latency: from a callback's 2xx to the message at the sink, at a steady rate.

    .venv/bin/python -m bench.notify_latency [--rate 200] [--duration 20]
        [--channel slack|webhook] [--channels N] [--min-interval SECONDS]

What it does, all on 127.0.0.1:

1. Starts the sinks in their own process (so that their timestamps do not wait on this
   process's load generator): receiver.sandbox.slack's fake Slack, whose pacing (a
   message sooner than ``--min-interval`` after the last one on the same webhook is
   refused with 429) is off by default, and a plain receiver for vidhook's signed webhook
   channel. Each notes when every message arrives (time.monotonic(), one clock for every
   process on the machine) and for which job.
2. Pre-creates ``rate x duration`` Vidu jobs straight into vidhook's database
   (bench.common.precreate_jobs) and signs one ``processing`` callback for each.
3. Starts ``vidhook serve`` with ``--channels`` channels of type ``--channel``, each
   subscribed to ``processing`` only, so that each callback makes exactly one message.
   A Slack channel is configured with ``min_interval = --min-interval``. With one channel
   it is ``default_channels = [name]``; with more, job i is routed to channel i mod N
   (the job's own ``notify`` list), so consecutive messages go to different channels.
4. Sends the callbacks at ``--rate`` per second, paced by the clock (each is sent at its
   time whether or not the earlier ones were answered), and notes when each 2xx
   arrives; then waits for the sinks to have every message.

The latency of a message is its arrival at the sink minus the arrival of its callback's
2xx at the sender. It can be slightly negative: vidhook commits, and the outbox may send,
before the 2xx reaches the sender.

What is measured by default, and why: one Slack channel (an incoming webhook to the fake
Slack, ``default_channels = ["team"]``) with ``min_interval = 0`` and the fake's pacing
off, as for a Slack-compatible server (Mattermost, Rocket.Chat) that takes messages as
fast as they come. Slack itself asks for at most one message a second per webhook, and
one channel paced so (``--min-interval 1``) at 200 callbacks a second only measures a
queue that grows by 199 messages a second. Without the pacing, what one channel shows is
what vidhook adds to every message: the outbox noticing the delivery, its read,
rendering the Block Kit message, the HTTP request, recording the attempt. ``--channel webhook``
measures the signed webhook channel (Standard Webhooks, ``receiver/notify/webhook.py``)
to the plain receiver instead; ``--channels N --min-interval 1`` spreads the messages
over N paced Slack channels (400 at 200/s: a message every 2 s on each).

The last line is ``RESULT notify_p50_ms=<n> notify_p99_ms=<n>``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench.common import (
    API_KEY,
    PYTHON,
    BenchJob,
    ServiceProcess,
    SideProcess,
    cpu_seconds,
    machine,
    percentile,
    precreate_jobs,
    provider_toml,
    rss_mb,
    start_py_spy,
)
from signing import standard
from signing import vidu as vidu_signing

JOB_ID = re.compile(r"job_[0-9A-HJKMNP-TV-Z]{26}")
WEBHOOK_SECRET_ENV = "BENCH_WEBHOOK_SECRET"
# A Vidu callback's Date may be at most 300 s old when it arrives (date_tolerance).
MAX_DURATION = 240.0


# -- the sinks, in their own process --------------------------------------------------------


def serve_sinks(port: int, min_interval: float) -> None:
    """Slack's fake under /slack, a webhook receiver under /hook, and what they received."""
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Mount, Route

    from receiver.sandbox.slack import SlackSinkSettings, create_slack_sink

    slack_app = create_slack_sink(SlackSinkSettings(min_interval=min_interval))
    slack = slack_app.state.slack
    hooks: list[tuple[float, str | None, int]] = []

    async def hook(request: Request) -> Response:
        arrived = time.monotonic()
        body = await request.body()
        try:
            job_id = json.loads(body)["data"]["id"]
        except (ValueError, KeyError, TypeError):
            job_id = None
        hooks.append((arrived, job_id, 200))
        return Response(status_code=204)

    async def received(request: Request) -> JSONResponse:
        rows = list(hooks)
        for r in slack.requests:
            # The job id is in the message's blocks (the "Job" field): find it anywhere.
            found = JOB_ID.search(json.dumps(r.body)) if r.body is not None else None
            status = r.status_code if r.error is None else 0
            rows.append((r.time, found.group(0) if found else None, status))
        return JSONResponse(rows)

    async def count(request: Request) -> JSONResponse:
        # Messages accepted: a refusal (429) is no message, and vidhook sends it again.
        return JSONResponse({"count": len(hooks) + len(slack.accepted)})

    app = Starlette(
        routes=[
            Route("/hook/{name}", hook, methods=["POST"]),
            Route("/_bench/received", received),
            Route("/_bench/count", count),
            Mount("/slack", app=slack_app),
        ]
    )
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


class Sinks(SideProcess):
    def __init__(self, min_interval: float) -> None:
        super().__init__()
        self.min_interval = min_interval

    def command(self) -> list[str]:
        return [PYTHON, "-m", "bench.notify_latency", "--serve-sinks", str(self.port),
                "--min-interval", str(self.min_interval)]  # fmt: skip

    def received(self) -> list[tuple[float, str | None, int]]:
        """(monotonic arrival, job id, status answered: 0 for a refusal) of each message."""
        return [
            (t, job_id, status) for t, job_id, status in self.http.get("/_bench/received").json()
        ]


# -- the load ----------------------------------------------------------------------------


@dataclass
class Callback:
    job_id: str
    request: bytes  # the whole HTTP/1.1 request, signed, ready to write
    due: float = 0.0  # monotonic: when it is to be sent
    sent: float = 0.0
    acked: float = 0.0  # when its answer arrived
    status: int = 0


def processing_callback(job: BenchJob) -> Callback:
    assert job.callback_url is not None
    url = httpx.URL(job.callback_url)
    headers = vidu_signing.sign(API_KEY, "POST", job.callback_url)
    body = {"id": job.provider_job_id, "state": "processing", "err_code": "", "credits": 10,
            "payload": "", "bgm": False, "off_peak": False, "creations": []}  # fmt: skip
    content = json.dumps(body).encode()
    head = [f"POST {url.raw_path.decode()} HTTP/1.1", f"Host: {url.netloc.decode()}"]
    head += [f"{name}: {value}" for name, value in headers.items()]
    head += ["Content-Type: application/json", f"Content-Length: {len(content)}", "", ""]
    return Callback(job.id, "\r\n".join(head).encode() + content)


class Connections:
    """Keep-alive HTTP/1.1 connections to one server, one request at a time on each.

    The load generator's client: a few lines of asyncio streams cost a fraction of what
    httpx costs per request, so the sender keeps to its clock at the rates measured here.
    """

    # uvicorn closes a connection idle for 5 s (timeout_keep_alive): never reuse one
    # that old, or its request would meet a closed socket.
    MAX_IDLE = 4.0

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter, float]] = []
        self.opened = 0

    async def _connection(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        while self.idle:
            reader, writer, since = self.idle.pop()
            if time.monotonic() - since < self.MAX_IDLE:
                return reader, writer
            writer.close()
        self.opened += 1
        return await asyncio.open_connection(self.host, self.port)

    async def send(self, request: bytes) -> int:
        """Write one request, read its answer; the status code."""
        reader, writer = await self._connection()
        writer.write(request)
        status = int((await reader.readline()).split(b" ", 2)[1])
        length = 0
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        await reader.readexactly(length)
        self.idle.append((reader, writer, time.monotonic()))
        return status

    def close(self) -> None:
        for _, writer, _ in self.idle:
            writer.close()


async def send_all(url: str, callbacks: Sequence[Callback], rate: float) -> int:
    """Each callback at its own time, paced by the clock; answers are waited for apart.

    Returns the number of connections it took.
    """
    target = httpx.URL(url)
    assert target.port is not None
    connections = Connections(target.host, target.port)

    async def send(cb: Callback) -> None:
        cb.sent = time.monotonic()
        try:
            cb.status = await connections.send(cb.request)
        except (OSError, ValueError, IndexError, asyncio.IncompleteReadError):
            cb.status = -1
            return
        cb.acked = time.monotonic()

    tasks: list[asyncio.Task[None]] = []
    start = time.monotonic() + 0.1
    for i, cb in enumerate(callbacks):
        cb.due = start + i / rate
        delay = cb.due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(send(cb)))
    await asyncio.gather(*tasks)
    connections.close()
    return connections.opened


# -- the run ------------------------------------------------------------------------------


@dataclass
class Setup:
    top: str = ""
    tables: str = ""
    env: dict[str, str] = field(default_factory=dict)
    names: list[str] = field(default_factory=list)


def channel_setup(kind: str, count: int, sinks_url: str, min_interval: float) -> Setup:
    setup = Setup()
    for i in range(count):
        name = "team" if count == 1 else f"team{i}"
        setup.names.append(name)
        lines = [f"[channels.{name}]", f'type = "{kind}"', 'events = ["processing"]']
        if kind == "slack":
            variable = f"BENCH_SLACK_WEBHOOK_{i}"
            lines.append(f'webhook_url_env = "{variable}"')
            lines.append(f"min_interval = {min_interval!r}")
            # Each channel its own incoming webhook: Slack paces per webhook.
            setup.env[variable] = f"{sinks_url}/slack/services/TBENCH/B{i:05d}/bench{i}"
        else:
            lines.append(f'url = "{sinks_url}/hook/{name}"')
            lines.append(f'secret_env = "{WEBHOOK_SECRET_ENV}"')
        setup.tables += "\n".join(lines) + "\n\n"
    if kind == "webhook":
        setup.env[WEBHOOK_SECRET_ENV] = standard.new_secret()
    if count == 1:
        setup.top = f'default_channels = ["{setup.names[0]}"]'
    return setup


def route_jobs(db: Path, jobs: Sequence[BenchJob], names: Sequence[str]) -> None:
    """Job i notifies channel i mod N: its own ``notify`` list, as POST /api/jobs sets it."""
    conn = sqlite3.connect(db, timeout=30)
    try:
        with conn:
            conn.executemany(
                "UPDATE jobs SET notify = ? WHERE id = ?",
                [(json.dumps([names[i % len(names)]]), job.id) for i, job in enumerate(jobs)],
            )
    finally:
        conn.close()


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.notify_latency",
        description="Time from a callback's 2xx to its notification at the sink.",
    )
    parser.add_argument("--rate", type=float, default=200.0, help="callbacks a second (200)")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of load (20)")
    parser.add_argument(
        "--channel",
        choices=("slack", "webhook"),
        default="slack",
        help="channel type (slack)",
    )
    parser.add_argument(
        "--channels", type=int, default=1, help="channels, jobs spread over them in turn (1)"
    )
    parser.add_argument(
        "--min-interval",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="the Slack channels' min_interval, and the fake Slack's pacing (0: off; "
        "Slack asks for 1)",
    )
    parser.add_argument(
        "--drain", type=float, default=60.0, help="seconds to wait for the last messages (60)"
    )
    parser.add_argument("--log-level", default="warning", help="vidhook's log level (warning)")
    parser.add_argument(
        "--py-spy",
        metavar="OUT",
        help="profile vidhook during the run with py-spy (on PATH or in the venv): "
        "OUT.svg (flame graph), .json (speedscope) or .txt (collapsed stacks)",
    )
    parser.add_argument("--serve-sinks", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.channels < 1:
        parser.error("--channels: at least 1")
    if args.min_interval < 0:
        parser.error("--min-interval: 0 or more seconds")
    if args.duration > MAX_DURATION:
        parser.error(f"--duration: at most {MAX_DURATION:.0f} s (callbacks are signed up front)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve_sinks:
        serve_sinks(args.serve_sinks, args.min_interval)
        return 0
    print(f"machine: {machine()}", flush=True)
    sinks = Sinks(args.min_interval)
    setup = channel_setup(args.channel, args.channels, sinks.url, args.min_interval)
    with tempfile.TemporaryDirectory(prefix="vidhook-bench-notify-") as tmp:
        # Processing callbacks are applied at once (no confirming fetch) and the
        # reconciliation poll is a day away: vidhook never calls this base_url.
        tables = provider_toml("vidu", "http://127.0.0.1:9/vidu", reconcile_after=86_400)
        service = ServiceProcess(
            Path(tmp), tables=tables + setup.tables, top=setup.top, log_level=args.log_level
        )
        service.env.update(setup.env)
        try:
            sinks.start()
            return run(args, sinks, service, setup)
        finally:
            service.kill()
            sinks.stop()


def run(args: argparse.Namespace, sinks: Sinks, service: ServiceProcess, setup: Setup) -> int:
    count = int(args.rate * args.duration)
    jobs = precreate_jobs(service.config(), "vidu", count)
    if len(setup.names) > 1:
        route_jobs(service.db_path, jobs, setup.names)
    callbacks = [processing_callback(job) for job in jobs]
    pacing = f", min_interval {args.min_interval:g} s" if args.channel == "slack" else ""
    print(
        f"{count} jobs, {args.channels} {args.channel} channel(s){pacing}; sending "
        f"{args.rate:.0f} callbacks/s for {args.duration:.0f} s",
        flush=True,
    )
    service.start()
    pid = service.pid
    assert pid is not None
    profiler = start_py_spy(pid, args.py_spy) if args.py_spy else None
    loop_before, cpu_before = cpu_seconds(pid)
    began = time.monotonic()
    opened = asyncio.run(send_all(service.url, callbacks, args.rate))
    sending = time.monotonic() - began
    acked = [cb for cb in callbacks if 200 <= cb.status < 300]
    deadline = time.monotonic() + args.drain
    while sinks.count() < len(acked) and time.monotonic() < deadline:
        time.sleep(0.25)
    drained = time.monotonic() - began
    loop_after, cpu_after = cpu_seconds(pid)
    cpu, loop_cpu = cpu_after - cpu_before, loop_after - loop_before
    if profiler is not None:
        profiler.send_signal(signal.SIGINT)  # py-spy writes its output, then exits
        profiler.wait(60)
        print(f"profile written to {args.py_spy}", flush=True)
    peak = rss_mb(pid, peak=True)
    try:
        service.stop()
    except subprocess.TimeoutExpired:
        print("PROBLEM: vidhook did not stop within 30 s of SIGTERM", flush=True)
        service.kill()

    # First accepted message per job; refusals (Slack's 429) and repeats counted apart.
    arrived: dict[str, float] = {}
    copies: Counter[str] = Counter()
    refused = 0
    for t, job_id, status in sorted(sinks.received()):
        if not 200 <= status < 300:
            refused += 1
        elif job_id is not None:
            copies[job_id] += 1
            arrived.setdefault(job_id, t)
    gave_up = time.monotonic()
    # A message that never came counts as late as the wait for it: a lower bound.
    latencies = [arrived.get(cb.job_id, gave_up) - cb.acked for cb in acked]
    missing = sum(1 for cb in acked if cb.job_id not in arrived)
    duplicates = sum(n - 1 for n in copies.values())
    acks = [cb.acked - cb.sent for cb in acked]
    late_sends = [cb.sent - cb.due for cb in callbacks]
    times = sorted(arrived.values())
    delivered_per_s = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else 0.0

    print(
        f"callbacks: {len(acked)}/{count} answered 2xx in {sending:.1f} s "
        f"({len(acked) / sending:.0f}/s); ack p50 {percentile(acks, 50) * 1000:.1f} ms, "
        f"p99 {percentile(acks, 99) * 1000:.1f} ms; sender behind its clock by at most "
        f"{max(late_sends) * 1000:.1f} ms, over {opened} connections",
        flush=True,
    )
    problems = []
    if latencies:
        print(
            f"notify: {len(arrived)} messages; p50 {percentile(latencies, 50) * 1000:.1f} ms, "
            f"p90 {percentile(latencies, 90) * 1000:.1f} ms, "
            f"p99 {percentile(latencies, 99) * 1000:.1f} ms, "
            f"min {min(latencies) * 1000:.1f} ms, max {max(latencies) * 1000:.1f} ms; "
            f"delivered at {delivered_per_s:.0f}/s from the first to the last",
            flush=True,
        )
    print(
        f"sink: {refused} refusals (429), {duplicates} duplicates, {missing} missing after "
        f"{drained:.1f} s",
        flush=True,
    )
    per = 1000 / max(1, len(acked))
    print(
        f"vidhook: CPU {cpu * per:.2f} ms a callback and its message, of which the event "
        f"loop's thread {loop_cpu * per:.2f} ms ({loop_cpu / drained * 100:.0f} % of a core "
        f"over the run); peak RSS {peak:.1f} MiB",
        flush=True,
    )
    if len(acked) < count:
        statuses = Counter(cb.status for cb in callbacks if not 200 <= cb.status < 300)
        answers = ", ".join(f"{n} x {s if s > 0 else 'no answer'}" for s, n in statuses.items())
        problems.append(f"{count - len(acked)} callbacks were not answered 2xx: {answers}")
    if missing:
        problems.append(f"{missing} messages never reached the sink")
    for problem in problems:
        print(f"PROBLEM: {problem}", flush=True)
    if problems:
        print("--- the end of vidhook's log ---\n" + "\n".join(service.log().splitlines()[-20:]))
    if not latencies:
        return 1
    print(
        f"RESULT notify_p50_ms={percentile(latencies, 50) * 1000:.1f}"
        f" notify_p99_ms={percentile(latencies, 99) * 1000:.1f}"
    )
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

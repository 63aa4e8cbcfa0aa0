"""Polling at scale: 10,000 poll-only jobs against the kvid sandbox, and two plain loops.

    .venv/bin/python -m bench.poller [--jobs 10000] [--rate 200] [--concurrency 8] ...

What it does, all on 127.0.0.1:

1. Starts kvid's fake (receiver.sandbox.kvid) in its own process, so that neither vidhook
   nor the baseline client shares an interpreter with it, and pre-creates ``--jobs``
   kvid jobs straight into vidhook's database (bench.common.precreate_jobs), each with a
   task at the fake that stays ``processing``: every job stays in flight for the whole
   run. The fake notes when each status request arrives, and for which task.
2. Starts ``vidhook serve`` with kvid's ``max_concurrency = --concurrency`` and no
   requests_per_second limit, and a poll interval of an hour, so that each phase below
   polls every job exactly once.
3. paced: gives the jobs a schedule, their polls due one after the other at ``--rate``
   per second (written to the database while vidhook runs, as the poller only ever
   reads the schedule from there), and waits for them. Lateness is a poll's arrival at
   the fake minus its ``next_poll_at``; the achieved rate is set against ``--rate``.
   Each of these polls finds its job moved on (queued to processing: a transition).
4. backlog: makes every job due at once. The rate at which vidhook drains that backlog,
   counted at the fake, is its capacity: ``polls_per_s``. These polls find nothing new,
   as most polls do.
5. baselines: stops vidhook, then two plain loops in this process, each with
   ``--concurrency`` requests in flight like vidhook, ask the fake for the status of every
   job once, as fast as they can: an httpx.AsyncClient (``baseline_per_s``, counted at
   the fake too) and an aiohttp session (``aiohttp_per_s``). Both run on uvloop, the loop
   ``vidhook serve`` runs on.

vidhook's peak RSS (VmHWM) is read before it stops; it covers startup, both phases and
all ``--jobs`` jobs in flight. The CPU time that vidhook and the baseline spend per
request is printed as well: on a machine with other work it is steadier than a rate.

The fake's CPU a request is printed for the backlog and each baseline: when it is small
next to the clients', the fake is not what limits them.

The last line is ``RESULT polls_per_s=<n> baseline_per_s=<n> ratio=<n> lateness_p99_ms=<n>
rss_mb=<n> aiohttp_per_s=<n> aiohttp_ratio=<n>`` (the ratios: vidhook's rate over each
baseline's); the lines before it give each phase in more detail.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import signal
import sqlite3
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import httpx
import uvloop

from bench.common import (
    API_KEY,
    PYTHON,
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

STATUS_PATH = "/kvid/ai/generation/status"
# The poller sleeps at most this long (receiver.worker.IDLE_WAIT) before it reads the
# schedule again; a schedule written from outside must start later than that.
POLLER_IDLE_WAIT = 5.0


# -- kvid's fake, in its own process --------------------------------------------------------


def serve_sandbox(port: int) -> None:
    """kvid's fake, plus /_bench routes to add tasks and read the arrivals it recorded."""
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Mount, Route

    from receiver.sandbox.base import FakeSettings
    from receiver.sandbox.kvid import KvidFake, KvidJob

    fake = KvidFake(FakeSettings(api_keys=[API_KEY]))

    async def add_tasks(request: Request) -> JSONResponse:
        for task_id in await request.json():
            # "never": the task stays processing, so every poll finds the job in flight.
            fake.tasks[task_id] = KvidJob(
                job_id=task_id,
                key=API_KEY,
                video_type="text-to-video",
                params={"prompt": "bench", "model": "v2", "resolution": "720p"},
                scenario=frozenset({"never"}),
                base_url=f"http://127.0.0.1:{port}/kvid",
                created_at="2025-01-01T00:00:00Z",
                status="processing",
            )
        return JSONResponse({"tasks": len(fake.tasks)})

    async def count(request: Request) -> JSONResponse:
        return JSONResponse({"count": len(fake.requests)})

    async def arrivals(request: Request) -> JSONResponse:
        # The fake stamps arrivals with time.monotonic(); the schedule is wall-clock time.
        offset = time.time() - time.monotonic()
        rows = [(r.time + offset, r.task_id, r.status_code) for r in fake.requests]
        return JSONResponse(rows)

    async def reset(request: Request) -> JSONResponse:
        fake.requests.clear()
        return JSONResponse({"ok": True})

    app = Starlette(
        routes=[
            Route("/_bench/tasks", add_tasks, methods=["POST"]),
            Route("/_bench/count", count),
            Route("/_bench/arrivals", arrivals),
            Route("/_bench/reset", reset, methods=["POST"]),
            Mount("/kvid", app=fake.app),
        ]
    )
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


class Sandbox(SideProcess):
    """The fake's process, seen from here."""

    def command(self) -> list[str]:
        return [PYTHON, "-m", "bench.poller", "--serve-sandbox", str(self.port)]

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def add_tasks(self, task_ids: Sequence[str]) -> None:
        self.http.post("/_bench/tasks", json=list(task_ids)).raise_for_status()

    def reset(self) -> None:
        self.http.post("/_bench/reset").raise_for_status()

    def arrivals(self) -> list[tuple[float, str, int]]:
        """(wall-clock arrival, task id, status answered) of every status request."""
        rows = self.http.get("/_bench/arrivals").json()
        return [(t, task, code) for t, task, code in rows if task]

    def wait_for(self, count: int, timeout: float) -> int:
        """Poll the fake's counter (cheap: no list goes over the wire) until ``count``."""
        deadline = time.monotonic() + timeout
        while True:
            seen = self.count()
            if seen >= count or time.monotonic() > deadline:
                return seen
            time.sleep(0.25)


# -- measuring ------------------------------------------------------------------------------


def rate_of(times: Sequence[float]) -> float:
    """Requests per second from the first arrival to the last."""
    if len(times) < 2 or max(times) == min(times):
        return float("nan")
    return (len(times) - 1) / (max(times) - min(times))


def schedule(db: Path, due: dict[str, float]) -> None:
    """Set next_poll_at of each job (by id), in one transaction next to the running service."""
    conn = sqlite3.connect(db, timeout=30)
    try:
        with conn:
            conn.executemany(
                "UPDATE jobs SET next_poll_at = ? WHERE id = ?",
                [(at, job_id) for job_id, at in due.items()],
            )
    finally:
        conn.close()


async def httpx_loop(url: str, task_ids: Sequence[str], concurrency: int) -> int:
    """Each task's status once, ``concurrency`` requests in flight; the number of 2xx."""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    todo = iter(task_ids)
    ok = 0
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as client:

        async def worker() -> None:
            nonlocal ok
            # One shared iterator: each worker takes the next task when it is free.
            for task_id in todo:
                response = await client.get(
                    STATUS_PATH, params={"jobId": task_id}, headers={"api-key": API_KEY}
                )
                response.json()  # vidhook parses every answer too
                ok += response.is_success

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return ok


async def aiohttp_loop(url: str, task_ids: Sequence[str], concurrency: int) -> int:
    """The same requests through aiohttp's own session, without httpx."""
    import aiohttp

    todo = iter(task_ids)
    ok = 0
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=30)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def worker() -> None:
            nonlocal ok
            for task_id in todo:
                async with session.get(
                    f"{url}{STATUS_PATH}", params={"jobId": task_id}, headers={"api-key": API_KEY}
                ) as response:
                    json.loads(await response.read())
                    ok += response.ok

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return ok


BASELINES = {"httpx": httpx_loop, "aiohttp": aiohttp_loop}


def used_since(pid: int, before: tuple[float, float]) -> tuple[float, float]:
    """CPU seconds used since ``before`` (from cpu_seconds): (event loop's thread, all)."""
    loop, total = cpu_seconds(pid)
    return loop - before[0], total - before[1]


def per_request(used: tuple[float, float], count: int) -> str:
    loop, total = (seconds / max(1, count) for seconds in used)
    return f"{ms(total)} a poll, of which the event loop's thread {ms(loop)}"


def own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms" if seconds < 0.1 else f"{seconds * 1000:.0f} ms"


# -- the run --------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.poller",
        description="vidhook's poller against kvid's fake, and plain httpx and aiohttp loops.",
    )
    parser.add_argument("--jobs", type=int, default=10_000, help="jobs in flight (10000)")
    parser.add_argument(
        "--rate", type=float, default=200.0, help="polls per second in the paced phase (200)"
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=8,
        help="kvid's max_concurrency, and the baseline's requests in flight (8, the default)",
    )
    parser.add_argument(
        "--lead",
        type=float,
        default=POLLER_IDLE_WAIT + 1.0,
        help="seconds from writing the paced schedule to its first poll (6)",
    )
    parser.add_argument(
        "--py-spy",
        metavar="OUT",
        help="profile vidhook during the backlog phase with py-spy (on PATH or in the venv): "
        "OUT.svg (flame graph), .json (speedscope) or .txt (collapsed stacks)",
    )
    parser.add_argument(
        "--machinery",
        action="store_true",
        help="instead: vidhook's own cost a poll, HTTP left out (the Poller and the Store in "
        "this process, a provider that answers at once)",
    )
    parser.add_argument("--serve-sandbox", type=int, metavar="PORT", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve_sandbox:
        serve_sandbox(args.serve_sandbox)
        return 0
    print(f"machine: {machine()}", flush=True)
    if args.machinery:
        return asyncio.run(machinery(args.jobs, args.concurrency))
    sandbox = Sandbox()
    with tempfile.TemporaryDirectory(prefix="vidhook-bench-poller-") as tmp:
        service = ServiceProcess(
            Path(tmp),
            tables=provider_toml(
                "kvid",
                f"{sandbox.url}/kvid",
                # One poll per job and phase: the next is an hour away.
                initial_delay=3600,
                poll_interval=3600,
                poll_max_interval=3600,
                deadline=86_400,
                timeout=30,
                max_concurrency=args.concurrency,
            ),
        )
        try:
            sandbox.start()
            return run(args, sandbox, service)
        finally:
            service.kill()
            sandbox.stop()


def run(args: argparse.Namespace, sandbox: Sandbox, service: ServiceProcess) -> int:
    started = time.monotonic()
    # Nothing due until the paced phase sets the schedule.
    jobs = precreate_jobs(service.config(), "kvid", args.jobs, next_poll_at=time.time() + 86_400)
    task_of = {job.id: job.provider_job_id for job in jobs}
    sandbox.add_tasks(list(task_of.values()))
    print(f"{len(jobs)} jobs created in {time.monotonic() - started:.1f} s", flush=True)
    service.start()
    pid = service.pid
    assert pid is not None

    # paced
    spacing = 1.0 / args.rate
    first = time.time() + args.lead
    due = {job.id: first + i * spacing for i, job in enumerate(jobs)}
    schedule(service.db_path, due)
    cpu_before = cpu_seconds(pid)
    span = args.jobs * spacing
    seen = sandbox.wait_for(args.jobs, args.lead + span + 60)
    cpu_paced = used_since(pid, cpu_before)
    due_of_task = {task_of[job_id]: at for job_id, at in due.items()}
    paced = sandbox.arrivals()
    first_arrival: dict[str, float] = {}
    for t, task, _ in paced:
        first_arrival.setdefault(task, t)
    gave_up = time.time()
    # A poll that never came counts as late as the wait for it: a lower bound.
    lateness = [first_arrival.get(task, gave_up) - at for task, at in due_of_task.items()]
    failed = sum(1 for _, _, code in paced if code != 200)
    print(
        f"paced: {seen}/{args.jobs} polls due at {args.rate:.0f}/s, achieved "
        f"{rate_of([t for t, _, _ in paced]):.0f}/s; lateness p50 {ms(percentile(lateness, 50))}"
        f", p99 {ms(percentile(lateness, 99))}, max {ms(max(lateness))}; "
        f"vidhook CPU {per_request(cpu_paced, seen)}",
        flush=True,
    )

    # backlog
    sandbox.reset()
    profiler = start_py_spy(pid, args.py_spy) if args.py_spy else None
    cpu_before, fake_before = cpu_seconds(pid), cpu_seconds(sandbox.pid)
    schedule(service.db_path, dict.fromkeys(task_of, time.time()))
    seen_backlog = sandbox.wait_for(args.jobs, 300)
    cpu_backlog = used_since(pid, cpu_before)
    fake_backlog = used_since(sandbox.pid, fake_before)[1]
    if profiler is not None:
        profiler.send_signal(signal.SIGINT)  # py-spy writes its output, then exits
        profiler.wait(60)
        print(f"profile written to {args.py_spy}", flush=True)
    backlog = sandbox.arrivals()
    failed += sum(1 for _, _, code in backlog if code != 200)
    polls_per_s = rate_of([t for t, _, _ in backlog])
    print(
        f"backlog: {seen_backlog}/{args.jobs} polls due at once, drained at "
        f"{polls_per_s:.0f}/s; vidhook CPU {per_request(cpu_backlog, seen_backlog)}; "
        f"the fake's {ms(fake_backlog / max(1, seen_backlog))}",
        flush=True,
    )
    peak = rss_mb(pid, peak=True)
    print(f"vidhook peak RSS {peak:.1f} MiB (VmHWM), now {rss_mb(pid):.1f} MiB", flush=True)
    service.stop()

    # baselines: the same requests from a plain loop of each client, on vidhook's loop
    rates: dict[str, float] = {}
    for name, loop_of in BASELINES.items():
        sandbox.reset()
        cpu_before, fake_before = own_cpu(), cpu_seconds(sandbox.pid)
        ok = uvloop.run(loop_of(sandbox.url, list(task_of.values()), args.concurrency))
        cpu_base = own_cpu() - cpu_before
        fake_used = used_since(sandbox.pid, fake_before)[1]
        rates[name] = rate_of([t for t, _, _ in sandbox.arrivals()])
        print(
            f"{name} loop: {ok}/{args.jobs} requests answered 2xx at {rates[name]:.0f}/s; "
            f"client CPU {ms(cpu_base / max(1, ok))} a request, the fake's {ms(fake_used / ok)}",
            flush=True,
        )
        failed += args.jobs - ok

    problems = []
    if seen < args.jobs or seen_backlog < args.jobs:
        problems.append(f"polls missing: paced {seen}, backlog {seen_backlog} of {args.jobs}")
    if failed:
        problems.append(f"{failed} polls were not answered 200")
    for problem in problems:
        print(f"PROBLEM: {problem}", flush=True)
    print(f"total time {time.monotonic() - started:.0f} s", flush=True)
    baseline_per_s, aiohttp_per_s = rates["httpx"], rates["aiohttp"]
    print(
        f"RESULT polls_per_s={polls_per_s:.0f} baseline_per_s={baseline_per_s:.0f}"
        f" ratio={polls_per_s / baseline_per_s:.2f}"
        f" lateness_p99_ms={percentile(lateness, 99) * 1000:.0f} rss_mb={peak:.1f}"
        f" aiohttp_per_s={aiohttp_per_s:.0f} aiohttp_ratio={polls_per_s / aiohttp_per_s:.2f}"
    )
    return 1 if problems else 0


# -- the poller alone ----------------------------------------------------------------------


async def machinery(count: int, concurrency: int) -> int:
    """Drain a backlog of ``count`` polls with a provider that answers at once.

    What is left is vidhook's own work a poll: the poller's round, the Gate, the store's
    read and its group-committed write (synchronous=FULL), the hand-offs between the event
    loop and the store's threads. The real runs add the HTTP request to this.
    """
    from receiver.config import ProviderConfig, Secret
    from receiver.poller import Poller
    from receiver.providers.base import JobRef, Observation
    from receiver.providers.limits import Gate
    from receiver.states import Status
    from receiver.store import NewJob, Store, jobs
    from receiver.store.db import Db

    class Instant:
        name = "kvid"
        supports_callbacks = False

        def __init__(self) -> None:
            self.config = ProviderConfig(
                name="kvid",
                type="kvid",
                base_url="http://127.0.0.1:9",
                api_key=Secret(API_KEY),
                poll_interval=3600,
                poll_max_interval=3600,
                max_concurrency=concurrency,
            )
            self.gate = Gate(None, concurrency)
            self.fetched = 0

        async def fetch(self, job: JobRef) -> Observation:
            async with self.gate.slot():
                await asyncio.sleep(0)  # a request yields to the loop at least once
                self.fetched += 1
                return Observation(status=Status.PROCESSING, provider_status="processing")

    def no_channels(status: Status, notify: list[str] | None) -> list[str]:
        return []

    with tempfile.TemporaryDirectory(prefix="vidhook-bench-machinery-") as tmp:
        store = Store(Path(tmp) / "vidhook.db", route=no_channels).open()
        now = time.time()

        async def fill(db: Db) -> None:
            for i in range(count):
                job = NewJob(
                    id=f"job_{i:08d}", provider="kvid", model="v2", prompt="bench",
                    request={}, callback_token=None, callback_url=None,
                    key_fingerprint=None, notify=None, deadline_at=now + 86_400,
                )  # fmt: skip
                await jobs.insert_job(db, job, now=now, route=no_channels)
            await db.run("UPDATE jobs SET provider_job_id = id, next_poll_at = ?", (now + 3600,))

        await store.write(fill)
        provider = Instant()
        poller = Poller(store, {"kvid": provider})  # type: ignore[dict-item]
        poller.start()
        try:
            await asyncio.sleep(0.5)  # past prepare(), asleep
            cpu, loop, began = own_cpu(), time.thread_time(), time.monotonic()
            await store.write(lambda db: db.run("UPDATE jobs SET next_poll_at = ?", (time.time(),)))
            poller.wake()
            while provider.fetched < count:
                await asyncio.sleep(0.01)
            await store.ping()  # the last poll's commit is in
            elapsed = time.monotonic() - began
            cpu, loop = own_cpu() - cpu, time.thread_time() - loop
        finally:
            await poller.stop()
            store.close()
    print(
        f"machinery: {count} polls in {elapsed:.2f} s ({count / elapsed:.0f}/s); CPU "
        f"{cpu / count * 1e6:.0f} us a poll, of which the event loop's thread "
        f"{loop / count * 1e6:.0f} us",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

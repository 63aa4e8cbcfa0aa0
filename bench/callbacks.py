"""Ingest throughput of POST /callbacks/vidu/{token}, against a bare Starlette endpoint.

    .venv/bin/python -m bench.callbacks [--jobs N] [--rounds R] [--connections C] ...

What it does, all on 127.0.0.1:

1. Writes a config for ``vidhook serve`` (one Vidu provider) in a temporary folder and
   pre-creates jobs straight into its database through the store's own functions
   (bench.common.precreate_jobs), each with a callback token and URL made as the
   service makes them.
2. Pre-signs two Vidu callbacks per job, ``processing`` then ``success``, with unique
   nonces, and writes them to a file, one request a line. A job's success callback comes
   a block of requests after its processing one, so the processing callback has been
   answered before the success one is sent, as Vidu sends them.
3. Starts the bare baseline (``--serve-bare``: a Starlette route that reads the body and
   answers 200 with vidhook's answer body) and ``vidhook serve`` (as ``python -m
   receiver serve``), each a subprocess served the same way (receiver.server: uvicorn on
   httptools and uvloop with vidhook's limits, one process, 127.0.0.1, access log off),
   at the same log level (info unless ``--log-level``). With ``--compare-stack``, also
   ``vidhook serve --http-stack h11`` (the same build on h11 and the stock asyncio loop)
   on a database and jobs of its own. With ``--database postgres``, also vidhook on a
   throwaway PostgreSQL server that syncs its commits to disk (tests/pg.py), on jobs of
   its own; with ``--replicas N``, N replicas on that database behind Caddy running
   deploy/Caddyfile.replicas, which wrk then drives.
4. After a warm-up, runs ``--rounds`` rounds: in each, wrk (bench/callbacks.lua) drives
   both servers with the same fresh requests file (and the h11 one with its own), one
   after the other, as fast as
   ``--connections`` connections allow; each request is sent once to each server, and
   a run ends when every request is answered. wrk's latency histogram gives p50 and p99;
   the server's CPU time over the run, per answer, is printed too (it hardly moves with
   the machine's other load, unlike a rate).
5. Runs vidhook once more at half the median rate it reached, paced by the Lua script,
   on fresh jobs: the ack latency at half the maximum rate.
6. Checks the database: every callback answered 2xx is stored and reflected in its job
   (a processing callback moved the job, with its transition; a success callback awaits
   its confirming fetch), nothing that was not sent is stored, no transition is stored
   twice.

The confirming fetch a success callback schedules goes to the Vidu sandbox in this
process, whose status endpoint is in outage (503): each is tried once and put off by an
hour, and the provider's ``requests_per_second = 1`` keeps them to one a second, so
confirmation traffic does not compete with the callbacks being measured. The poller is
still woken by every success callback, as in production. No notification channel is
configured, so no delivery is queued (a channel hears of completed and failed by default,
and those come only with the confirming fetch).

Output ends with ``STACK callbacks_rps=<n> h11_rps=<n> ratio=<n> cpu_us=<n> h11_cpu_us=<n>``
(with ``--compare-stack``: medians over the rounds, CPU per callback in all threads),
``PACED target_rps=<n> achieved_rps=<n> p50_ms=<n> p99_ms=<n>`` and
``RESULT callbacks_rps=<n> bare_rps=<n> ratio=<vidhook/bare> p50_ms=<n> p99_ms=<n>``:
medians over the rounds, latencies of the median vidhook run. With ``--database
postgres`` the half-rate run and the RESULT line's figures are PostgreSQL's, followed by
``database=postgres replicas=<n> sqlite_rps=<n> sqlite_ratio=<n> sqlite_p50_ms=<n>
sqlite_p99_ms=<n>`` from SQLite's runs of the same rounds, and the CPU per callback of
the PostgreSQL server (postmaster and backends) is printed beside vidhook's. Exit code 1
if the database check failed, 2 if wrk is missing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench.common import (
    API_KEY,
    PYTHON,
    REPO,
    BenchJob,
    ServiceProcess,
    caddy_balancer,
    cpu_seconds,
    free_port,
    machine,
    precreate_jobs,
    provider_toml,
    rss_mb,
    sandbox,
    start_py_spy,
    tree_cpu_seconds,
)
from receiver.sandbox import ViduSandboxSettings
from receiver.server import Stack
from signing import vidu as vidu_signing
from tests.pg import running_cluster

LUA = Path(__file__).with_name("callbacks.lua")
# vidhook's own answer to an accepted callback, so both servers send the same bytes.
ANSWER = b'{"ok":true,"duplicate":false}'


# -- the bare baseline ----------------------------------------------------------------------


def serve_bare(port: int, log_level: str, stack: Stack) -> None:
    """A bare Starlette endpoint, served exactly as receiver.cli's cmd_serve serves vidhook."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    from receiver import logs
    from receiver.config import ServerConfig
    from receiver.server import serve, uvicorn_config

    async def callback(request: Request) -> Response:
        await request.body()
        return Response(ANSWER, media_type="application/json")

    logs.configure(log_level, "text")
    app = Starlette(routes=[Route("/callbacks/{provider}/{token}", callback, methods=["POST"])])
    config = uvicorn_config(
        app, ServerConfig(), host="127.0.0.1", port=port, log_level=log_level, stack=stack
    )
    serve(config)


class BareProcess:
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
        command = [PYTHON, "-m", "bench.callbacks", "--serve-bare", str(self.port)]
        command += ["--log-level", self.log_level, "--http-stack", "httptools"]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        # Any answer at all (a 404 for "/") means the server is up.
        deadline = time.monotonic() + 15
        while not _answers(self.url):
            if self.proc.poll() is not None:
                raise RuntimeError(f"the bare server exited with {self.proc.returncode}")
            if time.monotonic() > deadline:
                raise RuntimeError("the bare server did not answer within 15 s")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=20)


def _answers(url: str) -> bool:
    try:
        httpx.get(url, timeout=0.5)
    except httpx.HTTPError:
        return False
    return True


# -- pre-signed requests --------------------------------------------------------------------


@dataclass(frozen=True)
class Signed:
    nonce: str
    job_id: str
    state: str
    line: str


def callback_body(job: BenchJob, state: str, base_url: str) -> str:
    """A callback body shaped as Vidu's (the sandbox's) for ``state``."""
    creations = []
    if state == "success":
        expires = int(time.time()) + 86_400
        link = f"{base_url}/files/{job.provider_job_id}{{}}?expires={expires}"
        creations.append(
            {"id": job.provider_job_id.replace("bench", "creation")}
            | {k: link.format(v) for k, v in (("url", ".mp4"), ("cover_url", ".jpg"))}
            | {"watermarked_url": link.format("-wm.mp4")}
        )
    body = {
        "id": job.provider_job_id,
        "state": state,
        "err_code": "",
        "credits": 10,
        "payload": "",
        "bgm": False,
        "off_peak": False,
        "creations": creations,
    }
    return json.dumps(body, separators=(",", ":"))


def sign_requests(jobs: Sequence[BenchJob], block: int, base_url: str) -> list[Signed]:
    """Each job's processing callback, then a block later its success callback."""
    signed: list[Signed] = []
    for start in range(0, len(jobs), block):
        chunk = jobs[start : start + block]
        for state in ("processing", "success"):
            for job in chunk:
                assert job.callback_url is not None
                headers = vidu_signing.sign(API_KEY, "POST", job.callback_url)
                headers["Content-Type"] = "application/json"
                path = "/" + job.callback_url.split("/", 3)[3]
                fields = ["POST", path, *(f"{k}: {v}" for k, v in headers.items())]
                fields.append(callback_body(job, state, base_url))
                line = "\t".join(fields)
                assert "\n" not in line
                signed.append(Signed(headers["x-request-nonce"], job.id, state, line))
    return signed


def write_requests(path: Path, signed: Sequence[Signed]) -> Path:
    path.write_text("".join(s.line + "\n" for s in signed), encoding="utf-8")
    return path


# -- wrk ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    name: str
    seconds: float
    sent: int
    answered: int
    ok: int  # 2xx answers
    statuses: str
    errors: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    cpu_main_us: float  # the server's main (event loop) thread, per answer
    cpu_total_us: float  # all its threads, per answer

    @property
    def rps(self) -> float:
        return self.answered / self.seconds if self.seconds > 0 else 0.0

    def describe(self) -> str:
        return (
            f"{self.name}: {self.answered} answers in {self.seconds:.2f} s = {self.rps:.0f}/s"
            f" (2xx {self.ok}, statuses {self.statuses or '-'}, socket errors {self.errors});"
            f" latency p50 {self.p50_ms:.2f} ms, p90 {self.p90_ms:.2f} ms,"
            f" p99 {self.p99_ms:.2f} ms, max {self.max_ms:.1f} ms; CPU per answer"
            f" {self.cpu_main_us:.0f} us in the event loop thread,"
            f" {self.cpu_total_us:.0f} us in all"
        )


def run_wrk(
    name: str,
    url: str,
    pid: int | Sequence[int],
    requests_file: Path,
    *,
    connections: int,
    duration: float,
    rate: float = 0,
) -> Run:
    """One wrk run over ``requests_file``; it ends when every request is answered.

    Also takes the server's CPU time over the run (``pid``, or the sum over several
    replicas' pids): unlike a rate, CPU per request hardly moves when something else runs
    on the machine.
    """
    pids = [pid] if isinstance(pid, int) else list(pid)
    cpu_before = _cpu(pids)
    command = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, math.ceil(duration))}s"]
    command += ["--timeout", "30s", "-s", str(LUA), url, "--", str(requests_file), f"{rate:.3f}"]
    done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=900)
    line = next((x for x in done.stdout.splitlines() if x.startswith("WRK ")), None)
    if done.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    cpu_after = _cpu(pids)
    values = dict(item.split("=", 1) for item in line.split()[1:])
    errors = ("connect_errors", "read_errors", "write_errors", "timeouts")
    answers = max(1, int(values["answered"]))
    return Run(
        name=name,
        seconds=float(values["seconds"]),
        sent=int(values["sent"]),
        answered=int(values["answered"]),
        ok=int(values["ok"]),
        statuses=values["statuses"],
        errors=sum(int(values[k]) for k in errors),
        p50_ms=int(values["p50_us"]) / 1000,
        p90_ms=int(values["p90_us"]) / 1000,
        p99_ms=int(values["p99_us"]) / 1000,
        max_ms=int(values["max_us"]) / 1000,
        cpu_main_us=(cpu_after[0] - cpu_before[0]) / answers * 1e6,
        cpu_total_us=(cpu_after[1] - cpu_before[1]) / answers * 1e6,
    )


def _cpu(pids: Sequence[int]) -> tuple[float, float]:
    times = [cpu_seconds(pid) for pid in pids]
    return sum(t[0] for t in times), sum(t[1] for t in times)


# -- the database check ---------------------------------------------------------------------


def check_database(
    service: ServiceProcess, phases: Sequence[tuple[Run, Sequence[Signed]]]
) -> list[str]:
    """Problems found; none when every 2xx callback is stored and reflected in its job."""
    problems: list[str] = []
    stored = {
        row["nonce"]: row
        for row in service.rows(
            "SELECT c.id, c.nonce, c.job_id, c.provider_status, c.outcome, j.status,"
            " j.confirm_callback_id FROM callbacks c JOIN jobs j ON j.id = c.job_id"
        )
    }
    applied = {
        json.loads(row[0]).get("callback_id")
        for row in service.rows(
            "SELECT detail FROM transitions"
            " WHERE source = 'callback' AND to_status = 'processing' AND detail IS NOT NULL"
        )
    }
    sent: set[str] = set()
    for run, signed in phases:
        # wrk sends the lines in order, one thread: exactly the first run.sent went out.
        candidates = signed[: run.sent]
        sent.update(s.nonce for s in candidates)
        found = [s for s in candidates if s.nonce in stored]
        if run.ok == run.answered == run.sent:
            # Every request sent was answered 2xx, so each one must be there.
            missing = [s for s in candidates if s.nonce not in stored]
            if missing:
                problems.append(
                    f"{run.name}: {len(missing)} callbacks answered 2xx are not stored,"
                    f" e.g. nonce {missing[0].nonce} of job {missing[0].job_id}"
                )
        elif len(found) < run.ok:
            # Some were refused or unanswered: which ones wrk does not say, so count.
            problems.append(f"{run.name}: {run.ok} answered 2xx, only {len(found)} stored")
        for s in found:
            row = stored[s.nonce]
            if row["job_id"] != s.job_id or row["provider_status"] != s.state:
                problems.append(f"{run.name}: nonce {s.nonce} stored for the wrong job or state")
            elif s.state == "processing" and (
                row["outcome"] != "applied"
                or row["id"] not in applied
                or row["status"] not in ("processing", "completed", "failed")
            ):
                problems.append(f"{run.name}: processing callback {row['id']} did not move its job")
            elif s.state == "success" and (
                row["outcome"] != "confirming"
                or (row["confirm_callback_id"] != row["id"] and row["status"] != "completed")
            ):
                problems.append(f"{run.name}: success callback {row['id']} awaits no confirmation")
    unsent = set(stored) - sent
    if unsent:
        problems.append(f"{len(unsent)} callbacks are stored that were never sent")
    doubled = service.rows(
        "SELECT job_id, to_status, count(*) FROM transitions GROUP BY 1, 2 HAVING count(*) > 1"
    )
    if doubled:
        problems.append(f"{len(doubled)} transitions are stored twice")
    return problems[:20]


# -- the run --------------------------------------------------------------------------------


def vidu_table(sandbox_url: str) -> str:
    return provider_toml(
        "vidu",
        f"{sandbox_url}/vidu",
        # No reconciliation poll during the run; a failed confirmation waits an hour.
        reconcile_after=3600,
        poll_interval=3600,
        poll_max_interval=3600,
        # One confirming fetch a second at most: confirmation is not what is measured.
        requests_per_second=1,
        max_concurrency=1,
        timeout=5,
    )


@dataclass
class Round:
    bare: Run
    vidhook: Run
    plain: Run | None = None  # vidhook on h11 and the stock loop (--compare-stack)
    pg: Run | None = None  # vidhook on PostgreSQL (--database postgres)

    @property
    def ratio(self) -> float:
        return self.vidhook.rps / self.bare.rps if self.bare.rps else 0.0


def median(values: Sequence[float]) -> float:
    return sorted(values)[len(values) // 2]


class Bench:
    """The servers, the jobs and every run so far, for one invocation."""

    def __init__(self, args: argparse.Namespace, folder: Path, sandbox_url: str) -> None:
        self.args = args
        self.folder = folder
        self.vidu_url = f"{sandbox_url}/vidu"  # where the success bodies' files live
        self.service = ServiceProcess(
            folder / "vidhook", tables=vidu_table(sandbox_url), log_level=args.log_level
        )
        self.config = self.service.config()
        self.bare = BareProcess(folder, args.log_level)
        # The same build on the pure-Python stack, with jobs of its own.
        self.plain = ServiceProcess(
            folder / "vidhook-h11",
            tables=vidu_table(sandbox_url),
            log_level=args.log_level,
            serve_args=["--http-stack", "h11"],
        )
        self.plain_sent: list[tuple[Run, list[Signed]]] = []
        # --database postgres: the replicas on PostgreSQL, and where callbacks reach them
        # (Caddy in front of several, or the one replica itself).
        self.pg: list[ServiceProcess] = []
        self.pg_url = ""
        self.pg_sent: list[tuple[Run, list[Signed]]] = []
        self.pg_server = 0  # the postmaster's pid
        self.pg_server_cpu: dict[str, float] = {}  # its CPU per answer (us), by run
        # More requests than connections in a block: a job's processing callback has
        # been answered before its success callback, a block later, is sent.
        self.block = max(256, 4 * args.connections)
        self.sent: list[tuple[Run, list[Signed]]] = []  # vidhook's runs, for the check

    def jobs(self, count: int) -> list[BenchJob]:
        return precreate_jobs(self.config, "vidu", max(1, count))

    def plain_jobs(self, count: int) -> list[BenchJob]:
        return precreate_jobs(self.plain.config(), "vidu", max(1, count))

    def on_postgres(
        self, database_url: str, replicas: int, sandbox_url: str, server_pid: int
    ) -> None:
        self.pg_server = server_pid
        balancer = f"http://127.0.0.1:{free_port()}" if replicas > 1 else None
        self.pg = [
            ServiceProcess(
                self.folder / f"vidhook-pg-{i}",
                tables=vidu_table(sandbox_url),
                log_level=self.args.log_level,
                database_url=database_url,
                public_url=balancer,
            )
            for i in range(replicas)
        ]
        self.pg_url = balancer or self.pg[0].url

    def pg_jobs(self, count: int) -> list[BenchJob]:
        return precreate_jobs(self.pg[0].config(), "vidu", max(1, count))

    def drive_pg(self, name: str, jobs: Sequence[BenchJob], rate: float = 0) -> Run:
        signed, path = self.requests(name.replace(" ", "-"), jobs)
        pids = [svc.pid for svc in self.pg if svc.pid is not None]
        server_before = tree_cpu_seconds(self.pg_server)
        run = run_wrk(name, self.pg_url, pids, path, rate=rate, **self._load())
        server_us = (tree_cpu_seconds(self.pg_server) - server_before) * 1e6 / max(1, run.answered)
        self.pg_sent.append((run, signed))
        self.pg_server_cpu[run.name] = server_us
        print(f"{run.describe()}; the PostgreSQL server {server_us:.0f} us", flush=True)
        return run

    def drive_plain(self, name: str, jobs: Sequence[BenchJob]) -> Run:
        signed, path = self.requests(name.replace(" ", "-"), jobs)
        assert self.plain.pid is not None
        run = run_wrk(name, self.plain.url, self.plain.pid, path, **self._load())
        self.plain_sent.append((run, signed))
        print(run.describe(), flush=True)
        return run

    def requests(self, name: str, jobs: Sequence[BenchJob]) -> tuple[list[Signed], Path]:
        # Signed just before use: a signature's Date must be within date_tolerance.
        signed = sign_requests(jobs, self.block, self.vidu_url)
        return signed, write_requests(self.folder / f"{name}.txt", signed)

    def drive_bare(self, name: str, path: Path) -> Run:
        run = run_wrk(name, self.bare.url, self.bare.pid, path, **self._load())
        print(run.describe(), flush=True)
        return run

    def drive_vidhook(self, name: str, signed: list[Signed], path: Path, rate: float = 0) -> Run:
        assert self.service.pid is not None
        run = run_wrk(name, self.service.url, self.service.pid, path, rate=rate, **self._load())
        self.sent.append((run, signed))
        print(run.describe(), flush=True)
        return run

    def _load(self) -> dict[str, float]:
        return {"connections": self.args.connections, "duration": self.args.duration}


def run_bench(args: argparse.Namespace, folder: Path) -> int:
    with contextlib.ExitStack() as stack:
        fakes = stack.enter_context(sandbox(ViduSandboxSettings(status_outage=True)))
        bench = Bench(args, folder, fakes.url)
        postgres = args.database == "postgres"
        if postgres:
            # Commits wait for the disk, as SQLite's do with synchronous=FULL.
            cluster = stack.enter_context(running_cluster(free_port(), durable=True))
            postmaster = int((cluster.folder / "data" / "postmaster.pid").read_text().split()[0])
            bench.on_postgres(cluster.fresh_database(), args.replicas, fakes.url, postmaster)
        began = time.monotonic()
        warm_jobs = bench.jobs(args.warmup_jobs)
        round_jobs = [bench.jobs(args.jobs) for _ in range(args.rounds)]
        compare = args.compare_stack
        plain_jobs = [bench.plain_jobs(args.jobs) for _ in range(args.rounds if compare else 0)]
        plain_warm = bench.plain_jobs(args.warmup_jobs) if compare else []
        pg_jobs = [bench.pg_jobs(args.jobs) for _ in range(args.rounds if postgres else 0)]
        pg_warm = bench.pg_jobs(args.warmup_jobs) if postgres else []
        created = (args.warmup_jobs + args.rounds * args.jobs) * (1 + compare + postgres)
        print(f"{created} jobs created in {time.monotonic() - began:.1f} s", flush=True)
        rounds: list[Round] = []
        for service in (bench.service, bench.plain, *bench.pg):
            stack.enter_context(service)
        bench.bare.start()
        bench.service.start()
        if compare:
            bench.plain.start()
        for replica in bench.pg:
            replica.start()
        if len(bench.pg) > 1:
            port = int(bench.pg_url.rsplit(":", 1)[1])
            upstreams = [replica.port for replica in bench.pg]
            stack.enter_context(caddy_balancer(port, upstreams, folder / "caddy"))
        assert bench.service.pid is not None
        try:
            signed, path = bench.requests("warmup", warm_jobs)
            bench.drive_bare("bare warm-up", path)
            bench.drive_vidhook("vidhook warm-up", signed, path)
            if compare:
                bench.drive_plain("vidhook on h11 warm-up", plain_warm)
            if postgres:
                bench.drive_pg("vidhook on postgres warm-up", pg_warm)
            spy = start_py_spy(bench.service.pid, args.py_spy) if args.py_spy else None
            for number, jobs in enumerate(round_jobs, 1):
                signed, path = bench.requests(f"round{number}", jobs)
                # Each server goes first every other round, so that a drift in what
                # else the machine runs falls on all alike.
                runs: dict[str, Run] = {}

                def others(number: int = number, runs: dict[str, Run] = runs) -> None:
                    if compare:
                        name = f"round {number} vidhook on h11"
                        runs["plain"] = bench.drive_plain(name, plain_jobs[number - 1])
                    if postgres:
                        name = f"round {number} vidhook on postgres"
                        runs["pg"] = bench.drive_pg(name, pg_jobs[number - 1])

                if number % 2:
                    runs["bare"] = bench.drive_bare(f"round {number} bare", path)
                    runs["vidhook"] = bench.drive_vidhook(f"round {number} vidhook", signed, path)
                    others()
                else:
                    others()
                    runs["vidhook"] = bench.drive_vidhook(f"round {number} vidhook", signed, path)
                    runs["bare"] = bench.drive_bare(f"round {number} bare", path)
                rounds.append(
                    Round(runs["bare"], runs["vidhook"], runs.get("plain"), runs.get("pg"))
                )
            if spy is not None:
                spy.send_signal(signal.SIGINT)  # py-spy writes its output, then exits
                spy.wait(timeout=120)
                print(f"profile written to {args.py_spy}")
        finally:
            bench.bare.stop()
            if compare:
                print(f"vidhook on h11: exit code {bench.plain.stop()} after SIGTERM")

        # Half the rate the measured vidhook reached, paced, on fresh jobs.
        measured = [r.pg if postgres and r.pg else r.vidhook for r in rounds]
        rate = median([run.rps for run in measured]) / 2
        fresh = math.ceil(rate * args.paced_duration / 2)
        if postgres:
            paced = bench.drive_pg("vidhook on postgres at half rate", bench.pg_jobs(fresh), rate)
        else:
            signed, path = bench.requests("paced", bench.jobs(fresh))
            paced = bench.drive_vidhook("vidhook at half rate", signed, path, rate=rate)
        peak = rss_mb(bench.service.pid, peak=True)
        code = bench.service.stop()
        print(f"vidhook: peak RSS {peak:.0f} MiB; exit code {code} after SIGTERM")
        for replica in bench.pg:
            print(f"vidhook on postgres: exit code {replica.stop()} after SIGTERM")

        problems = check_database(bench.service, bench.sent)
        if compare:
            problems += check_database(bench.plain, bench.plain_sent)
        if postgres:
            problems += check_database(bench.pg[0], bench.pg_sent)
        checked = bench.pg[0] if postgres else bench.service
        answered = sum(run.ok for run, _ in (bench.pg_sent if postgres else bench.sent))
        stored = checked.rows("SELECT count(*) FROM callbacks")[0][0]
    if problems:
        print("CHECK FAILED:", *problems, sep="\n  ")
    else:
        print(
            f"check: {answered} callbacks answered 2xx, {stored} stored, each one in its job"
            " (processing applied, success awaiting confirmation); no transition stored twice"
        )
    report(args, rounds, paced, rate, bench.pg_server_cpu)
    return 1 if problems else 0


def report(
    args: argparse.Namespace,
    rounds: list[Round],
    paced: Run,
    rate: float,
    server_cpu: dict[str, float],
) -> None:
    # Medians over the rounds; the latencies are those of the median run.
    postgres = args.database == "postgres"
    bare_rps = median([r.bare.rps for r in rounds])
    sqlite_middle = sorted(rounds, key=lambda r: r.vidhook.rps)[len(rounds) // 2].vidhook
    print("ratio by round: " + ", ".join(f"{r.ratio:.2f}" for r in rounds))
    # CPU time per answer hardly moves with the machine's other load, unlike a rate.
    vidhook_cpu = median([r.vidhook.cpu_total_us for r in rounds])
    loop_cpu = median([r.vidhook.cpu_main_us for r in rounds])
    bare_cpu = median([r.bare.cpu_total_us for r in rounds])
    print(
        f"CPU per callback (medians): vidhook {vidhook_cpu:.0f} us ({loop_cpu:.0f} us in the"
        f" event loop thread), bare {bare_cpu:.0f} us"
    )
    if args.compare_stack:
        plain_runs = [r.plain for r in rounds if r.plain is not None]
        plain_rps = median([r.rps for r in plain_runs])
        vidhook_rps = median([r.vidhook.rps for r in rounds])
        plain_cpu = median([r.cpu_total_us for r in plain_runs])
        print(
            "stack ratio by round: "
            + ", ".join(f"{r.vidhook.rps / r.plain.rps:.2f}" for r in rounds if r.plain)
        )
        print(
            f"STACK callbacks_rps={vidhook_rps:.0f} h11_rps={plain_rps:.0f}"
            f" ratio={vidhook_rps / plain_rps if plain_rps else 0:.2f}"
            f" cpu_us={vidhook_cpu:.0f} h11_cpu_us={plain_cpu:.0f}"
        )
    print(
        f"PACED target_rps={rate:.0f} achieved_rps={paced.rps:.0f}"
        f" p50_ms={paced.p50_ms:.2f} p99_ms={paced.p99_ms:.2f}"
    )
    if not postgres:
        print(
            f"RESULT callbacks_rps={sqlite_middle.rps:.0f} bare_rps={bare_rps:.0f}"
            f" ratio={sqlite_middle.rps / bare_rps if bare_rps else 0:.2f}"
            f" p50_ms={sqlite_middle.p50_ms:.2f} p99_ms={sqlite_middle.p99_ms:.2f}"
        )
        return
    pg_runs = [r.pg for r in rounds if r.pg is not None]
    middle = sorted(pg_runs, key=lambda run: run.rps)[len(pg_runs) // 2]
    pg_cpu = median([run.cpu_total_us for run in pg_runs])
    print(
        "postgres/sqlite by round: "
        + ", ".join(f"{r.pg.rps / r.vidhook.rps:.2f}" for r in rounds if r.pg)
    )
    server = median([server_cpu[run.name] for run in pg_runs])
    print(
        f"CPU per callback on postgres (medians): vidhook {pg_cpu:.0f} us (all replicas),"
        f" the PostgreSQL server {server:.0f} us"
    )
    sqlite_rps = sqlite_middle.rps
    print(
        f"RESULT callbacks_rps={middle.rps:.0f} bare_rps={bare_rps:.0f}"
        f" ratio={middle.rps / bare_rps if bare_rps else 0:.2f}"
        f" p50_ms={middle.p50_ms:.2f} p99_ms={middle.p99_ms:.2f}"
        f" database=postgres replicas={args.replicas}"
        f" sqlite_rps={sqlite_rps:.0f} sqlite_ratio={sqlite_rps / bare_rps if bare_rps else 0:.2f}"
        f" sqlite_p50_ms={sqlite_middle.p50_ms:.2f} sqlite_p99_ms={sqlite_middle.p99_ms:.2f}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Callback ingest throughput: vidhook against a bare Starlette endpoint."
    )
    parser.add_argument("--jobs", type=int, default=3000, help="jobs per round, 2 callbacks each")
    parser.add_argument("--rounds", type=int, default=5, help="bare and vidhook runs, each")
    parser.add_argument("--duration", type=float, default=60.0, help="cap on one run (s)")
    parser.add_argument("--paced-duration", type=float, default=10.0, help="half-rate run (s)")
    parser.add_argument("--warmup-jobs", type=int, default=500)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning"])
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument(
        "--py-spy",
        metavar="OUT",
        help="profile vidhook's full-speed runs with py-spy into OUT (.svg, .json or .txt)",
    )
    parser.add_argument(
        "--compare-stack",
        action="store_true",
        help="also run vidhook on h11 and the stock asyncio loop (vidhook serve --http-stack"
        " h11) in every round, and report the default stack's rate against it",
    )
    parser.add_argument(
        "--database",
        choices=["sqlite", "postgres"],
        default="sqlite",
        help="postgres: also run vidhook on a throwaway PostgreSQL server in every round and"
        " report it, with the SQLite figure of the same rounds beside it",
    )
    parser.add_argument(
        "--replicas",
        type=int,
        default=1,
        help="with --database postgres: this many replicas behind Caddy (round robin)",
    )
    parser.add_argument("--serve-bare", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--http-stack", default="httptools", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_bare:
        serve_bare(args.serve_bare, args.log_level, args.http_stack)
        return 0
    if shutil.which("wrk") is None:
        print("wrk is not installed: apt-get install -y wrk", file=sys.stderr)
        return 2
    if args.jobs < 1 or args.rounds < 1:
        parser.error("--jobs and --rounds must be at least 1")
    if args.replicas < 1 or (args.replicas > 1 and args.database != "postgres"):
        parser.error("--replicas takes a number from 1, and more than 1 needs --database postgres")
    folder = Path(tempfile.mkdtemp(prefix="vidhook-bench-callbacks-"))
    print(f"machine: {machine()}", flush=True)
    try:
        return run_bench(args, folder)
    finally:
        if args.keep:
            print(f"kept {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

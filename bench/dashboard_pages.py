"""The dashboard with a million jobs: how long its pages take against a bare route.

``--pages`` (what runs by default):

1. Makes a database of ``--jobs`` jobs (1,000,000) with one INSERT ... SELECT over a
   recursive CTE, in one transaction, and their transitions the same way: ten providers,
   statuses as a busy service has them (97 % completed, 2 % failed, the rest canceled or
   running), prompts of a few hundred words' vocabulary. The newest job also gets
   callbacks, deliveries with attempts and a kept video's record, so that its page shows
   every section.
2. Starts ``vidhook serve`` on it (a subprocess, the default uvicorn stack), signs in
   through /ui/login as a browser does, and views each page once: the first list view
   after a start counts the jobs (printed apart as ``first view``).
3. Saves each page's bytes and starts the baseline: a bare Starlette route answering
   exactly those bytes for the same path and query, served by receiver.server's uvicorn
   settings, like vidhook.
4. For ``--rounds`` rounds, asks each page ``--requests`` times in a row from one
   keep-alive client, vidhook then the baseline, and reports the median and the 99th
   percentile of the time from sending the request to holding the whole answer.

Pages: the list's first page (``/ui/``), the list filtered by a status and by a
provider (``/ui/?status=failed``, ``/ui/?provider=p3``), a search (``/ui/?q=...``:
reads at most one window of jobs), and a job's page.

bench/dashboard.py's RESULT line carries list_p99_ms and job_p99_ms; list_p99_ms is
the worst p99 of the list's first and filtered pages. The event-stream half of the
benchmark (``--sse``) adds its figures to the same line.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench.common import (
    ADMIN_TOKEN,
    PYTHON,
    REPO,
    ServiceProcess,
    free_port,
    percentile,
    provider_toml,
)

PROVIDERS = [f"p{n}" for n in range(10)]
WORDS = [
    "fox", "snow", "dawn", "lighthouse", "fog", "rain", "neon", "street", "paper", "boats",
    "hummingbird", "feeder", "tea", "steam", "crane", "unfolding", "waves", "rocks",
    "jellyfish", "blue", "light", "city", "traffic", "kite", "dunes", "heron", "river",
    "lantern", "water", "forest", "moss", "desert", "wind", "market", "night", "train",
    "window", "ocean", "storm", "garden",
]  # fmt: skip


@dataclass(frozen=True)
class PageTiming:
    name: str
    path: str
    vidhook_p50: float
    vidhook_p99: float
    bare_p50: float
    bare_p99: float

    def line(self) -> str:
        return (
            f"  {self.name:<16} vidhook p50 {self.vidhook_p50:6.2f} ms  p99 {self.vidhook_p99:6.2f}"
            f" ms   bare p50 {self.bare_p50:5.2f} ms  p99 {self.bare_p99:5.2f} ms   {self.path}"
        )


# -- the database ---------------------------------------------------------------------------


def make_database(path: Path, jobs: int) -> str:
    """A migrated database holding ``jobs`` jobs; returns the id of the newest."""
    from receiver.store import migrate

    migrate(path)
    conn = sqlite3.connect(path, isolation_level=None)
    words = json.dumps(WORDS)
    conn.execute("BEGIN")
    conn.execute(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < :jobs)"
        " INSERT INTO jobs (id, provider, provider_job_id, status, provider_status, model,"
        " prompt, request, created_at, updated_at, finished_at, credits, anomalies,"
        " poll_failures, polls, submit_attempts)"
        " SELECT printf('job_%026d', i), 'p' || (i % 10), 'task-' || i,"
        "  CASE WHEN i > :jobs - 100 THEN (CASE i % 2 WHEN 0 THEN 'queued' ELSE 'processing' END)"
        "       WHEN i % 50 = 7 THEN 'failed' WHEN i % 200 = 3 THEN 'canceled'"
        "       ELSE 'completed' END,"
        "  'done', 'model-' || (i % 3),"
        "  'A ' || json_extract(:words, '$[' || (i % 40) || ']') || ' and a '"
        "   || json_extract(:words, '$[' || ((i / 40) % 40) || ']') || ', take ' || i,"
        '  \'{"images":[],"mode":null,"options":{}}\','
        "  1.7e9 + i, 1.7e9 + i + 40, CASE WHEN i > :jobs - 100 THEN NULL ELSE 1.7e9 + i + 40 END,"
        "  4.0, '[]', 0, 3, 1"
        " FROM n",
        {"jobs": jobs, "words": words},
    )
    conn.execute(
        "INSERT INTO transitions (job_id, from_status, to_status, source, at, detail)"
        " SELECT id, NULL, 'queued', 'api', created_at, NULL FROM jobs"
    )
    conn.execute(
        "INSERT INTO transitions (job_id, from_status, to_status, source, at, detail)"
        " SELECT id, 'queued', 'processing', 'callback', created_at + 8,"
        " '{\"provider_status\":\"processing\"}' FROM jobs WHERE status != 'queued'"
    )
    conn.execute(
        "INSERT INTO transitions (job_id, from_status, to_status, source, at, detail)"
        " SELECT id, 'processing', status, 'poll', finished_at, '{\"provider_status\":\"done\"}'"
        " FROM jobs WHERE finished_at IS NOT NULL"
    )
    newest = conn.execute("SELECT max(id) FROM jobs WHERE status = 'completed'").fetchone()[0]
    _dress(conn, newest)
    conn.execute("COMMIT")
    conn.close()
    return str(newest)


def _dress(conn: sqlite3.Connection, job_id: str) -> None:
    """Callbacks, deliveries with attempts and a kept file for one job's page."""
    at = conn.execute("SELECT created_at FROM jobs WHERE id = ?", (job_id,)).fetchone()[0]
    headers = json.dumps(
        {"content-type": "application/json", "x-vidu-signature": "t=1,v1=" + "ab" * 32}
    )
    body = json.dumps({"task_id": "task", "state": "success", "creations": [{"url": "x"}]})
    for n, state in enumerate(("processing", "success")):
        conn.execute(
            "INSERT INTO callbacks (job_id, provider, received_at, nonce, provider_status,"
            " headers, body, outcome) VALUES (?, 'p0', ?, ?, ?, ?, ?, 'applied')",
            (job_id, at + 8 + n * 30, f"nonce-{n}", state, headers, body),
        )
    transition = conn.execute(
        "SELECT id FROM transitions WHERE job_id = ? ORDER BY id DESC LIMIT 1", (job_id,)
    ).fetchone()[0]
    for channel in ("team", "ops"):
        cur = conn.execute(
            "INSERT INTO deliveries (job_id, transition_id, channel, event, status, attempts,"
            " next_attempt_at, created_at, updated_at, delivered_at, event_id)"
            " VALUES (?, ?, ?, 'completed', 'delivered', 3, ?, ?, ?, ?, ?)",
            (job_id, transition, channel, at + 40, at + 40, at + 50, at + 50, f"evt_{channel}"),
        )
        for n, outcome in enumerate(("retry", "retry", "delivered")):
            conn.execute(
                "INSERT INTO delivery_attempts (delivery_id, at, outcome, status_code, error,"
                " duration_ms) VALUES (?, ?, ?, ?, ?, 12.5)",
                (cur.lastrowid, at + 40 + n * 5, outcome, 200 if n == 2 else 503,
                 None if n == 2 else "HTTP 503 Service Unavailable"),
            )  # fmt: skip
    conn.execute(
        "INSERT INTO downloads (job_id, status, attempts, next_attempt_at, queued_at,"
        " updated_at, finished_at) VALUES (?, 'kept', 1, NULL, ?, ?, ?)",
        (job_id, at + 40, at + 42, at + 42),
    )
    conn.execute(
        "INSERT INTO media (job_id, kind, store, location, bytes, sha256, content_type,"
        " stored_at) VALUES (?, 'video', 'local', ?, 124400, ?, 'video/mp4', ?)",
        (job_id, f"{job_id}.mp4", "cd" * 32, at + 42),
    )


# -- the bare baseline ----------------------------------------------------------------------


def serve_bare(port: int, folder: Path) -> None:
    """The saved pages, each at its path and query, from a bare Starlette route served
    with vidhook's uvicorn settings."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import HTMLResponse, Response
    from starlette.routing import Route

    from receiver import logs
    from receiver.config import ServerConfig
    from receiver.server import serve, uvicorn_config

    saved = json.loads((folder / "pages.json").read_text())
    pages = {key: (folder / name).read_bytes() for key, name in saved.items()}

    async def page(request: Request) -> Response:
        key = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return HTMLResponse(pages[key])

    logs.configure("warning", "text")
    app = Starlette(routes=[Route("/{path:path}", page)])
    serve(uvicorn_config(app, ServerConfig(), host="127.0.0.1", port=port, log_level="warning"))


def start_bare(folder: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    command = [PYTHON, "-m", "bench.dashboard", "--serve-bare", str(port), str(folder)]
    log = open(folder / "bare.log", "ab")  # noqa: SIM115 - closed with the process
    process = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while True:
        try:
            httpx.get(url + "/ui/", timeout=0.5)
            return process, url
        except httpx.HTTPError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the bare server did not start; see bare.log") from None
            time.sleep(0.05)


# -- measuring ------------------------------------------------------------------------------


def timed(client: httpx.Client, path: str, count: int) -> list[float]:
    times = []
    for _ in range(count):
        started = time.perf_counter()
        response = client.get(path)
        response.read()
        times.append((time.perf_counter() - started) * 1000)
        if response.status_code != 200:
            raise RuntimeError(f"{path}: HTTP {response.status_code}")
    return times


def sign_in(url: str) -> httpx.Client:
    client = httpx.Client(base_url=url, timeout=30)
    response = client.post(
        "/ui/login",
        data={"token": ADMIN_TOKEN, "next": "/ui/"},
        headers={"Origin": url, "Sec-Fetch-Site": "same-origin"},
    )
    if response.status_code != 303:
        raise RuntimeError(f"signing in failed: HTTP {response.status_code}")
    return client


def measure_pages(args: argparse.Namespace, folder: Path) -> dict[str, float]:
    db = folder / "vidhook.db"
    started = time.perf_counter()
    job_id = make_database(db, args.jobs)
    size = db.stat().st_size / 1e6
    print(f"database: {args.jobs:,} jobs in {time.perf_counter() - started:.1f} s, {size:.0f} MB")
    tables = "".join(
        provider_toml(name, "http://127.0.0.1:9/unused", type="vidu") for name in PROVIDERS
    )
    pages = {
        "list": "/ui/",
        "list status": "/ui/?status=failed",
        "list provider": "/ui/?provider=p3",
        "list search": "/ui/?q=lantern",
        "job": f"/ui/jobs/{job_id}",
    }
    service = ServiceProcess(folder, tables=tables, log_level="warning")
    # The service opens the database made above: ServiceProcess names the same file.
    assert service.db_path == db
    started = time.perf_counter()
    service.start(timeout=120)
    print(f"vidhook serve ready in {time.perf_counter() - started:.1f} s")
    bare = None
    try:
        client = sign_in(service.url)
        saved = {}
        for n, (name, path) in enumerate(pages.items()):
            started = time.perf_counter()
            response = client.get(path)
            if name == "list":
                took = time.perf_counter() - started
                print(f"first view of the list, which counts the jobs: {took:.2f} s")
            if response.status_code != 200:
                raise RuntimeError(f"{path}: HTTP {response.status_code}")
            (folder / f"page{n}.html").write_bytes(response.content)
            saved[path] = f"page{n}.html"
        (folder / "pages.json").write_text(json.dumps(saved))
        bare, bare_url = start_bare(folder)
        bare_client = httpx.Client(base_url=bare_url, timeout=30, cookies=client.cookies)
        for path in pages.values():  # warm both
            timed(client, path, 20)
            timed(bare_client, path, 20)
        results: dict[str, tuple[list[float], list[float]]] = {p: ([], []) for p in pages}
        for round_number in range(args.rounds):
            for name in pages:
                path = pages[name]
                results[name][0].extend(timed(client, path, args.requests))
                results[name][1].extend(timed(bare_client, path, args.requests))
            print(f"round {round_number + 1}/{args.rounds} done")
        timings = [
            PageTiming(
                name,
                path,
                percentile(results[name][0], 50),
                percentile(results[name][0], 99),
                percentile(results[name][1], 50),
                percentile(results[name][1], 99),
            )
            for name, path in pages.items()
        ]
        print(f"\n{args.rounds} rounds of {args.requests} requests a page, one after another:")
        for timing in timings:
            print(timing.line())
        by_name = {t.name: t for t in timings}
        lists = ("list", "list status", "list provider")
        return {
            "list_p99_ms": max(by_name[name].vidhook_p99 for name in lists),
            "job_p99_ms": by_name["job"].vidhook_p99,
        }
    finally:
        if bare is not None:
            bare.terminate()
            bare.wait(timeout=20)
        service.stop()

"""Keeping results: vidhook's archiver against a plain httpx download of the same files.

A run:

- The fake providers' file serving (receiver.sandbox.media: a real MP4 padded to
  ``--size`` bytes) runs in a process of its own, at full speed, so that neither side
  shares a GIL with the server.
- vidhook runs as ``vidhook serve`` with ``[archive] allow_private_hosts = true`` (the
  sandbox is on loopback) and ``concurrency`` downloads at once. ``--files`` completed kvid
  jobs, each with its own result URL, are written into its database before it starts,
  with their downloads not queued yet.
- The baseline: this process downloads the same URLs with one httpx.AsyncClient,
  ``concurrency`` at once, streaming each to a file (what a careful script would do:
  ``aiter_bytes`` into ``write``), in the same run, right before vidhook's turn.
- vidhook's turn starts with ``POST /api/archive/backfill``, which queues every download
  at once, and ends when all are kept: each file streamed, hashed, checked, flushed to
  disk, moved into place and recorded.
- Peak RSS growth: vidhook's peak resident memory (VmHWM, reset at the start of its turn
  where the kernel allows it) less its resident memory then.

The last line: ``RESULT archive_mb_s=<n> baseline_mb_s=<n> ratio=<n> rss_growth_mb=<n>``,
MB being 10^6 bytes. With ``--rounds`` above 1 the ratio is the median round's.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench.common import (
    ADMIN_TOKEN,
    PYTHON,
    REPO,
    ServiceProcess,
    cpu_seconds,
    free_port,
    provider_toml,
    rss_mb,
    wait_http,
)
from receiver.providers.base import Observation
from receiver.runtime import new_job_id
from receiver.states import Status
from receiver.store import NewJob, migrate
from receiver.store import jobs as job_rows
from receiver.store.db import run_sync
from receiver.store.writer import SqliteDb, connect

# The sandbox's file serving alone, in its own process: any name ending .mp4 is the video.
SERVER = """
import sys, uvicorn
from starlette.applications import Starlette
from starlette.routing import Route
from receiver.sandbox.media import FileSettings, file_response, sample_video
settings = FileSettings(video_bytes=int(sys.argv[2]))
sample_video(settings.video_bytes)  # made before the first request
async def serve(request):
    return file_response("mp4", settings)
app = Starlette(routes=[Route("/files/{name}", serve)])
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False)
"""


def start_file_server(size: int) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen([PYTHON, "-c", SERVER, str(port), str(size)], cwd=REPO)
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/files/probe.mp4", timeout=60, proc=proc)
    return proc, url


def completed_jobs(service: ServiceProcess, files_url: str, count: int) -> list[str]:
    """Completed kvid jobs written straight into the database, their downloads not queued."""
    config = service.config()
    migrate(config.database)
    conn = connect(config.database)
    urls = []
    try:
        conn.execute("BEGIN IMMEDIATE")
        db = SqliteDb(conn)
        now = time.time()
        for i in range(count):
            job_id = new_job_id()
            new = NewJob(job_id, "kvid", "v2", f"bench {i}", {}, None, None, None, None)
            run_sync(job_rows.insert_job(db, new, now=now, route=config.channels_for))
            url = f"{files_url}/files/{job_id}.mp4"
            done = Observation(Status.COMPLETED, "completed", result_url=url)
            run_sync(job_rows.apply(db, job_id, done, "poll", now=now, route=config.channels_for))
            urls.append(url)
        conn.execute("DELETE FROM downloads")  # queued at the measured start instead
        conn.execute("COMMIT")
    finally:
        conn.close()
    return urls


async def baseline(urls: list[str], folder: Path, concurrency: int) -> float:
    """Seconds for httpx to stream every URL to a file, ``concurrency`` at a time."""
    folder.mkdir(parents=True, exist_ok=True)
    slots = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(timeout=60) as client:

        async def one(i: int, url: str) -> None:
            async with slots, client.stream("GET", url) as response:
                response.raise_for_status()
                with open(folder / f"{i}.mp4", "wb") as out:
                    async for chunk in response.aiter_bytes():
                        out.write(chunk)

        started = time.perf_counter()
        cpu = _own_cpu()
        await asyncio.gather(*(one(i, url) for i, url in enumerate(urls)))
        elapsed = time.perf_counter() - started
        print(f"  baseline: {_own_cpu() - cpu:.2f} s of CPU", flush=True)
        return elapsed


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def reset_peak(pid: int) -> bool:
    """Start VmHWM afresh from the current RSS (Linux's clear_refs "5"); False if refused."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def archive_turn(service: ServiceProcess, count: int, timeout: float) -> tuple[float, float]:
    """Seconds for vidhook to keep every queued result, and its peak RSS growth in MiB."""
    assert service.pid is not None
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    with httpx.Client(base_url=service.url, headers=headers, timeout=30) as api:
        reset_peak(service.pid)
        before = rss_mb(service.pid)
        cpu = cpu_seconds(service.pid)[1]
        started = time.perf_counter()
        queued = api.post("/api/archive/backfill").json()["queued"]
        assert queued == count, f"queued {queued} downloads, expected {count}"
        deadline = time.monotonic() + timeout
        while True:
            downloads = api.get("/api/archive").json()["downloads"]
            if downloads.get("kept", 0) >= count:
                break
            if downloads.get("failed") or downloads.get("expired"):
                raise RuntimeError(f"downloads did not all succeed: {downloads}\n{service.log()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"not all kept within {timeout} s: {downloads}")
            time.sleep(0.1)  # each look is a request vidhook serves, at some CPU cost
        elapsed = time.perf_counter() - started
        growth = rss_mb(service.pid, peak=True) - before
        used = cpu_seconds(service.pid)[1] - cpu
        print(f"  vidhook: {used:.2f} s of CPU (all threads)", flush=True)
    return elapsed, growth


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=20)
    parser.add_argument("--size", type=int, default=50_000_000, help="bytes per file")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=240.0)
    args = parser.parse_args()
    total_mb = args.files * args.size / 1e6
    server, files_url = start_file_server(args.size)
    results: list[tuple[float, float, float]] = []
    try:
        for round_ in range(1, args.rounds + 1):
            folder = Path(tempfile.mkdtemp(prefix="vidhook-bench-archive-"))
            try:
                tables = provider_toml("kvid", f"{files_url}/kvid")
                tables += (
                    f"\n[archive]\nallow_private_hosts = true\nconcurrency = {args.concurrency}\n"
                )
                with ServiceProcess(folder / "vidhook", tables=tables) as service:
                    urls = completed_jobs(service, files_url, args.files)
                    service.start()
                    plain = asyncio.run(baseline(urls, folder / "baseline", args.concurrency))
                    shutil.rmtree(folder / "baseline")
                    kept, growth = archive_turn(service, args.files, args.timeout)
                    service.stop()
                baseline_mb_s, archive_mb_s = total_mb / plain, total_mb / kept
                results.append((archive_mb_s, baseline_mb_s, growth))
                print(
                    f"round {round_}: {args.files} x {args.size / 1e6:g} MB; baseline "
                    f"{plain:.2f} s ({baseline_mb_s:.0f} MB/s), vidhook {kept:.2f} s "
                    f"({archive_mb_s:.0f} MB/s), ratio {archive_mb_s / baseline_mb_s:.2f}, "
                    f"peak RSS growth {growth:.1f} MiB",
                    flush=True,
                )
            finally:
                shutil.rmtree(folder, ignore_errors=True)
    finally:
        server.terminate()
        server.wait(timeout=10)
    ratios = [a / b for a, b, _ in results]
    middle = results[ratios.index(statistics.median_low(ratios))]
    archive_mb_s, baseline_mb_s, _ = middle
    growth = max(g for _, _, g in results)
    print(
        f"RESULT archive_mb_s={archive_mb_s:.1f} baseline_mb_s={baseline_mb_s:.1f} "
        f"ratio={archive_mb_s / baseline_mb_s:.2f} rss_growth_mb={growth:.1f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

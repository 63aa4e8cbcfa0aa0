"""Attacks without credentials against a running vidhook, with real callbacks beside them.

    .venv/bin/python -m bench.attack                      # the slow-body attack (default)
    .venv/bin/python -m bench.attack --mode headers       # CPU of oversized request heads
    .venv/bin/python -m bench.attack --mode idle --nofile 1024   # heads that never come

Everything runs on 127.0.0.1: ``vidhook serve`` as a subprocess with its defaults (one
Vidu provider, jobs pre-created in its database), the attacker in a subprocess of its own
(``--attacker``, on uvloop when installed) so that its work does not slow the legitimate
sender, and the legitimate sender here: signed Vidu ``processing`` callbacks to real jobs,
each on a new connection as providers send them, paced at ``--legit-rate`` a second.
A legitimate callback that fails or is refused counts as late as ``--legit-timeout``.

Modes:

``body``: ``--connections`` connections (1,000) each send a chunked body of ``--body-mib``
  MiB to a random callback token, slowly (``--body-seconds`` for the whole body); when
  the server closes one, it is opened again after ``--reconnect-delay`` seconds, so the
  pressure holds for ``--duration`` seconds. vidhook's resident memory is sampled during
  the attack; the growth is its peak (the larger of the sampled maximum and the kernel's
  high-water mark) minus its RSS just before. Last line:
  ``RESULT attack_rss_growth_mb=<n> legit_p99_ms=<n>``.
``headers``: requests with a normal head, one 100 KB header, and 10,000 small headers,
  each sent in one write on a new connection, one at a time; vidhook's CPU time per
  request of each kind and the status it answered. Last line:
  ``RESULT normal_cpu_us=<n> big_header_cpu_us=<n> many_headers_cpu_us=<n>``.
``idle``: ``--connections`` connections that send half a request head and then nothing
  (each opened again ``--reconnect-delay`` seconds after the server closes it), with
  legitimate callbacks beside them; how many the server closed, the log it wrote, and
  how the callbacks fared. ``--nofile`` runs vidhook with that limit on
  open files (systemd's default is 1,024). Last line:
  ``RESULT idle_closed=<n> legit_ok=<n> legit_p99_ms=<n> log_kib=<n>``.

``--code DIR`` runs the vidhook found in DIR (a checkout of another commit, with its own
venv in DIR/.venv if there is one) instead of this one: before and after in one script.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import resource
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench.callbacks import callback_body, vidu_table
from bench.common import (
    API_KEY,
    PYTHON,
    REPO,
    BenchJob,
    ServiceProcess,
    cpu_seconds,
    machine,
    percentile,
    precreate_jobs,
    rss_mb,
    sandbox,
)
from receiver.sandbox import ViduSandboxSettings
from signing import vidu as vidu_signing

# -- the attacker (a subprocess) ------------------------------------------------------------


def head_for(token: str, port: int) -> bytes:
    return (
        f"POST /callbacks/vidu/{token} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    ).encode()


async def slow_body_slot(
    port: int, args: argparse.Namespace, stop: asyncio.Event, tally: Counter[str]
) -> None:
    chunk_count = max(1, round(args.body_mib * 1024 / args.chunk_kib))
    chunk = b"a" * (args.chunk_kib * 1024)
    framed = b"%x\r\n" % len(chunk) + chunk + b"\r\n"
    interval = args.body_seconds / chunk_count
    while not stop.is_set():
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            tally["connect_errors"] += 1
            await asyncio.sleep(args.reconnect_delay)
            continue
        tally["connections"] += 1
        answer = asyncio.ensure_future(reader.read(1024))
        try:
            writer.write(head_for(secrets.token_urlsafe(24), port))
            for _ in range(chunk_count):
                if answer.done() or stop.is_set():
                    break
                writer.write(framed)
                tally["bytes_sent"] += len(framed)
                # Waits out the pacing interval, or less if the server answers meanwhile.
                await asyncio.wait([answer], timeout=interval)
            else:
                writer.write(b"0\r\n\r\n")
            done, _ = await asyncio.wait([answer], timeout=None if not stop.is_set() else 0.1)
            first = answer.result() if done else b""
            status = first.split(b" ", 2)[1].decode() if first.startswith(b"HTTP/") else "none"
            tally[f"status_{status}"] += 1
        except (OSError, IndexError):
            tally["dropped"] += 1
        finally:
            answer.cancel()
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        await asyncio.sleep(args.reconnect_delay)


async def idle_slot(
    port: int, args: argparse.Namespace, stop: asyncio.Event, tally: Counter[str]
) -> None:
    """Half a request head, then nothing; opened again when the server closes it."""
    while not stop.is_set():
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            tally["connect_errors"] += 1
            await asyncio.sleep(args.reconnect_delay)
            continue
        tally["connections"] += 1
        writer.write(b"POST /callbacks/vidu/x HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        closed = asyncio.ensure_future(reader.read(1024))
        stopping = asyncio.ensure_future(stop.wait())
        await asyncio.wait([closed, stopping], return_when=asyncio.FIRST_COMPLETED)
        if closed.done() and not closed.cancelled() and closed.exception() is None:
            tally["closed_by_server"] += 1
        closed.cancel()
        stopping.cancel()
        writer.close()
        await asyncio.sleep(args.reconnect_delay)


async def attack(port: int, args: argparse.Namespace) -> Counter[str]:
    tally: Counter[str] = Counter()
    stop = asyncio.Event()
    slots = []
    for _ in range(args.connections):
        if args.mode == "idle":
            slots.append(asyncio.ensure_future(idle_slot(port, args, stop, tally)))
        else:
            slots.append(asyncio.ensure_future(slow_body_slot(port, args, stop, tally)))
        await asyncio.sleep(args.ramp / args.connections)  # not all in one accept burst
    await asyncio.sleep(max(0.0, args.duration - args.ramp))
    stop.set()
    await asyncio.wait(slots, timeout=5)
    return tally


def run_attacker(port: int, args: argparse.Namespace) -> int:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        import uvloop

        tally = uvloop.run(attack(port, args))
    except ImportError:
        tally = asyncio.run(attack(port, args))
    print("ATTACKER " + json.dumps(dict(tally)), flush=True)
    return 0


# -- the legitimate sender ------------------------------------------------------------------


@dataclass
class Legit:
    """Signed callbacks to real jobs, paced, each on a new connection."""

    url: str
    jobs: list[BenchJob]
    vidu_url: str
    timeout: float
    latencies: list[float] = field(default_factory=list)
    # One client for every thread, keeping no connection: a new one per callback.
    client: httpx.Client = field(
        default_factory=lambda: httpx.Client(limits=httpx.Limits(max_keepalive_connections=0))
    )
    statuses: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def send_one(self, job: BenchJob) -> None:
        assert job.callback_url is not None
        headers = vidu_signing.sign(API_KEY, "POST", job.callback_url)
        headers["Content-Type"] = "application/json"
        body = callback_body(job, "processing", self.vidu_url)
        path = "/" + job.callback_url.split("/", 3)[3]
        began = time.perf_counter()
        try:
            answer = self.client.post(
                self.url + path, headers=headers, content=body, timeout=self.timeout
            )
            status = str(answer.status_code)
        except httpx.HTTPError as exc:
            status = exc.__class__.__name__
        took = time.perf_counter() - began
        with self.lock:
            self.statuses[status] += 1
            # A failure counts as late as the wait a provider would give it.
            self.latencies.append(took if status == "200" else max(took, self.timeout))

    def run(self, rate: float, seconds: float) -> None:
        count = min(len(self.jobs), max(1, round(rate * seconds)))
        start = time.monotonic()
        with ThreadPoolExecutor(32) as pool:
            for i, job in enumerate(self.jobs[:count]):
                delay = start + i / rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                pool.submit(self.send_one, job)

    def summary(self) -> str:
        ok = self.statuses.get("200", 0)
        p50 = percentile(self.latencies, 50) * 1000
        p99 = percentile(self.latencies, 99) * 1000
        statuses = ", ".join(f"{k} {v}" for k, v in sorted(self.statuses.items()))
        return (
            f"legitimate callbacks: {ok} of {len(self.latencies)} answered 200 ({statuses});"
            f" latency p50 {p50:.1f} ms, p99 {p99:.1f} ms"
        )


# -- the run --------------------------------------------------------------------------------


class Target(ServiceProcess):
    """vidhook serve, from another checkout when ``code`` is given, under ``nofile``."""

    def __init__(self, folder: Path, tables: str, code: Path | None, nofile: int | None) -> None:
        super().__init__(folder, tables=tables, log_level="info")
        self.code = code
        self.nofile = nofile

    def start(self, timeout: float = 30.0) -> None:
        python = PYTHON
        if self.code is not None:
            beside = self.code / ".venv" / "bin" / "python"
            python = str(beside) if beside.exists() else PYTHON
        command = [python, "-m", "receiver", "serve", "--config", str(self.config_path)]
        command += ["--log-level", self.log_level]
        limit = self.nofile

        def lower_limit() -> None:
            if limit is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                command,
                cwd=self.code or REPO,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=lower_limit,
            )
        from bench.common import wait_http

        wait_http(f"{self.url}/readyz", timeout, self.proc)


def start_attacker(port: int, args: argparse.Namespace) -> subprocess.Popen[str]:
    command = [PYTHON, "-m", "bench.attack", "--attacker", str(port), "--mode", args.mode]
    for option in ("connections", "duration", "ramp", "body_mib", "body_seconds", "chunk_kib"):
        command += [f"--{option.replace('_', '-')}", str(getattr(args, option))]
    command += ["--reconnect-delay", str(args.reconnect_delay)]
    return subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, text=True)


def attacker_tally(proc: subprocess.Popen[str]) -> dict[str, int]:
    out, _ = proc.communicate(timeout=120)
    line = next((x for x in out.splitlines() if x.startswith("ATTACKER ")), None)
    if line is None:
        raise RuntimeError(f"the attacker printed no tally:\n{out}")
    tally: dict[str, int] = json.loads(line.split(" ", 1)[1])
    return tally


def sample_rss(pid: int, stop: threading.Event, peak: list[float]) -> None:
    while not stop.wait(0.05):
        with contextlib.suppress(OSError, RuntimeError):
            peak[0] = max(peak[0], rss_mb(pid))


def with_legit(
    service: Target, jobs: list[BenchJob], vidu_url: str, args: argparse.Namespace
) -> Legit:
    legit = Legit(service.url, jobs, vidu_url, args.legit_timeout)
    legit.run(args.legit_rate, args.duration)
    return legit


def run_body(service: Target, jobs: list[BenchJob], vidu_url: str, args: argparse.Namespace) -> str:
    assert service.pid is not None
    time.sleep(1.0)
    before = rss_mb(service.pid)
    peak = [before]
    stop = threading.Event()
    sampler = threading.Thread(target=sample_rss, args=(service.pid, stop, peak), daemon=True)
    sampler.start()
    attacker = start_attacker(service.port, args)
    time.sleep(args.ramp)
    legit = with_legit(service, jobs, vidu_url, args)
    tally = attacker_tally(attacker)
    stop.set()
    sampler.join()
    high_water = rss_mb(service.pid, peak=True)
    growth = max(peak[0], high_water) - before
    print(f"attacker: {json.dumps(tally)}")
    print(legit.summary())
    print(
        f"vidhook RSS: {before:.1f} MiB before, sampled peak {peak[0]:.1f} MiB,"
        f" high-water mark {high_water:.1f} MiB"
    )
    p99 = percentile(legit.latencies, 99) * 1000
    return f"RESULT attack_rss_growth_mb={growth:.1f} legit_p99_ms={p99:.1f}"


def raw_request(port: int, payload: bytes, timeout: float = 10.0) -> str:
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(payload)
        answer = b""
        with contextlib.suppress(OSError):
            while b"\r\n" not in answer:
                got = sock.recv(4096)
                if not got:
                    break
                answer += got
    return answer.split(b" ", 2)[1].decode() if answer.startswith(b"HTTP/") else "none"


def run_headers(service: Target, args: argparse.Namespace) -> str:
    assert service.pid is not None
    port = service.port
    line = f"POST /callbacks/vidu/{secrets.token_urlsafe(24)} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    tail = "Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
    kinds = {
        "normal": line + tail,
        "big_header": line + "X-Big: " + "b" * 100_000 + "\r\n" + tail,
        "many_headers": line + "".join(f"X-H{i}: v\r\n" for i in range(10_000)) + tail,
    }
    costs: dict[str, float] = {}
    for name, text in kinds.items():
        payload = text.encode()
        statuses: Counter[str] = Counter()
        for _ in range(5):  # warm-up
            raw_request(port, payload)
        began = cpu_seconds(service.pid)[1]
        for _ in range(args.requests):
            statuses[raw_request(port, payload)] += 1
        costs[name] = (cpu_seconds(service.pid)[1] - began) / args.requests * 1e6
        print(
            f"{name}: {len(payload)} bytes a request; vidhook CPU {costs[name]:.0f} us a request;"
            f" answers {dict(statuses)}"
        )
    return (
        f"RESULT normal_cpu_us={costs['normal']:.0f} big_header_cpu_us={costs['big_header']:.0f}"
        f" many_headers_cpu_us={costs['many_headers']:.0f}"
    )


def run_idle(service: Target, jobs: list[BenchJob], vidu_url: str, args: argparse.Namespace) -> str:
    log_before = service.log_path.stat().st_size
    attacker = start_attacker(service.port, args)
    time.sleep(args.ramp)
    legit = with_legit(service, jobs, vidu_url, args)
    tally = attacker_tally(attacker)
    log_kib = (service.log_path.stat().st_size - log_before) / 1024
    print(f"attacker: {json.dumps(tally)}")
    print(legit.summary())
    print(f"vidhook wrote {log_kib:.0f} KiB of log during the attack")
    p99 = percentile(legit.latencies, 99) * 1000
    return (
        f"RESULT idle_closed={tally.get('closed_by_server', 0)} legit_ok={legit.statuses['200']}"
        f" legit_p99_ms={p99:.1f} log_kib={log_kib:.0f}"
    )


def run(args: argparse.Namespace, folder: Path) -> int:
    print(machine())
    with sandbox(ViduSandboxSettings(status_outage=True)) as fakes:
        tables = vidu_table(fakes.url)
        service = Target(folder / "vidhook", tables, args.code, args.nofile)
        needed = round(args.legit_rate * args.duration) + 20
        jobs = precreate_jobs(service.config(), "vidu", needed)
        vidu_url = f"{fakes.url}/vidu"
        with service:
            service.start()
            warm = Legit(service.url, jobs[-20:], vidu_url, args.legit_timeout)
            for job in warm.jobs:
                warm.send_one(job)
            if args.mode == "body":
                result = run_body(service, jobs[:-20], vidu_url, args)
            elif args.mode == "headers":
                result = run_headers(service, args)
            else:
                result = run_idle(service, jobs[:-20], vidu_url, args)
            code = service.stop()
            print(f"vidhook exited with {code} after SIGTERM")
    print(result)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Attacks without credentials, measured.")
    parser.add_argument("--mode", choices=["body", "headers", "idle"], default="body")
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of attack")
    parser.add_argument("--ramp", type=float, default=3.0, help="seconds to open the connections")
    parser.add_argument("--body-mib", type=float, default=1.0)
    parser.add_argument("--body-seconds", type=float, default=20.0, help="to send one body")
    parser.add_argument("--chunk-kib", type=int, default=16)
    parser.add_argument("--reconnect-delay", type=float, default=1.0)
    parser.add_argument("--legit-rate", type=float, default=20.0, help="callbacks a second")
    parser.add_argument("--legit-timeout", type=float, default=10.0)
    parser.add_argument("--requests", type=int, default=200, help="per kind, --mode headers")
    parser.add_argument("--nofile", type=int, help="vidhook's limit on open files")
    parser.add_argument("--code", type=Path, help="run the vidhook in this checkout")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument("--attacker", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.attacker:
        return run_attacker(args.attacker, args)
    random.seed()
    folder = Path(tempfile.mkdtemp(prefix="vidhook-attack-"))
    try:
        return run(args, folder)
    finally:
        if args.keep:
            print(f"kept {folder}")
        else:
            import shutil

            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

"""Helpers shared by the benchmarks in bench/.

Run a benchmark from the repository root with the project's venv, as a module, so that
``bench.common`` imports: ``.venv/bin/python -m bench.callbacks``. Everything listens on
127.0.0.1 only.

API (kept small on purpose):

``REPO``, ``PYTHON``
    The repository root and the interpreter running the benchmark (the venv's).
``API_KEY_ENV``, ``API_KEY``, ``ADMIN_TOKEN``, ``ENV``
    ``api_key_env`` to use in provider tables and the key it names (what the service
    signs and checks Vidu callbacks with), the admin API's bearer token, and the
    variables a ServiceProcess gets on top of os.environ (those two).
``free_port() -> int``
    A free TCP port on 127.0.0.1 (bind to port 0, read it, close).
``wait_http(url, timeout=15.0, proc=None) -> None``
    Poll ``url`` until it answers 200; raise RuntimeError on timeout or if ``proc``
    (a Popen) exited meanwhile.
``percentile(values, pct) -> float``
    Linear interpolation between closest ranks (numpy's default); ``pct`` in 0..100.
``rss_mb(pid, peak=False) -> float``
    Resident memory of a process in MiB from /proc/<pid>/status: VmRSS now, or VmHWM
    (the peak so far) with ``peak=True``. Read it before the process exits.
``cpu_seconds(pid) -> tuple[float, float]``
    CPU time (user + system) a process has used so far, from /proc: (its main thread,
    all its threads). Take the difference over a run; the kernel counts in 10 ms ticks.
``machine() -> str``
    One line for bench/README.md: CPU model, cores, memory, kernel, Python, SQLite.
``sandbox(vidu=None, **fakes)``
    Context manager: the fake providers (receiver.sandbox.create_sandbox_app) served by a
    ServerThread in this process. Yields a ``Sandbox`` with ``.url`` (a provider's
    base_url is ``f"{url}/{name}"``), ``.app`` and ``.fake(name)`` (app.state.<name>:
    ViduSandbox or FakeProvider, with their recorded requests). ``vidu`` is a
    ViduSandboxSettings; ``fakes`` are create_sandbox_app's keyword arguments
    (kvid=FakeSettings(...), ...). Default settings accept any API key.
``provider_toml(name, base_url, **settings) -> str``
    A ``[providers.<name>]`` table using API_KEY_ENV; settings are TOML scalars
    (``type="newapi"``, ``poll_interval=0.5``, ``max_concurrency=64``, ...).
``ServiceProcess(folder, tables="", top="", log_level="warning", serve_args=())``
    ``vidhook serve`` as a subprocess on its own config, database and log in ``folder``
    (``vidhook.toml``, ``vidhook.db``, ``vidhook.log``). ``tables`` is TOML appended after
    the generated ``public_url``/``database``/``[server]`` part (provider and channel
    tables: use provider_toml); ``top`` is top-level TOML put before any table
    (``default_channels = [...]``); ``serve_args`` go on the command line after the
    config (``["--http-stack", "h11"]``). Attributes: ``url``, ``port``, ``db_path``,
    ``config_path``, ``log_path``, ``pid`` (None before start). Methods: ``config()``
    (the parsed receiver Config, exactly as the service reads it), ``start(timeout)``
    (waits for /readyz), ``stop()`` (SIGTERM, returns the exit code), ``kill()``
    (SIGKILL), ``log()``, ``rows(sql, *params)`` (a fresh read-only connection; rows as
    sqlite3.Row). Also a context manager that kills the process on exit.
``precreate_jobs(config, provider, count, next_poll_at=None) -> list[BenchJob]``
    Insert ``count`` submitted jobs straight into the database through the store's own
    functions (receiver.store.jobs.insert_job and record_submission, one transaction,
    migrations applied first), with callback tokens and URLs made as the service makes
    them when the provider takes callbacks. ``next_poll_at`` is None (the provider's
    first_poll_delay from now, as after a real submission), a number (the same time for
    every job) or a function of the job's index. Works while the service runs, too.
``BenchJob``: ``id``, ``provider_job_id``, ``callback_token``, ``callback_url``.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from receiver.config import Config, load_config
from receiver.poller import first_poll_delay
from receiver.providers import ADAPTERS
from receiver.providers.base import Observation, Submission
from receiver.runtime import new_callback_token, new_job_id
from receiver.sandbox import ServerThread, ViduSandboxSettings, create_sandbox_app
from receiver.states import Status
from receiver.store import NewJob, jobs, migrate, postgres
from receiver.store.db import Db, run_sync
from receiver.store.postgres import PgSyncDb
from receiver.store.writer import SqliteDb, connect
from tests.deploy.test_deploy_files import newest_caddy

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
API_KEY_ENV = "BENCH_API_KEY"
API_KEY = "bench-api-key-0123456789abcdef"
ADMIN_TOKEN = "bench-admin-token-0123456789"
ENV = {API_KEY_ENV: API_KEY, "VIDHOOK_ADMIN_TOKEN": ADMIN_TOKEN}
# Variables that would override the generated config file.
_OVERRIDES = ("VIDHOOK_CONFIG", "VIDHOOK_PUBLIC_URL", "VIDHOOK_DATABASE", "VIDHOOK_URL")
DATABASE_URL_ENV = "VIDHOOK_BENCH_DATABASE_URL"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_http(url: str, timeout: float = 15.0, proc: subprocess.Popen[Any] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode} before {url} answered")
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not answer 200 within {timeout} s")
        time.sleep(0.05)


def percentile(values: Sequence[float], pct: float) -> float:
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * pct / 100.0
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def rss_mb(pid: int, peak: bool = False) -> float:
    field = "VmHWM:" if peak else "VmRSS:"
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1]) / 1024.0  # the kernel reports kB
    raise RuntimeError(f"no {field} in /proc/{pid}/status")


def cpu_seconds(pid: int) -> tuple[float, float]:
    tick = os.sysconf("SC_CLK_TCK")

    def used(stat: Path) -> float:
        # The name field may hold spaces; the counters follow its closing parenthesis.
        fields = stat.read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / tick  # utime, stime

    # /proc/<pid>/stat counts every thread, ended ones too; task/<pid> is the main one.
    return used(Path(f"/proc/{pid}/task/{pid}/stat")), used(Path(f"/proc/{pid}/stat"))


def tree_cpu_seconds(pid: int) -> float:
    """CPU time of ``pid`` and of its children, those that ended and were waited for
    included: a PostgreSQL server's postmaster and its backends."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if stat.parent.name == str(pid):
                total += sum(int(f) for f in fields[11:15]) / tick  # with cutime, cstime
            elif fields[1] == str(pid):  # ppid
                total += (int(fields[11]) + int(fields[12])) / tick
    return total


def machine() -> str:
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (
        f"{model}, {os.cpu_count()} cores, {mem_gib:.0f} GiB, Linux {platform.release()}, "
        f"Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}"
    )


@dataclass
class Sandbox:
    url: str
    app: Any

    def fake(self, name: str) -> Any:
        return getattr(self.app.state, name)


@contextlib.contextmanager
def sandbox(vidu: ViduSandboxSettings | None = None, **fakes: Any) -> Iterator[Sandbox]:
    app = create_sandbox_app(vidu, **fakes)
    with ServerThread(app) as server:
        yield Sandbox(server.url, app)


def _toml_value(value: Any) -> str:
    if isinstance(value, Path):
        value = str(value)
    # JSON strings, numbers, booleans and lists of them are valid TOML as they are.
    return json.dumps(value)


def provider_toml(name: str, base_url: str, **settings: Any) -> str:
    lines = [f"[providers.{name}]", f"base_url = {_toml_value(base_url)}"]
    lines.append(f"api_key_env = {_toml_value(API_KEY_ENV)}")
    lines += [f"{key} = {_toml_value(value)}" for key, value in settings.items()]
    return "\n".join(lines) + "\n\n"


class ServiceProcess:
    def __init__(
        self,
        folder: Path,
        tables: str = "",
        top: str = "",
        log_level: str = "warning",
        serve_args: Sequence[str] = (),
        database_url: str | None = None,
        public_url: str | None = None,
    ) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.serve_args = list(serve_args)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # PostgreSQL instead of the file, and the address callbacks come to (a balancer's).
        self.database_url = database_url
        if database_url is not None:
            top = f'database_url_env = "{DATABASE_URL_ENV}"\n{top}'
            tables += '[archive]\nstore = "off"\n\n'
        self.db_path = folder / "vidhook.db"
        self.config_path = folder / "vidhook.toml"
        self.log_path = folder / "vidhook.log"
        self.log_level = log_level
        self.config_path.write_text(
            f"public_url = {_toml_value(public_url or self.url)}\n"
            f"database = {_toml_value(self.db_path)}\n"
            'admin_token_env = "VIDHOOK_ADMIN_TOKEN"\n'
            f'{top}\n\n[server]\nhost = "127.0.0.1"\nport = {self.port}\n\n{tables}',
            encoding="utf-8",
        )
        self.env = {k: v for k, v in os.environ.items() if k not in _OVERRIDES} | ENV
        if database_url is not None:
            self.env[DATABASE_URL_ENV] = database_url
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    def config(self) -> Config:
        return load_config(self.config_path, self.env)

    def start(self, timeout: float = 30.0) -> None:
        command = [PYTHON, "-m", "receiver", "serve", "--config", str(self.config_path)]
        command += ["--log-level", self.log_level, *self.serve_args]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                command, cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT
            )
        try:
            wait_http(f"{self.url}/readyz", timeout, self.proc)
        except RuntimeError as exc:
            self.kill()
            raise RuntimeError(f"{exc}\n--- vidhook log ---\n{self.log()}") from None

    def stop(self, timeout: float = 30.0) -> int:
        assert self.proc is not None, "not started"
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def rows(self, sql: str, *params: Any) -> list[Any]:
        if self.database_url is not None:
            with postgres.connect(self.database_url) as pg:
                return pg.execute(postgres.translate(sql), params).fetchall()
        conn = sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True, timeout=30)
        conn.row_factory = sqlite3.Row
        try:
            return conn.execute(sql, params).fetchall()
        finally:
            conn.close()

    def __enter__(self) -> ServiceProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()


@dataclass(frozen=True)
class BenchJob:
    id: str
    provider_job_id: str
    callback_token: str | None
    callback_url: str | None


def precreate_jobs(
    config: Config,
    provider: str,
    count: int,
    next_poll_at: float | Callable[[int], float] | None = None,
) -> list[BenchJob]:
    if config.database_url is not None:
        # The store's own operations on PostgreSQL, on a plain connection (db.run_sync).
        with postgres.connect(config.database_url.reveal()) as pg, pg.transaction():
            return _create(config, PgSyncDb(pg), provider, count, next_poll_at)
    migrate(config.database)
    conn = connect(config.database)
    try:
        conn.execute("BEGIN IMMEDIATE")
        created = _create(config, SqliteDb(conn), provider, count, next_poll_at)
        conn.execute("COMMIT")
    finally:
        conn.close()
    return created


def _create(
    config: Config,
    db: Db,
    provider: str,
    count: int,
    next_poll_at: float | Callable[[int], float] | None,
) -> list[BenchJob]:
    settings = config.providers[provider]
    takes_callbacks = ADAPTERS[settings.type].supports_callbacks
    fingerprint = settings.api_key.fingerprint
    now = time.time()
    created: list[BenchJob] = []
    for i in range(count):
        token = new_callback_token() if takes_callbacks else None
        url = config.callback_url(provider, token) if token else None
        job = BenchJob(new_job_id(), f"bench-{i}-{os.urandom(4).hex()}", token, url)
        new = NewJob(
            id=job.id,
            provider=provider,
            model=settings.default_model,
            prompt=f"bench job {i}",
            request={"images": [], "mode": None, "options": {}},
            callback_token=token,
            callback_url=url,
            key_fingerprint=fingerprint,
            notify=None,
            deadline_at=now + settings.deadline,
        )
        run_sync(jobs.insert_job(db, new, now=now, route=config.channels_for))
        if next_poll_at is None:
            poll_at = now + first_poll_delay(settings, takes_callbacks)
        elif callable(next_poll_at):
            poll_at = next_poll_at(i)
        else:
            poll_at = next_poll_at
        observed = Observation(status=Status.QUEUED, provider_status="created")
        submission = Submission(job.provider_job_id, observed, fingerprint)
        run_sync(
            jobs.record_submission(
                db, job.id, submission, next_poll_at=poll_at, now=now, route=config.channels_for
            )
        )
        created.append(job)
    return created


def start_py_spy(pid: int, output: str) -> subprocess.Popen[bytes]:
    """py-spy recording ``pid`` into ``output`` (.svg flame graph, .json speedscope, .txt
    collapsed stacks) until it gets SIGINT. Every thread apart (--threads), and only the
    one holding the GIL (--gil), so that the samples are CPU spent in Python.

    py-spy is not a dependency: ``pip install py-spy`` into the venv, or have it on PATH.
    """
    beside = Path(PYTHON).with_name("py-spy")
    program = str(beside) if beside.exists() else "py-spy"
    formats = {".json": "speedscope", ".txt": "raw"}
    command = [program, "record", "--pid", str(pid), "--output", output, "--rate", "200"]
    command += ["--threads", "--gil", "--format", formats.get(Path(output).suffix, "flamegraph")]
    spy = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)  # attached before the load starts
    return spy


class SideProcess:
    """A helper server of a benchmark (fake providers, sinks) in a process of its own, so
    that its timestamps do not wait on the load generator; started with ``command``
    (which must serve ``/_bench/count`` on ``self.port``) and asked over HTTP."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.http = httpx.Client(base_url=self.url, timeout=60)

    def command(self) -> list[str]:
        raise NotImplementedError

    def start(self) -> None:
        self.proc = subprocess.Popen(self.command(), cwd=REPO)
        wait_http(f"{self.url}/_bench/count", proc=self.proc)

    def stop(self) -> None:
        self.http.close()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def count(self) -> int:
        return int(self.http.get("/_bench/count").json()["count"])


@contextlib.contextmanager
def caddy_balancer(port: int, upstreams: Sequence[int], folder: Path) -> Iterator[str]:
    """deploy/Caddyfile.replicas on http://127.0.0.1:port, round robin over the ports in
    ``upstreams``; yields its URL."""
    folder.mkdir(parents=True, exist_ok=True)
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(folder),
        "XDG_DATA_HOME": str(folder / "data"),
        "XDG_CONFIG_HOME": str(folder / "config"),
        "VIDHOOK_DOMAIN": f"http://127.0.0.1:{port}",
        "ACME_EMAIL": "bench@example.com",
        "VIDHOOK_UPSTREAMS": " ".join(f"127.0.0.1:{p}" for p in upstreams),
    }
    command = [newest_caddy(), "adapt", "--config", str(REPO / "deploy" / "Caddyfile.replicas")]
    adapted = subprocess.run(
        [*command, "--adapter", "caddyfile"], env=env, capture_output=True, text=True, check=True
    )
    config = json.loads(adapted.stdout)
    config["admin"] = {"disabled": True}
    (folder / "caddy.json").write_text(json.dumps(config))
    with open(folder / "caddy.log", "wb") as log:
        process = subprocess.Popen(
            [newest_caddy(), "run", "--config", str(folder / "caddy.json")], env=env, stderr=log
        )
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", 30, process)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.kill()
        process.wait(timeout=10)

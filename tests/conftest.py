"""Real servers on loopback: the sandbox providers and the receiver itself."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import socket
import sqlite3
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from receiver.app import create_app
from receiver.config import parse_config
from receiver.sandbox import (
    ApimodelsFakeSettings,
    FakeSettings,
    FalFakeSettings,
    KlingFakeSettings,
    LumaFakeSettings,
    MiniMaxFakeSettings,
    NewApiFakeSettings,
    PixVerseFakeSettings,
    ReplicateFakeSettings,
    RunwayFakeSettings,
    ServerThread,
    Timing,
    VeoFakeSettings,
    ViduSandbox,
    ViduSandboxSettings,
    create_sandbox_app,
)
from receiver.sandbox.base import FakeProvider
from receiver.sandbox.slack import SlackSinkSettings, create_slack_sink
from receiver.store import Store
from tests.pg import PgRows, binaries, running_cluster
from tests.tools import missing

VIDU_KEY = "vidu-test-key-0123456789abcdef"
OLD_VIDU_KEY = "vidu-old-key-fedcba9876543210"
ADMIN_TOKEN = "admin-test-token-5e1f"
ENV = {"VIDU_API_KEY": VIDU_KEY, "OLD_VIDU_KEY": OLD_VIDU_KEY, "VIDHOOK_ADMIN_TOKEN": ADMIN_TOKEN}
KLING_ACCESS_KEY = "kling-test-access-4c2b"
KLING_SECRET_KEY = "kling-test-secret-9f13e7d05a"
OLD_KLING_ACCESS_KEY = "kling-old-access-77a0"
OLD_KLING_SECRET_KEY = "kling-old-secret-3b81c2f6d4"
ENV |= {
    "KLING_ACCESS_KEY": KLING_ACCESS_KEY,
    "KLING_SECRET_KEY": KLING_SECRET_KEY,
    "OLD_KLING_ACCESS_KEY": OLD_KLING_ACCESS_KEY,
    "OLD_KLING_SECRET_KEY": OLD_KLING_SECRET_KEY,
}
REPLICATE_WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"replicate-test-secret-0123456789").decode()
ENV |= {"REPLICATE_WEBHOOK_SECRET": REPLICATE_WEBHOOK_SECRET}
PIXVERSE_WEBHOOK_SECRET = "pixverse-test-webhook-secret-7d2e"
ENV |= {"PIXVERSE_WEBHOOK_SECRET": PIXVERSE_WEBHOOK_SECRET}


POLL_ONLY = ("kvid", "revid", "newapi")
PROVIDERS = ("vidu", "apimodels", *POLL_ONLY)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(predicate, timeout=10.0, what="condition", interval=0.02):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


@dataclass
class Sandbox:
    url: str
    vidu: ViduSandbox
    kvid: FakeProvider
    revid: FakeProvider
    apimodels: FakeProvider
    newapi: FakeProvider
    kling: FakeProvider | None = None
    runway: FakeProvider | None = None
    luma: FakeProvider | None = None
    minimax: FakeProvider | None = None
    replicate: FakeProvider | None = None
    fal: FakeProvider | None = None
    pixverse: FakeProvider | None = None
    veo: FakeProvider | None = None

    @property
    def settings(self) -> ViduSandboxSettings:
        return self.vidu.settings

    def fake(self, name: str) -> FakeProvider:
        fake = getattr(self, name)
        assert isinstance(fake, FakeProvider)
        return fake


def fake_settings(kind=FakeSettings, **fields):
    timing = Timing(queue_delay=0.05, start_delay=0.05, run_time=0.15, slow_factor=6)
    return kind(api_keys=[VIDU_KEY, OLD_VIDU_KEY], timing=timing, **fields)


@contextmanager
def running_sandbox():
    vidu = ViduSandboxSettings(
        api_keys=[VIDU_KEY, OLD_VIDU_KEY],
        queue_delay=0.05,
        start_delay=0.05,
        run_time=0.15,
        callback_retry_delay=0.1,
    )
    app = create_sandbox_app(
        vidu,
        kvid=fake_settings(),
        revid=fake_settings(),
        apimodels=fake_settings(ApimodelsFakeSettings, callback_retry_delays=(0.1, 0.1, 0.1)),
        newapi=fake_settings(NewApiFakeSettings),
        kling=fake_settings(
            KlingFakeSettings,
            key_pairs={
                KLING_ACCESS_KEY: KLING_SECRET_KEY,
                OLD_KLING_ACCESS_KEY: OLD_KLING_SECRET_KEY,
            },
            callback_retry_delays=(0.1, 0.1),
        ),
        runway=fake_settings(RunwayFakeSettings),
        luma=fake_settings(LumaFakeSettings),
        minimax=fake_settings(MiniMaxFakeSettings),
        replicate=fake_settings(
            ReplicateFakeSettings,
            webhook_secret=REPLICATE_WEBHOOK_SECRET,
            webhook_retry_delays=(0.1, 0.2),
        ),
        fal=fake_settings(FalFakeSettings, webhook_retry_delays=(0.1, 0.2)),
        pixverse=fake_settings(
            PixVerseFakeSettings,
            webhook_secret=PIXVERSE_WEBHOOK_SECRET,
            webhook_retry_delays=(0.1, 0.2),
        ),
        veo=fake_settings(VeoFakeSettings),
    )
    with ServerThread(app) as server:
        fakes = [getattr(app.state, name) for name in ("vidu", "kvid", "revid", "apimodels")]
        mine = {name: getattr(app.state, name) for name in ("kling", "runway", "luma", "minimax")}
        mine |= {name: getattr(app.state, name) for name in ("replicate", "fal", "pixverse", "veo")}
        yield Sandbox(server.url, *fakes, app.state.newapi, **mine)


# Quick schedules, so that tests see many polls in little time.
FAST_POLLING = {
    "timeout": 2,
    "initial_delay": 0.05,
    "poll_interval": 0.1,
    "poll_max_interval": 0.3,
    "reconcile_after": 60,
    "reconcile_interval": 60,
}


DATABASE_URL_ENV = "VIDHOOK_TEST_DATABASE_URL"


def on_postgres(database_url, extra=None):
    """``extra`` with the store on PostgreSQL at ``database_url``; results kept in a local
    folder declared shared (every replica of a test runs on this machine)."""
    extra = dict(extra or {})
    extra["database_url_env"] = DATABASE_URL_ENV
    extra["env"] = {**extra.get("env", {}), DATABASE_URL_ENV: database_url}
    extra["archive"] = {"shared_path": True, **extra.get("archive", {})}
    return extra


def service_config(
    public_url, sandbox_url, db_path, overrides=None, extra=None, database_url=None, **vidu
):
    """Every provider pointed at the sandbox; ``overrides`` maps provider -> settings.

    ``extra`` adds top-level config (channels, notify, ...); its "env" entry adds
    environment variables. With ``database_url``, the store is PostgreSQL.
    """
    if database_url is not None:
        extra = on_postgres(database_url, extra)
    providers = {
        name: {"base_url": f"{sandbox_url}/{name}", "api_key_env": "VIDU_API_KEY", **FAST_POLLING}
        for name in PROVIDERS
    }
    providers["newapi"]["default_model"] = "kling-v1"
    providers["kling"] = {
        "base_url": f"{sandbox_url}/kling",
        "access_key_env": "KLING_ACCESS_KEY",
        "secret_key_env": "KLING_SECRET_KEY",
        **FAST_POLLING,
    }
    providers["runway"] = {
        "base_url": f"{sandbox_url}/runway",
        "api_key_env": "VIDU_API_KEY",
        **FAST_POLLING,
    }
    for name in ("luma", "minimax"):
        providers[name] = {"base_url": f"{sandbox_url}/{name}", "api_key_env": "VIDU_API_KEY"}
        providers[name].update(FAST_POLLING)
    providers["replicate"] = {
        "base_url": f"{sandbox_url}/replicate",
        "api_key_env": "VIDU_API_KEY",
        "webhook_secret_env": "REPLICATE_WEBHOOK_SECRET",
        **FAST_POLLING,
    }
    providers["fal"] = {
        "base_url": f"{sandbox_url}/fal",
        "api_key_env": "VIDU_API_KEY",
        "jwks_url": f"{sandbox_url}/fal/.well-known/jwks.json",
        **FAST_POLLING,
    }
    providers["pixverse"] = {
        "base_url": f"{sandbox_url}/pixverse",
        "api_key_env": "VIDU_API_KEY",
        "webhook_secret_env": "PIXVERSE_WEBHOOK_SECRET",
        **FAST_POLLING,
    }
    providers["veo"] = {
        "base_url": f"{sandbox_url}/veo",
        "api_key_env": "VIDU_API_KEY",
        **FAST_POLLING,
    }
    providers["vidu"].update({"poll_interval": 0.2, "timeout": 5, **vidu})
    for name, settings in (overrides or {}).items():
        providers[name].update(settings)
    data = {"public_url": public_url, "database": str(db_path), "providers": providers}
    extra = dict(extra or {})
    env = {**ENV, **extra.pop("env", {})}
    # The sandbox is on loopback: keep its results as the demo does.
    extra["archive"] = {"allow_private_hosts": True, **extra.get("archive", {})}
    return parse_config({**data, **extra}, env)


class Service:
    """The receiver on a real port, with helpers to look at its database."""

    def __init__(
        self, server: ServerThread, db_path: Path, database_url: str | None = None
    ) -> None:
        self.server = server
        self.url = server.url
        self.db_path = db_path
        self.database_url = database_url
        self.api = httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=10
        )
        self.http = httpx.Client(base_url=self.url, timeout=10)

    def submit(self, prompt, **fields):
        response = self.api.post("/api/jobs", json={"provider": "vidu", "prompt": prompt, **fields})
        assert response.status_code == 201, response.text
        return response.json()

    def job(self, job_id):
        response = self.api.get(f"/api/jobs/{job_id}")
        assert response.status_code == 200, response.text
        return response.json()

    def wait(self, job_id, predicate, timeout=10.0):
        deadline = time.monotonic() + timeout
        while True:
            job = self.job(job_id)
            if predicate(job):
                return job
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out; job is {job}")
            time.sleep(0.05)

    def wait_status(self, job_id, status, timeout=10.0):
        return self.wait(job_id, lambda j: j["status"] == status, timeout)

    def rows(self, sql, *params):
        if self.database_url is not None:
            return PgRows(self.database_url)(sql, *params)
        conn = sqlite3.connect(self.db_path)
        try:
            return conn.execute(sql, params).fetchall()
        finally:
            conn.close()

    def counts(self):
        """Row counts of every table a request could write to."""
        tables = ("jobs", "transitions", "callbacks", "nonces", "deliveries")
        return {t: self.rows(f"SELECT count(*) FROM {t}")[0][0] for t in tables}

    def close(self):
        self.api.close()
        self.http.close()


@contextmanager
def settings_restored(settings):
    """Put a mutable settings dataclass back as it was, whatever the test changed."""
    saved = dataclasses.replace(settings)
    try:
        yield settings
    finally:
        for f in dataclasses.fields(saved):
            setattr(settings, f.name, getattr(saved, f.name))


@contextmanager
def running_service(sandbox_url, db_path, overrides=None, extra=None, database_url=None, **vidu):
    svc = start_service(sandbox_url, db_path, overrides, extra, database_url, **vidu)
    try:
        yield svc
    finally:
        svc.close()
        svc.server.stop()


@pytest.fixture
def sandbox():
    with running_sandbox() as fakes:
        yield fakes


def start_service(sandbox_url, db_path, overrides=None, extra=None, database_url=None, **vidu):
    server = ServerThread(None)
    server.bind()
    config = service_config(
        server.url, sandbox_url, db_path, overrides, extra, database_url, **vidu
    )
    server.app = create_app(config)
    server.start()
    return Service(server, db_path, database_url)


@pytest.fixture
def db_path(tmp_path):
    return tmp_path / "vidhook.db"


@pytest.fixture
def service(sandbox, db_path):
    with running_service(sandbox.url, db_path) as svc:
        yield svc


@pytest.fixture
def cli_env(monkeypatch):
    """The environment of a client command: the admin token, no overriding variables."""
    monkeypatch.setenv("VIDHOOK_ADMIN_TOKEN", ADMIN_TOKEN)
    for name in ("VIDHOOK_URL", "VIDHOOK_CONFIG", "VIDHOOK_PUBLIC_URL", "VIDHOOK_DATABASE"):
        monkeypatch.delenv(name, raising=False)


# -- both engines --


@pytest.fixture(scope="session")
def postgres():
    """A PostgreSQL server for this test session (tests/pg.py)."""
    if binaries() is None:
        missing("PostgreSQL's server programs (initdb, pg_ctl)", "sudo apt-get install postgresql")
    with running_cluster(free_port()) as cluster:
        yield cluster


@pytest.fixture
def pg_url(postgres):
    """A fresh database with vidhook's schema, dropped after the test."""
    url = postgres.fresh_database()
    yield url
    postgres.drop(url)


ENGINES = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


@dataclass
class Database:
    """The database a test runs on, whichever the engine."""

    engine: str
    path: Path  # the SQLite file (unused on PostgreSQL, but a folder for media beside it)
    url: str | None  # PostgreSQL's

    def rows(self, sql: str, *params: Any) -> list[Any]:
        if self.url is not None:
            return PgRows(self.url)(sql, *params)
        conn = sqlite3.connect(self.path)
        try:
            return conn.execute(sql, params).fetchall()
        finally:
            conn.close()

    def store(self, route: Callable[..., list[str]], **options: Any) -> Store:
        return Store(self.path, route=route, database_url=self.url, **options)

    def run(self, store: Store, coro: Any) -> Any:
        """Run ``coro`` on a new event loop with the store's engine started on it."""

        async def main() -> Any:
            await store.start()
            try:
                return await coro
            finally:
                await store.engine.stop()

        return asyncio.run(main())


@pytest.fixture(params=ENGINES)
def engine(request):
    return request.param


@pytest.fixture
def database(engine, tmp_path, request):
    url = request.getfixturevalue("pg_url") if engine == "postgres" else None
    return Database(engine, tmp_path / "vidhook.db", url)


@pytest.fixture
def engine_service(sandbox, database):
    """The receiver on each engine in turn (tests that matter on both)."""
    with running_service(sandbox.url, database.path, database_url=database.url) as svc:
        yield svc


@pytest.fixture
def slack():
    """A fake Slack on loopback; its ``url`` is the incoming webhook to configure."""
    app = create_slack_sink(SlackSinkSettings())
    with ServerThread(app) as server:
        app.state.slack.url = f"{server.url}/services/T000/B000/XXXX"
        yield app.state.slack

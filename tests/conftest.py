"""Real servers on loopback: the sandbox providers and the receiver itself."""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from receiver.app import create_app
from receiver.config import parse_config
from receiver.sandbox import ServerThread, ViduSandbox, ViduSandboxSettings, create_sandbox_app

VIDU_KEY = "vidu-test-key-0123456789abcdef"
OLD_VIDU_KEY = "vidu-old-key-fedcba9876543210"
ADMIN_TOKEN = "admin-test-token-5e1f"
ENV = {"VIDU_API_KEY": VIDU_KEY, "OLD_VIDU_KEY": OLD_VIDU_KEY, "VIDHOOK_ADMIN_TOKEN": ADMIN_TOKEN}


@dataclass
class Sandbox:
    url: str
    vidu: ViduSandbox

    @property
    def settings(self) -> ViduSandboxSettings:
        return self.vidu.settings


@pytest.fixture
def sandbox():
    settings = ViduSandboxSettings(
        api_keys=[VIDU_KEY, OLD_VIDU_KEY],
        queue_delay=0.05,
        start_delay=0.05,
        run_time=0.15,
        callback_retry_delay=0.1,
    )
    app = create_sandbox_app(settings)
    with ServerThread(app) as server:
        yield Sandbox(server.url, app.state.vidu)


def service_config(public_url, sandbox_url, db_path, **vidu):
    provider = {
        "base_url": f"{sandbox_url}/vidu",
        "api_key_env": "VIDU_API_KEY",
        "poll_interval": 0.2,
        "reconcile_after": 60,
        "timeout": 5,
        **vidu,
    }
    data = {"public_url": public_url, "database": str(db_path), "providers": {"vidu": provider}}
    return parse_config(data, ENV)


class Service:
    """The receiver on a real port, with helpers to look at its database."""

    def __init__(self, server: ServerThread, db_path: Path) -> None:
        self.server = server
        self.url = server.url
        self.db_path = db_path
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


def start_service(sandbox_url, db_path, **vidu):
    server = ServerThread(None)
    server.bind()
    server.app = create_app(service_config(server.url, sandbox_url, db_path, **vidu))
    server.start()
    return Service(server, db_path)


@pytest.fixture
def db_path(tmp_path):
    return tmp_path / "vidhook.db"


@pytest.fixture
def service(sandbox, db_path):
    svc = start_service(sandbox.url, db_path)
    yield svc
    svc.close()
    svc.server.stop()

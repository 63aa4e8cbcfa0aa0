"""The service as a real process: SIGKILL at awkward moments, then a restart on the same files.

Nothing vidhook knows may live only in memory: a terminal callback awaiting confirmation is
confirmed after a restart, and every callback acknowledged before a kill is on disk.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.conftest import ADMIN_TOKEN, DATABASE_URL_ENV, ENV, POLL_ONLY, free_port, wait_for
from tests.pg import PgRows

REPO = Path(__file__).resolve().parents[1]
# Variables that would override the config file written here.
_OVERRIDES = ("VIDHOOK_CONFIG", "VIDHOOK_PUBLIC_URL", "VIDHOOK_DATABASE", "VIDHOOK_URL")

pytestmark = pytest.mark.slow


class ServiceProcess:
    """`python -m receiver serve` on its own config, database and log in a tmp folder."""

    def __init__(
        self,
        folder: Path,
        sandbox_url: str,
        log_level: str = "info",
        extra_config: str = "",
        top_config: str = "",
        log_format: str | None = None,
        database_url: str | None = None,
        public_url: str | None = None,
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # Where providers reach it: itself, or a proxy in front of several replicas.
        self.public_url = public_url or self.url
        self.db_path = folder / "vidhook.db"
        self.config_path = folder / "vidhook.toml"
        self.log_path = folder / "vidhook.log"
        self.log_level = log_level
        self.log_format = log_format
        self.database_url = database_url
        if database_url is not None:
            # PostgreSQL; the replicas of a test share this machine's folder for media.
            top_config = f'database_url_env = "{DATABASE_URL_ENV}"\n' + top_config
            if "[archive]" not in extra_config:
                top_config += "\n[archive]\nshared_path = true\n"
        self.config_path.write_text(
            f'public_url = "{self.public_url}"\n'
            f"database = {json.dumps(str(self.db_path))}\n"
            'admin_token_env = "VIDHOOK_ADMIN_TOKEN"\n' + top_config + "\n[server]\n"
            'host = "127.0.0.1"\n'
            f"port = {self.port}\n"
            "\n[providers.vidu]\n"
            f'base_url = "{sandbox_url}/vidu"\n'
            'api_key_env = "VIDU_API_KEY"\n'
            "poll_interval = 0.2\n"
            "reconcile_after = 60\n"
            "timeout = 2\n" + extra_config,
            encoding="utf-8",
        )
        self.env = {k: v for k, v in os.environ.items() if k not in _OVERRIDES}
        self.env.update(ENV)
        if database_url is not None:
            self.env[DATABASE_URL_ENV] = database_url
        self.proc: subprocess.Popen[bytes] | None = None
        # Run in the child before vidhook starts (a resource limit, dropped capabilities).
        self.preexec: Callable[[], None] | None = None
        self.starts = 0
        self.api = httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=10
        )

    def start(self, timeout: float = 15.0) -> None:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        command = [sys.executable, "-m", "receiver", "serve", "--config", str(self.config_path)]
        command += ["--log-level", self.log_level]
        if self.log_format is not None:
            command += ["--log-format", self.log_format]
        with open(self.log_path, "ab") as log:
            # cwd: the repository, so that `-m receiver` finds the package.
            self.proc = subprocess.Popen(
                command,
                cwd=REPO,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=self.preexec,
            )
        self.starts += 1
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"vidhook exited with {self.proc.returncode} during startup:\n{self.log()}"
                )
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"vidhook did not answer /healthz in {timeout}s:\n{self.log()}"
                )
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs at all."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def stop(self) -> int:
        """SIGTERM, and wait for the graceful shutdown; returns the exit code."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=20)

    def close(self) -> None:
        self.kill()
        self.api.close()

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def submit(self, prompt: str) -> dict:
        response = self.api.post("/api/jobs", json={"provider": "vidu", "prompt": prompt})
        assert response.status_code == 201, response.text
        return response.json()

    def rows(self, sql: str, *params) -> list[sqlite3.Row]:
        if self.database_url is not None:
            return PgRows(self.database_url)(sql, *params)
        conn = sqlite3.connect(self.db_path, timeout=10)
        conn.row_factory = sqlite3.Row
        try:
            return conn.execute(sql, params).fetchall()
        finally:
            conn.close()

    def job(self, job_id: str) -> sqlite3.Row:
        (row,) = self.rows("SELECT * FROM jobs WHERE id = ?", job_id)
        return row

    def transitions(self, job_id: str) -> list[tuple]:
        return [
            (r["from_status"], r["to_status"], r["source"], json.loads(r["detail"] or "{}"))
            for r in self.rows("SELECT * FROM transitions WHERE job_id = ? ORDER BY id", job_id)
        ]


@pytest.fixture
def proc_service(sandbox, tmp_path):
    svc = ServiceProcess(tmp_path, sandbox.url)
    try:
        yield svc
    finally:
        svc.close()


def status_fetches(sandbox, task_id: str) -> list[int]:
    path = f"/vidu/ent/v2/tasks/{task_id}/creations"
    return [r.status_code for r in sandbox.vidu.requests if r.method == "GET" and r.path == path]


def test_sigkill_while_a_terminal_callback_awaits_confirmation_confirms_it_after_restart(
    sandbox, proc_service
):
    svc = proc_service
    sandbox.settings.status_outage = True  # the confirming fetch gets 503
    svc.start()
    job = svc.submit("A heron standing in the reeds")
    job_id, task_id = job["id"], job["provider_job_id"]
    assert job["status"] == "queued" and task_id

    def awaiting_confirmation():
        found = svc.rows(
            "SELECT c.id, c.outcome, j.status, j.confirm_callback_id, j.poll_failures"
            " FROM callbacks c JOIN jobs j ON j.id = c.job_id"
            " WHERE c.job_id = ? AND c.provider_status = 'success'",
            job_id,
        )
        # poll_failures: the confirming fetch was tried and refused by the outage.
        return found[0] if found and found[0]["poll_failures"] >= 1 else None

    row = wait_for(awaiting_confirmation, what="the success callback awaiting confirmation")
    callback_id = row["id"]
    assert row["outcome"] == "confirming"
    assert row["status"] == "processing"
    assert row["confirm_callback_id"] == callback_id
    assert 503 in status_fetches(sandbox, task_id)
    assert 200 not in status_fetches(sandbox, task_id)

    svc.kill()
    assert svc.proc is not None and svc.proc.returncode == -signal.SIGKILL
    killed = svc.job(job_id)
    assert killed["status"] == "processing"
    assert killed["confirm_callback_id"] == callback_id
    assert killed["next_poll_at"] is not None
    assert killed["result_url"] is None
    assert [t[1] for t in svc.transitions(job_id)] == ["queued", "processing"]

    sandbox.settings.status_outage = False
    fetches_before_restart = len(status_fetches(sandbox, task_id))
    svc.start()
    done = wait_for(
        lambda: (j := svc.job(job_id))["status"] == "completed" and j,
        what="the job to complete after the restart",
    )
    # The restarted process made the confirming fetch itself, and it succeeded.
    assert 200 in status_fetches(sandbox, task_id)[fetches_before_restart:]
    task = sandbox.vidu.tasks[task_id]
    assert task.state == "success"
    assert done["result_url"].startswith(f"{sandbox.url}/vidu/files/{task_id}.mp4")
    assert done["credits"] == task.credits
    assert done["confirm_callback_id"] is None
    assert done["next_poll_at"] is None
    assert done["finished_at"] is not None

    transitions = svc.transitions(job_id)
    assert [t[:3] for t in transitions] == [
        (None, "queued", "api"),
        ("queued", "processing", "callback"),
        ("processing", "completed", "poll"),
    ]
    assert transitions[-1][3] == {"provider_status": "success", "confirms_callback_id": callback_id}
    reached = [t[1] for t in transitions]
    assert len(reached) == len(set(reached))
    # The success callback was stored once, before the kill; nothing was lost or doubled.
    stored = svc.rows(
        "SELECT id, provider_status FROM callbacks WHERE job_id = ? ORDER BY id", job_id
    )
    assert [(r["provider_status"]) for r in stored] == ["processing", "success"]
    assert stored[-1]["id"] == callback_id
    assert svc.starts == 2


def test_sigkill_right_after_callbacks_were_acknowledged_loses_none_of_them(sandbox, proc_service):
    svc = proc_service
    sandbox.settings.run_time = 30.0  # jobs stay processing: only processing callbacks are sent
    svc.start()
    jobs = [svc.submit(f"Lanterns drifting down a river, take {i}") for i in range(6)]
    job_for_task = {j["provider_job_id"]: j["id"] for j in jobs}

    def all_acknowledged():
        acked = {c.task_id for c in sandbox.vidu.callbacks if c.status_code == 200}
        return acked >= set(job_for_task)

    wait_for(all_acknowledged, interval=0.005, what="every processing callback acknowledged")
    svc.kill()  # at once: some commits may be only milliseconds old

    acknowledged = [c for c in sandbox.vidu.callbacks if c.status_code == 200]
    assert sorted(c.task_id for c in acknowledged) == sorted(job_for_task)
    assert {c.state for c in acknowledged} == {"processing"}
    for sent in acknowledged:
        job_id = job_for_task[sent.task_id]
        stored = svc.rows(
            "SELECT id, provider_status, outcome, body FROM callbacks WHERE job_id = ?", job_id
        )
        assert [(r["provider_status"], r["outcome"]) for r in stored] == [("processing", "applied")]
        assert json.loads(stored[0]["body"])["id"] == sent.task_id
        assert svc.transitions(job_id) == [
            (None, "queued", "api", {}),
            ("queued", "processing", "callback",
             {"provider_status": "processing", "callback_id": stored[0]["id"]}),
        ]  # fmt: skip
        assert svc.job(job_id)["status"] == "processing"


def test_sigkill_and_restart_resumes_polling_every_unfinished_job(sandbox, tmp_path):
    extra = "".join(
        f"\n[providers.{name}]\n"
        f'base_url = "{sandbox.url}/{name}"\n'
        'api_key_env = "VIDU_API_KEY"\n'
        "initial_delay = 0.1\npoll_interval = 0.2\npoll_max_interval = 0.4\ntimeout = 2\n"
        + ('default_model = "kling-v1"\n' if name == "newapi" else "")
        for name in POLL_ONLY
    )
    service = ServiceProcess(tmp_path, sandbox.url, extra_config=extra)
    try:
        service.start()
        ids = []
        for name in POLL_ONLY:
            for i in range(3):
                body = {"provider": name, "prompt": f"Tide pools {i} [slow]"}
                response = service.api.post("/api/jobs", json=body)
                assert response.status_code == 201, response.text
                ids.append(response.json()["id"])

        def polled_jobs():
            return service_rows(service, "SELECT count(*) FROM jobs WHERE polls > 0")[0][0]

        wait_for(lambda: polled_jobs() == len(ids), what="a first poll of every job")
        service.kill()
        unfinished = service_rows(
            service, "SELECT id FROM jobs WHERE status NOT IN ('completed', 'failed')"
        )
        assert len(unfinished) >= len(ids) - 2  # the kill came while they were running
        polls_before = {name: count_gets(sandbox, name) for name in POLL_ONLY}

        service.start()
        wait_for(
            lambda: all(
                service.api.get(f"/api/jobs/{job_id}").json()["status"] == "completed"
                for job_id in ids
            ),
            timeout=20,
            what="every job to complete after the restart",
        )
        for name in POLL_ONLY:
            assert count_gets(sandbox, name) > polls_before[name]
        steps = service_rows(
            service, "SELECT job_id, to_status, count(*) FROM transitions GROUP BY 1, 2"
        )
        assert all(count == 1 for _job, _status, count in steps)
    finally:
        service.close()


def service_rows(service, sql):
    conn = sqlite3.connect(service.db_path)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def count_gets(sandbox, name):
    return sum(1 for r in sandbox.fake(name).requests if r.method == "GET")

"""Canceling a job: POST /api/jobs/{id}/cancel and `vidhook cancel`, through a running
service and the fake providers."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from receiver.cli import main
from receiver.providers.base import JobRef, Observation
from receiver.runtime import CannotCancel, Runtime
from receiver.sandbox import RunwayFakeSettings, ServerThread, create_sandbox_app
from receiver.store import NewJob
from tests.conftest import (
    ADMIN_TOKEN,
    Service,
    fake_settings,
    running_sandbox,
    running_service,
    service_config,
    settings_restored,
    wait_for,
)
from tests.test_metrics import key, scrape


@dataclass
class Hooks:
    """The user's app behind a webhook channel: records every event it is sent."""

    events: list[dict[str, Any]] = field(default_factory=list)
    url: str = ""

    async def receive(self, request: Request) -> Response:
        self.events.append(json.loads(await request.body()))
        return Response(status_code=204)

    def of(self, job_id: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["data"]["id"] == job_id]


def counts_of(service: Service, job_id: str) -> dict[str, Any]:
    """What a refused cancel must leave as it was: the job's row and its own rows, and
    the number of jobs. (The jobs earlier tests left on this shared service go on and
    write theirs meanwhile.)"""
    found: dict[str, Any] = {"jobs": service.rows("SELECT count(*) FROM jobs")[0][0]}
    for table in ("transitions", "callbacks", "deliveries", "events"):
        found[table] = service.rows(f"SELECT count(*) FROM {table} WHERE job_id = ?", job_id)
    found["job"] = service.rows("SELECT * FROM jobs WHERE id = ?", job_id)
    return found


@pytest.fixture(scope="module")
def hooks() -> Iterator[Hooks]:
    sink = Hooks()
    app = Starlette(routes=[Route("/hooks", sink.receive, methods=["POST"])])
    with ServerThread(app) as server:
        sink.url = f"{server.url}/hooks"
        yield sink


@pytest.fixture(scope="module")
def sandbox():
    with running_sandbox() as fakes:
        yield fakes


@pytest.fixture(scope="module")
def service(sandbox, hooks, tmp_path_factory):
    channel = {"type": "webhook", "url": hooks.url, "events": ["canceled", "completed"]}
    extra = {"channels": {"app": channel}, "default_channels": ["app"]}
    db_path = tmp_path_factory.mktemp("cancel") / "vidhook.db"
    with running_service(sandbox.url, db_path, extra=extra) as svc:
        yield svc


def transitions(service, job_id: str) -> list[tuple[str, str]]:
    return service.rows(
        "SELECT to_status, source FROM transitions WHERE job_id = ? ORDER BY id", job_id
    )


def test_a_queued_vidu_job_is_canceled_stored_once_and_notified(service, sandbox, hooks):
    with settings_restored(sandbox.settings) as settings:
        settings.queue_delay = 30
        job = service.submit("A paper crane unfolds")
        task_id = wait_for(lambda: service.job(job["id"])["provider_job_id"], what="task id")
        response = service.api.post(f"/api/jobs/{job['id']}/cancel")
        assert response.status_code == 200, response.text
        assert response.json()["status"] == "canceled"
        task = sandbox.vidu.tasks[task_id]
        assert (task.state, task.err_code) == ("failed", "UserCancelled")
        # Vidu then calls back with its own reading (failed, UserCancelled): it is stored
        # and acknowledged, and changes nothing.
        wait_for(
            lambda: [c for c in sandbox.vidu.callbacks if c.task_id == task.task_id],
            what="Vidu's callback for the canceled task",
        )
        wait_for(lambda: service.job(job["id"])["callbacks"], what="the stored callback")
    assert [c.status_code for c in sandbox.vidu.callbacks if c.task_id == task.task_id] == [200]
    ended = service.job(job["id"])
    assert ended["status"] == "canceled" and ended["anomalies"] == []
    assert ended["finished_at"] is not None and ended["next_poll_at"] is None
    assert transitions(service, job["id"]) == [("queued", "api"), ("canceled", "cancel")]
    wait_for(lambda: hooks.of(job["id"]), what="the job.canceled event")
    (event,) = hooks.of(job["id"])
    assert event["type"] == "job.canceled" and event["data"]["status"] == "canceled"
    (delivery,) = ended["deliveries"]
    assert delivery["event"] == "canceled"
    assert [r.path for r in sandbox.vidu.requests if r.method == "POST"][-1].endswith(
        f"/ent/v2/tasks/{task.task_id}/cancel"
    )


def test_a_canceled_state_word_reads_the_same(service, sandbox, hooks):
    with settings_restored(sandbox.settings) as settings:
        settings.queue_delay = 30
        settings.cancel_state = "canceled"
        job = service.submit("Snow globe")
        task_id = wait_for(lambda: service.job(job["id"])["provider_job_id"], what="task id")
        assert service.api.post(f"/api/jobs/{job['id']}/cancel").status_code == 200
        assert sandbox.vidu.tasks[task_id].state == "canceled"
        wait_for(lambda: service.job(job["id"])["callbacks"], what="the stored callback")
    ended = service.job(job["id"])
    assert ended["status"] == "canceled" and ended["anomalies"] == []
    assert transitions(service, job["id"]) == [("queued", "api"), ("canceled", "cancel")]


def test_a_provider_without_cancel_answers_409_and_writes_nothing(service, sandbox):
    job = service.api.post("/api/jobs", json={"provider": "kvid", "prompt": "Tide pools"}).json()
    before = counts_of(service, job["id"])
    response = service.api.post(f"/api/jobs/{job['id']}/cancel")
    assert response.status_code == 409
    error = response.json()["error"]
    assert error["code"] == "cancel_unsupported"
    assert "kvid" in error["message"] and "no way to cancel" in error["message"]
    assert counts_of(service, job["id"]) == before
    assert not sandbox.kvid.requests_to("cancel")
    service.wait_status(job["id"], "completed")


@pytest.mark.parametrize("provider", ["revid", "apimodels", "newapi"])
def test_the_other_seed_providers_cannot_cancel_either(service, provider):
    job = service.api.post("/api/jobs", json={"provider": provider, "prompt": "Moss"}).json()
    response = service.api.post(f"/api/jobs/{job['id']}/cancel")
    assert (response.status_code, response.json()["error"]["code"]) == (409, "cancel_unsupported")


def test_a_completed_job_answers_409_and_writes_nothing(service, sandbox):
    job = service.submit("Lanterns on a river")
    service.wait_status(job["id"], "completed")
    # Keeping the video writes an event of its own: let it land before counting.
    service.wait(job["id"], lambda shown: shown["media"]["status"] == "kept")
    before = counts_of(service, job["id"])
    cancels = len([r for r in sandbox.vidu.requests if r.path.endswith("/cancel")])
    response = service.api.post(f"/api/jobs/{job['id']}/cancel")
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "job_ended"
    assert "completed" in response.json()["error"]["message"]
    assert counts_of(service, job["id"]) == before
    assert len([r for r in sandbox.vidu.requests if r.path.endswith("/cancel")]) == cancels
    assert service.job(job["id"])["status"] == "completed"


def test_an_unknown_job_is_404(service):
    before = counts_of(service, "job_nonexistent")
    response = service.api.post("/api/jobs/job_nonexistent/cancel")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "unknown_job"
    assert counts_of(service, "job_nonexistent") == before


def test_cancel_needs_the_admin_token(service):
    job = service.submit("Fireflies")
    before = counts_of(service, job["id"])
    assert service.http.post(f"/api/jobs/{job['id']}/cancel").status_code == 401
    assert counts_of(service, job["id"]) == before


def test_a_refusal_from_vidu_is_502_and_the_job_carries_on(service, sandbox):
    with settings_restored(sandbox.settings) as settings:
        settings.run_time = 30
        job = service.submit("A kite in a storm")
        service.wait_status(job["id"], "processing")
        before = counts_of(service, job["id"])
        response = service.api.post(f"/api/jobs/{job['id']}/cancel")
        assert response.status_code == 502, response.text
        error = response.json()["error"]
        assert error["code"] == "provider_refused" and error["transient"] is False
        assert "task state is processing, can not cancel" in error["message"]
        assert counts_of(service, job["id"]) == before
        assert service.job(job["id"])["status"] == "processing"


def test_a_busy_vidu_is_502_transient(service, sandbox):
    with settings_restored(sandbox.settings) as settings:
        settings.queue_delay = 30
        job = service.submit("Glass marbles")
        wait_for(lambda: service.job(job["id"])["provider_job_id"], what="the task id")
        before = counts_of(service, job["id"])
        settings.operation_in_process = 1
        response = service.api.post(f"/api/jobs/{job['id']}/cancel")
        assert response.status_code == 502
        assert response.json()["error"]["transient"] is True
        assert counts_of(service, job["id"]) == before
        assert service.api.post(f"/api/jobs/{job['id']}/cancel").status_code == 200


def test_a_provider_that_only_takes_the_request_gets_polled_now(sandbox, tmp_path):
    # None of the seed providers answers a cancel this way; fal and Runway do. The kvid
    # adapter stands in, taught to take the request: what matters is what vidhook does.
    slow_polls = {"kvid": {"initial_delay": 60, "poll_interval": 60, "poll_max_interval": 60}}
    with running_service(sandbox.url, tmp_path / "vidhook.db", overrides=slow_polls) as service:
        kvid = service.server.app.state.runtime.providers["kvid"]
        asked: list[JobRef] = []

        async def take_the_request(job: JobRef) -> Observation | None:
            asked.append(job)
            return None

        kvid.supports_cancel = True
        kvid.cancel = take_the_request
        job = service.api.post("/api/jobs", json={"provider": "kvid", "prompt": "Dunes"}).json()
        task_id = wait_for(lambda: service.job(job["id"])["provider_job_id"], what="the job id")
        assert service.rows("SELECT polls FROM jobs WHERE id = ?", job["id"]) == [(0,)]
        response = service.api.post(f"/api/jobs/{job['id']}/cancel")
        assert response.status_code == 202, response.text
        assert [ref.id for ref in asked] == [job["id"]]
        assert response.json()["status"] in ("queued", "processing")
        # Polled at once, not a minute later: the poll says how the job ended.
        polls = lambda: service.rows("SELECT polls FROM jobs WHERE id = ?", job["id"])[0][0]  # noqa: E731
        wait_for(lambda: polls() >= 1, timeout=5, what="the poll after the cancel request")
        assert [r.task_id for r in sandbox.kvid.requests_to("/status")].count(task_id) >= 1
        assert ("canceled", "cancel") not in transitions(service, job["id"])


def test_metrics_count_cancels_and_canceled_transitions(service, sandbox):
    before = scrape(service)
    with settings_restored(sandbox.settings) as settings:
        settings.queue_delay = 30
        job = service.submit("Dandelion seeds")
        wait_for(lambda: service.job(job["id"])["provider_job_id"], what="the task id")
        assert service.api.post(f"/api/jobs/{job['id']}/cancel").status_code == 200
    kvid = service.api.post("/api/jobs", json={"provider": "kvid", "prompt": "Reeds"}).json()
    assert service.api.post(f"/api/jobs/{kvid['id']}/cancel").status_code == 409
    after = scrape(service)

    def grew(name: str, **labels: str) -> float:
        return after[key(name, **labels)] - before[key(name, **labels)]

    assert grew("vidhook_cancels_total", provider="vidu", outcome="canceled") == 1
    assert grew("vidhook_cancels_total", provider="kvid", outcome="unsupported") == 1
    assert grew("vidhook_transitions_total", status="canceled") == 1
    assert grew("vidhook_jobs_active", provider="vidu", status="queued") <= 0


def test_vidhook_cancel_prints_the_outcome(service, sandbox, monkeypatch, capsys):
    monkeypatch.setenv("VIDHOOK_ADMIN_TOKEN", ADMIN_TOKEN)
    with settings_restored(sandbox.settings) as settings:
        settings.queue_delay = 30
        job = service.submit("Origami fox")
        wait_for(lambda: service.job(job["id"])["provider_job_id"], what="the task id")
        assert main(["cancel", job["id"], "--url", service.url]) == 0
    assert capsys.readouterr().out == f"{job['id']} canceled\n"
    with pytest.raises(SystemExit) as refused:
        main(["cancel", job["id"], "--url", service.url])
    assert str(refused.value) == "vidhook: the job has already ended (canceled); nothing to cancel"


def test_a_job_whose_submission_is_unanswered_is_409_and_nothing_is_sent(sandbox, tmp_path):
    config = service_config("http://127.0.0.1:9", sandbox.url, tmp_path / "vidhook.db")

    async def scenario() -> tuple[CannotCancel, int, int]:
        runtime = Runtime(config)
        await runtime.start()
        try:
            # As the job is between its row being written and the provider's answer.
            job = NewJob(id="job_inflight", provider="vidu", model="viduq2", prompt="p",
                         request={}, callback_token=None, callback_url=None,
                         key_fingerprint=None, notify=None)  # fmt: skip
            await runtime.store.insert_job(job)
            before = len(await runtime.store.list_jobs(limit=10))
            with pytest.raises(CannotCancel) as refused:
                await runtime.cancel("job_inflight")
            detail = await runtime.store.job_detail("job_inflight")
            assert detail is not None
            return refused.value, before, len(detail["transitions"])
        finally:
            await runtime.stop()

    sent = len(sandbox.vidu.requests)
    refused, jobs, transitions_ = asyncio.run(scenario())
    assert refused.code == "not_submitted"
    assert "try again in a moment" in refused.message
    assert (jobs, transitions_) == (1, 1)
    assert len(sandbox.vidu.requests) == sent


@pytest.mark.parametrize("delete_status", [204, 200])
def test_a_running_runway_task_is_deleted_and_the_job_canceled(
    service, sandbox, hooks, delete_status
):
    # Runway's answer to a DELETE is empty; its status is not documented: both read the same.
    with settings_restored(sandbox.runway.settings) as settings:
        settings.delete_status = delete_status
        job = service.submit("A heron over the reeds [never]", provider="runway")
        running = service.wait(job["id"], lambda j: j["provider_status"] == "RUNNING")
        task_id = running["provider_job_id"]
        before = len(hooks.of(job["id"]))
        response = service.api.post(f"/api/jobs/{job['id']}/cancel")
        assert response.status_code == 200, response.text
        assert response.json()["status"] == "canceled"
    assert task_id not in sandbox.runway.tasks  # deleted at the provider
    deletes = [r for r in sandbox.runway.requests if r.method == "DELETE"]
    assert [(r.path, r.status_code) for r in deletes if r.task_id == task_id] == [
        (f"/runway/v1/tasks/{task_id}", delete_status)
    ]
    ended = service.job(job["id"])
    assert ended["status"] == "canceled" and ended["provider_status"] == "CANCELLED"
    assert ended["finished_at"] is not None and ended["next_poll_at"] is None
    assert ended["anomalies"] == [] and ended["result_url"] is None
    assert transitions(service, job["id"]) == [
        ("queued", "api"), ("processing", "poll"), ("canceled", "cancel"),
    ]  # fmt: skip
    wait_for(lambda: len(hooks.of(job["id"])) > before, what="the job.canceled event")
    (event,) = hooks.of(job["id"])
    assert event["type"] == "job.canceled" and event["data"]["status"] == "canceled"
    (delivery,) = ended["deliveries"]
    assert delivery["event"] == "canceled"


def test_vidhook_cancel_cancels_a_runway_job(service, sandbox, hooks, monkeypatch, capsys):
    monkeypatch.setenv("VIDHOOK_ADMIN_TOKEN", ADMIN_TOKEN)
    job = service.submit("A paper lantern rising [never]", provider="runway")
    task_id = service.wait(job["id"], lambda j: j["provider_status"] == "RUNNING")[
        "provider_job_id"
    ]
    assert main(["cancel", job["id"], "--url", service.url]) == 0
    assert capsys.readouterr().out == f"{job['id']} canceled\n"
    assert task_id not in sandbox.runway.tasks
    assert transitions(service, job["id"])[-1] == ("canceled", "cancel")
    wait_for(lambda: hooks.of(job["id"]), what="the job.canceled event")
    assert [e["type"] for e in hooks.of(job["id"])] == ["job.canceled"]


def test_a_runway_task_that_already_ended_is_not_deleted(sandbox, tmp_path):
    # Deleting an ended Runway task deletes its output: the cancel leaves it alone, and
    # the job learns how it ended instead.
    slow_polls = {"runway": {"initial_delay": 60, "poll_interval": 60, "poll_max_interval": 60}}
    with running_service(sandbox.url, tmp_path / "vidhook.db", overrides=slow_polls) as service:
        job = service.submit("A kite over the dunes", provider="runway")
        task_id = wait_for(lambda: service.job(job["id"])["provider_job_id"], what="the task id")
        wait_for(lambda: sandbox.runway.tasks[task_id].status == "SUCCEEDED", what="its end")
        assert service.job(job["id"])["status"] == "queued"  # not polled since
        response = service.api.post(f"/api/jobs/{job['id']}/cancel")
        assert response.status_code == 409, response.text
        assert response.json()["error"]["code"] == "job_ended"
        assert "completed" in response.json()["error"]["message"]
        ended = service.job(job["id"])
    assert task_id in sandbox.runway.tasks
    assert [r for r in sandbox.runway.requests_to(task_id) if r.method == "DELETE"] == []
    assert ended["status"] == "completed"
    assert ended["result_url"].startswith(f"{sandbox.url}/runway/files/{task_id}.mp4")
    assert transitions(service, job["id"])[-1] == ("completed", "cancel")


def test_a_poll_while_runway_answers_the_delete_does_not_fail_the_job(tmp_path):
    # Runway forgets a task as it deletes it: a poll landing before the DELETE's answer
    # reaches vidhook finds no task (404). That is the cancel, not a failure.
    fakes = create_sandbox_app(runway=fake_settings(RunwayFakeSettings))

    async def slow_delete_answers(scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "DELETE":
            await fakes(scope, receive, send)
            return
        answer = []

        async def keep(message):
            answer.append(message)

        await fakes(scope, receive, keep)  # the task is gone at the provider from here
        await asyncio.sleep(1.0)  # several polls long (FAST_POLLING)
        for message in answer:
            await send(message)

    with (
        ServerThread(slow_delete_answers) as server,
        running_service(server.url, tmp_path / "vidhook.db") as service,
    ):
        job = service.submit("A kite in the rain [never]", provider="runway")
        task_id = service.wait(job["id"], lambda j: j["provider_status"] == "RUNNING")[
            "provider_job_id"
        ]
        response = service.api.post(f"/api/jobs/{job['id']}/cancel")
        assert response.status_code == 200, response.text
        assert response.json()["status"] == "canceled"
        ended = service.job(job["id"])
    runway = fakes.state.runway
    polled = [r.status_code for r in runway.requests_to(task_id) if r.method == "GET"]
    assert 404 in polled  # a poll did land in between
    assert ended["status"] == "canceled" and ended["error"] is None
    assert [t["to_status"] for t in ended["transitions"]] == ["queued", "processing", "canceled"]


def test_kling_cannot_cancel_409_and_writes_nothing(service, sandbox, monkeypatch):
    job = service.submit("Koi under a bridge [never]", provider="kling")
    service.wait(job["id"], lambda j: j["status"] == "processing")
    before = counts_of(service, job["id"])
    response = service.api.post(f"/api/jobs/{job['id']}/cancel")
    assert response.status_code == 409
    error = response.json()["error"]
    assert error["code"] == "cancel_unsupported"
    assert error["message"] == "kling (kling) offers no way to cancel a job; it will run to its end"
    assert counts_of(service, job["id"]) == before
    # Kling was not asked at all: only its polls and the submission reached it.
    asked = {(r.method, r.path.rsplit("/", 1)[0]) for r in sandbox.kling.requests}
    assert asked <= {("POST", "/kling/v1/videos"), ("GET", "/kling/v1/videos/text2video")}
    monkeypatch.setenv("VIDHOOK_ADMIN_TOKEN", ADMIN_TOKEN)
    with pytest.raises(SystemExit) as refused:
        main(["cancel", job["id"], "--url", service.url])
    assert str(refused.value) == f"vidhook: {error['message']}"
    assert service.job(job["id"])["status"] == "processing"

"""Luma through a running service, against the fake: unsigned callbacks on every state,
each sent twice, the final one confirmed by the status endpoint."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from receiver.sandbox.luma import UNDOCUMENTED_STATE
from tests.conftest import running_sandbox, running_service, settings_restored, wait_for

# One sandbox and one service for the module; each test works on its own jobs.


@pytest.fixture(scope="module")
def sandbox():
    with running_sandbox() as fakes:
        yield fakes


@pytest.fixture(scope="module")
def service(sandbox, tmp_path_factory):
    with running_service(sandbox.url, tmp_path_factory.mktemp("luma") / "vidhook.db") as svc:
        yield svc


def submit(service, prompt, **fields):
    response = service.api.post("/api/jobs", json={"provider": "luma", "prompt": prompt, **fields})
    assert response.status_code == 201, response.text
    return response.json()


def callback_url(service, job_id):
    ((url,),) = service.rows("SELECT callback_url FROM jobs WHERE id=?", job_id)
    return url


def sent_to(sandbox, generation_id, state=None):
    return [
        c
        for c in list(sandbox.luma.callbacks)
        if c.task_id == generation_id and state in (None, c.status)
    ]


def steps(job):
    return [(t["to_status"], t["source"]) for t in job["transitions"]]


def refusal(response, status, code, reason=None):
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code
    if reason is not None:
        assert error["reason"] == reason
    return error


def waiting_job(service, prompt="A still lake [never] [lost]"):
    """A job whose generation never ends and sends no callbacks: only tests write to it."""
    job = submit(service, prompt)
    assert job["provider_job_id"]
    return job, callback_url(service, job["id"])


def test_success_keeps_the_video_and_cover_and_takes_each_state_once(service, sandbox):
    job = submit(service, "A jellyfish in blue light", images=["https://img.example/a.jpg"])
    done = service.wait_status(job["id"], "completed")
    generation_id = done["provider_job_id"]
    assert done["result_url"] == f"{sandbox.url}/luma/assets/{generation_id}.mp4"
    assert done["cover_url"] == f"{sandbox.url}/luma/assets/{generation_id}.png"
    assert steps(done) == [("queued", "api"), ("processing", "callback"), ("completed", "poll")]
    assert [(c["provider_status"], c["outcome"]) for c in done["callbacks"]] == [
        ("dreaming", "applied"),
        ("completed", "confirming"),
    ]
    # Each callback was sent twice; the second copy of each was answered as a duplicate.
    service.wait(job["id"], lambda _: len(sent_to(sandbox, generation_id)) == 4)
    sent = sent_to(sandbox, generation_id)
    assert [c.status_code for c in sent] == [200] * 4
    assert [json.loads(c.answer)["duplicate"] for c in sent] == [False, True, False, True]
    assert sandbox.luma.tasks[generation_id].request["keyframes"]["frame0"]["url"] == (
        "https://img.example/a.jpg"
    )


def test_failure_keeps_lumas_reason(service, sandbox):
    job = submit(service, "A storm over the sea [fail]")
    failed = service.wait_status(job["id"], "failed")
    assert failed["error"] == sandbox.luma.settings.fail_reason
    assert failed["provider_status"] == "failed" and failed["result_url"] is None
    assert failed["transitions"][-1]["source"] == "poll"


def test_an_unknown_state_is_kept_raw(service):
    job = submit(service, "Lanterns on a lake [unknown] [slow]")
    seen = service.wait(job["id"], lambda j: j["provider_status"] == UNDOCUMENTED_STATE)
    assert (seen["status"], seen["anomalies"]) == ("queued", [])
    done = service.wait_status(job["id"], "completed")
    assert [s for s, _ in steps(done)] == ["queued", "processing", "completed"]


def test_429_retry_after_is_honoured(sandbox, tmp_path):
    faults = sandbox.luma.settings.faults
    started = time.monotonic()
    with settings_restored(sandbox.luma.settings):
        faults.paths, faults.rate_limit, faults.retry_after = r"/generations/[^/]+$", 1, 1.0
        with running_service(sandbox.url, tmp_path / "v.db") as service:
            job = submit(service, "Dunes at noon")
            service.wait_status(job["id"], "completed")
    log = [r for r in sandbox.luma.requests if r.time > started]
    refused = [r for r in log if r.status_code == 429]
    assert len(refused) == 1
    assert [r for r in log if refused[0].time < r.time < refused[0].time + 1.0] == []
    assert log[-1].status_code == 200


def test_created_at_generations_video_where_generations_is_missing(sandbox, tmp_path):
    with settings_restored(sandbox.luma.settings) as settings:
        settings.create_paths = ("/generations/video",)
        with running_service(sandbox.url, tmp_path / "v.db") as service:
            job = submit(service, "Fog in a pine forest")
            done = service.wait_status(job["id"], "completed")
    posts = [(r.path, r.status_code) for r in sandbox.luma.requests if r.method == "POST"]
    assert posts[-2:] == [("/luma/generations", 405), ("/luma/generations/video", 201)]
    assert done["result_url"].endswith(f"/assets/{done['provider_job_id']}.mp4")


def test_a_replayed_callback_writes_nothing(service, sandbox):
    job = submit(service, "Snow on a red roof")
    done = service.wait_status(job["id"], "completed")
    generation_id = done["provider_job_id"]
    service.wait(job["id"], lambda _: len(sent_to(sandbox, generation_id, "completed")) == 2)
    url = callback_url(service, job["id"])
    original = sent_to(sandbox, generation_id, "completed")[0].body
    before = service.counts()

    again = service.http.post(url, content=original, headers={"Content-Type": "application/json"})
    assert (again.status_code, again.json()) == (200, {"ok": True, "duplicate": True})

    body = json.loads(original)
    body["assets"]["video"] = "https://evil.example/other.mp4"
    forged = service.http.post(url, json=body)
    refusal(forged, 409, "replayed_nonce")
    assert service.counts() == before
    assert service.job(job["id"])["result_url"] == done["result_url"]


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"id": "7d4e9f00-0000-4000-8000-000000000000", "state": "completed"}, "wrong_task"),
        ({"state": "completed", "assets": {"video": "https://evil.example/x.mp4"}}, "wrong_task"),
        ({"challenge": "is anyone there"}, "wrong_task"),
    ],
)
def test_a_forged_callback_is_401_and_writes_nothing(service, body, reason):
    job, url = waiting_job(service)
    before = service.counts()
    refusal(service.http.post(url, json=body), 401, "invalid_signature", reason)
    assert service.counts() == before
    assert service.job(job["id"])["status"] == "queued"


def test_a_callback_for_another_job_is_refused(service, sandbox):
    mine, _ = waiting_job(service)
    other, other_url = waiting_job(service)
    generation = sandbox.luma.tasks[mine["provider_job_id"]]
    body = {"id": generation.id, "state": "completed", "generation_type": "video"}
    before = service.counts()
    # My generation's news, sent with the other job's token.
    refusal(service.http.post(other_url, json=body), 401, "invalid_signature", "wrong_task")
    # The other job's token, on another provider's route.
    token = other_url.rsplit("/", 1)[1]
    wrong_route = service.http.post(f"/callbacks/minimax/{token}", json=body)
    refusal(wrong_route, 404, "unknown_token")
    assert service.counts() == before
    assert [service.job(j["id"])["status"] for j in (mine, other)] == ["queued", "queued"]


def test_a_processing_callback_applies_its_state_and_a_final_one_waits_for_luma(service, sandbox):
    job, url = waiting_job(service)
    generation_id = job["provider_job_id"]
    dreaming = {"id": generation_id, "state": "dreaming"}
    assert service.http.post(url, json=dreaming).json() == {"ok": True, "duplicate": False}
    assert service.job(job["id"])["status"] == "processing"
    # Luma still says dreaming: a completed callback is stored, and only prompts a look.
    claimed = {**dreaming, "state": "completed", "assets": {"video": "https://evil.example/x"}}
    polls = len(sandbox.luma.requests_to(f"/generations/{generation_id}$"))
    assert service.http.post(url, json=claimed).status_code == 200
    wait_for(lambda: len(sandbox.luma.requests_to(f"/generations/{generation_id}$")) > polls)
    checked = service.job(job["id"])
    assert (checked["status"], checked["result_url"]) == ("processing", None)
    assert checked["callbacks"][-1]["outcome"] == "confirming"


def test_luma_jobs_cannot_be_canceled(service, sandbox):
    job, _ = waiting_job(service)
    before = service.counts()
    response = service.api.post(f"/api/jobs/{job['id']}/cancel")
    refusal(response, 409, "cancel_unsupported")
    assert service.counts() == before
    assert not [r for r in sandbox.luma.requests if r.method == "DELETE"]
    assert httpx.get(f"{sandbox.url}/luma/generations/{job['provider_job_id']}").status_code == 401

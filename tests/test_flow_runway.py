"""Runway end to end: vidhook serving on loopback, polling the fake Runway."""

from __future__ import annotations

import httpx
import pytest

from receiver.sandbox import runway as runway_fake
from tests.conftest import running_service


def reached(job):
    return [t["to_status"] for t in job["transitions"]]


def test_success_keeps_the_first_output(service, sandbox):
    job = service.submit("A heron lifts off the river", provider="runway")
    done = service.wait_status(job["id"], "completed")
    task_id = done["provider_job_id"]
    assert done["result_url"].startswith(f"{sandbox.url}/runway/files/{task_id}.mp4?_jwt=")
    assert reached(done) == ["queued", "processing", "completed"]
    assert {t["source"] for t in done["transitions"][1:]} == {"poll"}
    gets = [r for r in sandbox.runway.requests if r.method == "GET" and r.task_id == task_id]
    assert gets and all(r.status_code == 200 for r in gets)


def test_an_image_job_goes_to_image_to_video(service, sandbox):
    job = service.submit(
        "The tiger blinks", provider="runway", images=["https://example.com/tiger.png"]
    )
    done = service.wait_status(job["id"], "completed")
    task = sandbox.runway.tasks[done["provider_job_id"]]
    assert task.params["promptImage"] == "https://example.com/tiger.png"
    assert [r.path for r in sandbox.runway.requests if r.method == "POST"] == [
        "/runway/v1/image_to_video"
    ]


def test_failure_keeps_the_reason_and_the_code(service):
    job = service.submit("A glass city at night [fail]", provider="runway")
    failed = service.wait_status(job["id"], "failed")
    assert failed["error"] == f"{runway_fake.FAIL_MESSAGE} ({runway_fake.FAIL_CODE})"
    assert failed["result_url"] is None


def test_an_unknown_status_is_kept_raw(service):
    job = service.submit("Lanterns on a lake [unknown] [slow]", provider="runway")
    seen = service.wait(job["id"], lambda j: j["provider_status"] == "ASSIGNED")
    assert seen["status"] == "queued" and seen["anomalies"] == []
    done = service.wait_status(job["id"], "completed")
    assert reached(done) == ["queued", "processing", "completed"]


def test_a_throttled_job_is_queued_until_a_slot_frees(sandbox, tmp_path):
    sandbox.runway.settings.concurrency = 1
    with running_service(sandbox.url, tmp_path / "v.db") as service:
        first = service.submit("One [slow]", provider="runway")
        second = service.submit("Two", provider="runway")
        waiting = service.wait(second["id"], lambda j: j["provider_status"] == "THROTTLED")
        assert waiting["status"] == "queued"
        service.wait_status(first["id"], "completed", timeout=15)
        done = service.wait_status(second["id"], "completed", timeout=15)
    assert reached(done)[0] == "queued" and reached(done)[-1] == "completed"


def test_a_daily_limit_refuses_the_submission(service, sandbox):
    sandbox.runway.settings.daily_limit = 0
    answer = service.api.post("/api/jobs", json={"provider": "runway", "prompt": "One more"})
    assert answer.status_code == 502
    assert runway_fake.DAILY_LIMIT_MESSAGE in answer.json()["error"]["message"]
    assert "HTTP 429" in answer.json()["error"]["message"]


def test_retry_after_is_honoured(sandbox, tmp_path):
    faults = sandbox.runway.settings.faults
    faults.paths, faults.rate_limit, faults.retry_after = r"/v1/tasks/", 1, 1.0
    overrides = {"runway": {"max_concurrency": 1}}
    with running_service(sandbox.url, tmp_path / "v.db", overrides) as service:
        jobs = [service.submit(f"Dunes {i} [slow]", provider="runway") for i in range(2)]
        for job in jobs:
            service.wait_status(job["id"], "completed", timeout=15)
    requests = sandbox.runway.requests
    refused = [r for r in requests if r.status_code == 429]
    assert len(refused) == 1
    window = [r for r in requests if refused[0].time < r.time < refused[0].time + 1.0]
    assert window == []


@pytest.mark.parametrize("version", [None, "2024-09-13"])
def test_the_fake_refuses_requests_without_the_version_vidhook_sends(service, sandbox, version):
    headers = {"Authorization": "Bearer x"} | ({"X-Runway-Version": version} if version else {})
    sandbox.runway.settings.api_keys = []
    answer = httpx.get(f"{sandbox.url}/runway/v1/tasks/nothing", headers=headers)
    assert answer.status_code == 400
    job = service.submit("A kite", provider="runway")
    assert service.wait_status(job["id"], "completed")["result_url"]


def test_runway_takes_no_callbacks(service):
    job = service.submit("A kite", provider="runway")
    assert service.job(job["id"])["callback_url"] is None
    before = service.counts()
    answer = service.http.post(
        "/callbacks/runway/anything", json={"id": "x", "status": "SUCCEEDED", "output": ["u"]}
    )
    assert answer.status_code == 404
    assert answer.json()["error"]["code"] == "unknown_provider"
    after = service.counts()
    assert (after["callbacks"], after["nonces"]) == (before["callbacks"], before["nonces"])

"""MiniMax through a running service, against the fake: the callback URL's challenge,
unsigned status callbacks, the result file resolved by the poll that sees Success."""

from __future__ import annotations

import time

import httpx
import pytest

from receiver.sandbox.minimax import UNDOCUMENTED_STATUS
from tests.conftest import running_sandbox, running_service, settings_restored, wait_for


@pytest.fixture(scope="module")
def sandbox():
    with running_sandbox() as fakes:
        yield fakes


@pytest.fixture(scope="module")
def service(sandbox, tmp_path_factory):
    with running_service(sandbox.url, tmp_path_factory.mktemp("minimax") / "vidhook.db") as svc:
        yield svc


def submit(service, prompt, provider="minimax", **fields):
    body = {"provider": provider, "prompt": prompt, **fields}
    response = service.api.post("/api/jobs", json=body)
    assert response.status_code == 201, response.text
    return response.json()


def callback_url(service, job_id):
    ((url,),) = service.rows("SELECT callback_url FROM jobs WHERE id=?", job_id)
    return url


def sent_to(sandbox, task_id, status=None):
    return [
        c
        for c in list(sandbox.minimax.callbacks)
        if c.task_id == task_id and status in (None, c.status)
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


def waiting_job(service, prompt="A quiet harbour [never] [lost]"):
    """A job whose task never ends and calls back nowhere: only tests write to it."""
    job = submit(service, prompt)
    assert job["provider_job_id"]
    return job, callback_url(service, job["id"])


def test_success_stores_a_fresh_download_url_and_the_challenge_nothing(service, sandbox):
    job = submit(service, "A red kite over hills [Pan left]", options={"duration": 10})
    done = service.wait_status(job["id"], "completed")
    task_id = done["provider_job_id"]
    file_id = sandbox.minimax.tasks[task_id].file_id
    assert done["result_url"].startswith(f"{sandbox.url}/minimax/download/main/{file_id}.mp4?")
    video = httpx.get(done["result_url"])
    assert (video.status_code, video.headers["content-type"]) == (200, "video/mp4")
    assert steps(done) == [("queued", "api"), ("processing", "callback"), ("completed", "poll")]
    # The challenge was echoed in time, before the create answered, and is not a callback.
    url = callback_url(service, job["id"])
    (check,) = [c for c in sandbox.minimax.challenges if c.url == url]
    assert check.passed and check.seconds < sandbox.minimax.settings.challenge_timeout
    assert [c["provider_status"] for c in done["callbacks"]] == ["processing", "success"]
    retrieves = sandbox.minimax.requests_to("/v1/files/retrieve")
    assert [r.task_id for r in retrieves][-1] == task_id


def test_failure_keeps_minimaxs_reason(service):
    job = submit(service, "A crowd at night [fail]")
    failed = service.wait_status(job["id"], "failed")
    assert failed["error"] == "output video sensitive (1027)"
    assert (failed["provider_status"], failed["result_url"]) == ("Fail", None)
    assert failed["transitions"][-1]["source"] == "poll"


def test_an_unknown_status_is_kept_raw(service):
    job = submit(service, "Lanterns on a lake [unknown] [slow]")
    # The callback says it in lower case, as it does every status.
    word = UNDOCUMENTED_STATUS.lower()
    seen = service.wait(job["id"], lambda j: j["provider_status"] == word)
    assert (seen["status"], seen["anomalies"]) == ("queued", [])
    done = service.wait_status(job["id"], "completed")
    assert [s for s, _ in steps(done)] == ["queued", "processing", "completed"]


def test_callbacks_spelled_as_the_query_spells_them(sandbox, service):
    with settings_restored(sandbox.minimax.settings) as settings:
        settings.callback_words = "query"
        job = submit(service, "Pebbles in a stream")
        done = service.wait_status(job["id"], "completed")
    assert [c["provider_status"] for c in done["callbacks"]] == ["Processing", "Success"]


def test_a_429_retry_after_is_honoured(sandbox, tmp_path):
    faults = sandbox.minimax.settings.faults
    started = time.monotonic()
    with settings_restored(sandbox.minimax.settings) as settings:
        settings.http_errors = True
        faults.paths, faults.rate_limit, faults.retry_after = r"/query/", 1, 1.0
        with running_service(sandbox.url, tmp_path / "v.db") as service:
            job = submit(service, "Dunes at noon")
            service.wait_status(job["id"], "completed")
    log = [r for r in sandbox.minimax.requests if r.time > started]
    refused = [r for r in log if r.status_code == 429]
    assert len(refused) == 1
    assert [r for r in log if refused[0].time < r.time < refused[0].time + 1.0] == []


def test_a_rate_limit_inside_a_200_pauses_minimax(sandbox, tmp_path):
    faults = sandbox.minimax.settings.faults
    started = time.monotonic()
    with settings_restored(sandbox.minimax.settings):
        faults.paths, faults.rate_limit = r"/query/", 1
        with running_service(sandbox.url, tmp_path / "v.db") as service:
            service.server.app.state.runtime.providers["minimax"].rate_limit_pause = 0.8
            job = submit(service, "Dunes at dusk")
            service.wait_status(job["id"], "completed")
    log = [r for r in sandbox.minimax.requests if r.time > started]
    # Answered 200 by the injected fault before any handler could name the task.
    limited = [r for r in log if r.path.endswith("/query/video_generation") and not r.task_id]
    assert len(limited) == 1 and limited[0].status_code == 200
    assert [r for r in log if 0 < r.time - limited[0].time < 0.8] == []


def test_the_challenge_is_answered_for_a_known_token_only_and_writes_nothing(service):
    job, url = waiting_job(service)
    before = service.counts()
    answer = service.http.post(url, json={"challenge": "c2VjcmV0LWNoYWxsZW5nZQ"})
    assert (answer.status_code, answer.json()) == (200, {"challenge": "c2VjcmV0LWNoYWxsZW5nZQ"})
    unknown = url.rsplit("/", 1)[0] + "/not-a-token-of-any-job"
    refusal(service.http.post(unknown, json={"challenge": "x"}), 404, "unknown_token")
    assert service.counts() == before
    assert service.job(job["id"])["callbacks"] == []
    metrics = service.http.get("/metrics").text
    assert 'vidhook_callbacks_total{outcome="handshake",provider="minimax"}' in metrics


def test_another_provider_does_not_answer_a_challenge(service):
    job = submit(service, "Moss [never] [lost]", provider="luma")
    before = service.counts()
    url = callback_url(service, job["id"])
    refusal(service.http.post(url, json={"challenge": "x"}), 401, "invalid_signature")
    assert service.counts() == before


def test_a_replayed_callback_writes_nothing(service, sandbox):
    job = submit(service, "Snow on a red roof [duplicate]")
    done = service.wait_status(job["id"], "completed")
    task_id = done["provider_job_id"]
    wait_for(lambda: len(sent_to(sandbox, task_id, "success")) == 2, what="both copies")
    url = callback_url(service, job["id"])
    original = sent_to(sandbox, task_id, "success")[0].body
    before = service.counts()

    again = service.http.post(url, content=original, headers={"Content-Type": "application/json"})
    assert (again.status_code, again.json()) == (200, {"ok": True, "duplicate": True})
    forged = service.http.post(
        url, json={"task_id": task_id, "status": "Success", "file_id": "666", "base_resp": {}}
    )
    refusal(forged, 409, "replayed_nonce")
    assert service.counts() == before
    assert service.job(job["id"])["result_url"] == done["result_url"]


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"task_id": "123456789012345", "status": "success"}, "wrong_task"),
        ({"status": "success", "file_id": "1"}, "wrong_task"),
    ],
)
def test_a_forged_callback_is_401_and_writes_nothing(service, body, reason):
    job, url = waiting_job(service)
    before = service.counts()
    refusal(service.http.post(url, json=body), 401, "invalid_signature", reason)
    assert service.counts() == before
    assert service.job(job["id"])["status"] == "queued"


def test_a_callback_for_another_job_is_refused(service):
    mine, _ = waiting_job(service)
    other, other_url = waiting_job(service)
    body = {"task_id": mine["provider_job_id"], "status": "success", "file_id": "1"}
    before = service.counts()
    refusal(service.http.post(other_url, json=body), 401, "invalid_signature", "wrong_task")
    token = other_url.rsplit("/", 1)[1]
    refusal(service.http.post(f"/callbacks/luma/{token}", json=body), 404, "unknown_token")
    assert service.counts() == before
    assert [service.job(j["id"])["status"] for j in (mine, other)] == ["queued", "queued"]


def test_minimax_jobs_cannot_be_canceled(service):
    job, _ = waiting_job(service)
    before = service.counts()
    refusal(service.api.post(f"/api/jobs/{job['id']}/cancel"), 409, "cancel_unsupported")
    assert service.counts() == before

"""Veo end to end: vidhook serving on loopback, polling the fake Gemini API's long-running
operations and keeping each video, which only the key opens."""

from __future__ import annotations

import base64

import pytest

from receiver.sandbox.veo import FAIL_MESSAGE, FILTER_REASON, UNDOCUMENTED_STATE
from tests.conftest import running_service, settings_restored

PNG = b"\x89PNG\r\n\x1a\n" + bytes(16)
IMAGE = "data:image/png;base64," + base64.b64encode(PNG).decode()


def reached(job):
    return [(t["to_status"], t["source"]) for t in job["transitions"]]


def submit(service, prompt, **fields):
    return service.submit(prompt, provider="veo", **fields)


def kept(service, job):
    return service.wait(job["id"], lambda j: j["media"]["status"] != "pending")


@pytest.mark.parametrize(("redirect", "images"), [(False, []), (True, [IMAGE])])
def test_success_keeps_the_video_downloaded_with_the_key(service, sandbox, redirect, images):
    with settings_restored(sandbox.veo.settings) as settings:
        settings.download_redirect = redirect
        job = submit(service, "A heron lifts off the river [slow]", images=images)
        done = kept(service, job)
    name = done["provider_job_id"]
    assert name.startswith("models/veo-3.1-generate-preview/operations/")
    assert done["status"] == "completed" and done["media"]["status"] == "kept"
    assert done["media"]["video"]["content_type"] == "video/mp4"
    assert done["result_url"].startswith(f"{sandbox.url}/veo/v1beta/files/")
    assert reached(done) == [("queued", "api"), ("processing", "poll"), ("completed", "poll")]
    # The file answered the archive only because the key came with it.
    (download,) = sandbox.veo.downloads_of(name)
    assert download.with_key and download.status_code == 200
    stored = [r.status_code for r in sandbox.veo.requests if r.path.startswith("/veo/storage/")]
    assert stored == ([200] if redirect else [])
    if images:
        assert sandbox.veo.tasks[name].instance["image"]["bytesBase64Encoded"] == (
            base64.b64encode(PNG).decode()
        )


def test_failure_keeps_google_s_reason(service):
    failed = service.wait_status(submit(service, "A glass city at night [fail]")["id"], "failed")
    assert (failed["error"], failed["provider_status"]) == (f"{FAIL_MESSAGE} (code 13)", "error")
    assert failed["result_url"] is None and failed["media"]["status"] != "kept"


def test_a_filtered_video_fails_with_the_filter_s_reason(service):
    failed = service.wait_status(submit(service, "A crowd at a rally [filtered]")["id"], "failed")
    assert failed["error"] == f"Google's safety filters removed the video: {FILTER_REASON}"
    assert failed["provider_status"] == "filtered"


def test_an_inline_video_fails_saying_why(service):
    failed = service.wait_status(submit(service, "A fox [inline]")["id"], "failed")
    assert "encodedVideo" in failed["error"] and failed["result_url"] is None


def test_an_unknown_state_is_kept_raw(service):
    job = submit(service, "Lanterns on a lake [unknown] [slow]")
    seen = service.wait(job["id"], lambda j: j["provider_status"] == UNDOCUMENTED_STATE)
    assert (seen["status"], seen["anomalies"]) == ("queued", [])
    done = service.wait_status(job["id"], "completed")
    assert [s for s, _ in reached(done)] == ["queued", "processing", "completed"]


def test_429_retry_after_is_honoured(sandbox, tmp_path):
    with settings_restored(sandbox.veo.settings) as settings:
        faults = settings.faults
        faults.paths, faults.rate_limit, faults.retry_after = r"/operations/", 1, 1.0
        overrides = {"veo": {"max_concurrency": 1}}
        with running_service(sandbox.url, tmp_path / "v.db", overrides) as service:
            jobs = [submit(service, f"Dunes {i}") for i in range(2)]
            for job in jobs:
                service.wait_status(job["id"], "completed", timeout=15)
    polls = [r for r in sandbox.veo.requests if "/operations/" in r.path]
    (refused,) = [r for r in polls if r.status_code == 429]
    assert [r for r in sandbox.veo.requests if refused.time < r.time < refused.time + 1.0] == []
    assert polls[-1].status_code == 200


def test_a_throttled_create_is_sent_again_later(service, sandbox):
    answer = service.api.post("/api/jobs", json={"provider": "veo", "prompt": "A heron [429]"})
    assert answer.status_code == 202, answer.text
    submission = answer.json()["submission"]
    assert submission["pending"] and "RESOURCE_EXHAUSTED" in submission["last_error"]


def test_vertex_only_fields_are_refused_before_asking_google(service, sandbox):
    before = len(sandbox.veo.requests)
    job = {"provider": "veo", "prompt": "A heron", "options": {"seed": 7, "generateAudio": True}}
    answer = service.api.post("/api/jobs", json=job)
    assert answer.status_code == 422
    fields = answer.json()["error"]["fields"]
    assert set(fields) == {"options.seed", "options.generateAudio"}
    assert "only Vertex AI" in fields["options.seed"]
    assert len(sandbox.veo.requests) == before


def test_a_refused_create_fails_the_job_with_google_s_words(service):
    job = {"provider": "veo", "prompt": "A heron", "options": {"durationSeconds": 10}}
    answer = service.api.post("/api/jobs", json=job)
    assert answer.status_code == 502
    message = answer.json()["error"]["message"]
    assert "HTTP 400 INVALID_ARGUMENT" in message and "durationSeconds" in message


def test_veo_jobs_cannot_be_canceled(service):
    job = submit(service, "A kite [never]")
    answer = service.api.post(f"/api/jobs/{job['id']}/cancel")
    assert (answer.status_code, answer.json()["error"]["code"]) == (409, "cancel_unsupported")


@pytest.mark.parametrize("path", ["/callbacks/veo/anything", "/callbacks/veo"])
def test_veo_takes_no_callbacks_and_nothing_is_written(service, path):
    job = submit(service, "A kite [never]")
    assert service.job(job["id"])["callback_url"] is None
    before = service.counts()
    name = service.job(job["id"])["provider_job_id"] or "models/veo/operations/x"
    answer = service.http.post(path, json={"name": name, "done": True, "response": {}})
    assert answer.status_code == 404
    assert answer.json()["error"]["code"] == "unknown_provider"
    assert "veo" in answer.json()["error"]["message"]
    after = service.counts()
    assert (after["callbacks"], after["nonces"]) == (before["callbacks"], before["nonces"])
    assert service.rows("SELECT count(*) FROM callbacks WHERE job_id = ?", job["id"]) == [(0,)]
    assert service.job(job["id"])["status"] in ("queued", "processing")

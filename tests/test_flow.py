"""A job's whole path with real servers: API -> sandbox Vidu -> signed callbacks -> store."""

import pytest

from tests.conftest import OLD_VIDU_KEY, VIDU_KEY, start_service, wait_for
from tests.vidu_signer import vidu_headers


def transitions(job):
    return [(t["from_status"], t["to_status"], t["source"]) for t in job["transitions"]]


@pytest.fixture
def service(engine_service):
    """Each flow on both engines: the one path of a state change is the store's."""
    return engine_service


def test_job_completes_through_signed_callbacks_and_confirmation(service, sandbox):
    job = service.submit("A red fox in the snow")
    assert job["status"] == "queued"
    assert job["provider_job_id"]
    assert "callbacks/vidu/" in job["callback_url"]

    done = service.wait_status(job["id"], "completed")
    assert transitions(done) == [
        (None, "queued", "api"),
        ("queued", "processing", "callback"),
        ("processing", "completed", "poll"),
    ]
    # The completion came from the confirming fetch after the signed success callback.
    assert done["transitions"][2]["detail"]["confirms_callback_id"] == done["callbacks"][-1]["id"]
    assert [c["provider_status"] for c in done["callbacks"]] == ["processing", "success"]
    task = sandbox.vidu.tasks[done["provider_job_id"]]
    assert done["result_url"] and done["result_url"].startswith(sandbox.url)
    assert done["cover_url"]
    assert done["credits"] == task.credits
    confirmations = [
        r
        for r in sandbox.vidu.requests
        if r.method == "GET" and r.path.endswith(f"/tasks/{task.task_id}/creations")
    ]
    assert confirmations
    # Every callback the sandbox sent was acknowledged.
    assert all(c.status_code == 200 for c in sandbox.vidu.callbacks)


def test_failing_job_ends_failed_with_err_code(service, sandbox):
    job = service.submit("A storm at sea [fail]")
    failed = service.wait_status(job["id"], "failed")
    assert failed["error"] == sandbox.settings.fail_err_code
    assert transitions(failed)[-1] == ("processing", "failed", "poll")
    assert failed["result_url"] is None


def test_out_of_order_callbacks_end_completed(service, sandbox):
    job = service.submit("Paper boats [out-of-order]")
    service.wait_status(job["id"], "completed")
    done = service.wait(job["id"], lambda j: len(j["callbacks"]) == 2)
    assert done["status"] == "completed"
    assert [c["provider_status"] for c in done["callbacks"]] == ["success", "processing"]
    reached = [t[1] for t in transitions(done)]
    assert reached[-1] == "completed"
    assert len(reached) == len(set(reached))


def test_a_late_callback_leaves_a_completed_job_completed(service, sandbox):
    job = service.submit("Harbour lights")
    done = service.wait_status(job["id"], "completed")
    callback_url = service.rows("SELECT callback_url FROM jobs")[0][0]
    body = b'{"id": "%s", "state": "processing"}' % job["provider_job_id"].encode()
    response = service.http.post(
        callback_url, content=body, headers=vidu_headers(VIDU_KEY, callback_url)
    )
    assert response.status_code == 200
    after = service.job(job["id"])
    assert after["status"] == "completed"
    assert after["transitions"] == done["transitions"]
    assert [a["observed"] for a in after["anomalies"]] == ["processing"]


def test_byte_identical_retry_gets_200_and_no_new_transition(service, sandbox):
    job = service.submit("Rain on a window [duplicate]")
    service.wait_status(job["id"], "completed")

    def sent():
        return [c for c in sandbox.vidu.callbacks if c.task_id == job["provider_job_id"]]

    # The confirming poll can end the job before the second copy of the last callback.
    wait_for(lambda: len(sent()) == 4, what="both copies of both callbacks")
    assert all(c.status_code == 200 for c in sent())
    done = service.job(job["id"])
    assert len(done["callbacks"]) == 2
    assert [t[1] for t in transitions(done)] == ["queued", "processing", "completed"]


def test_unknown_state_is_kept_raw_and_the_job_still_completes(service, sandbox):
    job = service.submit("A lantern festival [unknown]")
    done = service.wait_status(job["id"], "completed")
    assert "scheduled" in [c["provider_status"] for c in done["callbacks"]]
    assert [t[1] for t in transitions(done)] == ["queued", "processing", "completed"]


def test_rotated_key_still_verifies_callbacks_of_running_jobs(sandbox, tmp_path):
    db = tmp_path / "rotate.db"
    old = start_service(sandbox.url, db, api_key_env="OLD_VIDU_KEY")
    try:
        job = old.submit("Slow clouds [lost]")
        callback_url = old.rows("SELECT callback_url FROM jobs")[0][0]
    finally:
        old.close()
        old.server.stop()

    rotated = start_service(
        sandbox.url, db, api_key_env="VIDU_API_KEY", previous_api_key_envs=["OLD_VIDU_KEY"]
    )
    try:
        body = b'{"id": "%s", "state": "processing"}' % job["provider_job_id"].encode()
        url = callback_url.replace(callback_url.split("/callbacks/")[0], rotated.url)
        # The URL the signature covers is the stored one, whatever host reached us.
        response = rotated.http.post(
            url, content=body, headers=vidu_headers(OLD_VIDU_KEY, callback_url)
        )
        assert response.status_code == 200, response.text
        assert rotated.job(job["id"])["status"] == "processing"
    finally:
        rotated.close()
        rotated.server.stop()

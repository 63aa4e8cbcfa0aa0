"""Kling end to end: vidhook serving on loopback, the fake Kling calling it back."""

from __future__ import annotations

import base64
import json

import pytest

from tests.conftest import KLING_ACCESS_KEY, KLING_SECRET_KEY, running_service, wait_for

PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n a tiny image").decode()


def reached(job):
    return [t["to_status"] for t in job["transitions"]]


def callback_url(service, job):
    ((url,),) = service.rows("SELECT callback_url FROM jobs WHERE id=?", job["id"])
    assert url.startswith(f"{service.url}/callbacks/kling/")
    return url


def job_row(service, job_id):
    return service.rows(
        "SELECT status, provider_status, updated_at, anomalies, last_callback_at,"
        " next_poll_at, confirm_callback_id, poll_failures FROM jobs WHERE id=?",
        job_id,
    )


def snapshot(service, job_id):
    return service.counts(), job_row(service, job_id)


def settled(service, job, status="processing"):
    """The job in ``status`` with its confirming poll done: nothing more is due soon."""

    def done():
        ((now, confirming),) = service.rows(
            "SELECT status, confirm_callback_id FROM jobs WHERE id=?", job["id"]
        )
        return now == status and confirming is None

    wait_for(done, what=f"job {job['id']} settled in {status}")
    return service.job(job["id"])


def task_body(job, status="processing", updated_at=1_722_769_557_708, **extra):
    task = {
        "task_id": job["provider_job_id"],
        "task_status": status,
        "task_status_msg": "",
        "task_info": {"external_task_id": job["id"]},
        "created_at": 1_722_769_557_000,
        "updated_at": updated_at,
    }
    return json.dumps(task | extra).encode()


def post(service, url, body):
    return service.http.post(url, content=body, headers={"Content-Type": "application/json"})


@pytest.mark.parametrize("enveloped", [False, True])
def test_success_keeps_the_video_and_the_final_callback_is_confirmed(service, sandbox, enveloped):
    sandbox.kling.settings.callback_envelope = enveloped
    job = service.submit("A heron lifts off the river", provider="kling")
    done = service.wait_status(job["id"], "completed")
    assert done["result_url"] == f"{sandbox.url}/kling/files/{done['provider_job_id']}.mp4"
    assert done["credits"] == 1.0
    assert reached(done) == ["queued", "processing", "completed"]
    # processing was taken from its callback; succeed was confirmed by a poll, which
    # brought the video URL (an unsigned callback never does).
    assert [t["source"] for t in done["transitions"]] == ["api", "callback", "poll"]
    assert [c["provider_status"] for c in done["callbacks"]] == ["processing", "succeed"]
    task = sandbox.kling.tasks[done["provider_job_id"]]
    assert task.external_task_id == job["id"]
    assert task.params["callback_url"] == callback_url(service, job)


def test_an_image_job_goes_to_image2video(service, sandbox):
    job = service.submit(
        "The tiger blinks", provider="kling", images=[f"data:image/png;base64,{PNG}"]
    )
    done = service.wait_status(job["id"], "completed")
    task = sandbox.kling.tasks[done["provider_job_id"]]
    assert (task.kind, task.params["image"]) == ("image2video", PNG)


def test_failure_keeps_kling_s_reason(service, sandbox):
    job = service.submit("A glass city at night [fail]", provider="kling")
    failed = service.wait_status(job["id"], "failed")
    assert failed["error"] == sandbox.kling.settings.fail_message
    assert failed["result_url"] is None


def test_an_unknown_status_is_kept_raw(service):
    job = service.submit("Lanterns on a lake [unknown] [slow]", provider="kling")
    seen = service.wait(job["id"], lambda j: j["provider_status"] == "queueing")
    assert seen["status"] == "queued" and seen["anomalies"] == []
    done = service.wait_status(job["id"], "completed")
    assert reached(done) == ["queued", "processing", "completed"]


def test_an_early_success_callback_does_not_complete_a_running_job(service, sandbox):
    job = service.submit("A lighthouse in fog [early] [slow]", provider="kling")
    running = service.wait(
        job["id"], lambda j: "succeed" in [c["provider_status"] for c in j["callbacks"]]
    )
    task_id = running["provider_job_id"]
    early = next(c for c in sandbox.kling.callbacks if c.status == "succeed")
    # The claim prompted a poll, and the poll found the task still running.
    wait_for(
        lambda: [r for r in sandbox.kling.requests if r.method == "GET" and r.time > early.time],
        what="a confirming poll",
    )
    assert sandbox.kling.tasks[task_id].status == "processing"
    assert service.job(job["id"])["status"] in ("queued", "processing")
    done = service.wait_status(job["id"], "completed", timeout=15)
    assert done["transitions"][-1]["source"] == "poll"


def test_a_refused_submission_fails_with_kling_s_message(service):
    answer = service.api.post(
        "/api/jobs", json={"provider": "kling", "prompt": "Something forbidden [policy]"}
    )
    assert answer.status_code == 502
    assert "1301" in answer.json()["error"]["message"]


def test_retry_after_is_honoured(sandbox, tmp_path):
    faults = sandbox.kling.settings.faults
    faults.paths, faults.rate_limit, faults.retry_after = r"/v1/videos/text2video/", 1, 1.0
    with running_service(sandbox.url, tmp_path / "v.db") as service:
        job = service.submit("Dunes at noon", provider="kling")
        service.wait_status(job["id"], "completed", timeout=15)
    requests = sandbox.kling.requests
    refused = [r for r in requests if r.status_code == 429]
    assert len(refused) == 1
    window = [r for r in requests if refused[0].time < r.time < refused[0].time + 1.0]
    assert window == []


# -- refused callbacks: each writes nothing ---------------------------------------------------


def test_a_callback_naming_another_task_is_401_and_writes_nothing(service):
    job = service.submit("A still pond [lost] [never]", provider="kling")
    url = callback_url(service, job)
    job = service.wait(job["id"], lambda j: j["provider_job_id"] is not None)
    before = snapshot(service, job["id"])
    for forged in (
        task_body(job, "succeed", task_id="1234567890"),
        task_body(job, "succeed", task_info={"external_task_id": "someone-else"}),
        json.dumps({"task_status": "succeed"}).encode(),
    ):
        answer = post(service, url, forged)
        assert answer.status_code == 401, answer.text
        assert answer.json()["error"]["reason"] == "wrong_task"
        assert snapshot(service, job["id"]) == before


def test_another_job_s_callback_is_refused(service, sandbox):
    mine = service.submit("A still pond [lost] [never]", provider="kling")
    theirs = service.submit("A kite over the bay [never]", provider="kling")
    theirs = settled(service, theirs)
    (delivered,) = [c for c in sandbox.kling.callbacks if c.task_id == theirs["provider_job_id"]]
    before = snapshot(service, mine["id"])
    answer = post(service, callback_url(service, mine), delivered.body)
    assert answer.status_code == 401
    assert answer.json()["error"]["reason"] == "wrong_task"
    assert snapshot(service, mine["id"]) == before


def test_a_replayed_status_change_with_another_body_is_409(service):
    job = service.submit("A still pond [lost] [never]", provider="kling")
    url = callback_url(service, job)
    job = service.wait(job["id"], lambda j: j["provider_job_id"] is not None)
    first = post(service, url, task_body(job, "processing"))
    assert first.json() == {"ok": True, "duplicate": False}
    settled(service, job)
    before = snapshot(service, job["id"])

    again = post(service, url, task_body(job, "processing"))
    assert again.json() == {"ok": True, "duplicate": True}
    altered = task_body(job, "processing", task_status_msg="anything else")
    replayed = post(service, url, altered)
    assert replayed.status_code == 409
    assert replayed.json()["error"]["code"] == "replayed_nonce"
    assert snapshot(service, job["id"]) == before


def test_an_unknown_token_is_404_and_writes_nothing(service):
    job = service.submit("A still pond [lost] [never]", provider="kling")
    url = callback_url(service, job)
    job = service.wait(job["id"], lambda j: j["provider_job_id"] is not None)
    before = snapshot(service, job["id"])
    answer = post(service, url[:-4] + "AAAA", task_body(job, "succeed"))
    assert answer.status_code == 404
    assert snapshot(service, job["id"]) == before


# -- key rotation -----------------------------------------------------------------------------

OLD_PAIR = {"access_key_env": "OLD_KLING_ACCESS_KEY", "secret_key_env": "OLD_KLING_SECRET_KEY"}
QUICK_RECONCILE = {"reconcile_after": 0.3, "reconcile_interval": 0.2}


@pytest.mark.parametrize("kept", [True, False])
def test_jobs_of_a_rotated_pair_are_polled_with_it_while_it_is_listed(sandbox, tmp_path, kept):
    db = tmp_path / "v.db"
    with running_service(sandbox.url, db, {"kling": OLD_PAIR | QUICK_RECONCILE}) as service:
        job = service.submit("A kite over the bay [lost] [slow]", provider="kling")
    previous = {
        "previous_access_key_envs": ["OLD_KLING_ACCESS_KEY"],
        "previous_secret_key_envs": ["OLD_KLING_SECRET_KEY"],
    }
    overrides = {"kling": QUICK_RECONCILE | (previous if kept else {})}
    with running_service(sandbox.url, db, overrides) as service:
        if kept:
            done = service.wait_status(job["id"], "completed", timeout=15)
            assert done["result_url"]
        else:
            # The fake's tasks belong to the pair that made them, as Kling's belong to
            # an account: the new pair alone cannot find it.
            failed = service.wait_status(job["id"], "failed", timeout=15)
            assert "HTTP 404" in failed["error"]
        ((fingerprint,),) = service.rows("SELECT key_fingerprint FROM jobs WHERE id=?", job["id"])
    assert fingerprint.startswith("sha256:")
    for secret in (KLING_ACCESS_KEY, KLING_SECRET_KEY):
        assert secret not in fingerprint

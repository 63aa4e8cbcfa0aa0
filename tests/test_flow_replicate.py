"""Replicate end to end: vidhook serving on loopback, the fake Replicate sending it signed
webhooks."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import json
import time

import pytest

from receiver.providers.replicate import REMOVED
from receiver.sandbox import replicate as replicate_fake
from tests.conftest import (
    REPLICATE_WEBHOOK_SECRET,
    running_service,
    settings_restored,
    wait_for,
)

QUICK_RECONCILE = {"replicate": {"reconcile_after": 0.2, "reconcile_interval": 0.2}}


def reached(job):
    return [(t["to_status"], t["source"]) for t in job["transitions"]]


def callback_url(service, job):
    ((url,),) = service.rows("SELECT callback_url FROM jobs WHERE id=?", job["id"])
    assert url.startswith(f"{service.url}/callbacks/replicate/")
    return url


def snapshot(service, job_id):
    row = service.rows(
        "SELECT status, provider_status, result_url, error, updated_at, anomalies,"
        " last_callback_at, next_poll_at, confirm_callback_id FROM jobs WHERE id=?",
        job_id,
    )
    return service.counts(), row


def signed(body, *, secret=REPLICATE_WEBHOOK_SECRET, msg_id="msg_test_1", timestamp=None):
    """Standard Webhooks headers made here, not by vidhook's signer."""
    timestamp = int(time.time()) if timestamp is None else timestamp
    key = base64.b64decode(secret.removeprefix("whsec_"))
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return {
        "Content-Type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": "v1," + base64.b64encode(mac).decode(),
    }


def post(service, url, body, headers):
    return service.http.post(url, content=body, headers=headers)


def prediction_body(sandbox, job, status="processing", **changes):
    prediction = sandbox.replicate.tasks[job["provider_job_id"]]
    return json.dumps(sandbox.replicate.body(prediction) | {"status": status} | changes).encode()


def waiting(service, prompt="A still pond [never] [lost]"):
    """A job whose prediction runs forever and sends nothing: the test speaks for it."""
    job = service.submit(prompt, provider="replicate")
    return service.wait(job["id"], lambda j: j["provider_job_id"] is not None)


@pytest.mark.parametrize("marker", ["", "[list]"])
def test_success_keeps_the_output_url_from_the_signed_webhook(service, sandbox, marker):
    # [slow]: the start webhook comes well after the create answer is stored (a webhook
    # overtaking it could not be tied to its prediction yet, and is refused).
    job = service.submit(f"A heron lifts off the river [slow] {marker}", provider="replicate")
    done = service.wait_status(job["id"], "completed")
    prediction_id = done["provider_job_id"]
    assert done["result_url"] == f"{sandbox.url}/replicate/files/{prediction_id}/output.mp4"
    # Signed bodies are applied as they say: no confirming fetch, no poll at all.
    assert reached(done) == [
        ("queued", "api"),
        ("processing", "callback"),
        ("completed", "callback"),
    ]
    assert [c["provider_status"] for c in done["callbacks"]] == ["processing", "succeeded"]
    # No status fetch confirmed it (the archive's download of the output is no fetch).
    fetches = [r for r in sandbox.replicate.requests if r.method == "GET"]
    assert not [r for r in fetches if "/files/" not in r.path]
    prediction = sandbox.replicate.tasks[prediction_id]
    assert prediction.webhook == callback_url(service, job)
    assert prediction.events == frozenset({"start", "completed"})
    sent = [w for w in sandbox.replicate.webhooks if w.prediction_id == prediction_id]
    assert [(w.event, w.status_code) for w in sent] == [("start", 200), ("completed", 200)]


def test_a_job_names_a_version_instead_of_a_model(service, sandbox):
    version = replicate_fake.version_of("minimax/video-01")
    job = service.submit("A heron", provider="replicate", model=f"minimax/video-01:{version}")
    done = service.wait_status(job["id"], "completed")
    assert sandbox.replicate.tasks[done["provider_job_id"]].model == "minimax/video-01"
    posts = [r.path for r in sandbox.replicate.requests if r.method == "POST"]
    assert posts == ["/replicate/v1/predictions"]


def test_failure_keeps_replicate_s_reason(service):
    job = service.submit("A glass city at night [fail]", provider="replicate")
    failed = service.wait_status(job["id"], "failed")
    assert failed["error"] == replicate_fake.FAIL_MESSAGE
    assert failed["result_url"] is None
    assert failed["transitions"][-1]["source"] == "callback"


def test_an_unknown_status_is_kept_raw_from_a_webhook_and_from_a_poll(sandbox, tmp_path):
    with (
        settings_restored(sandbox.replicate.settings) as settings,
        running_service(sandbox.url, tmp_path / "v.db", QUICK_RECONCILE) as service,
    ):
        # Booting for 3 s ([slow] times six): long enough for a poll on a busy machine.
        settings.timing = dataclasses.replace(settings.timing, start_delay=0.5)
        polled = service.submit("Lanterns on a lake [unknown] [slow] [lost]", provider="replicate")
        seen = service.wait(polled["id"], lambda j: j["provider_status"] == "booting")
        assert seen["status"] == "queued" and seen["anomalies"] == []

        job = waiting(service)
        body = prediction_body(sandbox, job, status="warming")
        answer = post(service, callback_url(service, job), body, signed(body))
        assert answer.json() == {"ok": True, "duplicate": False}
        told = service.job(job["id"])
        assert (told["status"], told["provider_status"]) == ("queued", "warming")
        done = service.wait_status(polled["id"], "completed", timeout=15)
        assert done["result_url"]


def test_a_refused_create_fails_the_job_with_replicate_s_words(service):
    job = {"provider": "replicate", "prompt": "A heron", "model": "nobody/nothing"}
    answer = service.api.post("/api/jobs", json=job)
    assert answer.status_code == 502
    message = answer.json()["error"]["message"]
    assert "HTTP 404" in message and "could not be found" in message


def test_retry_after_is_honoured(sandbox, tmp_path):
    faults = sandbox.replicate.settings.faults
    faults.paths, faults.rate_limit, faults.retry_after = r"/v1/predictions/\w+$", 1, 1.0
    overrides = {"replicate": QUICK_RECONCILE["replicate"] | {"max_concurrency": 1}}
    with running_service(sandbox.url, tmp_path / "v.db", overrides) as service:
        jobs = [service.submit(f"Dunes {i} [lost]", provider="replicate") for i in range(2)]
        for job in jobs:
            done = service.wait_status(job["id"], "completed", timeout=15)
            assert done["transitions"][-1]["source"] == "poll"
    requests = sandbox.replicate.requests
    (refused,) = [r for r in requests if r.status_code == 429]
    assert [r for r in requests if refused.time < r.time < refused.time + 1.0] == []


def test_a_prediction_can_be_canceled(service, sandbox):
    job = waiting(service, "A kite [never]")
    answer = service.api.post(f"/api/jobs/{job['id']}/cancel")
    assert answer.status_code == 200, answer.text
    assert answer.json()["status"] == "canceled"
    assert sandbox.replicate.tasks[job["provider_job_id"]].status == "canceled"
    # Replicate announces the end too; the job has ended, so it changes nothing.
    wait_for(
        lambda: [w for w in sandbox.replicate.webhooks if w.status == "canceled"],
        what="the canceled webhook",
    )
    assert reached(service.job(job["id"]))[-1] == ("canceled", "cancel")


def test_an_output_removed_before_it_was_seen_fails_the_job_saying_why(sandbox, tmp_path):
    sandbox.replicate.settings.retention = 0.2
    overrides = {"replicate": {"reconcile_after": 1.0, "reconcile_interval": 0.5}}
    with running_service(sandbox.url, tmp_path / "v.db", overrides) as service:
        job = service.submit("A heron [lost]", provider="replicate")
        failed = service.wait_status(job["id"], "failed", timeout=15)
    assert (failed["error"], failed["provider_status"]) == (REMOVED, "succeeded")


# -- refused webhooks: each writes nothing ---------------------------------------------------


def test_forged_and_stale_webhooks_are_401_and_write_nothing(service, sandbox):
    job = waiting(service)
    url = callback_url(service, job)
    body = prediction_body(sandbox, job, "succeeded", output="https://evil.test/x.mp4")
    other = "whsec_" + base64.b64encode(b"not-the-account-secret-012345678").decode()
    tampered = signed(prediction_body(sandbox, job, "succeeded"))
    before = snapshot(service, job["id"])
    for headers, reason in (
        (signed(body, secret=other), "bad_signature"),
        (tampered, "bad_signature"),
        (signed(body, timestamp=int(time.time()) - 301), "stale_date"),
        ({"Content-Type": "application/json"}, "missing_header"),
    ):
        answer = post(service, url, body, headers)
        assert answer.status_code == 401, answer.text
        assert answer.json()["error"]["reason"] == reason
        assert snapshot(service, job["id"]) == before


def test_a_resent_webhook_is_a_duplicate_and_a_reused_id_is_409(service, sandbox):
    job = waiting(service)
    url = callback_url(service, job)
    body = prediction_body(sandbox, job, "processing")
    first = post(service, url, body, signed(body))
    assert first.json() == {"ok": True, "duplicate": False}
    before = snapshot(service, job["id"])

    again = post(service, url, body, signed(body))  # a retry: same id, same bytes
    assert again.json() == {"ok": True, "duplicate": True}
    other = prediction_body(sandbox, job, "succeeded", output="https://evil.test/x.mp4")
    replayed = post(service, url, other, signed(other))  # signed, but the id is spent
    assert replayed.status_code == 409
    assert replayed.json()["error"]["code"] == "replayed_nonce"
    assert snapshot(service, job["id"]) == before


def test_another_job_s_webhook_is_refused(service, sandbox):
    mine = waiting(service)
    theirs = service.submit("A kite over the bay", provider="replicate")
    theirs = service.wait_status(theirs["id"], "completed")
    delivered = next(
        w
        for w in sandbox.replicate.webhooks
        if w.prediction_id == theirs["provider_job_id"] and w.event == "completed"
    )
    before = snapshot(service, mine["id"])
    answer = post(service, callback_url(service, mine), delivered.body, delivered.headers)
    assert answer.status_code == 401
    assert answer.json()["error"]["reason"] == "wrong_task"
    assert snapshot(service, mine["id"]) == before


def test_an_unknown_token_is_404_and_writes_nothing(service, sandbox):
    job = waiting(service)
    url = callback_url(service, job)
    body = prediction_body(sandbox, job, "succeeded")
    before = snapshot(service, job["id"])
    answer = post(service, url[:-4] + "AAAA", body, signed(body))
    assert answer.status_code == 404
    assert snapshot(service, job["id"]) == before

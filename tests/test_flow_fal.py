"""fal end to end: vidhook serving on loopback, the fake fal queue sending it webhooks
signed with Ed25519 and publishing its keys as a JWKS."""

from __future__ import annotations

import hashlib
import json
import time

from receiver.sandbox import fal as fal_fake
from tests.conftest import running_service, wait_for

QUICK_RECONCILE = {"fal": {"reconcile_after": 0.2, "reconcile_interval": 0.2}}
APP = "fal-ai/kling-video"
POLICY_ERROR = f"prompt: {fal_fake.POLICY_MESSAGE} ({fal_fake.POLICY_TYPE})"


def reached(job):
    return [(t["to_status"], t["source"]) for t in job["transitions"]]


def callback_url(service, job):
    ((url,),) = service.rows("SELECT callback_url FROM jobs WHERE id=?", job["id"])
    assert url.startswith(f"{service.url}/callbacks/fal/")
    return url


def snapshot(service, job_id):
    row = service.rows(
        "SELECT status, provider_status, result_url, error, updated_at, anomalies,"
        " last_callback_at, next_poll_at, confirm_callback_id FROM jobs WHERE id=?",
        job_id,
    )
    return service.counts(), row


def jwks_fetches(sandbox):
    return [r for r in sandbox.fal.requests if r.path.endswith("/.well-known/jwks.json")]


def request_id_of(job):
    return job["provider_job_id"].rsplit("/", 1)[1]


def signed(sandbox, body, request_id, *, key=None, ts=None, user_id=None):
    """fal's headers, made here with the fake's private key rather than by the fake."""
    ts = int(time.time()) if ts is None else ts
    user_id = sandbox.fal.settings.user_id if user_id is None else user_id
    text = f"{request_id}\n{user_id}\n{ts}\n{hashlib.sha256(body).hexdigest()}".encode()
    private = (key or sandbox.fal.signing_key).private
    return {
        "Content-Type": "application/json",
        "X-Fal-Webhook-Request-Id": request_id,
        "X-Fal-Webhook-User-Id": user_id,
        "X-Fal-Webhook-Timestamp": str(ts),
        "X-Fal-Webhook-Signature": private.sign(text).hex(),
    }


def webhook_body(request_id, status="OK", **extra):
    body = {"request_id": request_id, "gateway_request_id": request_id, "status": status}
    return json.dumps(body | extra).encode()


def post(service, url, body, headers):
    return service.http.post(url, content=body, headers=headers)


def waiting(service, prompt="A still pond [never] [lost]"):
    job = service.submit(prompt, provider="fal")
    return service.wait(job["id"], lambda j: j["provider_job_id"] is not None)


def fal_adapter(service):
    return service.server.app.state.runtime.providers["fal"]


def test_success_keeps_the_video_from_the_signed_webhook(service, sandbox):
    job = service.submit("A heron lifts off the river", provider="fal")
    done = service.wait_status(job["id"], "completed")
    request_id = request_id_of(done)
    # The request is asked about under its app: the model's subpath is dropped.
    assert done["provider_job_id"] == f"{APP}/requests/{request_id}"
    assert done["result_url"] == f"{sandbox.url}/fal/files/{request_id}/output.mp4"
    assert reached(done) == [("queued", "api"), ("completed", "callback")]
    assert [c["provider_status"] for c in done["callbacks"]] == ["OK"]
    queued = sandbox.fal.tasks[request_id]
    assert queued.webhook == callback_url(service, job)
    assert queued.model_id == "fal-ai/kling-video/v2.5-turbo/pro/text-to-video"
    assert len(jwks_fetches(sandbox)) == 1
    second = service.submit("A kite over the bay", provider="fal")
    service.wait_status(second["id"], "completed")
    assert len(jwks_fetches(sandbox)) == 1  # the keys are kept


def test_failure_keeps_fal_s_reason(service):
    job = service.submit("A glass city at night [fail]", provider="fal")
    failed = service.wait_status(job["id"], "failed")
    assert failed["error"] == POLICY_ERROR
    assert failed["result_url"] is None


def test_a_failure_found_by_a_poll_reads_the_result(sandbox, tmp_path):
    with running_service(sandbox.url, tmp_path / "v.db", QUICK_RECONCILE) as service:
        job = service.submit("A glass city at night [fail] [lost]", provider="fal")
        failed = service.wait_status(job["id"], "failed")
    assert failed["error"] == POLICY_ERROR
    assert failed["transitions"][-1]["source"] == "poll"
    results = [r for r in sandbox.fal.requests if r.path.endswith(request_id_of(failed))]
    assert results and {r.status_code for r in results} == {422}


def test_a_payload_that_could_not_be_sent_is_settled_by_the_result(service, sandbox):
    job = service.submit("A heron [badjson]", provider="fal")
    done = service.wait_status(job["id"], "completed")
    assert done["result_url"] == f"{sandbox.url}/fal/files/{request_id_of(done)}/output.mp4"
    assert reached(done)[-1] == ("completed", "poll")
    assert done["callbacks"][0]["outcome"] == "confirming"


def test_an_unknown_status_is_kept_raw(sandbox, tmp_path):
    with running_service(sandbox.url, tmp_path / "v.db", QUICK_RECONCILE) as service:
        job = service.submit("Lanterns on a lake [unknown] [slow] [lost]", provider="fal")
        seen = service.wait(job["id"], lambda j: j["provider_status"] == "IN_BUFFER")
        assert seen["status"] == "queued" and seen["anomalies"] == []
        done = service.wait_status(job["id"], "completed", timeout=15)
    assert [s for s, _ in reached(done)] == ["queued", "processing", "completed"]


def test_retry_after_is_honoured(sandbox, tmp_path):
    faults = sandbox.fal.settings.faults
    faults.paths, faults.rate_limit, faults.retry_after = r"/requests/[^/]+/status$", 1, 1.0
    overrides = {"fal": QUICK_RECONCILE["fal"] | {"max_concurrency": 1}}
    with running_service(sandbox.url, tmp_path / "v.db", overrides) as service:
        jobs = [service.submit(f"Dunes {i} [lost]", provider="fal") for i in range(2)]
        for job in jobs:
            service.wait_status(job["id"], "completed", timeout=15)
    requests = sandbox.fal.requests
    (refused,) = [r for r in requests if r.status_code == 429]
    assert [r for r in requests if refused.time < r.time < refused.time + 1.0] == []


def test_a_refused_submit_fails_the_job_with_fal_s_words(service):
    job = {"provider": "fal", "prompt": "A heron", "options": {"duration": "7"}}
    answer = service.api.post("/api/jobs", json=job)
    assert answer.status_code == 502
    message = answer.json()["error"]["message"]
    assert "HTTP 422" in message and "duration: Input should be '5' or '10'" in message


def test_a_request_can_be_canceled(service, sandbox):
    job = waiting(service, "A kite [never]")
    answer = service.api.post(f"/api/jobs/{job['id']}/cancel")
    assert answer.status_code == 200, answer.text
    assert answer.json()["status"] == "canceled"
    puts = [r for r in sandbox.fal.requests if r.method == "PUT"]
    assert [(r.path, r.status_code) for r in puts] == [
        (f"/fal/{job['provider_job_id']}/cancel", 202)
    ]


# -- keys ------------------------------------------------------------------------------------


def test_a_rotated_key_is_fetched_when_none_verifies_but_not_twice_a_minute(service, sandbox):
    first = service.submit("A heron", provider="fal")
    service.wait_status(first["id"], "completed")
    assert len(jwks_fetches(sandbox)) == 1

    sandbox.fal.rotate_key()
    soon = waiting(service, "A kite")
    request_id = request_id_of(soon)
    # Within the minute of the last fetch: refused, and fal's retries are refused too.
    wait_for(
        lambda: len([w for w in sandbox.fal.webhooks if w.request_id == request_id]) == 3,
        what="the webhook signed with the new key, and its retries",
    )
    delivered = [w for w in sandbox.fal.webhooks if w.request_id == request_id]
    assert {w.status_code for w in delivered} == {401}
    before = snapshot(service, soon["id"])
    url = callback_url(service, soon)
    refused = post(service, url, delivered[-1].body, delivered[-1].headers)
    assert refused.status_code == 401
    assert refused.json()["error"]["reason"] == "bad_signature"
    assert snapshot(service, soon["id"]) == before
    assert len(jwks_fetches(sandbox)) == 1

    # A minute on, the same webhook has the keys fetched again, and the new one verifies.
    fal_adapter(service).keys.clock = lambda: time.monotonic() + 61
    accepted = post(service, url, delivered[-1].body, delivered[-1].headers)
    assert accepted.json() == {"ok": True, "duplicate": False}
    done = service.wait_status(soon["id"], "completed")
    assert reached(done)[-1] == ("completed", "callback")
    assert len(jwks_fetches(sandbox)) == 2


def test_unreachable_keys_answer_503_and_write_nothing(sandbox, tmp_path):
    overrides = {"fal": {"jwks_url": f"{sandbox.url}/fal/.well-known/missing.json"}}
    with running_service(sandbox.url, tmp_path / "v.db", overrides) as service:
        job = service.submit("A heron", provider="fal")
        wait_for(lambda: sandbox.fal.webhooks, what="a webhook")
        before = snapshot(service, job["id"])
        delivered = sandbox.fal.webhooks[0]
        assert delivered.status_code == 503
        answer = post(service, callback_url(service, job), delivered.body, delivered.headers)
        assert answer.status_code == 503
        assert answer.headers["retry-after"] == "60"
        assert answer.json()["error"]["code"] == "cannot_verify"
        assert snapshot(service, job["id"]) == before
        assert service.job(job["id"])["status"] == "queued"


# -- refused webhooks: each writes nothing ---------------------------------------------------


def test_forged_and_stale_webhooks_are_401_and_write_nothing(service, sandbox):
    job = waiting(service)
    url = callback_url(service, job)
    request_id = request_id_of(job)
    body = webhook_body(request_id, payload={"video": {"url": "https://evil.test/x.mp4"}})
    forger = fal_fake.SigningKey("forger", fal_fake.Ed25519PrivateKey.generate())
    honest = signed(sandbox, webhook_body(request_id, payload=None), request_id)
    before = snapshot(service, job["id"])
    for headers, reason in (
        (signed(sandbox, body, request_id, key=forger), "bad_signature"),
        (honest, "bad_signature"),  # a signature of another body
        (signed(sandbox, body, request_id, user_id="someone-else") | {
            "X-Fal-Webhook-User-Id": sandbox.fal.settings.user_id}, "bad_signature"),
        (signed(sandbox, body, request_id, ts=int(time.time()) - 301), "stale_date"),
        ({"Content-Type": "application/json"}, "missing_header"),
    ):  # fmt: skip
        answer = post(service, url, body, headers)
        assert answer.status_code == 401, answer.text
        assert answer.json()["error"]["reason"] == reason
        assert snapshot(service, job["id"]) == before


def test_a_resent_webhook_is_a_duplicate_and_another_body_for_the_request_is_409(service, sandbox):
    job = waiting(service)
    url = callback_url(service, job)
    request_id = request_id_of(job)
    body = webhook_body(request_id, status="ERROR", error="Invalid status code: 500")
    first = post(service, url, body, signed(sandbox, body, request_id))
    assert first.json() == {"ok": True, "duplicate": False}
    assert service.job(job["id"])["status"] == "failed"
    before = snapshot(service, job["id"])

    again = post(service, url, body, signed(sandbox, body, request_id))  # fal's retry
    assert again.json() == {"ok": True, "duplicate": True}
    other = webhook_body(request_id, payload={"video": {"url": "https://evil.test/x.mp4"}})
    replayed = post(service, url, other, signed(sandbox, other, request_id))
    assert replayed.status_code == 409
    assert replayed.json()["error"]["code"] == "replayed_nonce"
    assert snapshot(service, job["id"]) == before


def test_another_job_s_webhook_is_refused(service, sandbox):
    mine = waiting(service)
    theirs = service.submit("A kite over the bay", provider="fal")
    theirs = service.wait_status(theirs["id"], "completed")
    delivered = next(w for w in sandbox.fal.webhooks if w.request_id == request_id_of(theirs))
    before = snapshot(service, mine["id"])
    answer = post(service, callback_url(service, mine), delivered.body, delivered.headers)
    assert answer.status_code == 401
    assert answer.json()["error"]["reason"] == "wrong_task"
    assert snapshot(service, mine["id"]) == before

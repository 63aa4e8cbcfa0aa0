"""PixVerse end to end: vidhook serving on loopback, the fake PixVerse sending every job's
webhook to the one account-level URL, signed with the account's secret."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from urllib.parse import quote_plus

import pytest

from receiver.providers.pixverse import FAILURES
from receiver.sandbox.pixverse import UNDOCUMENTED_STATUS
from tests.conftest import (
    PIXVERSE_WEBHOOK_SECRET,
    running_service,
    settings_restored,
    wait_for,
)

QUICK_RECONCILE = {"pixverse": {"reconcile_after": 0.2, "reconcile_interval": 0.2}}


@pytest.fixture
def service(sandbox, db_path):
    """The service, with the fake's console pointing PixVerse's webhooks at it."""
    with settings_restored(sandbox.pixverse.settings), running_service(sandbox.url, db_path) as svc:
        sandbox.pixverse.settings.webhook_url = account_url(svc)
        yield svc


def account_url(service):
    return f"{service.url}/callbacks/pixverse"


def reached(job):
    return [(t["to_status"], t["source"]) for t in job["transitions"]]


def snapshot(service, job_id=None):
    rows = service.rows(
        "SELECT id, status, provider_status, result_url, error, updated_at, anomalies,"
        " last_callback_at, next_poll_at FROM jobs WHERE ? IS NULL OR id = ? ORDER BY id",
        job_id, job_id,
    )  # fmt: skip
    return service.counts(), rows


def signed(body, *, secret=PIXVERSE_WEBHOOK_SECRET, nonce="n" * 32, ts=None):
    """PixVerse's headers, made here: Base64 HMAC-SHA256 over the time, the nonce and the
    body's fields as a query string, keys sorted."""
    ts = int(time.time()) if ts is None else ts
    fields = json.loads(body)

    def value(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        return "" if v is None else str(v)

    query = "&".join(f"{quote_plus(k)}={quote_plus(value(fields[k]))}" for k in sorted(fields))
    mac = hmac.new(secret.encode(), f"{ts}\n{nonce}\n{query}".encode(), hashlib.sha256)
    return {
        "Content-Type": "application/json",
        "Webhook-Timestamp": str(ts),
        "Webhook-Nonce": nonce,
        "Webhook-Signature": base64.b64encode(mac.digest()).decode(),
    }


def webhook_body(video_id, status=1, url="https://media.test/v.mp4", **extra):
    body = {"id": str(video_id), "status": status, "url": url, "size": 1.5,
            "has_audio": False, "credits": 30}  # fmt: skip
    return json.dumps(body | extra).encode()


def post(service, body, headers, url=None):
    return service.http.post(url or account_url(service), content=body, headers=headers)


def waiting(service, prompt="A still pond [never] [lost]"):
    """A job whose video never ends and sends nothing: the test speaks for it."""
    job = service.submit(prompt, provider="pixverse")
    return service.wait(job["id"], lambda j: j["provider_job_id"] is not None)


@pytest.mark.parametrize(
    ("order", "images"), [("sorted", []), ("as sent", ["https://img.test/a.jpg"])]
)
def test_success_keeps_the_video_from_the_signed_webhook(service, sandbox, order, images):
    sandbox.pixverse.settings.key_order = order
    job = service.submit("A heron lifts off the river", provider="pixverse", images=images)
    done = service.wait(job["id"], lambda j: j["media"]["status"] == "kept")
    video_id = done["provider_job_id"]
    assert done["status"] == "completed"
    assert done["result_url"] == f"{sandbox.url}/pixverse/media/{video_id}.mp4"
    assert done["credits"] == 30
    assert done["media"]["video"]["content_type"] == "video/mp4"
    # The signed body is applied as it says: no confirming fetch, no poll at all.
    assert reached(done) == [("queued", "api"), ("completed", "callback")]
    assert [c["provider_status"] for c in done["callbacks"]] == ["1"]
    gets = [r.path for r in sandbox.pixverse.requests if r.method == "GET"]
    assert gets == [f"/pixverse/media/{video_id}.mp4"]  # the archive's download only
    # No token: the one URL of the account, shown on the job for the record.
    assert done["callback_url"] == account_url(service)
    (sent,) = sandbox.pixverse.webhooks_of(video_id)
    assert (sent.status_code, sent.answer) == (200, b"ok")


def test_failure_keeps_pixverse_s_reason(service):
    job = service.submit("A glass city at night [moderation]", provider="pixverse")
    failed = service.wait_status(job["id"], "failed")
    assert (failed["error"], failed["provider_status"]) == (FAILURES[7], "7")
    assert failed["result_url"] is None
    assert reached(failed)[-1] == ("failed", "callback")


def test_a_failure_found_by_a_poll(sandbox, tmp_path):
    with running_service(sandbox.url, tmp_path / "v.db", QUICK_RECONCILE) as service:
        job = service.submit("A storm [fail] [lost]", provider="pixverse")
        failed = service.wait_status(job["id"], "failed")
    assert (failed["error"], failed["transitions"][-1]["source"]) == (FAILURES[8], "poll")


def test_an_unknown_status_is_kept_raw_from_a_poll_and_from_a_webhook(sandbox, tmp_path):
    with running_service(sandbox.url, tmp_path / "v.db", QUICK_RECONCILE) as service:
        polled = service.submit("Lanterns on a lake [unknown] [slow] [lost]", provider="pixverse")
        seen = service.wait(
            polled["id"], lambda j: j["provider_status"] == str(UNDOCUMENTED_STATUS)
        )
        assert seen["status"] == "queued" and seen["anomalies"] == []

        job = waiting(service)
        body = webhook_body(job["provider_job_id"], status=6, url="")
        answer = post(service, body, signed(body))
        assert (answer.status_code, answer.text) == (200, "ok")
        told = service.job(job["id"])
        assert (told["status"], told["provider_status"]) == ("queued", "6")
        done = service.wait_status(polled["id"], "completed", timeout=15)
        assert [s for s, _ in reached(done)] == ["queued", "processing", "completed"]


def test_retry_after_is_honoured(sandbox, tmp_path):
    faults = sandbox.pixverse.settings.faults
    with settings_restored(sandbox.pixverse.settings):
        faults.paths, faults.rate_limit, faults.retry_after = r"/video/result/", 1, 1.0
        overrides = {"pixverse": QUICK_RECONCILE["pixverse"] | {"max_concurrency": 1}}
        with running_service(sandbox.url, tmp_path / "v.db", overrides) as service:
            jobs = [service.submit(f"Dunes {i} [lost]", provider="pixverse") for i in range(2)]
            for job in jobs:
                done = service.wait_status(job["id"], "completed", timeout=15)
                assert done["transitions"][-1]["source"] == "poll"
    requests = sandbox.pixverse.requests
    (refused,) = [r for r in requests if r.status_code == 429]
    assert [r for r in requests if refused.time < r.time < refused.time + 1.0] == []


def test_a_refused_generate_fails_the_job_with_pixverse_s_words(service):
    job = {"provider": "pixverse", "prompt": "A heron", "options": {"duration": 6}}
    answer = service.api.post("/api/jobs", json=job)
    assert answer.status_code == 502
    assert "Invalid parameter: duration must be 5 or 8" in answer.json()["error"]["message"]


def test_a_concurrency_refusal_is_sent_again_later(service, sandbox):
    job = {"provider": "pixverse", "prompt": "A heron [concurrent]"}
    answer = service.api.post("/api/jobs", json=job)
    assert answer.status_code == 202, answer.text
    assert answer.json()["submission"]["pending"] is True


def test_pixverse_jobs_cannot_be_canceled(service):
    job = waiting(service, "A kite [never]")
    answer = service.api.post(f"/api/jobs/{job['id']}/cancel")
    assert (answer.status_code, answer.json()["error"]["code"]) == (409, "cancel_unsupported")


# -- refused webhooks: each writes nothing ---------------------------------------------------


def test_forged_stale_and_unsigned_webhooks_are_401_and_write_nothing(service):
    job = waiting(service)
    body = webhook_body(job["provider_job_id"], url="https://evil.test/x.mp4")
    tampered = signed(webhook_body(job["provider_job_id"]))
    before = snapshot(service)
    for headers, given, reason in (
        (signed(body, secret="not-the-account-secret"), body, "bad_signature"),
        (tampered, body, "bad_signature"),
        (signed(body, ts=int(time.time()) - 301), body, "stale_date"),
        ({"Content-Type": "application/json"}, body, "missing_header"),
        (signed(body), b"not json", "malformed_body"),
    ):
        answer = post(service, given, headers)
        assert answer.status_code == 401, answer.text
        assert answer.json()["error"]["reason"] == reason
        assert snapshot(service) == before


def test_a_resent_webhook_is_a_duplicate_and_a_reused_nonce_is_409(service):
    job = waiting(service)
    body = webhook_body(job["provider_job_id"], status=5, url="")
    first = post(service, body, signed(body))
    assert (first.status_code, first.text) == (200, "ok")
    before = snapshot(service)

    again = post(service, body, signed(body))  # a retry: the same nonce, the same body
    assert (again.status_code, again.text) == (200, "ok")
    other = webhook_body(job["provider_job_id"], url="https://evil.test/x.mp4")
    replayed = post(service, other, signed(other))  # signed, but the nonce is spent
    assert replayed.status_code == 409
    assert replayed.json()["error"]["code"] == "replayed_nonce"
    assert snapshot(service) == before


def test_a_webhook_for_a_task_no_job_has_is_404_and_writes_nothing(service):
    waiting(service)
    body = webhook_body(999_999_999_999)
    before = snapshot(service)
    answer = post(service, body, signed(body))
    assert answer.status_code == 404
    assert answer.json()["error"]["code"] == "unknown_task"
    nameless = json.dumps({"status": 1, "url": "https://media.test/v.mp4"}).encode()
    refused = post(service, nameless, signed(nameless, nonce="m" * 32))
    assert (refused.status_code, refused.json()["error"]["reason"]) == (401, "wrong_task")
    assert snapshot(service) == before


def test_the_account_url_takes_only_json_within_the_limit(service):
    job = waiting(service)
    body = webhook_body(job["provider_job_id"])
    before = snapshot(service)
    headers = signed(body) | {"Content-Type": "text/plain"}
    assert post(service, body, headers).status_code == 415
    huge = webhook_body(job["provider_job_id"], pad="x" * (1024 * 1024))
    assert post(service, huge, signed(huge)).status_code == 413
    assert snapshot(service) == before


def test_the_account_url_is_only_pixverse_s_and_pixverse_has_no_token_url(service):
    job = waiting(service)
    body = webhook_body(job["provider_job_id"])
    before = snapshot(service)
    for url in (f"{service.url}/callbacks/replicate", f"{service.url}/callbacks/nobody"):
        answer = post(service, body, signed(body), url)
        assert (answer.status_code, answer.json()["error"]["code"]) == (404, "unknown_provider")
    token_url = f"{account_url(service)}/{'A' * 32}"
    assert post(service, body, signed(body), token_url).json()["error"]["code"] == "unknown_token"
    assert snapshot(service) == before


def test_pixverse_sends_a_refused_webhook_again_until_it_is_taken(service, sandbox):
    # The first delivery is answered 401 (the secret rotated in the console); once the
    # secrets agree again, a retry is taken.
    sandbox.pixverse.settings.webhook_retry_delays = (0.5, 0.5, 0.5)
    sandbox.pixverse.settings.webhook_secret = "rotated-in-the-console"
    job = service.submit("A heron", provider="pixverse")
    video_id = service.wait(job["id"], lambda j: j["provider_job_id"])["provider_job_id"]
    wait_for(lambda: sandbox.pixverse.webhooks_of(video_id), what="the first delivery")
    sandbox.pixverse.settings.webhook_secret = PIXVERSE_WEBHOOK_SECRET
    done = service.wait_status(job["id"], "completed")
    codes = [w.status_code for w in sandbox.pixverse.webhooks_of(video_id)]
    assert codes[0] == 401 and codes[-1] == 200
    assert reached(done)[-1] == ("completed", "callback")

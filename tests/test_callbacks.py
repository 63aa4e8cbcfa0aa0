"""POST /callbacks/vidu/{token}: every refusal is answered as documented and writes nothing.

The jobs here are submitted with ``[lost]``: the sandbox sends them no callbacks and the
fixture's reconciliation (60 s) keeps the poller away, so the only writes to their rows
are the ones these tests cause.
"""

from __future__ import annotations

import json
import math
import secrets
import time
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import pytest

from tests.conftest import (
    OLD_VIDU_KEY,
    VIDU_KEY,
    running_sandbox,
    running_service,
    settings_restored,
)
from tests.vidu_signer import vidu_headers

LIMIT = 1024 * 1024  # callbacks.max_body_bytes, the default
JOB_COLUMNS = (
    "status, provider_status, updated_at, anomalies, last_callback_at, next_poll_at,"
    " confirm_callback_id, poll_failures"
)


# -- fixtures ---------------------------------------------------------------------------
# One sandbox and one receiver for the whole module, shadowing conftest's per-test ones:
# stopping the two servers costs ~0.3 s a test, and each test here works on its own job
# and compares row counts before and after, so sharing them changes nothing it checks.


@pytest.fixture(scope="module")
def sandbox():
    with running_sandbox() as fakes:
        yield fakes


@pytest.fixture(scope="module")
def service(sandbox, tmp_path_factory):
    with running_service(sandbox.url, tmp_path_factory.mktemp("callbacks") / "vidhook.db") as svc:
        yield svc


@pytest.fixture(autouse=True)
def _restore_sandbox_settings(sandbox):
    with settings_restored(sandbox.settings):
        yield


# -- helpers ------------------------------------------------------------------------------


def lost_job(service, prompt="A still pond [lost]"):
    """A submitted job that gets no sandbox callbacks, and its stored callback_url."""
    job = service.submit(prompt)
    ((url,),) = service.rows("SELECT callback_url FROM jobs WHERE id=?", job["id"])
    assert url.startswith(f"{service.url}/callbacks/vidu/")
    return job, url


def token_of(url):
    return url.rsplit("/", 1)[1]


def state_body(job, state="processing", **extra):
    return json.dumps({"id": job["provider_job_id"], "state": state, **extra}).encode()


def job_row(service, job_id):
    return service.rows(f"SELECT {JOB_COLUMNS} FROM jobs WHERE id=?", job_id)


def snapshot(service, job_id):
    return service.counts(), job_row(service, job_id)


def at(seconds_from_now, *, round_up):
    """A whole-second time (a Date header has no fractions), rounded away from the limit."""
    moment = time.time() + seconds_from_now
    whole = math.ceil(moment) if round_up else math.floor(moment)
    return datetime.fromtimestamp(whole, UTC)


def correct_signature(callback_url, headers):
    """What the service expects for these Date and nonce: it must never be echoed."""
    if not headers.get("Date") or not headers.get("x-request-nonce"):
        return None
    when = parsedate_to_datetime(headers["Date"])
    fresh = vidu_headers(VIDU_KEY, callback_url, when=when, nonce=headers["x-request-nonce"])
    return fresh["X-HMAC-SIGNATURE"]


def assert_error(response, status, code, *, reason=None, hidden=()):
    assert response.status_code == status, response.text
    assert response.headers["content-type"].split(";")[0] == "application/json"
    body = response.json()
    assert list(body) == ["error"]
    err = body["error"]
    assert err["code"] == code
    assert isinstance(err["message"], str) and err["message"]
    if reason is not None:
        assert err["reason"] == reason
    for secret in (VIDU_KEY, OLD_VIDU_KEY, *hidden):
        if secret:
            assert secret not in response.text
    return err


def poll_failures(service, job_id):
    ((failures,),) = service.rows("SELECT poll_failures FROM jobs WHERE id=?", job_id)
    return failures


def flip(text, index=0):
    return text[:index] + ("B" if text[index] == "A" else "A") + text[index + 1 :]


def without(headers, name):
    return {k: v for k, v in headers.items() if k != name}


# -- refusals ---------------------------------------------------------------------------
# Each case: the stored callback_url -> headers for a POST to that URL that must not verify.

SIGNATURE_CASES = {
    "tampered_signature": lambda url: {
        **(h := vidu_headers(VIDU_KEY, url)),
        "X-HMAC-SIGNATURE": flip(h["X-HMAC-SIGNATURE"]),
    },
    "wrong_secret": lambda url: vidu_headers("not-the-vidu-key-0000", url),
    "key_not_configured": lambda url: vidu_headers(OLD_VIDU_KEY, url),
    "signed_for_other_path": lambda url: vidu_headers(VIDU_KEY, url + "x"),
    "signed_for_other_token": lambda url: vidu_headers(
        VIDU_KEY, url.rsplit("/", 1)[0] + "/" + secrets.token_urlsafe(24)
    ),
    "signed_for_other_query": lambda url: vidu_headers(VIDU_KEY, url + "?attempt=2"),
    "signed_for_get": lambda url: vidu_headers(VIDU_KEY, url, method="GET"),
    "signed_date_swapped": lambda url: {
        **vidu_headers(VIDU_KEY, url, when=at(-10, round_up=False)),
        "Date": vidu_headers(VIDU_KEY, url)["Date"],
    },
    "signed_nonce_swapped": lambda url: {
        **vidu_headers(VIDU_KEY, url),
        "x-request-nonce": "another-nonce",
    },
}


@pytest.mark.parametrize("case", sorted(SIGNATURE_CASES))
def test_bad_signature_is_401_with_reason_and_writes_nothing(service, case):
    job, url = lost_job(service)
    before = snapshot(service, job["id"])
    headers = SIGNATURE_CASES[case](url)

    response = service.http.post(url, content=state_body(job), headers=headers)

    hidden = (headers["X-HMAC-SIGNATURE"], correct_signature(url, headers), token_of(url))
    err = assert_error(response, 401, "invalid_signature", reason="bad_signature", hidden=hidden)
    assert "signature" in err["message"]
    assert snapshot(service, job["id"]) == before


@pytest.mark.parametrize(
    "header", ["Date", "x-request-nonce", "X-HMAC-SIGNATURE", "X-HMAC-SIGNED-HEADERS"]
)
def test_missing_signature_header_is_401_and_writes_nothing(service, header):
    job, url = lost_job(service)
    before = snapshot(service, job["id"])
    signed = vidu_headers(VIDU_KEY, url)

    response = service.http.post(url, content=state_body(job), headers=without(signed, header))

    hidden = (signed["X-HMAC-SIGNATURE"], token_of(url))
    err = assert_error(response, 401, "invalid_signature", reason="missing_header", hidden=hidden)
    assert header in err["message"]
    assert snapshot(service, job["id"]) == before


@pytest.mark.parametrize("algorithm", ["hmac-sha1", "hmac-sha512", "none"])
def test_unsupported_algorithm_is_401_and_writes_nothing(service, algorithm):
    job, url = lost_job(service)
    before = snapshot(service, job["id"])
    headers = {**vidu_headers(VIDU_KEY, url), "X-HMAC-ALGORITHM": algorithm}

    response = service.http.post(url, content=state_body(job), headers=headers)

    hidden = (headers["X-HMAC-SIGNATURE"], token_of(url))
    assert_error(response, 401, "invalid_signature", reason="unsupported_algorithm", hidden=hidden)
    assert snapshot(service, job["id"]) == before


@pytest.mark.parametrize(
    "when",
    [
        pytest.param(lambda: at(-301, round_up=False), id="301s_ago"),
        pytest.param(lambda: at(301, round_up=True), id="301s_ahead"),
        pytest.param(lambda: at(-86_400, round_up=False), id="a_day_ago"),
    ],
)
def test_date_beyond_tolerance_is_401_and_writes_nothing(service, when):
    job, url = lost_job(service)
    before = snapshot(service, job["id"])
    headers = vidu_headers(VIDU_KEY, url, when=when())

    response = service.http.post(url, content=state_body(job), headers=headers)

    hidden = (headers["X-HMAC-SIGNATURE"], token_of(url))
    err = assert_error(response, 401, "invalid_signature", reason="stale_date", hidden=hidden)
    assert "Date" in err["message"]
    assert snapshot(service, job["id"]) == before


def test_malformed_date_is_401_and_writes_nothing(service):
    job, url = lost_job(service)
    before = snapshot(service, job["id"])
    headers = {**vidu_headers(VIDU_KEY, url), "Date": "yesterday"}

    response = service.http.post(url, content=state_body(job), headers=headers)

    assert_error(response, 401, "invalid_signature", reason="malformed_date")
    assert snapshot(service, job["id"]) == before


@pytest.mark.parametrize(
    "when",
    [
        pytest.param(lambda: at(-299, round_up=True), id="299s_ago"),
        pytest.param(lambda: at(299, round_up=False), id="299s_ahead"),
    ],
)
def test_date_within_tolerance_is_accepted(service, when):
    job, url = lost_job(service)
    before_counts = service.counts()

    response = service.http.post(
        url, content=state_body(job), headers=vidu_headers(VIDU_KEY, url, when=when())
    )

    assert response.status_code == 200, response.text
    assert response.json() == {"ok": True, "duplicate": False}
    after = service.counts()
    assert after["callbacks"] == before_counts["callbacks"] + 1
    assert after["nonces"] == before_counts["nonces"] + 1
    assert job_row(service, job["id"])[0][0] == "processing"


def test_nonce_replayed_with_another_body_is_409_and_writes_nothing(service):
    job, url = lost_job(service)
    headers = vidu_headers(VIDU_KEY, url)
    first = service.http.post(url, content=state_body(job), headers=headers)
    assert first.status_code == 200, first.text
    assert first.json() == {"ok": True, "duplicate": False}
    before = snapshot(service, job["id"])

    # Same signed headers (Vidu does not sign the body), another body.
    forged = state_body(job, "success", creations=[{"url": "https://evil.example/x.mp4"}])
    second = service.http.post(url, content=forged, headers=headers)

    hidden = (headers["X-HMAC-SIGNATURE"], token_of(url))
    assert_error(second, 409, "replayed_nonce", hidden=hidden)
    assert snapshot(service, job["id"]) == before
    ((status, confirm),) = service.rows(
        "SELECT status, confirm_callback_id FROM jobs WHERE id=?", job["id"]
    )
    assert (status, confirm) == ("processing", None)


def test_nonce_replayed_with_a_fresh_date_is_409(service):
    job, url = lost_job(service)
    nonce = "nonce-used-twice"
    first = service.http.post(
        url,
        content=state_body(job),
        headers=vidu_headers(VIDU_KEY, url, nonce=nonce, when=at(-5, round_up=False)),
    )
    assert first.status_code == 200, first.text
    before = snapshot(service, job["id"])

    second = service.http.post(
        url, content=state_body(job), headers=vidu_headers(VIDU_KEY, url, nonce=nonce)
    )

    assert_error(second, 409, "replayed_nonce")
    assert snapshot(service, job["id"]) == before


def test_byte_identical_retry_is_200_duplicate_and_writes_nothing(service):
    job, url = lost_job(service)
    headers = vidu_headers(VIDU_KEY, url)
    body = state_body(job)
    first = service.http.post(url, content=body, headers=headers)
    assert first.json() == {"ok": True, "duplicate": False}
    before = snapshot(service, job["id"])

    for _ in range(2):
        retry = service.http.post(url, content=body, headers=headers)
        assert retry.status_code == 200, retry.text
        assert retry.json() == {"ok": True, "duplicate": True}

    assert snapshot(service, job["id"]) == before
    detail = service.job(job["id"])
    assert [t["source"] for t in detail["transitions"]] == ["api", "callback"]
    assert len(detail["callbacks"]) == 1


@pytest.mark.parametrize(
    "make_url",
    [
        pytest.param(
            lambda url: url.rsplit("/", 1)[0] + "/" + secrets.token_urlsafe(24), id="shape"
        ),
        pytest.param(lambda url: url.rsplit("/", 1)[0] + "/nope", id="short"),
        pytest.param(lambda url: url[:-1] + ("A" if url[-1] != "A" else "B"), id="one_char_off"),
    ],
)
def test_unknown_token_is_404_and_writes_nothing(service, make_url):
    job, url = lost_job(service)
    before = snapshot(service, job["id"])
    other = make_url(url)
    assert other != url

    response = service.http.post(
        other, content=state_body(job), headers=vidu_headers(VIDU_KEY, other)
    )

    assert_error(response, 404, "unknown_token", hidden=(token_of(url), token_of(other)))
    assert snapshot(service, job["id"]) == before


def test_unknown_provider_is_404_and_writes_nothing(service):
    job, url = lost_job(service)
    before = snapshot(service, job["id"])
    other = url.replace("/callbacks/vidu/", "/callbacks/nosuchprovider/")

    response = service.http.post(
        other, content=state_body(job), headers=vidu_headers(VIDU_KEY, other)
    )

    assert_error(response, 404, "unknown_provider", hidden=(token_of(url),))
    assert snapshot(service, job["id"]) == before


def oversized_body(job):
    """Valid JSON, one byte over the limit: only its size is wrong."""
    head = b'{"id": "%s", "state": "processing", "pad": "' % job["provider_job_id"].encode()
    return head + b"x" * (LIMIT + 1 - len(head) - 2) + b'"}'


def test_body_over_1_mib_with_content_length_is_413_and_writes_nothing(service):
    job, url = lost_job(service)
    before = snapshot(service, job["id"])
    body = oversized_body(job)
    assert len(body) == LIMIT + 1

    response = service.http.post(url, content=body, headers=vidu_headers(VIDU_KEY, url))

    assert_error(response, 413, "body_too_large", hidden=(token_of(url),))
    assert snapshot(service, job["id"]) == before


def test_body_over_1_mib_chunked_is_413_and_writes_nothing(service):
    job, url = lost_job(service)
    before = snapshot(service, job["id"])
    body = oversized_body(job)
    sent = []

    def chunks():
        for start in range(0, len(body), 64 * 1024):
            sent.append(start)
            yield body[start : start + 64 * 1024]

    request = service.http.build_request(
        "POST", url, content=chunks(), headers=vidu_headers(VIDU_KEY, url)
    )
    assert "content-length" not in request.headers
    assert request.headers["transfer-encoding"] == "chunked"
    response = service.http.send(request)

    assert_error(response, 413, "body_too_large", hidden=(token_of(url),))
    assert sent  # the body really was streamed
    assert snapshot(service, job["id"]) == before


def test_body_of_exactly_1_mib_is_not_refused_for_its_size(service):
    job, url = lost_job(service)
    before = snapshot(service, job["id"])
    body = b"[" + b" " * (LIMIT - 2) + b"]"  # 1 MiB of JSON that is not an object
    assert len(body) == LIMIT

    response = service.http.post(url, content=body, headers=vidu_headers(VIDU_KEY, url))

    # Read to the end and refused for what it is, not for its size.
    assert_error(response, 400, "invalid_json")
    assert snapshot(service, job["id"]) == before


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"{not json", id="garbage"),
        pytest.param(b"", id="empty"),
        pytest.param(b'{"state": "processing"} trailing', id="trailing"),
        pytest.param(b'{"state": "\xff\xfe"}', id="not_utf8"),
        pytest.param(b'{"state": "processing"', id="truncated"),
        # Parses in Python, but the text cannot be stored as UTF-8: not a 500.
        pytest.param(b'{"state": "\\ud800"}', id="lone_surrogate"),
        # Unsigned (Vidu signs only headers) and parsed before the nonce check: not a 500.
        pytest.param(b"[" * 100_000 + b"]" * 100_000, id="deeply_nested"),
        # Python's json extensions, which are not JSON.
        pytest.param(b'{"state": "processing", "credits": NaN}', id="nan"),
        pytest.param(b'{"state": "processing", "credits": -Infinity}', id="infinity"),
    ],
)
def test_invalid_json_is_400_and_writes_nothing(service, body):
    job, url = lost_job(service)
    before = snapshot(service, job["id"])
    headers = vidu_headers(VIDU_KEY, url)

    response = service.http.post(url, content=body, headers=headers)

    assert_error(response, 400, "invalid_json", hidden=(headers["X-HMAC-SIGNATURE"],))
    assert snapshot(service, job["id"]) == before


@pytest.mark.parametrize("body", [b"[1, 2]", b'"processing"', b"null", b"42", b"true"])
def test_json_that_is_not_an_object_is_400_and_writes_nothing(service, body):
    job, url = lost_job(service)
    before = snapshot(service, job["id"])

    response = service.http.post(url, content=body, headers=vidu_headers(VIDU_KEY, url))

    err = assert_error(response, 400, "invalid_json")
    assert "object" in err["message"]
    assert snapshot(service, job["id"]) == before


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", None],
)
def test_wrong_content_type_is_415_and_writes_nothing(service, content_type):
    job, url = lost_job(service)
    before = snapshot(service, job["id"])
    headers = without(vidu_headers(VIDU_KEY, url), "Content-Type")
    if content_type is not None:
        headers["Content-Type"] = content_type

    response = service.http.post(url, content=state_body(job), headers=headers)

    assert_error(response, 415, "unsupported_media_type", hidden=(headers["X-HMAC-SIGNATURE"],))
    assert snapshot(service, job["id"]) == before


@pytest.mark.parametrize("content_type", ["application/json; charset=utf-8", "Application/JSON"])
def test_json_content_type_variants_are_accepted(service, content_type):
    job, url = lost_job(service)
    headers = {**vidu_headers(VIDU_KEY, url), "Content-Type": content_type}

    response = service.http.post(url, content=state_body(job), headers=headers)

    assert response.status_code == 200, response.text
    assert job_row(service, job["id"])[0][0] == "processing"


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
def test_other_methods_are_405_and_write_nothing(service, method):
    job, url = lost_job(service)
    before = snapshot(service, job["id"])

    response = service.http.request(method, url, headers=vidu_headers(VIDU_KEY, url, method=method))

    assert_error(response, 405, "method_not_allowed", hidden=(token_of(url),))
    assert response.headers["allow"] == "POST"
    assert snapshot(service, job["id"]) == before


# -- acceptance -------------------------------------------------------------------------


def test_processing_callback_moves_the_job_and_is_on_disk_before_200(service):
    job, url = lost_job(service)
    assert job["status"] == "queued"
    before = service.counts()
    headers = vidu_headers(VIDU_KEY, url)

    response = service.http.post(url, content=state_body(job), headers=headers)

    assert response.status_code == 200, response.text
    assert response.json() == {"ok": True, "duplicate": False}
    # Read straight from the database, without waiting: the 200 came after the commit.
    grown = {t: n - before[t] for t, n in service.counts().items()}
    assert grown == {"jobs": 0, "transitions": 1, "callbacks": 1, "nonces": 1, "deliveries": 0}
    ((cb_id, nonce, status, outcome, stored_headers, stored_body),) = service.rows(
        "SELECT id, nonce, provider_status, outcome, headers, body FROM callbacks WHERE job_id=?",
        job["id"],
    )
    assert (nonce, status, outcome) == (headers["x-request-nonce"], "processing", "applied")
    assert stored_body.encode() == state_body(job)
    names = {name.lower() for name in json.loads(stored_headers)}
    assert "x-hmac-signature" not in names
    assert {"date", "x-request-nonce", "x-hmac-signed-headers"} <= names
    assert headers["X-HMAC-SIGNATURE"] not in stored_headers

    ((row_status, last_callback_at),) = service.rows(
        "SELECT status, last_callback_at FROM jobs WHERE id=?", job["id"]
    )
    assert row_status == "processing"
    assert last_callback_at is not None
    detail = service.job(job["id"])
    last = detail["transitions"][-1]
    assert (last["from_status"], last["to_status"], last["source"]) == (
        "queued",
        "processing",
        "callback",
    )
    assert last["detail"]["callback_id"] == cb_id
    (listed,) = detail["callbacks"]
    assert (listed["id"], listed["provider_status"], listed["outcome"]) == (
        cb_id,
        "processing",
        "applied",
    )


def test_success_callback_waits_for_a_confirming_fetch(service, sandbox):
    job, url = lost_job(service)
    sandbox.settings.status_outage = True
    body = state_body(job, "success", creations=[{"url": "https://evil.example/x.mp4"}])

    response = service.http.post(url, content=body, headers=vidu_headers(VIDU_KEY, url))

    assert response.status_code == 200, response.text
    ((cb_id, outcome),) = service.rows(
        "SELECT id, outcome FROM callbacks WHERE job_id=?", job["id"]
    )
    assert outcome == "confirming"
    ((status, confirm, next_poll_at, result_url),) = service.rows(
        "SELECT status, confirm_callback_id, next_poll_at, result_url FROM jobs WHERE id=?",
        job["id"],
    )
    assert (status, confirm, result_url) == ("queued", cb_id, None)
    assert next_poll_at is not None

    # The confirming fetch fails during the outage; the job must stay where it was.
    stuck = service.wait(job["id"], lambda j: poll_failures(service, j["id"]) >= 1, timeout=5)
    assert stuck["status"] == "queued"
    assert [t["source"] for t in stuck["transitions"]] == ["api"]
    ((confirm, next_poll_at),) = service.rows(
        "SELECT confirm_callback_id, next_poll_at FROM jobs WHERE id=?", job["id"]
    )
    assert confirm == cb_id and next_poll_at is not None
    status_path = f"/tasks/{job['provider_job_id']}/creations"
    refused = [r for r in sandbox.vidu.requests if r.path.endswith(status_path)]
    assert refused and all(r.status_code == 503 for r in refused)

    # Let the sandbox finish the task, so that the one fetch that succeeds finds success.
    task = sandbox.vidu.tasks[job["provider_job_id"]]
    deadline = time.monotonic() + 5
    while task.state != "success" and time.monotonic() < deadline:
        time.sleep(0.02)
    assert task.state == "success"
    assert service.job(job["id"])["status"] == "queued"

    sandbox.settings.status_outage = False
    done = service.wait_status(job["id"], "completed", timeout=5)
    last = done["transitions"][-1]
    assert (last["from_status"], last["to_status"], last["source"]) == (
        "queued",
        "completed",
        "poll",
    )
    assert last["detail"]["confirms_callback_id"] == cb_id
    assert [t["source"] for t in done["transitions"]] == ["api", "poll"]
    # The result is the provider's, not the unsigned body's.
    assert done["result_url"].startswith(sandbox.url)
    ((confirm,),) = service.rows("SELECT confirm_callback_id FROM jobs WHERE id=?", job["id"])
    assert confirm is None


def test_success_callback_contradicted_by_the_provider_leaves_the_job_queued(service, sandbox):
    sandbox.settings.queue_delay = 30  # the sandbox task stays "created"
    job, url = lost_job(service)
    body = state_body(job, "success")

    response = service.http.post(url, content=body, headers=vidu_headers(VIDU_KEY, url))
    assert response.status_code == 200, response.text
    ((updated_at,),) = service.rows("SELECT updated_at FROM jobs WHERE id=?", job["id"])

    def confirmed(_current):
        fetched = any(
            r.method == "GET" and r.task_id == job["provider_job_id"] and r.status_code == 200
            for r in sandbox.vidu.requests
        )
        # A recorded poll touches updated_at (the callback itself does not).
        ((now_updated_at,),) = service.rows("SELECT updated_at FROM jobs WHERE id=?", job["id"])
        return fetched and now_updated_at > updated_at

    service.wait(job["id"], confirmed, timeout=5)
    ((polled_at,),) = service.rows("SELECT updated_at FROM jobs WHERE id=?", job["id"])
    assert polled_at > updated_at
    detail = service.job(job["id"])
    assert detail["status"] == "queued"
    assert detail["finished_at"] is None
    assert [t["to_status"] for t in detail["transitions"]] == ["queued"]
    assert sandbox.vidu.tasks[job["provider_job_id"]].state == "created"

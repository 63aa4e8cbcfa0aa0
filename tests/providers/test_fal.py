import asyncio
import base64
import hashlib
import json
import time

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

import signing
from receiver.config import ProviderConfig, Secret
from receiver.providers.base import (
    InvalidRequest,
    JobRef,
    Progress,
    ProviderError,
    SubmitRequest,
)
from receiver.providers.fal import Fal, app_of, request_path, video_url
from receiver.providers.jwks import KEYS_MAX_AGE, KEYS_MIN_INTERVAL
from receiver.states import Status

KEY = Secret("fal-key-id:fal-key-secret-0123456789")
BASE = "https://queue.fal.test"
JWKS = "https://rest.fal.test/.well-known/jwks.json"
MODEL = "fal-ai/kling-video/v2.5-turbo/pro/text-to-video"
APP = "fal-ai/kling-video"
REQUEST_ID = "764cabcf-b745-4b3e-ae38-1200304cf45b"
PATH = f"{APP}/requests/{REQUEST_ID}"
VIDEO = "https://v3.fal.media/files/rabbit/abc_output.mp4"
CALLBACK = "https://hooks.example.com/callbacks/fal/tok"
SIGNER = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
ROTATED = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))


def jwks(*keys):
    listed = []
    for i, key in enumerate(keys):
        raw = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        x = base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
        listed.append({"kty": "OKP", "crv": "Ed25519", "x": x, "kid": f"k{i}"})
    return {"keys": listed}


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def make(handler=None, base_url=BASE, default_model=MODEL):
    config = ProviderConfig(
        name="fal",
        type="fal",
        base_url=base_url,
        api_key=KEY,
        default_model=default_model,
        jwks_url=JWKS,
    )
    handler = handler or (lambda request: pytest.fail(f"no request expected: {request.url}"))
    fal = Fal(config, httpx.AsyncClient(transport=httpx.MockTransport(handler)))
    fal.keys.clock = Clock()
    return fal


def recorder(*answers):
    seen = []
    queue = list(answers)

    def handler(request):
        seen.append(request)
        return queue.pop(0) if len(queue) > 1 else queue[0]

    return seen, handler


def answer(status_code, body=None, headers=None):
    return httpx.Response(status_code, json=body, headers=headers)


def submitted(**extra):
    at = f"{BASE}/{APP}/requests/{REQUEST_ID}"
    return {
        "request_id": REQUEST_ID,
        "gateway_request_id": REQUEST_ID,
        "response_url": at,
        "status_url": f"{at}/status",
        "cancel_url": f"{at}/cancel",
        "status": "IN_QUEUE",
        "queue_position": 0,
    } | extra


def job(path=PATH):
    return JobRef("job-1", path, KEY.fingerprint, CALLBACK)


def webhook(status="OK", **extra):
    body = {"request_id": REQUEST_ID, "gateway_request_id": REQUEST_ID, "status": status}
    if status == "OK":
        body |= {"payload": {"video": {"url": VIDEO, "content_type": "video/mp4"}}, "error": None}
    return json.dumps(body | extra).encode()


def signed(body, *, key=SIGNER, request_id=REQUEST_ID, user_id="github|4242", ts=None):
    """fal's headers, made here rather than by the code under test."""
    ts = int(time.time()) if ts is None else ts
    text = f"{request_id}\n{user_id}\n{ts}\n{hashlib.sha256(body).hexdigest()}"
    return {
        "x-fal-webhook-request-id": request_id,
        "x-fal-webhook-user-id": user_id,
        "x-fal-webhook-timestamp": str(ts),
        "x-fal-webhook-signature": key.sign(text.encode()).hex(),
    }


# -- submitting ------------------------------------------------------------------------------


def test_submit_queues_the_request_with_the_webhook_and_the_key():
    seen, handler = recorder(answer(200, submitted()))
    request = SubmitRequest(prompt="a cat", images=["https://x.test/a.png"], options={"seed": 3})
    submission = asyncio.run(make(handler).submit(request, CALLBACK))
    sent = seen[0]
    assert (sent.method, sent.url.path) == ("POST", f"/{MODEL}")
    assert sent.url.params["fal_webhook"] == CALLBACK
    assert sent.headers["authorization"] == f"Key {KEY.reveal()}"
    assert json.loads(sent.content) == {
        "prompt": "a cat",
        "image_url": "https://x.test/a.png",
        "seed": 3,
    }
    assert submission.provider_job_id == PATH
    assert (submission.observation.status, submission.observation.provider_status) == (
        Status.QUEUED,
        "IN_QUEUE",
    )


@pytest.mark.parametrize(
    "answered",
    [
        submitted(),
        {"request_id": REQUEST_ID, **{k: submitted()[k] for k in ("response_url", "status_url")}},
        {"request_id": REQUEST_ID, "gateway_request_id": REQUEST_ID},
        {"request_id": REQUEST_ID, "status_url": f"https://elsewhere.test/x/{APP}/requests/1"},
    ],
)
def test_the_request_path_comes_from_the_urls_or_the_model(answered):
    assert request_path(answered, BASE, MODEL) == PATH


def test_returned_urls_are_read_below_a_base_path():
    answered = {
        "request_id": REQUEST_ID,
        "cancel_url": f"https://p.test/fal/other/app/requests/{REQUEST_ID}/cancel",
    }
    assert request_path(answered, "https://p.test/fal", MODEL) == f"other/app/requests/{REQUEST_ID}"


@pytest.mark.parametrize(
    ("model", "app"),
    [
        ("fal-ai/veo3", "fal-ai/veo3"),
        ("fal-ai/flux/dev", "fal-ai/flux"),
        ("workflows/me/my-flow/extra", "workflows/me/my-flow"),
    ],
)
def test_the_app_drops_the_subpath(model, app):
    assert app_of(model) == app


@pytest.mark.parametrize("answered", [{}, {"request_id": ""}, {"request_id": "../x"}, ["x"]])
def test_a_submit_answer_without_a_request_id_is_not_retried(answered):
    _, handler = recorder(answer(200, answered))
    with pytest.raises(ProviderError) as caught:
        asyncio.run(make(handler).submit(SubmitRequest(prompt="a"), None))
    assert not caught.value.transient


def test_no_webhook_no_query():
    seen, handler = recorder(answer(200, submitted()))
    asyncio.run(make(handler).submit(SubmitRequest(prompt="a", model="fal-ai/veo3"), None))
    assert seen[0].url.query == b""
    assert seen[0].url.path == "/fal-ai/veo3"


def test_a_validation_error_keeps_fal_s_words():
    detail = [{"loc": ["body", "prompt"], "msg": "Field required", "type": "missing"}]
    _, handler = recorder(answer(422, {"detail": detail}))
    with pytest.raises(ProviderError) as caught:
        asyncio.run(make(handler).submit(SubmitRequest(prompt="a"), None))
    assert not caught.value.transient
    assert (caught.value.code, caught.value.message) == ("missing", "prompt: Field required")


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (SubmitRequest(prompt="a", model="no-slash"), "model"),
        (SubmitRequest(prompt="a", model="fal-ai/../x"), "model"),
        (SubmitRequest(prompt="a", mode="i2v"), "mode"),
        (SubmitRequest(prompt="a", images=["https://a", "https://b"]), "images"),
        (SubmitRequest(prompt="a", images=["a.png"]), "images"),
        (SubmitRequest(prompt=""), "prompt"),
        (SubmitRequest(prompt="a", options={"image_url": "https://a"}), "options.image_url"),
    ],
)
def test_invalid_requests_are_refused_before_sending(request_, field):
    with pytest.raises(InvalidRequest) as caught:
        make().validate(request_)
    assert field in caught.value.fields


# -- status and result -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("word", "status", "known"),
    [
        ("IN_QUEUE", Status.QUEUED, True),
        ("IN_PROGRESS", Status.PROCESSING, True),
        ("IN_BUFFER", Status.QUEUED, False),
    ],
)
def test_status_before_the_end(word, status, known):
    seen, handler = recorder(answer(200, {"status": word, "queue_position": 2}))
    got = asyncio.run(make(handler).fetch(job()))
    assert seen[0].url.path == f"/{PATH}/status"
    assert seen[0].headers["authorization"] == f"Key {KEY.reveal()}"
    assert (got.status, got.provider_status, got.known) == (status, word, known)
    # Only a request still waiting has a place in the queue.
    assert got.progress == (Progress(queue_position=2) if word == "IN_QUEUE" else None)


def test_the_place_in_the_queue_is_known_from_the_submit_answer():
    _, handler = recorder(answer(200, submitted(queue_position=4)))
    submission = asyncio.run(make(handler).submit(SubmitRequest(prompt="a cat"), CALLBACK))
    assert submission.observation.progress == Progress(queue_position=4)
    assert submission.observation.progress.to_json() == {"queue_position": 4}
    _, handler = recorder(answer(200, submitted(queue_position=None)))
    submission = asyncio.run(make(handler).submit(SubmitRequest(prompt="a cat"), CALLBACK))
    assert submission.observation.progress is None


@pytest.mark.parametrize(
    "result",
    [
        {"video": {"url": VIDEO, "content_type": "video/mp4"}, "seed": 1},
        {"video": VIDEO},
        {"videos": [{"url": VIDEO}]},
    ],
)
def test_completed_is_decided_by_the_result(result):
    seen, handler = recorder(answer(200, {"status": "COMPLETED"}), answer(200, result))
    got = asyncio.run(make(handler).fetch(job()))
    assert [r.url.path for r in seen] == [f"/{PATH}/status", f"/{PATH}"]
    assert (got.status, got.provider_status, got.result_url) == (
        Status.COMPLETED,
        "COMPLETED",
        VIDEO,
    )


POLICY = {
    "loc": ["body", "prompt"],
    "msg": "The content could not be processed because it contained flagged material.",
    "type": "content_policy_violation",
}


@pytest.mark.parametrize(
    ("code", "body", "headers", "error"),
    [
        (422, {"detail": [POLICY]}, {}, f"prompt: {POLICY['msg']} (content_policy_violation)"),
        (400, {"detail": "Request was cancelled"}, {}, "Request was cancelled"),
        (
            422,
            {"detail": "flagged"},
            {"X-Fal-Error-Type": "content_policy_violation"},
            "flagged (content_policy_violation)",
        ),
        (
            504,
            {"detail": [{"loc": ["body"], "msg": "Generation timeout", "type": "gen_timeout"}]},
            {},
            "Generation timeout (gen_timeout)",
        ),
        (500, {"detail": "boom", "error_type": "server_error"}, {}, "boom (server_error)"),
    ],
)  # fmt: skip
def test_a_completed_request_whose_result_is_an_error_failed(code, body, headers, error):
    _, handler = recorder(answer(200, {"status": "COMPLETED"}), answer(code, body, headers))
    got = asyncio.run(make(handler).fetch(job()))
    assert (got.status, got.provider_status, got.error) == (Status.FAILED, "COMPLETED", error)


@pytest.mark.parametrize(
    ("code", "body", "transient"),
    [(502, None, True), (503, {"detail": "upstream"}, True), (429, {"detail": "slow"}, True),
     (401, {"detail": "bad key"}, False)],
)  # fmt: skip
def test_a_result_that_is_not_the_request_s_own_end_is_a_provider_error(code, body, transient):
    _, handler = recorder(answer(200, {"status": "COMPLETED"}), answer(code, body))
    with pytest.raises(ProviderError) as caught:
        asyncio.run(make(handler).fetch(job()))
    assert caught.value.transient is transient


def test_a_result_without_a_video_fails_the_job():
    _, handler = recorder(answer(200, {"status": "COMPLETED"}), answer(200, {"images": []}))
    got = asyncio.run(make(handler).fetch(job()))
    assert got.status is Status.FAILED and "video" in got.error


@pytest.mark.parametrize("path", [None, REQUEST_ID, "x/requests/"])
def test_a_job_without_a_usable_request_path(path):
    with pytest.raises(ProviderError) as caught:
        asyncio.run(make().fetch(job(path)))
    assert caught.value.transient is (path is None)


def test_video_url_ignores_what_is_not_a_url():
    assert video_url({"video": {"url": "relative.mp4"}}) is None
    assert video_url(None) is None


# -- cancel ----------------------------------------------------------------------------------


def test_cancel_taken_is_canceled():
    seen, handler = recorder(answer(202, {"status": "CANCELLATION_REQUESTED"}))
    got = asyncio.run(make(handler).cancel(job()))
    assert (seen[0].method, seen[0].url.path) == ("PUT", f"/{PATH}/cancel")
    assert got is not None
    assert (got.status, got.provider_status) == (Status.CANCELED, "CANCELLATION_REQUESTED")


@pytest.mark.parametrize("code", [400, 200])
def test_cancel_of_a_finished_request_learns_its_end(code):
    seen, handler = recorder(
        answer(code, {"status": "ALREADY_COMPLETED"}),
        answer(200, {"status": "COMPLETED"}),
        answer(200, {"video": {"url": VIDEO}}),
    )
    got = asyncio.run(make(handler).cancel(job()))
    assert got is not None and (got.status, got.result_url) == (Status.COMPLETED, VIDEO)
    assert [r.method for r in seen] == ["PUT", "GET", "GET"]


@pytest.mark.parametrize("code", [404, 200])
def test_cancel_of_an_unknown_request_is_refused(code):
    _, handler = recorder(answer(code, {"status": "NOT_FOUND"}))
    with pytest.raises(ProviderError) as caught:
        asyncio.run(make(handler).cancel(job()))
    assert not caught.value.transient
    assert caught.value.message == "fal does not know this request"


# -- webhook keys ----------------------------------------------------------------------------


def jwks_server(*documents):
    """A JWKS endpoint answering each document in turn (the last one from then on)."""
    seen, handler = recorder(*[answer(200, d) for d in documents])
    return seen, handler


def prepare(fal, body, headers):
    asyncio.run(fal.prepare_callback(headers, body))


def test_the_keys_are_fetched_once_and_then_verify_without_the_network():
    seen, handler = jwks_server(jwks(SIGNER))
    fal = make(handler)
    body = webhook()
    for _ in range(3):
        prepare(fal, body, signed(body))
    assert [str(r.url) for r in seen] == [JWKS]
    assert "authorization" not in seen[0].headers  # the fal key goes to the queue only

    def no_network(request):
        raise AssertionError("verify_callback must not fetch")

    fal.client = httpx.AsyncClient(transport=httpx.MockTransport(no_network))
    fal.keys.client = fal.client
    assert fal.verify_callback(job(), signed(body), body, tolerance=300) == REQUEST_ID


def test_a_rotated_key_is_fetched_when_no_key_verifies_at_most_once_a_minute():
    seen, handler = jwks_server(jwks(SIGNER), jwks(ROTATED), jwks(SIGNER, ROTATED))
    fal = make(handler)
    body = webhook()
    prepare(fal, body, signed(body))
    new = signed(body, key=ROTATED)
    prepare(fal, body, new)  # no key verifies, but the keys were fetched under a minute ago
    assert len(seen) == 1
    fal.keys.clock.now += KEYS_MIN_INTERVAL
    prepare(fal, body, new)  # fetched again, and the new key is there
    assert len(seen) == 2
    assert fal.verify_callback(job(), new, body, tolerance=300) == REQUEST_ID
    old = signed(body)  # the old key is gone from the set now
    prepare(fal, body, old)
    assert len(seen) == 2  # within the minute: not fetched again
    with pytest.raises(signing.SignatureError):
        fal.verify_callback(job(), old, body, tolerance=300)
    fal.keys.clock.now += KEYS_MIN_INTERVAL
    prepare(fal, body, old)
    assert len(seen) == 3
    assert fal.verify_callback(job(), old, body, tolerance=300) == REQUEST_ID


def test_a_malformed_or_stale_webhook_does_not_fetch_the_keys_again():
    seen, handler = jwks_server(jwks(SIGNER))
    fal = make(handler)
    body = webhook()
    prepare(fal, body, signed(body))
    fal.keys.clock.now += KEYS_MIN_INTERVAL
    prepare(fal, body, {**signed(body), "x-fal-webhook-signature": "00"})
    prepare(fal, body, {})
    prepare(fal, body, signed(body, ts=int(time.time()) - 10_000))
    assert len(seen) == 1


def test_keys_are_trusted_for_a_day_at_most():
    seen, handler = jwks_server(jwks(SIGNER))
    fal = make(handler)
    body = webhook()
    prepare(fal, body, signed(body))
    fal.keys.clock.now += KEYS_MAX_AGE + 1
    assert fal.keys.usable == ()
    with pytest.raises(signing.SignatureError):
        fal.verify_callback(job(), signed(body), body, tolerance=300)
    prepare(fal, body, signed(body))
    assert len(seen) == 2 and fal.keys.usable


@pytest.mark.parametrize(
    "failure",
    [answer(503, {"detail": "down"}), answer(200, {"keys": []}), httpx.ConnectError("refused")],
)
def test_keys_that_cannot_be_fetched_refuse_the_webhook_for_now(failure):
    def handler(request):
        if isinstance(failure, Exception):
            raise failure
        return failure

    fal = make(handler)
    body = webhook()
    with pytest.raises(ProviderError) as caught:
        prepare(fal, body, signed(body))
    assert caught.value.transient and JWKS in caught.value.message


# -- webhooks --------------------------------------------------------------------------------


def ready(*keys):
    _, handler = jwks_server(jwks(*(keys or (SIGNER,))))
    fal = make(handler)
    body = webhook()
    prepare(fal, body, signed(body, key=(keys or (SIGNER,))[0]))
    return fal


def test_a_success_webhook_applies_with_its_video():
    fal = ready()
    body = webhook()
    assert fal.verify_callback(job(), signed(body), body, tolerance=300) == REQUEST_ID
    seen = fal.parse_callback(json.loads(body))
    assert (seen.status, seen.provider_status, seen.result_url) == (
        Status.COMPLETED,
        "OK",
        VIDEO,
    )
    assert not fal.needs_confirmation(seen)
    assert Fal.signs_callback_body


def test_an_error_webhook_fails_with_the_model_s_words():
    fal = ready()
    seen = fal.parse_callback(
        json.loads(webhook("ERROR", error="Invalid status code: 422", payload={"detail": [POLICY]}))
    )
    assert seen.status is Status.FAILED
    assert seen.error == f"prompt: {POLICY['msg']} (content_policy_violation)"
    bare = fal.parse_callback(json.loads(webhook("ERROR", error="Invalid status code: 500")))
    assert bare.error == "Invalid status code: 500"


def test_a_payload_that_could_not_be_sent_is_settled_by_the_result():
    fal = ready()
    seen = fal.parse_callback(
        json.loads(webhook("OK", payload=None, payload_error="not JSON serializable"))
    )
    assert seen.status is Status.COMPLETED and seen.result_url is None
    assert fal.needs_confirmation(seen)


def test_an_unknown_webhook_status_is_kept_raw():
    seen = ready().parse_callback({"status": "MAYBE", "request_id": REQUEST_ID})
    assert (seen.status, seen.provider_status, seen.known) == (Status.QUEUED, "MAYBE", False)


@pytest.mark.parametrize(
    ("ref", "body", "headers_id"),
    [
        (job(), webhook(request_id="other", gateway_request_id="other"), "other"),
        (job(), webhook(), "5d1c0d4b-0000-4000-8000-000000000000"),
        (job(None), webhook(), REQUEST_ID),
        (job(), json.dumps({"status": "OK"}).encode(), REQUEST_ID),
    ],
)
def test_a_genuine_webhook_for_another_request_is_refused(ref, body, headers_id):
    fal = ready()
    with pytest.raises(signing.SignatureError) as caught:
        fal.verify_callback(ref, signed(body, request_id=headers_id), body, tolerance=300)
    assert caught.value.reason == "wrong_task"


def test_the_gateway_request_id_names_the_job_too():
    fal = ready()
    body = webhook(request_id="retried-inside-fal")
    headers = signed(body, request_id="retried-inside-fal")
    assert fal.verify_callback(job(), headers, body, tolerance=300) == "retried-inside-fal"


def test_a_forged_or_stale_webhook_is_refused():
    fal = ready()
    body = webhook()
    for headers, reason in (
        (signed(body, key=ROTATED), "bad_signature"),
        (signed(body, ts=int(time.time()) - 301), "stale_date"),
        ({**signed(body), "x-fal-webhook-user-id": "someone"}, "bad_signature"),
    ):
        with pytest.raises(signing.SignatureError) as caught:
            fal.verify_callback(job(), headers, body, tolerance=300)
        assert caught.value.reason == reason

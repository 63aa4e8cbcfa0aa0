import asyncio
import base64
import hashlib
import hmac
import json
import time

import httpx
import pytest

import signing
from receiver.config import ConfigError, ProviderConfig, Secret
from receiver.providers.base import InvalidRequest, JobRef, ProviderError, SubmitRequest
from receiver.providers.replicate import (
    OUTPUT_LIFETIME,
    REMOVED,
    WEBHOOK_EVENTS,
    Replicate,
    observation,
    output_url,
    route,
)
from receiver.states import Status

KEY = Secret("r8_replicate_unit_0123456789")
SECRET = "whsec_" + base64.b64encode(b"replicate-unit-secret-0123456789").decode()
PREDICTION_ID = "ufawqhfynnddngldkgtslldrkq"
VERSION = "5c7d5dc6dd8bf75c1acaa8565735e7986bc5b66206b55cca93cb72c9bf15ccaa"
VIDEO = "https://replicate.delivery/xezq/abc/tmp1234.mp4"
CALLBACK = "https://hooks.example.com/callbacks/replicate/tok"


def make(handler=None, default_model="google/veo-3.1-fast", secret=SECRET):
    config = ProviderConfig(
        name="replicate",
        type="replicate",
        base_url="https://replicate.test",
        api_key=KEY,
        default_model=default_model,
        webhook_secret=None if secret is None else Secret(secret),
    )
    handler = handler or (lambda request: pytest.fail(f"no request expected: {request.url}"))
    return Replicate(config, httpx.AsyncClient(transport=httpx.MockTransport(handler)))


def recorder(*answers):
    seen = []
    queue = list(answers)

    def handler(request):
        seen.append(request)
        return queue.pop(0) if len(queue) > 1 else queue[0]

    return seen, handler


def prediction(status="starting", **extra):
    body = {
        "id": PREDICTION_ID,
        "model": "google/veo-3.1-fast",
        "version": VERSION,
        "input": {"prompt": "a cat"},
        "logs": "",
        "output": None,
        "data_removed": False,
        "error": None,
        "status": status,
        "created_at": "2025-04-26T22:13:06.224088Z",
        "urls": {
            "get": f"https://replicate.test/v1/predictions/{PREDICTION_ID}",
            "cancel": f"https://replicate.test/v1/predictions/{PREDICTION_ID}/cancel",
        },
    }
    return body | extra


def answer(status_code, body=None, headers=None):
    return httpx.Response(status_code, json=body, headers=headers)


def job(prediction_id=PREDICTION_ID):
    return JobRef("job-1", prediction_id, KEY.fingerprint, CALLBACK)


def signed(body, *, secret=SECRET, msg_id="msg_2Zk9", timestamp=None):
    """Standard Webhooks headers, computed here rather than by the code under test."""
    timestamp = int(time.time()) if timestamp is None else timestamp
    key = base64.b64decode(secret.removeprefix("whsec_"))
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": "v1," + base64.b64encode(mac).decode(),
    }


# -- which endpoint -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("google/veo-3.1-fast", ("/v1/models/google/veo-3.1-fast/predictions", {})),
        (f"owner/name:{VERSION}", ("/v1/predictions", {"version": VERSION})),
        (VERSION, ("/v1/predictions", {"version": VERSION})),
        ("owner/name:short", None),
        ("just-a-name", None),
        ("a/b/c", None),
        (VERSION.upper(), None),
        ("owner/na me", None),
    ],
)
def test_route_by_model_or_version(model, expected):
    assert route(model) == expected


def test_submit_by_model_sends_input_webhook_and_events():
    seen, handler = recorder(answer(201, prediction()))
    replicate = make(handler)
    request = SubmitRequest(prompt="a cat", images=["https://x.test/a.png"], options={"seed": 7})
    submission = asyncio.run(replicate.submit(request, CALLBACK))
    sent = seen[0]
    assert (sent.method, sent.url.path) == ("POST", "/v1/models/google/veo-3.1-fast/predictions")
    assert sent.headers["authorization"] == f"Bearer {KEY.reveal()}"
    assert "prefer" not in sent.headers
    assert json.loads(sent.content) == {
        "input": {"prompt": "a cat", "image": "https://x.test/a.png", "seed": 7},
        "webhook": CALLBACK,
        "webhook_events_filter": ["start", "completed"],
    }
    assert WEBHOOK_EVENTS == ("start", "completed")
    assert submission.provider_job_id == PREDICTION_ID
    assert submission.key_fingerprint == KEY.fingerprint
    assert (submission.observation.status, submission.observation.provider_status) == (
        Status.QUEUED,
        "starting",
    )


@pytest.mark.parametrize("model", [f"owner/name:{VERSION}", VERSION])
def test_submit_by_version(model):
    seen, handler = recorder(answer(200, prediction()))
    request = SubmitRequest(prompt="a cat", model=model, images=["data:a", "data:b"])
    asyncio.run(make(handler).submit(request, None))
    assert seen[0].url.path == "/v1/predictions"
    body = json.loads(seen[0].content)
    assert body == {
        "version": VERSION,
        "input": {"prompt": "a cat", "image": "data:a", "last_frame": "data:b"},
    }


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (SubmitRequest(prompt="a", model="not a model"), "model"),
        (SubmitRequest(prompt="a", mode="i2v"), "mode"),
        (SubmitRequest(prompt="a", images=["https://a", "https://b", "https://c"]), "images"),
        (SubmitRequest(prompt="a", images=["file.png"]), "images"),
        (SubmitRequest(prompt=" "), "prompt"),
        (SubmitRequest(prompt="a", options={"prompt": "b"}), "options.prompt"),
        (SubmitRequest(prompt="a", options={"image": "https://a"}), "options.image"),
    ],
)
def test_invalid_requests_are_refused_before_sending(request_, field):
    with pytest.raises(InvalidRequest) as caught:
        make().validate(request_)
    assert field in caught.value.fields


def test_no_model_at_all_is_refused():
    with pytest.raises(InvalidRequest) as caught:
        make(default_model=None).validate(SubmitRequest(prompt="a"))
    assert "model" in caught.value.fields


def test_a_create_answer_without_an_id_is_not_retried():
    _, handler = recorder(answer(201, {"status": "starting"}))
    with pytest.raises(ProviderError) as caught:
        asyncio.run(make(handler).submit(SubmitRequest(prompt="a"), None))
    assert not caught.value.transient


@pytest.mark.parametrize(
    "body",
    [
        {"detail": "Request was throttled. Your rate limit resets in ~30s."},
        {"title": "Request was throttled", "detail": "Request was throttled. Your rate limit "
         "resets in ~30s.", "status": 429},
    ],
)  # fmt: skip
def test_throttling_keeps_detail_and_retry_after(body):
    _, handler = recorder(answer(429, body, {"Retry-After": "7"}))
    with pytest.raises(ProviderError) as caught:
        asyncio.run(make(handler).submit(SubmitRequest(prompt="a"), None))
    assert caught.value.transient and caught.value.retry_after == 7
    assert caught.value.message == "Request was throttled. Your rate limit resets in ~30s."


# -- what a prediction says ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("output", "url"),
    [
        (VIDEO, VIDEO),
        ([VIDEO], VIDEO),
        (["https://r.test/cover.png", VIDEO], VIDEO),
        (["https://r.test/a.png", "https://r.test/b.png"], "https://r.test/a.png"),
        ([None, 3, VIDEO], VIDEO),
        ("not a url", None),
        ({"video": VIDEO}, None),
        ([], None),
        (None, None),
    ],
)
def test_output_as_a_string_or_a_list(output, url):
    assert output_url(output) == url


@pytest.mark.parametrize(
    ("status", "normalized"),
    [
        ("starting", Status.QUEUED),
        ("processing", Status.PROCESSING),
        ("succeeded", Status.COMPLETED),
        ("failed", Status.FAILED),
        ("canceled", Status.CANCELED),
    ],
)
def test_statuses(status, normalized):
    seen = observation(prediction(status, output=VIDEO, error="boom"))
    assert (seen.status, seen.provider_status, seen.known) == (normalized, status, True)
    assert seen.result_url == (VIDEO if normalized is Status.COMPLETED else None)
    assert seen.error == ("boom" if normalized is Status.FAILED else None)
    assert seen.provider_job_id == PREDICTION_ID


def test_an_unknown_status_is_kept_raw_as_queued():
    seen = observation(prediction("booting"))
    assert (seen.status, seen.provider_status, seen.known) == (Status.QUEUED, "booting", False)


def test_a_failure_without_error_says_so():
    assert observation(prediction("failed")).error == "failed without a reason"


def test_a_success_whose_output_was_removed_is_a_failure_that_says_why():
    seen = observation(prediction("succeeded", output=None, data_removed=True))
    assert (seen.status, seen.provider_status, seen.error) == (Status.FAILED, "succeeded", REMOVED)


def test_outputs_live_an_hour():
    assert Replicate.result_lifetime == OUTPUT_LIFETIME == 3600


def test_fetch_reads_the_prediction():
    seen, handler = recorder(answer(200, prediction("succeeded", output=[VIDEO])))
    got = asyncio.run(make(handler).fetch(job()))
    assert seen[0].url.path == f"/v1/predictions/{PREDICTION_ID}"
    assert (got.status, got.result_url) == (Status.COMPLETED, VIDEO)


@pytest.mark.parametrize(
    "body", [prediction("succeeded", output=None), {"id": PREDICTION_ID}, ["not", "a", "dict"]]
)
def test_fetch_of_an_unusable_answer_is_asked_again(body):
    _, handler = recorder(answer(200, body))
    with pytest.raises(ProviderError) as caught:
        asyncio.run(make(handler).fetch(job()))
    assert caught.value.transient


def test_fetch_before_the_id_is_known_is_asked_again():
    with pytest.raises(ProviderError) as caught:
        asyncio.run(make().fetch(job(None)))
    assert caught.value.transient


def test_an_unknown_prediction_is_a_permanent_refusal():
    _, handler = recorder(answer(404, {"detail": "Not found."}))
    with pytest.raises(ProviderError) as caught:
        asyncio.run(make(handler).fetch(job()))
    assert (caught.value.transient, caught.value.message) == (False, "Not found.")


# -- cancel ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answered", "expected"),
    [
        (prediction("canceled"), Status.CANCELED),
        (prediction("succeeded", output=VIDEO), Status.COMPLETED),
        (prediction("failed", error="boom"), Status.FAILED),
    ],
)
def test_cancel_returns_how_the_prediction_ended(answered, expected):
    seen, handler = recorder(answer(200, answered))
    got = asyncio.run(make(handler).cancel(job()))
    assert (seen[0].method, seen[0].url.path) == (
        "POST",
        f"/v1/predictions/{PREDICTION_ID}/cancel",
    )
    assert got is not None and got.status is expected


def test_a_cancel_still_under_way_is_left_to_a_poll():
    _, handler = recorder(answer(200, prediction("processing")))
    assert asyncio.run(make(handler).cancel(job())) is None
    assert Replicate.supports_cancel


# -- webhooks --------------------------------------------------------------------------------


def body_of(**changes):
    return json.dumps(prediction("succeeded", output=VIDEO) | changes).encode()


def test_a_signed_webhook_verifies_and_its_id_is_the_nonce():
    body = body_of()
    replicate = make()
    assert replicate.verify_callback(job(), signed(body), body, tolerance=300) == "msg_2Zk9"
    seen = replicate.parse_callback(json.loads(body))
    assert (seen.status, seen.result_url) == (Status.COMPLETED, VIDEO)
    assert not replicate.needs_confirmation(seen)
    assert Replicate.signs_callback_body


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({"webhook-signature": "v1," + base64.b64encode(bytes(32)).decode()}, "bad_signature"),
        ({"webhook-id": None}, "missing_header"),
        ({"webhook-timestamp": str(int(time.time()) - 301)}, "bad_signature"),
    ],
)
def test_forged_webhooks_are_refused(headers, reason):
    body = body_of()
    sent = signed(body) | headers
    sent = {k: v for k, v in sent.items() if v is not None}
    with pytest.raises(signing.SignatureError) as caught:
        make().verify_callback(job(), sent, body, tolerance=300)
    assert caught.value.reason == reason


def test_another_secret_or_a_stale_timestamp_is_refused():
    body = body_of()
    other = "whsec_" + base64.b64encode(b"some-other-secret-0123456789abc").decode()
    with pytest.raises(signing.SignatureError) as caught:
        make().verify_callback(job(), signed(body, secret=other), body, tolerance=300)
    assert caught.value.reason == "bad_signature"
    stale = signed(body, timestamp=int(time.time()) - 301)
    with pytest.raises(signing.SignatureError) as caught:
        make().verify_callback(job(), stale, body, tolerance=300)
    assert caught.value.reason == "stale_date"


@pytest.mark.parametrize(
    ("ref", "body"),
    [
        (job(), body_of(id="someoneelsesprediction0000")),
        (job(), json.dumps({"status": "succeeded", "output": VIDEO}).encode()),
        (job(None), body_of()),
    ],
)
def test_a_genuine_webhook_for_another_prediction_is_refused(ref, body):
    with pytest.raises(signing.SignatureError) as caught:
        make().verify_callback(ref, signed(body), body, tolerance=300)
    assert caught.value.reason == "wrong_task"


def test_a_signed_body_that_is_not_an_object_is_left_to_the_json_check():
    body = b"[1, 2]"
    assert make().verify_callback(job(), signed(body), body, tolerance=300) == "msg_2Zk9"


def test_a_success_without_an_output_url_is_confirmed_by_a_fetch():
    replicate = make()
    seen = replicate.parse_callback(prediction("succeeded", output=None))
    assert replicate.needs_confirmation(seen)
    for status in ("failed", "canceled", "processing"):
        assert not replicate.needs_confirmation(replicate.parse_callback(prediction(status)))


# -- the secret ------------------------------------------------------------------------------


@pytest.mark.parametrize("secret", [None, "not-a-secret", "whsec_!!!", "whsec_" + "QQ=="])
def test_an_unusable_webhook_secret_stops_the_start(secret):
    with pytest.raises(ConfigError) as caught:
        make(secret=secret)
    (problem,) = caught.value.problems
    assert problem.startswith("providers.replicate.webhook_secret_env: ")
    if secret:
        assert secret not in problem

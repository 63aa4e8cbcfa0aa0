import asyncio
import base64
import hashlib
import hmac
import json
import time
import uuid
from urllib.parse import quote_plus

import httpx
import pytest

import signing
from receiver.config import ConfigError, ProviderConfig, Secret
from receiver.providers.base import InvalidRequest, JobRef, ProviderError, SubmitRequest
from receiver.providers.pixverse import FAILURES, PixVerse, observation
from receiver.states import Status

KEY = Secret("pixverse-unit-key")
SECRET = "pixverse-webhook-secret"
BASE = "https://pixverse.test"
VIDEO = 366512345678
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 16


def make(handler, webhook_secret=SECRET, default_model="v5", **config):
    config = ProviderConfig(
        name="pixverse",
        type="pixverse",
        base_url=BASE,
        api_key=KEY,
        default_model=default_model,
        webhook_secret=Secret(webhook_secret) if webhook_secret is not None else None,
        **config,
    )
    return PixVerse(config, httpx.AsyncClient(transport=httpx.MockTransport(handler)))


def envelope(resp=None, code=0, message="success"):
    return {"ErrCode": code, "ErrMsg": message, "Resp": resp if resp is not None else {}}


def pixverse(seen, img_id=42, video_id=VIDEO):
    """A PixVerse that takes uploads and generates, recording each request."""

    def handler(request):
        seen.append(request)
        if request.url.path.endswith("/image/upload"):
            return httpx.Response(200, json=envelope({"img_id": img_id, "img_url": "u"}))
        return httpx.Response(200, json=envelope({"video_id": video_id}))

    return handler


def answering(status, body, headers=None):
    def handler(request):
        return httpx.Response(status, json=body, headers=headers)

    return handler


def submit(provider, request):
    return asyncio.run(provider.submit(request, None))


def fetch(provider, video_id=str(VIDEO)):
    return asyncio.run(provider.fetch(JobRef("job_1", video_id, KEY.fingerprint)))


def refused(call):
    with pytest.raises(ProviderError) as caught:
        call()
    return caught.value


def form_fields(request):
    """The parts of a multipart body: name -> (filename, content type, bytes)."""
    boundary = request.headers["content-type"].split("boundary=", 1)[1].encode()
    parts = {}
    for chunk in request.content.split(b"--" + boundary)[1:-1]:
        head, _, content = chunk.strip(b"\r\n").partition(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        disposition = next(x for x in lines if x.lower().startswith("content-disposition"))
        name = disposition.split('name="', 1)[1].split('"', 1)[0]
        filename = (
            disposition.split('filename="', 1)[1].split('"', 1)[0]
            if "filename" in disposition
            else None
        )
        kind = next(
            (x.split(":", 1)[1].strip() for x in lines if x.lower().startswith("content-type")),
            None,
        )
        parts[name] = (filename, kind, content)
    return parts


# --- submit ----------------------------------------------------------------------------


def test_text_to_video_sends_the_key_a_fresh_trace_id_and_pixverse_s_required_fields():
    seen = []
    provider = make(pixverse(seen))
    request = SubmitRequest(prompt="A fox in the snow", options={"seed": 7, "motion_mode": "fast"})
    first = submit(provider, request)
    submit(provider, request)
    sent = seen[0]
    assert (sent.method, str(sent.url)) == ("POST", f"{BASE}/openapi/v2/video/text/generate")
    assert sent.headers["api-key"] == "pixverse-unit-key"
    assert "authorization" not in sent.headers
    traces = [r.headers["ai-trace-id"] for r in seen]
    assert len(set(traces)) == 2 and all(uuid.UUID(t).version == 4 for t in traces)
    assert json.loads(sent.content) == {
        "model": "v5", "prompt": "A fox in the snow", "duration": 5, "quality": "540p",
        "aspect_ratio": "16:9", "seed": 7, "motion_mode": "fast",
    }  # fmt: skip
    assert first.provider_job_id == str(VIDEO)
    assert first.observation.status is Status.QUEUED
    assert first.key_fingerprint == KEY.fingerprint


def test_the_job_s_options_win_over_the_defaults():
    seen = []
    options = {"duration": 8, "quality": "1080p", "aspect_ratio": "9:16"}
    submit(make(pixverse(seen)), SubmitRequest(prompt="Rain", model="v4.5", options=options))
    body = json.loads(seen[0].content)
    assert (body["model"], body["duration"], body["quality"], body["aspect_ratio"]) == (
        "v4.5", 8, "1080p", "9:16",
    )  # fmt: skip


def test_an_image_url_is_uploaded_first_then_generated_from_its_img_id():
    seen = []
    request = SubmitRequest(prompt="The lighthouse beam", images=["https://img.test/a.jpg"])
    submission = submit(make(pixverse(seen, img_id=9001)), request)
    upload, generate = seen
    assert str(upload.url) == f"{BASE}/openapi/v2/image/upload"
    assert upload.headers["content-type"].startswith("multipart/form-data")
    assert form_fields(upload) == {"image_url": (None, None, b"https://img.test/a.jpg")}
    assert str(generate.url) == f"{BASE}/openapi/v2/video/img/generate"
    body = json.loads(generate.content)
    assert body["img_id"] == 9001 and "aspect_ratio" not in body
    assert upload.headers["ai-trace-id"] != generate.headers["ai-trace-id"]
    assert submission.provider_job_id == str(VIDEO)


def test_a_data_uri_is_uploaded_as_the_file():
    seen = []
    uri = "data:image/png;base64," + base64.b64encode(PNG).decode()
    submit(make(pixverse(seen)), SubmitRequest(prompt="A cat", images=[uri]))
    assert form_fields(seen[0]) == {"image": ("image.png", "image/png", PNG)}


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (SubmitRequest(prompt=""), "prompt"),
        (SubmitRequest(prompt="x" * 2049), "prompt"),
        (SubmitRequest(prompt="x", mode="i2v"), "mode"),
        (
            SubmitRequest(prompt="x", images=["https://a.test/1.jpg", "https://a.test/2.jpg"]),
            "images",
        ),
        (SubmitRequest(prompt="x", images=["ftp://a.test/1.jpg"]), "images"),
        (SubmitRequest(prompt="x", images=["data:image/png;base64,***"]), "images"),
        (SubmitRequest(prompt="x", images=["data:text/plain;base64,aGk="]), "images"),
        (SubmitRequest(prompt="x", options={"duration": "5"}), "options.duration"),
        (SubmitRequest(prompt="x", options={"quality": "4k"}), "options.quality"),
        (SubmitRequest(prompt="x", options={"motion_mode": "slow"}), "options.motion_mode"),
        (SubmitRequest(prompt="x", options={"seed": -1}), "options.seed"),
        (SubmitRequest(prompt="x", options={"seed": 2**31}), "options.seed"),
        (SubmitRequest(prompt="x", options={"negative_prompt": 3}), "options.negative_prompt"),
        (SubmitRequest(prompt="x", options={"water_mark": "no"}), "options.water_mark"),
        (SubmitRequest(prompt="x", options={"img_id": 3}), "options.img_id"),
        (
            SubmitRequest(
                prompt="x", images=["https://a.test/1.jpg"], options={"aspect_ratio": "1:1"}
            ),
            "options.aspect_ratio",
        ),
    ],
)
def test_invalid_requests_are_refused_before_sending(request_, field):
    seen = []
    with pytest.raises(InvalidRequest) as caught:
        submit(make(pixverse(seen)), request_)
    assert field in caught.value.fields
    assert seen == []


def test_no_model_at_all_is_refused():
    provider = make(pixverse([]), default_model=None)
    with pytest.raises(InvalidRequest) as caught:
        provider.validate(SubmitRequest(prompt="x"))
    assert "model" in caught.value.fields


@pytest.mark.parametrize(
    ("message", "transient"),
    [
        ("Reached the limit for concurrent generations.", True),
        ("System busy, please try again later", True),
        ("Invalid parameter", False),
        ("Insufficient balance", False),
    ],
)
def test_a_refusal_inside_a_200_is_read_by_its_words(message, transient):
    error = refused(lambda: submit(make(answering(200, envelope(code=500044, message=message))),
                                   SubmitRequest(prompt="x")))  # fmt: skip
    assert (error.message, error.code, error.transient) == (message, "500044", transient)
    # PixVerse said no: the video was not started, whatever the HTTP status said.
    assert not error.may_have_acted


def test_an_http_error_keeps_pixverse_s_code_and_retry_after():
    body = {"ErrCode": 429001, "ErrMsg": "Too many requests"}
    provider = make(answering(429, body, {"Retry-After": "3"}))
    error = refused(lambda: submit(provider, SubmitRequest(prompt="x")))
    assert (error.status_code, error.code, error.message) == (429, "429001", "Too many requests")
    assert error.transient and error.retry_after == 3.0


def test_an_http_error_without_an_envelope_says_the_status():
    error = refused(lambda: submit(make(answering(502, None)), SubmitRequest(prompt="x")))
    assert error.message == "HTTP 502 Bad Gateway" and error.transient


def test_a_generate_answer_without_a_video_id_is_not_sent_again():
    error = refused(lambda: submit(make(answering(200, envelope({}))), SubmitRequest(prompt="x")))
    assert not error.transient


def test_an_upload_refused_fails_the_submission_without_generating():
    seen = []

    def handler(request):
        seen.append(request)
        return httpx.Response(200, json=envelope(code=400032, message="Unsupported image format"))

    request = SubmitRequest(prompt="x", images=["https://img.test/a.gif"])
    error = refused(lambda: submit(make(handler), request))
    assert (error.message, error.transient) == ("Unsupported image format", False)
    assert [r.url.path for r in seen] == ["/openapi/v2/image/upload"]


# --- status ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "normalized"),
    [(5, Status.PROCESSING), (1, Status.COMPLETED), (7, Status.FAILED), (8, Status.FAILED),
     ("1", Status.COMPLETED)],
)  # fmt: skip
def test_statuses(status, normalized):
    seen = observation({"id": VIDEO, "status": status, "url": "https://media.test/v.mp4"})
    assert (seen.status, seen.provider_status, seen.known) == (normalized, str(status), True)
    assert seen.provider_job_id == str(VIDEO)


def test_an_unknown_status_is_kept_raw_as_queued():
    seen = observation({"id": VIDEO, "status": 6})
    assert (seen.status, seen.provider_status, seen.known) == (Status.QUEUED, "6", False)


@pytest.mark.parametrize("status", [7, 8])
def test_a_failure_says_which(status):
    assert observation({"status": status}).error == FAILURES[status]


def test_fetch_reads_the_result():
    seen = []

    def handler(request):
        seen.append(request)
        video = {"id": VIDEO, "status": 1, "url": "https://media.test/v.mp4", "credits": 45,
                 "outputWidth": 960, "outputHeight": 540}  # fmt: skip
        return httpx.Response(200, json=envelope(video))

    done = fetch(make(handler))
    assert str(seen[0].url) == f"{BASE}/openapi/v2/video/result/{VIDEO}"
    assert seen[0].method == "GET" and seen[0].headers["api-key"] == "pixverse-unit-key"
    assert (done.status, done.result_url, done.credits) == (
        Status.COMPLETED, "https://media.test/v.mp4", 45.0,
    )  # fmt: skip


@pytest.mark.parametrize(
    "video", [{"id": VIDEO, "status": 1}, {"id": VIDEO}, {"id": VIDEO, "status": "done"}]
)
def test_an_unusable_result_is_asked_again(video):
    assert refused(lambda: fetch(make(answering(200, envelope(video))))).transient


def test_fetch_before_the_id_is_known_is_asked_again():
    assert refused(lambda: fetch(make(answering(200, envelope())), None)).transient


def test_an_unknown_video_is_a_permanent_refusal():
    body = envelope(code=400018, message="Video does not exist")
    error = refused(lambda: fetch(make(answering(200, body))))
    assert (error.message, error.transient) == ("Video does not exist", False)


def test_pixverse_cannot_cancel_and_needs_no_per_job_callback_url():
    provider = make(pixverse([]))
    assert not provider.supports_cancel
    assert provider.account_webhook and provider.signs_callback_body
    assert provider.callback_reply == b"ok"


def test_a_missing_webhook_secret_stops_the_start():
    with pytest.raises(ConfigError) as caught:
        make(pixverse([]), webhook_secret=None)
    assert "webhook_secret_env" in caught.value.problems[0]


# --- webhooks --------------------------------------------------------------------------


def webhook(body, *, secret=SECRET, ts=None, nonce="a" * 32):
    """PixVerse's headers, made here: the body's fields sorted, as a query string."""
    ts = int(time.time()) if ts is None else ts
    fields = json.loads(body)

    def value(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        return "" if v is None else str(v)

    query = "&".join(f"{quote_plus(k)}={quote_plus(value(fields[k]))}" for k in sorted(fields))
    mac = hmac.new(secret.encode(), f"{ts}\n{nonce}\n{query}".encode(), hashlib.sha256).digest()
    return {
        "Content-Type": "application/json",
        "Webhook-Timestamp": str(ts),
        "Webhook-Nonce": nonce,
        "Webhook-Signature": base64.b64encode(mac).decode(),
    }


DONE = json.dumps({"id": str(VIDEO), "status": 1, "url": "https://media.test/v.mp4",
                   "size": 10.5, "has_audio": True, "credits": 45}).encode()  # fmt: skip


def test_a_signed_webhook_names_its_video_and_its_nonce():
    provider = make(pixverse([]))
    named = provider.verify_account_callback(webhook(DONE), DONE, tolerance=300)
    assert (named.task_id, named.nonce) == (str(VIDEO), "a" * 32)
    seen = provider.parse_callback(json.loads(DONE))
    assert (seen.status, seen.result_url, seen.credits) == (
        Status.COMPLETED, "https://media.test/v.mp4", 45.0,
    )  # fmt: skip
    assert not provider.needs_confirmation(seen)


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        (webhook(DONE, secret="another-secret"), "bad_signature"),
        (webhook(DONE, ts=int(time.time()) - 301), "stale_date"),
        ({"Content-Type": "application/json"}, "missing_header"),
    ],
)
def test_forged_or_stale_webhooks_are_refused(headers, reason):
    with pytest.raises(signing.SignatureError) as caught:
        make(pixverse([])).verify_account_callback(headers, DONE, tolerance=300)
    assert caught.value.reason == reason


def test_a_signed_webhook_that_names_no_video_is_refused():
    body = json.dumps({"status": 1, "url": "https://media.test/v.mp4"}).encode()
    with pytest.raises(signing.SignatureError) as caught:
        make(pixverse([])).verify_account_callback(webhook(body), body, tolerance=300)
    assert caught.value.reason == "wrong_task"


def test_a_success_without_a_url_is_confirmed_by_a_fetch():
    provider = make(pixverse([]))
    seen = provider.parse_callback({"id": str(VIDEO), "status": 1})
    assert provider.needs_confirmation(seen)
    assert not provider.needs_confirmation(provider.parse_callback({"id": "1", "status": 8}))

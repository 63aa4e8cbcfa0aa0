import asyncio
import base64
import email.policy
import json
from email.message import EmailMessage
from email.parser import BytesParser

import httpx
import pytest

from receiver.config import ProviderConfig, Secret
from receiver.providers.base import (
    InvalidRequest,
    JobRef,
    Progress,
    ProviderError,
    SubmitRequest,
)
from receiver.providers.revid import Revid, decode_data_uri, mode_for, observation
from receiver.states import Status

KEY = Secret("sk_live_revid-unit-key")
OLD = Secret("sk_live_revid-old-key")
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256))
PNG_URI = "data:image/png;base64," + base64.b64encode(PNG).decode()
SUBMITTED = {"job_id": "job_123456789", "status": "pending", "cost": 10, "balance_remaining": 1490}


def make(handler, default_model="kling-2.6", timeout=30.0):
    config = ProviderConfig(
        name="revid",
        type="revid",
        base_url="https://revid.test",
        api_key=KEY,
        previous_api_keys=(OLD,),
        default_model=default_model,
        timeout=timeout,
    )
    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    return Revid(config, client)


def submit_ok(seen, body=None):
    def handler(request):
        seen.append(request)
        return httpx.Response(200, json=SUBMITTED if body is None else body)

    return handler


def parts_of(request):
    """The multipart parts of a sent request: name -> (filename, content type, bytes)."""
    head = f"Content-Type: {request.headers['content-type']}\r\n\r\n".encode()
    message = BytesParser(EmailMessage, policy=email.policy.HTTP).parsebytes(head + request.content)
    assert message.is_multipart()
    parts = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        filename = part.get_filename()
        content_type = part.get("content-type") and part.get_content_type()
        parts[name] = (filename, content_type, part.get_payload(decode=True))
    return parts


def fields_of(request):
    return {name: data.decode() for name, (filename, _, data) in parts_of(request).items()
            if filename is None}  # fmt: skip


def submit(revid, request, callback_url=None):
    return asyncio.run(revid.submit(request, callback_url))


def fetch(revid, job=None):
    return asyncio.run(revid.fetch(job or JobRef("job", "job_123456789", KEY.fingerprint)))


# --- submit: what is sent -------------------------------------------------------


def test_text_to_video_is_a_multipart_post_with_bearer_key():
    seen = []
    revid = make(submit_ok(seen))
    request = SubmitRequest(prompt="A cinematic shot", options={"aspect_ratio": "16:9"})
    submission = submit(revid, request, "https://hooks.example/ignored")
    sent = seen[0]
    assert (sent.method, str(sent.url)) == ("POST", "https://revid.test/v1/video/generate")
    assert sent.headers["authorization"] == "Bearer sk_live_revid-unit-key"
    assert sent.headers["content-type"].startswith("multipart/form-data; boundary=")
    assert fields_of(sent) == {
        "prompt": "A cinematic shot",
        "model": "kling-2.6",
        "mode": "t2v",
        "aspect_ratio": "16:9",
    }
    assert (submission.provider_job_id, submission.key_fingerprint) == (
        "job_123456789",
        KEY.fingerprint,
    )
    first = submission.observation
    assert (first.status, first.provider_status, first.credits, first.known) == (
        Status.QUEUED,
        "pending",
        10.0,
        True,
    )
    assert first.raw == SUBMITTED


def test_request_model_overrides_the_default_and_options_become_text_fields():
    seen = []
    options = {"duration": 10, "audio": True, "speed": "fast", "server_id": "s2",
               "resolution": "1080p"}  # fmt: skip
    submit(make(submit_ok(seen)), SubmitRequest(prompt="p", model="veo-3.1", options=options))
    assert fields_of(seen[0]) == {
        "prompt": "p",
        "model": "veo-3.1",
        "mode": "t2v",
        "duration": "10s",
        "audio": "true",
        "speed": "fast",
        "server_id": "s2",
        "resolution": "1080p",
    }


@pytest.mark.parametrize(("given", "sent"), [("5s", "5s"), (5, "5s"), (7.5, "7.5s")])
def test_duration_is_sent_in_the_docs_unit(given, sent):
    seen = []
    submit(make(submit_ok(seen)), SubmitRequest(prompt="p", options={"duration": given}))
    assert fields_of(seen[0])["duration"] == sent


def test_an_image_url_goes_as_img_url_in_i2v_mode():
    seen = []
    image = "https://cdn.example/cat.png"
    submit(make(submit_ok(seen)), SubmitRequest(prompt="p", images=[image]))
    fields = fields_of(seen[0])
    assert (fields["mode"], fields["img_url"]) == ("i2v", image)
    assert "input_image" not in parts_of(seen[0])


@pytest.mark.parametrize(
    ("uri_type", "filename"),
    [("image/png", "input.png"), ("image/jpeg", "input.jpg"), ("image/webp", "input.webp")],
)
def test_a_data_uri_is_uploaded_as_the_input_image_file(uri_type, filename):
    seen = []
    uri = f"data:{uri_type};base64," + base64.b64encode(PNG).decode()
    submit(make(submit_ok(seen)), SubmitRequest(prompt="p", images=[uri]))
    parts = parts_of(seen[0])
    assert parts["input_image"] == (filename, uri_type, PNG)
    assert fields_of(seen[0])["mode"] == "i2v"
    assert "img_url" not in parts
    # The file goes last, after every text field.
    assert list(parts)[-1] == "input_image"


def test_data_uri_decoding():
    upload = decode_data_uri("data:image/PNG;name=x.png;base64," + base64.b64encode(b"ab").decode())
    assert (upload.filename, upload.content_type, upload.content) == (
        "input.png",
        "image/png",
        b"ab",
    )
    for bad in ("data:text/plain;base64,YWI=", "data:image/png,YWI=", "data:image/png;base64,*",
                "data:image/png;base64,"):  # fmt: skip
        with pytest.raises(ValueError):
            decode_data_uri(bad)


def test_mode_follows_the_image_unless_forced():
    assert mode_for(SubmitRequest(prompt="p")) == "t2v"
    assert mode_for(SubmitRequest(prompt="p", images=["https://i/1.png"])) == "i2v"
    assert mode_for(SubmitRequest(prompt="p", images=["https://i/1.png"], mode="i2v")) == "i2v"


# --- validation ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (SubmitRequest(prompt=None), "prompt"),
        (SubmitRequest(prompt="   "), "prompt"),
        (SubmitRequest(prompt="p", images=["https://i/1.png", "https://i/2.png"]), "images"),
        (SubmitRequest(prompt="p", mode="i2v"), "images"),
        (SubmitRequest(prompt="p", mode="t2v", images=["https://i/1.png"]), "images"),
        (SubmitRequest(prompt="p", images=["ftp://i/1.png"]), "images"),
        (SubmitRequest(prompt="p", images=["/tmp/cat.png"]), "images"),
        (SubmitRequest(prompt="p", images=["data:image/png;base64,!!"]), "images"),
        (SubmitRequest(prompt="p", images=["data:text/html;base64,YWI="]), "images"),
        (SubmitRequest(prompt="p", mode="v2v"), "mode"),
        (SubmitRequest(prompt="p", options={"img_url": "https://i/1.png"}), "options.img_url"),
        (SubmitRequest(prompt="p", options={"input_image": "x"}), "options.input_image"),
        (SubmitRequest(prompt="p", options={"model": "veo-3.1"}), "options.model"),
        (SubmitRequest(prompt="p", options={"prompt": "q"}), "options.prompt"),
        (SubmitRequest(prompt="p", options={"mode": "i2v"}), "options.mode"),
        (SubmitRequest(prompt="p", options={"callback_url": "x"}), "options.callback_url"),
        (SubmitRequest(prompt="p", options={"extra": {"a": 1}}), "options.extra"),
        (SubmitRequest(prompt="p", options={"duration": 0}), "options.duration"),
        (SubmitRequest(prompt="p", options={"duration": True}), "options.duration"),
    ],
)
def test_invalid_requests_name_the_field_and_send_nothing(request_, field):
    seen = []
    with pytest.raises(InvalidRequest) as caught:
        submit(make(submit_ok(seen)), request_)
    assert field in caught.value.fields
    assert seen == []


def test_every_bad_field_is_named_at_once():
    request = SubmitRequest(prompt="", mode="x", options={"model": "m", "images": []})
    with pytest.raises(InvalidRequest) as caught:
        make(submit_ok([]), default_model=None).validate(request)
    assert set(caught.value.fields) == {
        "prompt",
        "model",
        "mode",
        "options.model",
        "options.images",
    }


def test_a_model_is_required_when_no_default_is_configured():
    with pytest.raises(InvalidRequest) as caught:
        make(submit_ok([]), default_model=None).validate(SubmitRequest(prompt="p"))
    assert set(caught.value.fields) == {"model"}


# --- fetch and the status vocabulary ---------------------------------------------


def test_fetch_gets_the_job_with_the_key_that_created_it():
    seen = []

    def handler(request):
        seen.append((request.method, request.url.path, request.headers["authorization"]))
        return httpx.Response(200, json={"status": "processing", "result": None, "progress": 40})

    revid = make(handler)
    observed = fetch(revid, JobRef("job", "job_1", OLD.fingerprint))
    fetch(revid, JobRef("job", "job_2", "sha256:gone"))
    assert seen == [
        ("GET", "/v1/jobs/job_1", "Bearer sk_live_revid-old-key"),
        ("GET", "/v1/jobs/job_2", "Bearer sk_live_revid-unit-key"),
    ]
    assert (observed.status, observed.provider_status) == (Status.PROCESSING, "processing")
    assert observed.raw == {"status": "processing", "result": None, "progress": 40}
    assert observed.progress == Progress(percent=40)


@pytest.mark.parametrize(
    ("body", "progress"),
    [
        ({"status": "processing", "progress": 65}, {"percent": 65}),
        ({"status": "processing", "progress": "65%"}, {"percent": 65}),
        ({"status": "pending"}, None),
        ({"status": "processing", "progress": None}, None),
        ({"status": "processing", "progress": "later"}, None),
    ],
)
def test_the_jobs_progress_is_read_as_a_percentage(body, progress):
    seen = observation(body).progress
    assert (seen and seen.to_json()) == progress


def test_fetch_quotes_the_job_id_into_one_path_segment():
    seen = []

    def handler(request):
        seen.append(request.url.raw_path)
        return httpx.Response(200, json={"status": "pending"})

    fetch(make(handler), JobRef("job", "a/../b?c", KEY.fingerprint))
    assert seen == [b"/v1/jobs/a%2F..%2Fb%3Fc"]


def test_fetch_without_a_provider_job_id_is_transient_and_sends_nothing():
    seen = []
    with pytest.raises(ProviderError) as caught:
        fetch(make(submit_ok(seen)), JobRef("job", None, KEY.fingerprint))
    assert caught.value.transient and seen == []


@pytest.mark.parametrize(
    ("body", "status", "result_url", "error"),
    [
        ({"status": "pending"}, Status.QUEUED, None, None),
        ({"status": "processing", "result": None, "progress": 10}, Status.PROCESSING, None, None),
        ({"status": "completed", "result": "https://storage.example/v.mp4", "progress": 100},
         Status.COMPLETED, "https://storage.example/v.mp4", None),
        ({"status": "Completed", "result": {"video_url": "https://s/v.mp4"}},
         Status.COMPLETED, "https://s/v.mp4", None),
        ({"status": "completed", "result": ["https://s/1.mp4"]}, Status.COMPLETED,
         "https://s/1.mp4", None),
        ({"status": "failed", "result": None, "error": "moderation"}, Status.FAILED, None,
         "moderation"),
        ({"status": "error", "message": "model overloaded"}, Status.FAILED, None,
         "model overloaded"),
        ({"status": "failed", "error": {"message": "nested reason"}}, Status.FAILED, None,
         "nested reason"),
        ({"status": "failed"}, Status.FAILED, None, None),
    ],
)  # fmt: skip
def test_observation_maps_every_documented_status(body, status, result_url, error):
    observed = observation(body)
    assert (observed.status, observed.result_url, observed.error, observed.known) == (
        status,
        result_url,
        error,
        True,
    )
    assert observed.provider_status == body["status"]
    assert observed.raw == body


def test_unknown_status_is_kept_raw_as_queued():
    for body in ({"status": "waiting", "error": "not a failure"}, {"result": None}, {"status": 3}):
        observed = observation(body)
        assert (observed.status, observed.known, observed.error) == (Status.QUEUED, False, None)
        assert observed.provider_status == (None if "status" not in body else str(body["status"]))


def test_observation_tolerates_odd_values():
    observed = observation({"status": "completed", "result": "", "cost": "x", "job_id": 7})
    assert (observed.result_url, observed.credits, observed.provider_job_id) == (None, None, "7")
    assert observation({"status": "pending", "cost": True}).credits is None
    assert observation({"status": "pending", "cost": "12.5"}).credits == 12.5


# --- errors ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "error", "transient"),
    [(400, "Bad Request", False), (401, "Unauthorized", False),
     (402, "Insufficient Funds", False), (403, "Forbidden", False), (404, "Not Found", False),
     (429, "Too Many Requests", True), (500, "Internal Server Error", True),
     (503, "Service Unavailable", True)],
)  # fmt: skip
def test_http_errors_are_classified_with_the_providers_code(status, error, transient):
    def handler(request):
        body = {"code": status, "error": error, "message": "told you so"}
        return httpx.Response(status, json=body, headers={"Retry-After": "3"})

    for call in (lambda r: submit(r, SubmitRequest(prompt="p")), fetch):
        with pytest.raises(ProviderError) as caught:
            call(make(handler))
        e = caught.value
        assert (e.transient, e.status_code, e.code, e.message) == (
            transient,
            status,
            error,
            "told you so",
        )
        assert e.retry_after == 3.0


@pytest.mark.parametrize(
    ("body", "code", "message"),
    [
        ({"detail": "Not enough credits"}, None, "Not enough credits"),
        ({"detail": [{"loc": ["body", "model"], "msg": "field required"}]}, None,
         "model: field required"),
        ({"error": {"code": "insufficient_funds", "message": "top up"}}, "insufficient_funds",
         "top up"),
        ({"error": "Insufficient Funds"}, "Insufficient Funds", "Insufficient Funds"),
        ({"success": False}, None, "HTTP 402 Payment Required"),
        ("just text", None, "HTTP 402 Payment Required"),
    ],
)  # fmt: skip
def test_other_error_shapes_still_yield_a_message(body, code, message):
    def handler(request):
        if isinstance(body, str):
            return httpx.Response(402, text=body)
        return httpx.Response(402, json=body)

    with pytest.raises(ProviderError) as caught:
        fetch(make(handler))
    assert (caught.value.code, caught.value.message, caught.value.transient) == (
        code,
        message,
        False,
    )


def test_an_echoed_api_key_never_reaches_the_error():
    def handler(request):
        key = request.headers["authorization"].removeprefix("Bearer ")
        body = {"error": f"bad key {key}", "message": f"Invalid API key {key}"}
        return httpx.Response(401, json=body)

    with pytest.raises(ProviderError) as caught:
        submit(make(handler), SubmitRequest(prompt="p"))
    error = caught.value
    for text in (str(error), error.message, error.code or "", repr(error.args)):
        assert KEY.reveal() not in text
    assert error.message == "Invalid API key ***"


def test_network_errors_and_timeouts_are_transient():
    def refuse(request):
        raise httpx.ConnectError("refused")

    def slow(request):
        raise httpx.ReadTimeout("slow")

    for handler in (refuse, slow):
        for call in (lambda r: submit(r, SubmitRequest(prompt="p")), fetch):
            with pytest.raises(ProviderError) as caught:
                call(make(handler))
            assert caught.value.transient


@pytest.mark.parametrize(
    "response",
    [
        httpx.Response(200, content=b"{not json"),
        httpx.Response(200, json=["not", "an", "object"]),
        httpx.Response(200, json={"status": "pending"}),  # no job_id on submit
        httpx.Response(200, json={"job_id": "", "status": "pending"}),
    ],
)
def test_malformed_or_unexpected_submit_answers_are_transient(response):
    with pytest.raises(ProviderError) as caught:
        submit(make(lambda request: response), SubmitRequest(prompt="p"))
    assert caught.value.transient


@pytest.mark.parametrize("content", [b"{not json", b"[1]", b'"completed"'])
def test_malformed_or_unexpected_status_answers_are_transient(content):
    def handler(request):
        return httpx.Response(200, content=content)

    with pytest.raises(ProviderError) as caught:
        fetch(make(handler))
    assert caught.value.transient


def test_submit_never_sends_json_or_a_callback_url():
    seen = []
    submit(make(submit_ok(seen)), SubmitRequest(prompt="p"), "https://hooks.example/cb")
    assert "callback" not in seen[0].content.decode("latin-1")
    with pytest.raises(ValueError):
        json.loads(seen[0].content)
    assert Revid.supports_callbacks is False

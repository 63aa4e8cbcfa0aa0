import asyncio
import json

import httpx
import pytest

from receiver.config import ProviderConfig, Secret
from receiver.providers.base import InvalidRequest, JobRef, ProviderError, SubmitRequest
from receiver.providers.kvid import Kvid, endpoint_for, error_fields, observation
from receiver.states import Status

KEY = Secret("kvid-unit-key")
OLD = Secret("kvid-old-key")
JOB_ID = "vid_1777360165746_abc123"
VIDEO = "https://cdn.kvid.ai/videos/vid_1777360165746_abc123.mp4"
SUBMITTED = {
    "success": True,
    "data": {
        "job_id": JOB_ID,
        "status": "queued",
        "message": "Job submitted",
        "estimated_time": "30s",
        "video_type": "text-to-video",
    },
}
RESULT = {
    "success": True,
    "data": {
        "job_id": JOB_ID,
        "status": "completed",
        "result_url": VIDEO,
        "prompt": "a cat",
        "width": 1280,
        "height": 720,
        "type": "video/mp4",
        "used_credit": 54,
        "created_at": "2026-04-21T10:00:00Z",
    },
}


def make(handler, default_model="v2"):
    config = ProviderConfig(
        name="kvid",
        type="kvid",
        base_url="https://kvid.test",
        api_key=KEY,
        previous_api_keys=(OLD,),
        default_model=default_model,
    )
    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    return Kvid(config, client)


def status_body(status, **extra):
    data = {"job_id": JOB_ID, "status": status, "video_type": "text-to-video", "prompt": "a cat"}
    return {"success": True, "data": data | {"created_at": "2026-04-21T10:00:00Z"} | extra}


def answering(seen, status_answer, result_answer=(200, RESULT)):
    """A kvid that answers the status and result endpoints as told."""

    def handler(request):
        seen.append(request)
        if request.url.path == "/ai/generation/status":
            code, body = status_answer
        elif request.url.path == "/ai/generation/result":
            code, body = result_answer
        else:
            code, body = 200, SUBMITTED
        if isinstance(body, bytes):
            return httpx.Response(code, content=body)
        return httpx.Response(code, json=body)

    return handler


def fetch(kvid, job_id=JOB_ID, fingerprint=KEY.fingerprint):
    return asyncio.run(kvid.fetch(JobRef("job", job_id, fingerprint)))


def submit(kvid, request):
    return asyncio.run(kvid.submit(request, None))


def refused(call):
    with pytest.raises(ProviderError) as caught:
        call()
    return caught.value


# --- submit -------------------------------------------------------------------


def test_text_to_video_sends_the_documented_request():
    seen = []
    kvid = make(answering(seen, (200, {})))
    options = {"resolution": "1080p", "seed": 7, "enable_prompt_expansion": True}
    submission = submit(kvid, SubmitRequest(prompt="a cat", options=options))
    sent = seen[0]
    assert (sent.method, sent.url.path) == ("POST", "/ai/generation/text-to-video/generate-async")
    assert sent.headers["api-key"] == "kvid-unit-key"
    assert "authorization" not in sent.headers
    assert sent.headers["content-type"] == "application/json"
    assert json.loads(sent.content) == {
        "prompt": "a cat",
        "model": "v2",
        "resolution": "1080p",
        "seed": 7,
        "enable_prompt_expansion": True,
    }
    assert submission.provider_job_id == JOB_ID
    assert submission.key_fingerprint == KEY.fingerprint
    obs = submission.observation
    assert (obs.status, obs.provider_status, obs.known) == (Status.QUEUED, "queued", True)
    assert obs.raw == SUBMITTED["data"]


def test_one_image_goes_to_image_to_video_as_image_url():
    seen = []
    kvid = make(answering(seen, (200, {})))
    request = SubmitRequest(prompt="the tiger blinks", model="v3", images=["https://h/t.jpg"])
    submit(kvid, request)
    assert seen[0].url.path == "/ai/generation/image-to-video/generate-async"
    assert json.loads(seen[0].content) == {
        "prompt": "the tiger blinks",
        "model": "v3",
        "image_url": "https://h/t.jpg",
    }


def test_without_a_default_model_the_provider_picks_it():
    seen = []
    submit(make(answering(seen, (200, {})), default_model=None), SubmitRequest(prompt="p"))
    assert json.loads(seen[0].content) == {"prompt": "p"}


@pytest.mark.parametrize(
    ("images", "endpoint"), [((), "text-to-video"), (("https://h/a.png",), "image-to-video")]
)
def test_endpoint_follows_the_image(images, endpoint):
    assert endpoint_for(SubmitRequest(prompt="p", images=images)) == endpoint
    assert endpoint_for(SubmitRequest(prompt="p", mode="image-to-video")) == "image-to-video"


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (SubmitRequest(prompt=None), "prompt"),
        (SubmitRequest(prompt="   "), "prompt"),
        (SubmitRequest(prompt="p", images=["https://h/a.png", "https://h/b.png"]), "images"),
        (SubmitRequest(prompt="p", mode="image-to-video"), "images"),
        (SubmitRequest(prompt="p", mode="text-to-video", images=["https://h/a.png"]), "images"),
        (SubmitRequest(prompt="p", images=["http://h/a.png"]), "images"),
        (SubmitRequest(prompt="p", images=["data:image/png;base64,AAAA"]), "images"),
        (SubmitRequest(prompt="p", mode="video-to-video"), "mode"),
        (SubmitRequest(prompt="p", options={"prompt": "x"}), "options.prompt"),
        (SubmitRequest(prompt="p", options={"model": "v3"}), "options.model"),
        (SubmitRequest(prompt="p", options={"image_url": "https://h/a"}), "options.image_url"),
        (SubmitRequest(prompt="p", options={"images": []}), "options.images"),
        (SubmitRequest(prompt="p", options={"callback_url": "x"}), "options.callback_url"),
        (SubmitRequest(prompt="p", options={"resolution": "4k"}), "options.resolution"),
        (SubmitRequest(prompt="p", options={"seed": "7"}), "options.seed"),
        (SubmitRequest(prompt="p", options={"seed": True}), "options.seed"),
        (SubmitRequest(prompt="p", options={"num_inference_steps": 0}),
         "options.num_inference_steps"),
        (SubmitRequest(prompt="p", options={"enable_safety_checker": "no"}),
         "options.enable_safety_checker"),
        (SubmitRequest(prompt="p", options={"enable_prompt_expansion": 1}),
         "options.enable_prompt_expansion"),
    ],
)  # fmt: skip
def test_invalid_requests_name_the_field_and_send_nothing(request_, field):
    seen = []
    with pytest.raises(InvalidRequest) as caught:
        submit(make(answering(seen, (200, {}))), request_)
    assert field in caught.value.fields
    assert seen == []


def test_every_bad_field_is_named_at_once():
    request = SubmitRequest(prompt=None, images=["a", "b"], options={"resolution": "4k"})
    with pytest.raises(InvalidRequest) as caught:
        make(answering([], (200, {}))).validate(request)
    assert set(caught.value.fields) == {"prompt", "images", "options.resolution"}


def test_unknown_options_pass_through():
    seen = []
    submit(make(answering(seen, (200, {}))), SubmitRequest(prompt="p", options={"duration": 10}))
    assert json.loads(seen[0].content)["duration"] == 10


def test_a_submit_answer_without_job_id_is_transient():
    def handler(request):
        return httpx.Response(200, json={"success": True, "data": {"status": "queued"}})

    error = refused(lambda: submit(make(handler), SubmitRequest(prompt="p")))
    assert error.transient
    assert "job_id" in error.message


# --- fetch ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("word", "status"), [("queued", Status.QUEUED), ("processing", Status.PROCESSING)]
)
def test_running_jobs_ask_only_the_status_endpoint(word, status):
    seen = []
    obs = fetch(make(answering(seen, (200, status_body(word)))))
    assert (obs.status, obs.provider_status, obs.known) == (status, word, True)
    assert (obs.result_url, obs.error, obs.credits) == (None, None, None)
    assert obs.provider_job_id == JOB_ID
    assert [(r.method, r.url.path, dict(r.url.params)) for r in seen] == [
        ("GET", "/ai/generation/status", {"jobId": JOB_ID})
    ]
    assert seen[0].headers["api-key"] == "kvid-unit-key"


def test_completed_jobs_take_url_and_credits_from_the_result():
    seen = []
    obs = fetch(make(answering(seen, (200, status_body("completed")))))
    assert (obs.status, obs.provider_status, obs.known) == (Status.COMPLETED, "completed", True)
    assert (obs.result_url, obs.credits, obs.error) == (VIDEO, 54.0, None)
    assert obs.raw is not None and obs.raw["width"] == 1280
    assert [r.url.path for r in seen] == ["/ai/generation/status", "/ai/generation/result"]
    assert dict(seen[1].url.params) == {"jobId": JOB_ID}


def test_failed_jobs_keep_the_providers_message():
    body = status_body("failed", error="NSFW content detected")
    obs = fetch(make(answering([], (200, body))))
    assert (obs.status, obs.provider_status, obs.error) == (
        Status.FAILED,
        "failed",
        "NSFW content detected",
    )
    assert fetch(make(answering([], (200, status_body("failed"))))).error is None


def test_an_unknown_status_is_kept_raw_and_treated_as_queued():
    obs = fetch(make(answering([], (200, status_body("waiting")))))
    assert (obs.status, obs.provider_status, obs.known) == (Status.QUEUED, "waiting", False)


@pytest.mark.parametrize("code", [400, 404, 409])
def test_a_refused_result_of_a_completed_job_is_asked_again(code):
    answer = (code, {"success": False, "message": "Job is not completed yet"})
    error = refused(lambda: fetch(make(answering([], (200, status_body("completed")), answer))))
    assert error.transient
    assert "Job is not completed yet" in error.message


def test_a_result_refused_for_auth_stays_permanent():
    answer = (401, {"success": False, "message": "Invalid API key"})
    error = refused(lambda: fetch(make(answering([], (200, status_body("completed")), answer))))
    assert (error.transient, error.status_code) == (False, 401)


@pytest.mark.parametrize(
    "result",
    [
        {"success": True, "data": {"job_id": JOB_ID, "status": "completed"}},
        {"success": True, "data": {"job_id": JOB_ID, "status": "processing", "result_url": VIDEO}},
        {"success": False, "message": "result not ready"},
    ],
)
def test_a_completed_job_without_a_usable_result_is_asked_again(result):
    error = refused(
        lambda: fetch(make(answering([], (200, status_body("completed")), (200, result))))
    )
    assert error.transient


def test_fetch_uses_the_key_that_created_the_job():
    seen = []
    kvid = make(answering(seen, (200, status_body("processing"))))
    fetch(kvid, fingerprint=OLD.fingerprint)
    fetch(kvid, fingerprint="sha256:gone")
    assert [r.headers["api-key"] for r in seen] == ["kvid-old-key", "kvid-unit-key"]


def test_fetch_before_the_job_id_is_known_is_transient_and_sends_nothing():
    seen = []
    error = refused(lambda: fetch(make(answering(seen, (200, {}))), job_id=None))
    assert error.transient
    assert seen == []


# --- errors -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "transient"),
    [(400, False), (401, False), (402, False), (403, False), (404, False), (422, False),
     (429, True), (500, True), (502, True), (503, True)],
)  # fmt: skip
def test_http_errors_are_classified_with_the_providers_code(status, transient):
    def handler(request):
        body = {"success": False, "error": "SOME_CODE", "message": "told you so"}
        return httpx.Response(status, json=body, headers={"Retry-After": "3"})

    for call in (
        lambda: submit(make(handler), SubmitRequest(prompt="p")),
        lambda: fetch(make(handler)),
    ):
        error = refused(call)
        assert (error.transient, error.status_code) == (transient, status)
        assert (error.code, error.message) == ("SOME_CODE", "told you so")
        assert error.retry_after == 3.0
        assert "kvid-unit-key" not in str(error)


@pytest.mark.parametrize(
    ("body", "code", "message"),
    [
        ({"success": False, "message": "Invalid API key"}, None, "Invalid API key"),
        ({"success": False, "error": "Invalid API key"}, None, "Invalid API key"),
        ({"success": False, "error": {"code": "NO_CREDIT", "message": "Top up"}}, "NO_CREDIT",
         "Top up"),
        ({"success": False, "code": "JOB_NOT_FOUND", "message": "gone"}, "JOB_NOT_FOUND", "gone"),
        ({"success": False, "code": 404, "message": "gone"}, None, "gone"),
        ({"detail": "Not Found"}, None, "Not Found"),
        ({"success": False}, None, None),
    ],
)  # fmt: skip
def test_error_envelopes_in_every_plausible_shape(body, code, message):
    assert error_fields(body) == (code, message)


def test_an_error_without_a_json_body_names_the_http_status():
    def handler(request):
        return httpx.Response(502, content=b"<html>Bad Gateway</html>")

    error = refused(lambda: fetch(make(handler)))
    assert (error.transient, error.message) == (True, "HTTP 502 Bad Gateway")


@pytest.mark.parametrize(
    ("body", "transient"),
    [
        ({"success": False, "message": "Job not found"}, False),
        ({"success": False, "message": "Insufficient credit", "error": "NO_CREDIT"}, False),
        ({"success": False, "message": "Rate limit exceeded, try again later"}, True),
        ({"success": False, "message": "slow down", "error": "RATE_LIMIT_EXCEEDED"}, True),
        ({"success": False, "message": "Service temporarily unavailable"}, True),
        ({"success": False, "message": "upstream", "code": 503}, True),
        ({"success": False, "message": "nope", "status": 403}, False),
        ({"success": "false", "message": "nope"}, False),
    ],
)
def test_a_200_with_success_false_is_an_error(body, transient):
    def handler(request):
        return httpx.Response(200, json=body)

    for call in (
        lambda: submit(make(handler), SubmitRequest(prompt="p")),
        lambda: fetch(make(handler)),
    ):
        error = refused(call)
        assert error.transient is transient
        assert error.message == body["message"]


@pytest.mark.parametrize(
    "content",
    [b"{not json", b"[]", b'"ok"', b'{"success": true}', b'{"success": true, "data": null}',
     b'{"success": true, "data": [1]}', b'{"status": "processing"}'],
)  # fmt: skip
def test_malformed_or_unexpected_json_is_transient(content):
    def handler(request):
        return httpx.Response(200, content=content)

    assert refused(lambda: fetch(make(handler))).transient
    assert refused(lambda: submit(make(handler), SubmitRequest(prompt="p"))).transient


def test_network_errors_and_timeouts_are_transient():
    def refuse(request):
        raise httpx.ConnectError("refused")

    def slow(request):
        raise httpx.ReadTimeout("slow")

    for handler in (refuse, slow):
        assert refused(lambda h=handler: fetch(make(h))).transient


def test_an_answer_without_the_envelope_is_accepted():
    bare = {"job_id": JOB_ID, "status": "processing"}
    obs = fetch(make(answering([], (200, bare))))
    assert (obs.status, obs.provider_job_id) == (Status.PROCESSING, JOB_ID)


# --- the mapping itself -------------------------------------------------------------


def test_observation_tolerates_odd_values():
    assert observation({"status": "completed", "used_credit": "54"}).credits == 54.0
    assert observation({"status": "completed", "used_credit": True}).credits is None
    assert observation({"status": "completed", "used_credit": "lots"}).credits is None
    assert observation({"status": "completed", "result_url": ""}).result_url is None
    missing = observation({})
    assert (missing.status, missing.provider_status, missing.known) == (Status.QUEUED, None, False)
    failed = observation({"status": "failed", "error": {"message": "GPU lost"}})
    assert failed.error == "GPU lost"
    # message on a submit answer is not an error: only failed jobs carry one.
    assert observation({"status": "queued", "message": "Job submitted"}).error is None

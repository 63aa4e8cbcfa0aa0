import asyncio
import hashlib
import json

import httpx
import pytest

from receiver.config import ProviderConfig, Secret
from receiver.providers.apimodels import Apimodels, observation
from receiver.providers.base import InvalidRequest, JobRef, ProviderError, SubmitRequest
from receiver.states import Status

KEY = Secret("apimodels-unit-key")
OLD = Secret("apimodels-old-key")
CALLBACK = "https://hooks.example/callbacks/apimodels/t0k"
MOTION = "kling-motion-control"


def make(handler, default_model="grok-video-3", **config):
    config = ProviderConfig(
        name="apimodels",
        type="apimodels",
        base_url="https://apimodels.test",
        api_key=KEY,
        previous_api_keys=(OLD,),
        default_model=default_model,
        **config,
    )
    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    return Apimodels(config, client)


def envelope(data, code=200, msg="success"):
    return {"code": code, "msg": msg, "data": data}


def submit_ok(seen, data=None):
    data = data or {"task_id": "clabc", "status": "pending", "model": "cloud-video/grok-video-3"}

    def handler(request):
        seen.append(request)
        return httpx.Response(200, json=envelope(data))

    return handler


def submit(provider, request, callback_url=None):
    return asyncio.run(provider.submit(request, callback_url))


def fetch(provider, task_id="clabc", fingerprint=KEY.fingerprint):
    return asyncio.run(provider.fetch(JobRef("job", task_id, fingerprint)))


def answering(status, body=None, content=None, headers=None):
    def handler(request):
        if content is not None:
            return httpx.Response(status, content=content, headers=headers)
        return httpx.Response(status, json=body, headers=headers)

    return handler


# --- submit ------------------------------------------------------------------


def test_submit_sends_bearer_json_with_model_prompt_options_and_callback():
    seen = []
    # auth_scheme is a Vidu setting: apimodels always takes Bearer.
    provider = make(submit_ok(seen), auth_scheme="Token")
    request = SubmitRequest(
        prompt="a cat playing piano",
        options={"aspect_ratio": "16:9", "size": "1080P", "duration": 8, "generate_audio": True},
    )
    submission = submit(provider, request, CALLBACK)
    sent = seen[0]
    assert (sent.method, sent.url.path, sent.url.host) == (
        "POST",
        "/api/v1/video/generations",
        "apimodels.test",
    )
    assert sent.headers["authorization"] == "Bearer apimodels-unit-key"
    assert sent.headers["content-type"] == "application/json"
    assert json.loads(sent.content) == {
        "model": "grok-video-3",
        "prompt": "a cat playing piano",
        "aspect_ratio": "16:9",
        "size": "1080P",
        "duration": 8,
        "generate_audio": True,
        "callback_url": CALLBACK,
    }
    assert submission.provider_job_id == "clabc"
    assert submission.key_fingerprint == KEY.fingerprint
    obs = submission.observation
    assert (obs.status, obs.provider_status, obs.known) == (Status.QUEUED, "pending", True)
    assert obs.raw["code"] == 200 and obs.raw["data"]["task_id"] == "clabc"


def test_submit_sends_images_and_the_requested_model_and_no_callback_when_none():
    seen = []
    request = SubmitRequest(
        prompt="first to last", model="veo-3.1", images=["https://i/1.png", "https://i/2.png"]
    )
    submit(make(submit_ok(seen)), request)
    assert json.loads(seen[0].content) == {
        "model": "veo-3.1",
        "prompt": "first to last",
        "images": ["https://i/1.png", "https://i/2.png"],
    }


def test_motion_control_sends_images_as_input_urls_and_mode():
    seen = []
    request = SubmitRequest(
        prompt=None,
        model=MOTION,
        images=["https://i/character.png"],
        mode="1080p",
        options={"video_urls": ["https://v/dance.mp4"], "character_orientation": "image"},
    )
    submit(make(submit_ok(seen)), request, CALLBACK)
    assert json.loads(seen[0].content) == {
        "model": MOTION,
        "input_urls": ["https://i/character.png"],
        "video_urls": ["https://v/dance.mp4"],
        "mode": "1080p",
        "character_orientation": "image",
        "callback_url": CALLBACK,
    }


def test_submit_accepts_the_live_docs_spelling():
    seen = []
    data = {"taskId": "cllive", "state": "pending"}
    submission = submit(make(submit_ok(seen, data)), SubmitRequest(prompt="p"))
    assert submission.provider_job_id == "cllive"
    assert submission.observation.provider_status == "pending"


@pytest.mark.parametrize(
    ("request_", "fields"),
    [
        (SubmitRequest(prompt=None), {"prompt"}),
        (SubmitRequest(prompt="   "), {"prompt"}),
        (SubmitRequest(prompt="p", mode="720p"), {"mode"}),
        (SubmitRequest(prompt="p", images=["not a url"]), {"images"}),
        (SubmitRequest(prompt="p", images=["ftp://i/1.png"]), {"images"}),
        (SubmitRequest(prompt="p", options={"callback_url": "x"}), {"options.callback_url"}),
        (SubmitRequest(prompt="p", options={"prompt": "x"}), {"options.prompt"}),
        (SubmitRequest(prompt="p", options={"model": "veo-3.1"}), {"options.model"}),
        (SubmitRequest(prompt="p", options={"images": []}), {"options.images"}),
        (SubmitRequest(prompt="p", options={"input_urls": []}), {"options.input_urls"}),
        (SubmitRequest(prompt="p", options={"mode": "720p"}), {"options.mode"}),
        (SubmitRequest(prompt="p", options={"size": "2K"}), {"options.size"}),
        (SubmitRequest(prompt="p", options={"size": "1080p"}), {"options.size"}),
        (SubmitRequest(prompt="p", options={"aspect_ratio": "4:3"}), {"options.aspect_ratio"}),
        (SubmitRequest(prompt="p", options={"duration": "5"}), {"options.duration"}),
        (SubmitRequest(prompt="p", options={"duration": True}), {"options.duration"}),
        (SubmitRequest(prompt="p", options={"duration": 0}), {"options.duration"}),
        (SubmitRequest(prompt="p", options={"generate_audio": "yes"}), {"options.generate_audio"}),
        (SubmitRequest(prompt=None, model=MOTION, options={"video_urls": ["https://v/1"]}),
         {"images"}),
        (SubmitRequest(prompt=None, model=MOTION, images=["https://i/1"]),
         {"options.video_urls"}),
        (SubmitRequest(prompt=None, model=MOTION, images=["https://i/1"],
                       options={"video_urls": "https://v/1"}), {"options.video_urls"}),
        (SubmitRequest(prompt=None, model=MOTION, images=["https://i/1"],
                       options={"video_urls": []}), {"options.video_urls"}),
        (SubmitRequest(prompt=None, model=MOTION, images=["https://i/1"], mode="4k",
                       options={"video_urls": ["https://v/1"]}), {"mode"}),
        (SubmitRequest(prompt=None, model=MOTION, images=["https://i/1"],
                       options={"video_urls": ["https://v/1"], "character_orientation": "side"}),
         {"options.character_orientation"}),
        (SubmitRequest(prompt=None, mode="fast", options={"model": "x", "size": "8K"}),
         {"prompt", "mode", "options.model", "options.size"}),
    ],
)  # fmt: skip
def test_invalid_requests_name_every_bad_field_and_send_nothing(request_, fields):
    seen = []
    with pytest.raises(InvalidRequest) as caught:
        submit(make(submit_ok(seen)), request_)
    assert set(caught.value.fields) == fields
    assert seen == []


def test_a_model_is_required_when_no_default_is_configured():
    seen = []
    with pytest.raises(InvalidRequest) as caught:
        submit(make(submit_ok(seen), default_model=None), SubmitRequest(prompt="p"))
    assert set(caught.value.fields) == {"model"}
    submit(make(submit_ok(seen), default_model=None), SubmitRequest(prompt="p", model="veo-3.1"))
    assert json.loads(seen[0].content)["model"] == "veo-3.1"


def test_unknown_options_pass_through():
    seen = []
    submit(make(submit_ok(seen)), SubmitRequest(prompt="p", options={"seed": 7, "x": {"y": 1}}))
    assert json.loads(seen[0].content) == {
        "model": "grok-video-3",
        "prompt": "p",
        "seed": 7,
        "x": {"y": 1},
    }


# --- fetch and the status vocabulary -------------------------------------------


def test_fetch_asks_by_query_with_the_key_that_created_the_job():
    seen = []

    def handler(request):
        seen.append(request)
        data = {"task_id": "clabc", "status": "processing", "model": "cloud-video/veo-3.1"}
        return httpx.Response(200, json=envelope(data))

    provider = make(handler)
    obs = fetch(provider, "clabc", OLD.fingerprint)
    fetch(provider, "clabc", "sha256:gone")
    assert (seen[0].method, seen[0].url.path) == ("GET", "/api/v1/video/generations")
    assert dict(seen[0].url.params) == {"task_id": "clabc"}
    assert [r.headers["authorization"] for r in seen] == [
        "Bearer apimodels-old-key",
        "Bearer apimodels-unit-key",
    ]
    assert (obs.status, obs.provider_job_id) == (Status.PROCESSING, "clabc")


def test_fetch_without_a_task_id_is_transient_and_sends_nothing():
    seen = []
    with pytest.raises(ProviderError) as caught:
        fetch(make(submit_ok(seen)), None)
    assert caught.value.transient and seen == []


@pytest.mark.parametrize(
    ("data", "status", "result_url", "error"),
    [
        ({"task_id": "c", "status": "pending"}, Status.QUEUED, None, None),
        ({"task_id": "c", "status": "processing"}, Status.PROCESSING, None, None),
        ({"task_id": "c", "status": "completed", "videos": ["https://cdn/v.mp4"],
          "created_at": 1705123450000, "completed_at": 1705123500000},
         Status.COMPLETED, "https://cdn/v.mp4", None),
        ({"task_id": "c", "status": "failed", "error": "Content policy violation"},
         Status.FAILED, None, "Content policy violation"),
        ({"taskId": "c", "state": "pending"}, Status.QUEUED, None, None),
        ({"taskId": "c", "state": "processing"}, Status.PROCESSING, None, None),
        ({"taskId": "c", "state": "completed", "resultUrls": ["https://cdn/r.mp4"]},
         Status.COMPLETED, "https://cdn/r.mp4", None),
        ({"taskId": "c", "state": "failed", "failMsg": "quota"}, Status.FAILED, None, "quota"),
        # Error text is only an error once the task has failed.
        ({"task_id": "c", "status": "processing", "error": "retrying"},
         Status.PROCESSING, None, None),
    ],
)  # fmt: skip
def test_every_status_word_in_both_spellings(data, status, result_url, error):
    obs = fetch(make(answering(200, envelope(data))))
    assert (obs.status, obs.result_url, obs.error, obs.known) == (status, result_url, error, True)
    assert obs.provider_status == data.get("status", data.get("state"))
    assert obs.provider_job_id == "c"
    assert obs.raw == envelope(data)


def test_an_unknown_status_is_kept_raw_and_treated_as_queued():
    obs = fetch(make(answering(200, envelope({"task_id": "c", "status": "waiting"}))))
    assert (obs.status, obs.provider_status, obs.known) == (Status.QUEUED, "waiting", False)


def test_observation_tolerates_odd_values():
    odd = observation({"status": "completed", "videos": "https://cdn/v.mp4", "credits": 3})
    assert (odd.result_url, odd.credits) == ("https://cdn/v.mp4", 3.0)
    assert observation({"status": "completed", "videos": [], "cost": 0.06}).credits == 0.06
    assert observation({"status": "completed", "videos": [7], "credits": True}).credits is None
    nested = observation({"status": "failed", "error": {"message": "nsfw"}})
    assert nested.error == "nsfw"
    assert observation({"status": 3}).known is False


# --- errors ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "transient"),
    [(400, False), (401, False), (402, False), (403, False), (404, False), (408, True),
     (429, True), (500, True), (502, True), (503, True)],
)  # fmt: skip
def test_http_errors_are_classified_with_the_providers_message(status, transient):
    handler = answering(
        status, {"code": status, "msg": "told you so", "data": None}, headers={"Retry-After": "3"}
    )
    for call in (lambda p: submit(p, SubmitRequest(prompt="p")), fetch):
        with pytest.raises(ProviderError) as caught:
            call(make(handler))
        error = caught.value
        assert (error.transient, error.status_code, error.message) == (
            transient,
            status,
            "told you so",
        )
        assert error.code is None  # the envelope code only repeats the HTTP status
        assert error.retry_after == 3.0
        assert "apimodels-unit-key" not in str(error)


@pytest.mark.parametrize(
    ("code", "transient"),
    [(400, False), (401, False), (402, False), (404, False), ("404", False), (429, True),
     (500, True), (503, True)],
)  # fmt: skip
def test_an_error_code_inside_a_200_envelope_is_classified_like_an_http_status(code, transient):
    handler = answering(200, {"code": code, "msg": "Insufficient credits", "data": None})
    with pytest.raises(ProviderError) as caught:
        fetch(make(handler))
    error = caught.value
    assert (error.transient, error.status_code, error.message) == (
        transient,
        int(code),
        "Insufficient credits",
    )


@pytest.mark.parametrize(
    ("code", "transient"), [(10001, True), (40001, True), (0, True), (201, True)]
)
def test_an_envelope_code_that_is_no_http_status_is_kept_as_the_code(code, transient):
    handler = answering(200, {"code": code, "message": "odd", "data": None})
    with pytest.raises(ProviderError) as caught:
        fetch(make(handler))
    error = caught.value
    assert error.transient is transient
    if not 100 <= code <= 599:
        assert (error.status_code, error.code) == (None, str(code))


def test_error_details_keep_a_distinct_code_and_fall_back_to_the_http_reason():
    provider = make(answering(400, {"code": "INVALID_SIZE", "message": "size is 8K"}))
    with pytest.raises(ProviderError) as caught:
        fetch(provider)
    assert (caught.value.code, caught.value.message) == ("INVALID_SIZE", "size is 8K")
    with pytest.raises(ProviderError) as caught:
        fetch(make(answering(502, content=b"<html>bad gateway</html>")))
    assert caught.value.transient and caught.value.message == "HTTP 502 Bad Gateway"
    with pytest.raises(ProviderError) as caught:
        fetch(make(answering(401, {"error": {"message": "Invalid API key"}})))
    assert (caught.value.transient, caught.value.message) == (False, "Invalid API key")


@pytest.mark.parametrize(
    "answer",
    [
        b"{not json",
        b"[1, 2]",
        b'"success"',
        b'{"code": 200, "msg": "success"}',
        b'{"code": 200, "msg": "success", "data": null}',
        b'{"code": 200, "msg": "success", "data": ["clabc"]}',
        b'{"code": 200, "msg": "success", "data": {"model": "cloud-video/veo-3.1"}}',
    ],
)
def test_malformed_or_unexpected_answers_are_transient(answer):
    for call in (lambda p: submit(p, SubmitRequest(prompt="p")), fetch):
        with pytest.raises(ProviderError) as caught:
            call(make(answering(200, content=answer)))
        assert caught.value.transient


def test_network_errors_and_timeouts_are_transient():
    def refuse(request):
        raise httpx.ConnectError("refused")

    def slow(request):
        raise httpx.ReadTimeout("slow")

    for handler in (refuse, slow):
        with pytest.raises(ProviderError) as caught:
            fetch(make(handler))
        assert caught.value.transient
        assert "apimodels-unit-key" not in str(caught.value)


# --- callbacks -------------------------------------------------------------------


def test_callbacks_are_accepted_and_the_nonce_is_the_body_digest():
    provider = make(submit_ok([]))
    assert provider.supports_callbacks
    job = JobRef("job", "clabc", KEY.fingerprint, CALLBACK)
    body = json.dumps(envelope({"task_id": "clabc", "status": "completed"})).encode()
    nonce = provider.verify_callback(job, {}, body, tolerance=300)
    assert nonce == "sha256:job:" + hashlib.sha256(body).hexdigest()
    # The same bytes for another job are another delivery, not a retry.
    other_job = JobRef("job2", "cldef", KEY.fingerprint, CALLBACK)
    assert provider.verify_callback(other_job, {}, body, tolerance=300) != nonce
    # Headers prove nothing and change nothing: a retry is recognized by its bytes.
    headers = {"date": "Tue, 06 May 2025 12:09:42 GMT", "x-anything": "1"}
    assert provider.verify_callback(job, headers, body, tolerance=0) == nonce
    other = json.dumps(envelope({"task_id": "clabc", "status": "failed"})).encode()
    assert provider.verify_callback(job, {}, other, tolerance=300) != nonce
    assert provider.verify_callback(job, {}, body + b" ", tolerance=300) != nonce


@pytest.mark.parametrize(
    ("payload", "status", "provider_status", "known"),
    [
        (envelope({"task_id": "c", "status": "completed", "videos": ["https://cdn/v.mp4"]}),
         Status.COMPLETED, "completed", True),
        (envelope({"taskId": "c", "state": "failed", "failMsg": "nsfw"}),
         Status.FAILED, "failed", True),
        (envelope({"task_id": "c", "status": "processing"}), Status.PROCESSING, "processing", True),
        (envelope({"task_id": "c", "status": "waiting"}), Status.QUEUED, "waiting", False),
        ({"task_id": "c", "status": "completed"}, Status.COMPLETED, "completed", True),
        ({"code": 500, "msg": "oops", "data": None}, Status.QUEUED, None, False),
        ({}, Status.QUEUED, None, False),
        ({"data": "x", "status": []}, Status.QUEUED, "[]", False),
    ],
)  # fmt: skip
def test_parse_callback_maps_the_envelope_and_never_raises(payload, status, provider_status, known):
    obs = make(submit_ok([])).parse_callback(payload)
    assert (obs.status, obs.provider_status, obs.known) == (status, provider_status, known)
    assert obs.raw == payload


def test_parse_callback_keeps_result_error_and_task_id():
    provider = make(submit_ok([]))
    done = provider.parse_callback(
        envelope({"task_id": "c", "status": "completed", "videos": ["https://cdn/v.mp4"]})
    )
    assert (done.result_url, done.provider_job_id) == ("https://cdn/v.mp4", "c")
    failed = provider.parse_callback(
        envelope({"task_id": "c", "status": "failed", "error": "Content policy violation"})
    )
    assert failed.error == "Content policy violation"


@pytest.mark.parametrize("word", ["pending", "processing", "completed", "failed", "waiting"])
def test_every_callback_needs_confirmation(word):
    provider = make(submit_ok([]))
    assert provider.needs_confirmation(provider.parse_callback(envelope({"status": word})))

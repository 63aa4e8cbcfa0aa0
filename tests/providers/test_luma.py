import asyncio
import json

import httpx
import pytest

import signing
from receiver.config import ProviderConfig, Secret
from receiver.providers.base import (
    CancelUnsupported,
    InvalidRequest,
    JobRef,
    ProviderError,
    SubmitRequest,
)
from receiver.providers.luma import FAILED_WITHOUT_REASON, Luma, observation
from receiver.states import Status

KEY = Secret("luma-unit-key")
BASE = "https://luma.test/dream-machine/v1"
CALLBACK = "https://hooks.example/callbacks/luma/t0k"
GEN = "0f7ab5c2-1c9e-4f0e-9a59-4c6c3c2a7d11"


def make(handler, default_model="ray-2", **config):
    config = ProviderConfig(
        name="luma",
        type="luma",
        base_url=BASE,
        api_key=KEY,
        default_model=default_model,
        **config,
    )
    return Luma(config, httpx.AsyncClient(transport=httpx.MockTransport(handler)))


def generation(state="queued", **fields):
    return {
        "id": GEN,
        "generation_type": "video",
        "state": state,
        "failure_reason": None,
        "created_at": "2026-01-01T00:00:00.000Z",
        "model": "ray-2",
        "assets": None,
        "request": {},
        **fields,
    }


def created(seen):
    def handler(request):
        seen.append(request)
        return httpx.Response(201, json=generation())

    return handler


def answering(status, body=None, headers=None):
    def handler(request):
        return httpx.Response(status, json=body, headers=headers)

    return handler


def submit(provider, request, callback_url=None):
    return asyncio.run(provider.submit(request, callback_url))


def fetch(provider, generation_id=GEN):
    return asyncio.run(provider.fetch(JobRef("job_1", generation_id, KEY.fingerprint)))


def refused(call):
    with pytest.raises(ProviderError) as caught:
        call()
    return caught.value


# --- submit ------------------------------------------------------------------


def test_submit_sends_a_video_generation_with_its_callback():
    seen = []
    request = SubmitRequest(
        prompt="a koi pond at dusk",
        options={"aspect_ratio": "16:9", "resolution": "720p", "duration": "9s", "loop": True},
    )
    submission = submit(make(created(seen)), request, CALLBACK)
    sent = seen[0]
    assert (sent.method, sent.url.path) == ("POST", "/dream-machine/v1/generations")
    assert sent.headers["authorization"] == "Bearer luma-unit-key"
    assert json.loads(sent.content) == {
        "model": "ray-2",
        "generation_type": "video",
        "prompt": "a koi pond at dusk",
        "aspect_ratio": "16:9",
        "resolution": "720p",
        "duration": "9s",
        "loop": True,
        "callback_url": CALLBACK,
    }
    assert submission.provider_job_id == GEN
    assert submission.key_fingerprint == KEY.fingerprint
    obs = submission.observation
    assert (obs.status, obs.provider_status, obs.known) == (Status.QUEUED, "queued", True)


@pytest.mark.parametrize(
    ("images", "frames"),
    [
        (["https://img.example/a.jpg"], {"frame0": "https://img.example/a.jpg"}),
        (
            ["https://img.example/a.jpg", "https://img.example/b.jpg"],
            {"frame0": "https://img.example/a.jpg", "frame1": "https://img.example/b.jpg"},
        ),
    ],
)
def test_images_are_the_first_and_last_keyframes(images, frames):
    seen = []
    submit(make(created(seen)), SubmitRequest(prompt=None, images=images, model="ray-flash-2"))
    body = json.loads(seen[0].content)
    assert body["model"] == "ray-flash-2"
    assert "prompt" not in body
    assert body["keyframes"] == {k: {"type": "image", "url": v} for k, v in frames.items()}


def test_a_duration_in_seconds_is_sent_as_luma_spells_it():
    seen = []
    submit(make(created(seen)), SubmitRequest(prompt="waves", options={"duration": 5}))
    assert json.loads(seen[0].content)["duration"] == "5s"


@pytest.mark.parametrize("missing", [404, 405])
def test_a_missing_create_route_falls_back_to_generations_video_and_stays_there(missing):
    paths = []

    def handler(request):
        paths.append(request.url.path)
        if request.url.path.endswith("/generations"):
            return httpx.Response(missing, json={"detail": "Not Found"})
        return httpx.Response(201, json=generation())

    provider = make(handler)
    assert submit(provider, SubmitRequest(prompt="one")).provider_job_id == GEN
    submit(provider, SubmitRequest(prompt="two"))
    assert paths == [
        "/dream-machine/v1/generations",
        "/dream-machine/v1/generations/video",
        "/dream-machine/v1/generations/video",
    ]


def test_a_refused_create_is_not_tried_elsewhere_and_keeps_lumas_detail():
    paths = []

    def handler(request):
        paths.append(request.url.path)
        return httpx.Response(400, json={"detail": "Invalid request: aspect_ratio"})

    error = refused(lambda: submit(make(handler), SubmitRequest(prompt="x")))
    assert (error.status_code, error.transient, error.message) == (
        400,
        False,
        "Invalid request: aspect_ratio",
    )
    assert paths == ["/dream-machine/v1/generations"]


def test_a_validation_list_becomes_one_message():
    body = {
        "detail": [
            {"type": "value_error", "loc": ["body", "keyframes", "frame0", "url"], "msg": "bad"},
            {"type": "missing", "loc": ["body", "model"], "msg": "Field required"},
        ]
    }
    error = refused(lambda: submit(make(answering(422, body)), SubmitRequest(prompt="x")))
    assert error.message == "keyframes.frame0.url: bad; model: Field required"
    assert error.transient is False


def test_a_create_answer_without_an_id_is_a_permanent_error():
    error = refused(
        lambda: submit(make(answering(201, {"state": "queued"})), SubmitRequest(prompt="x"))
    )
    assert error.transient is False
    assert "no generation id" in error.message


def test_429_is_transient_with_its_retry_after_and_pauses_the_provider():
    provider = make(answering(429, {"detail": "Rate limit exceeded"}, {"Retry-After": "7"}))
    error = refused(lambda: submit(provider, SubmitRequest(prompt="x")))
    assert (error.status_code, error.transient, error.retry_after) == (429, True, 7.0)
    assert error.message == "Rate limit exceeded"
    assert provider.gate.blocked_for > 6


# --- validation ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (SubmitRequest(prompt=None), "prompt"),
        (SubmitRequest(prompt="  "), "prompt"),
        (SubmitRequest(prompt="x", images=["https://a/1", "https://a/2", "https://a/3"]), "images"),
        (SubmitRequest(prompt="x", images=["data:image/png;base64,AAAA"]), "images"),
        (SubmitRequest(prompt="x", mode="extend"), "mode"),
        (SubmitRequest(prompt="x", options={"aspect_ratio": "2:1"}), "options.aspect_ratio"),
        (SubmitRequest(prompt="x", options={"resolution": "8k"}), "options.resolution"),
        (SubmitRequest(prompt="x", options={"duration": "five"}), "options.duration"),
        (SubmitRequest(prompt="x", options={"duration": True}), "options.duration"),
        (SubmitRequest(prompt="x", options={"loop": "yes"}), "options.loop"),
        (SubmitRequest(prompt="x", options={"concepts": ["dolly_zoom"]}), "options.concepts"),
        (SubmitRequest(prompt="x", options={"keyframes": {}}), "options.keyframes"),
        (SubmitRequest(prompt="x", options={"callback_url": CALLBACK}), "options.callback_url"),
    ],
)
def test_invalid_requests_name_the_field_and_send_nothing(request_, field):
    seen = []
    with pytest.raises(InvalidRequest) as caught:
        submit(make(created(seen)), request_)
    assert field in caught.value.fields
    assert seen == []


def test_a_model_is_required_somewhere():
    with pytest.raises(InvalidRequest) as caught:
        make(created([]), default_model=None).validate(SubmitRequest(prompt="x"))
    assert "model" in caught.value.fields


def test_concepts_pass_through():
    seen = []
    concepts = [{"key": "dolly_zoom"}]
    submit(make(created(seen)), SubmitRequest(prompt="x", options={"concepts": concepts}))
    assert json.loads(seen[0].content)["concepts"] == concepts


# --- status ------------------------------------------------------------------------


def test_fetch_asks_for_the_generation_by_id():
    seen = []

    def handler(request):
        seen.append(request)
        return httpx.Response(200, json=generation("dreaming"))

    obs = fetch(make(handler), "a/b c")
    assert seen[0].url.raw_path == b"/dream-machine/v1/generations/a%2Fb%20c"
    assert seen[0].headers["authorization"] == "Bearer luma-unit-key"
    assert (obs.status, obs.provider_status) == (Status.PROCESSING, "dreaming")


def test_completed_gives_the_video_and_its_cover():
    assets = {"video": "https://cdn.example/v.mp4", "image": "https://cdn.example/c.jpg"}
    obs = fetch(make(answering(200, generation("completed", assets=assets))))
    assert obs.status is Status.COMPLETED
    assert (obs.result_url, obs.cover_url) == (assets["video"], assets["image"])
    assert obs.provider_job_id == GEN


def test_failed_keeps_the_failure_reason():
    body = generation("failed", failure_reason="  Prompt flagged by moderation ")
    obs = fetch(make(answering(200, body)))
    assert (obs.status, obs.error) == (Status.FAILED, "Prompt flagged by moderation")


def test_failed_without_a_reason_says_so():
    assert fetch(make(answering(200, generation("failed")))).error == FAILED_WITHOUT_REASON


def test_an_unknown_state_is_kept_raw_and_read_as_queued():
    obs = fetch(make(answering(200, generation("paused"))))
    assert (obs.status, obs.provider_status, obs.known) == (Status.QUEUED, "paused", False)


@pytest.mark.parametrize(
    "body",
    [generation(state=None), ["not", "an", "object"], generation("completed", assets={})],
)
def test_an_answer_that_cannot_say_the_state_or_lacks_the_video_is_asked_again(body):
    assert refused(lambda: fetch(make(answering(200, body)))).transient is True


def test_an_unknown_generation_fails_for_good():
    error = refused(lambda: fetch(make(answering(404, {"detail": "Generation not found"}))))
    assert (error.transient, error.message) == (False, "Generation not found")


def test_fetch_before_the_id_is_known_is_asked_again():
    provider = make(answering(200, generation()))
    error = refused(lambda: asyncio.run(provider.fetch(JobRef("job_1", None, None))))
    assert error.transient is True


def test_a_half_dreamt_generation_has_no_result_yet():
    assets = {"video": None, "image": None, "progress_video": "https://cdn.example/p.mp4"}
    obs = observation(generation("dreaming", assets=assets))
    assert (obs.result_url, obs.cover_url) == (None, None)


# --- callbacks -----------------------------------------------------------------------


def verify(job, body):
    provider = make(answering(500))
    return provider.verify_callback(job, {}, json.dumps(body).encode(), tolerance=300)


JOB = JobRef("job_1", GEN, KEY.fingerprint, CALLBACK)


def test_each_generation_state_has_one_nonce_of_its_job():
    dreaming = verify(JOB, generation("dreaming"))
    assert verify(JOB, generation("dreaming", assets={"video": None})) == dreaming
    assert verify(JOB, generation("completed")) != dreaming
    other_job = JobRef("job_2", GEN, KEY.fingerprint, CALLBACK)
    assert verify(other_job, generation("dreaming")) != dreaming


def test_a_callback_naming_another_generation_is_refused():
    with pytest.raises(signing.SignatureError) as caught:
        verify(JOB, generation("completed", id="9c1e0000-0000-0000-0000-000000000000"))
    assert caught.value.reason == "wrong_task"


@pytest.mark.parametrize("body", [{"state": "completed"}, {"id": 42, "state": "completed"}])
def test_a_callback_naming_no_generation_is_refused(body):
    with pytest.raises(signing.SignatureError) as caught:
        verify(JOB, body)
    assert caught.value.reason == "wrong_task"


def test_a_callback_before_the_create_answer_is_taken_for_its_job():
    early = JobRef("job_1", None, KEY.fingerprint, CALLBACK)
    assert verify(early, generation("dreaming"))


def test_a_body_that_is_no_object_gets_a_nonce_and_is_left_to_the_endpoint():
    provider = make(answering(500))
    nonce = provider.verify_callback(JOB, {}, b"[1, 2]", tolerance=300)
    assert nonce != provider.verify_callback(JOB, {}, b"not json", tolerance=300)


def test_a_callback_reads_like_the_status_and_keeps_only_its_state_as_evidence():
    assets = {"video": "https://evil.example/v.mp4", "image": "https://evil.example/c.jpg"}
    obs = make(answering(500)).parse_callback(generation("completed", assets=assets))
    assert obs.result_url == assets["video"]
    evidence = obs.evidence()
    assert (evidence.status, evidence.provider_status) == (Status.COMPLETED, "completed")
    assert (evidence.result_url, evidence.cover_url, evidence.provider_job_id) == (None,) * 3


def test_luma_is_not_offered_a_cancel():
    provider = make(answering(204))
    assert provider.supports_cancel is False
    with pytest.raises(CancelUnsupported):
        asyncio.run(provider.cancel(JOB))

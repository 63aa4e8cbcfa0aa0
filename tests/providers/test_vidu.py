import asyncio
import json

import httpx
import pytest

from receiver.config import ProviderConfig, Secret
from receiver.providers.base import InvalidRequest, JobRef, ProviderError, SubmitRequest
from receiver.providers.vidu import Vidu, endpoint_for, observation
from receiver.states import Status

KEY = Secret("vidu-unit-key")
OLD = Secret("vidu-old-key")


def make(handler, scheme="Token"):
    config = ProviderConfig(
        name="vidu",
        type="vidu",
        base_url="https://vidu.test",
        api_key=KEY,
        previous_api_keys=(OLD,),
        auth_scheme=scheme,
        default_model="viduq2",
    )
    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    return Vidu(config, client)


def submit_ok(seen):
    def handler(request):
        seen.append(request)
        return httpx.Response(200, json={"task_id": "9110", "state": "created", "credits": 35})

    return handler


@pytest.mark.parametrize(
    ("images", "endpoint"),
    [(0, "text2video"), (1, "img2video"), (2, "start-end2video"), (3, "reference2video"),
     (7, "reference2video")],
)  # fmt: skip
def test_endpoint_follows_the_number_of_images(images, endpoint):
    request = SubmitRequest(prompt="p", images=[f"https://i/{n}.png" for n in range(images)])
    assert endpoint_for(request) == endpoint


@pytest.mark.parametrize("scheme", ["Token", "Bearer"])
def test_submit_sends_auth_scheme_model_and_callback(scheme):
    seen = []
    vidu = make(submit_ok(seen), scheme)
    request = SubmitRequest(prompt="a cat", options={"duration": 5, "seed": 7})
    submission = asyncio.run(vidu.submit(request, "https://hooks.example/callbacks/vidu/t0k"))
    sent = seen[0]
    assert sent.url.path == "/ent/v2/text2video"
    assert sent.headers["authorization"] == f"{scheme} vidu-unit-key"
    assert json.loads(sent.content) == {
        "model": "viduq2",
        "prompt": "a cat",
        "duration": 5,
        "seed": 7,
        "callback_url": "https://hooks.example/callbacks/vidu/t0k",
    }
    assert submission.provider_job_id == "9110"
    assert submission.observation.status is Status.QUEUED
    assert submission.key_fingerprint == KEY.fingerprint


def test_mode_forces_the_endpoint():
    seen = []
    vidu = make(submit_ok(seen))
    images = ("https://i/1.png", "https://i/2.png")
    asyncio.run(vidu.submit(SubmitRequest(prompt="p", images=images, mode="reference2video"), None))
    assert seen[0].url.path == "/ent/v2/reference2video"
    assert "callback_url" not in json.loads(seen[0].content)


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (SubmitRequest(prompt=None), "prompt"),
        (SubmitRequest(prompt="x" * 2001), "prompt"),
        (SubmitRequest(prompt="p", images=["a"] * 8), "images"),
        (SubmitRequest(prompt="p", mode="img2video"), "images"),
        (SubmitRequest(prompt="p", mode="start-end2video", images=["a"]), "images"),
        (SubmitRequest(prompt=None, mode="reference2video", images=["a"]), "prompt"),
        (SubmitRequest(prompt="p", mode="video2video"), "mode"),
        (SubmitRequest(prompt="p", options={"callback_url": "x"}), "options.callback_url"),
    ],
)
def test_invalid_requests_name_the_field_and_send_nothing(request_, field):
    seen = []
    vidu = make(submit_ok(seen))
    with pytest.raises(InvalidRequest) as caught:
        asyncio.run(vidu.submit(request_, None))
    assert field in caught.value.fields
    assert seen == []


@pytest.mark.parametrize(
    ("status", "transient"),
    [(400, False), (401, False), (403, False), (404, False), (429, True), (500, True),
     (503, True)],
)  # fmt: skip
def test_http_errors_are_classified_with_the_providers_code(status, transient):
    def handler(request):
        body = {"code": status, "reason": "SomeReason", "message": "told you so",
                "metadata": {"trace_id": "abc"}}  # fmt: skip
        return httpx.Response(status, json=body, headers={"Retry-After": "3"})

    with pytest.raises(ProviderError) as caught:
        asyncio.run(make(handler).submit(SubmitRequest(prompt="p"), None))
    error = caught.value
    assert (error.transient, error.status_code, error.message) == (transient, status, "told you so")
    assert error.code == "SomeReason"
    assert error.retry_after == 3.0
    assert "vidu-unit-key" not in str(error)


def test_network_errors_and_timeouts_are_transient():
    def refuse(request):
        raise httpx.ConnectError("refused")

    def slow(request):
        raise httpx.ReadTimeout("slow")

    for handler in (refuse, slow):
        with pytest.raises(ProviderError) as caught:
            asyncio.run(make(handler).fetch(JobRef("job", "9110", KEY.fingerprint)))
        assert caught.value.transient


def test_malformed_json_is_transient():
    def handler(request):
        return httpx.Response(200, content=b"{not json")

    with pytest.raises(ProviderError) as caught:
        asyncio.run(make(handler).fetch(JobRef("job", "9110", KEY.fingerprint)))
    assert caught.value.transient


def test_fetch_uses_the_key_that_created_the_job():
    seen = []

    def handler(request):
        seen.append(request.headers["authorization"])
        return httpx.Response(200, json={"id": "9110", "state": "processing", "creations": []})

    vidu = make(handler)
    asyncio.run(vidu.fetch(JobRef("job", "9110", OLD.fingerprint)))
    asyncio.run(vidu.fetch(JobRef("job", "9110", "sha256:gone")))
    assert seen == ["Token vidu-old-key", "Token vidu-unit-key"]


def test_observation_maps_states_and_keeps_unknown_ones_raw():
    success = observation(
        {
            "id": "1",
            "state": "success",
            "credits": 35,
            "err_code": "",
            "creations": [
                {"id": "c", "url": "https://cdn/v.mp4", "cover_url": "https://cdn/c.jpg"}
            ],
        }
    )
    assert (success.status, success.result_url, success.cover_url, success.credits) == (
        Status.COMPLETED,
        "https://cdn/v.mp4",
        "https://cdn/c.jpg",
        35.0,
    )
    failed = observation({"id": "1", "state": "failed", "err_code": "AuditSubmitIllegal"})
    assert (failed.status, failed.error) == (Status.FAILED, "AuditSubmitIllegal")
    assert observation({"status": "processing"}).status is Status.PROCESSING
    for state in ("created", "queueing"):
        assert observation({"state": state}).status is Status.QUEUED
    unknown = observation({"state": "scheduled"})
    assert (unknown.status, unknown.provider_status, unknown.known) == (
        Status.QUEUED,
        "scheduled",
        False,
    )
    assert observation({"creations": "garbage", "credits": "x"}).status is Status.QUEUED


# --- cancel ------------------------------------------------------------------------


def test_cancel_posts_with_the_creating_key_and_reads_as_canceled():
    seen = []

    def handler(request):
        seen.append(request)
        return httpx.Response(200, json={})

    observed = asyncio.run(make(handler).cancel(JobRef("job", "9110", OLD.fingerprint)))
    assert observed is not None and observed.status is Status.CANCELED
    (sent,) = seen
    assert (sent.method, sent.url.path) == ("POST", "/ent/v2/tasks/9110/cancel")
    assert sent.headers["authorization"] == "Token vidu-old-key"


def test_a_refused_cancel_is_a_permanent_provider_error():
    def handler(request):
        body = {"code": 400, "reason": "BadRequest",
                "message": "task state is scheduled, can not cancel"}  # fmt: skip
        return httpx.Response(400, json=body)

    with pytest.raises(ProviderError) as caught:
        asyncio.run(make(handler).cancel(JobRef("job", "9110", KEY.fingerprint)))
    assert not caught.value.transient
    assert caught.value.message == "task state is scheduled, can not cancel"


def test_cancel_before_the_task_id_is_known_is_transient_and_sends_nothing():
    seen = []
    vidu = make(lambda request: seen.append(request) or httpx.Response(200, json={}))
    with pytest.raises(ProviderError) as caught:
        asyncio.run(vidu.cancel(JobRef("job", None, KEY.fingerprint)))
    assert caught.value.transient and seen == []


@pytest.mark.parametrize(
    "body",
    [
        {"id": "1", "state": "failed", "err_code": "UserCancelled", "creations": []},
        {"id": "1", "state": "canceled", "err_code": ""},
        {"id": "1", "state": "cancelled"},
    ],
)
def test_both_readings_of_a_canceled_task_are_canceled(body):
    observed = observation(body)
    assert (observed.status, observed.known, observed.error) == (Status.CANCELED, True, None)


def test_an_unhashable_err_code_is_kept_as_a_failure():
    observed = observation({"state": "failed", "err_code": ["UserCancelled"]})
    assert observed.status is Status.FAILED


# --- errors beyond the seed page ----------------------------------------------------


def test_operation_in_process_is_transient():
    def handler(request):
        body = {"code": 400, "reason": "OperationInProcess", "message": "operation in process"}
        return httpx.Response(400, json=body)

    for call in (
        lambda vidu: vidu.fetch(JobRef("job", "9110", KEY.fingerprint)),
        lambda vidu: vidu.submit(SubmitRequest(prompt="p"), None),
        lambda vidu: vidu.cancel(JobRef("job", "9110", KEY.fingerprint)),
    ):
        with pytest.raises(ProviderError) as caught:
            asyncio.run(call(make(handler)))
        assert caught.value.transient
        assert (caught.value.status_code, caught.value.code) == (400, "OperationInProcess")


# --- reference2video subjects ------------------------------------------------------

SUBJECTS = [
    {"name": "cat", "images": ["https://i/cat1.png", "https://i/cat2.png"]},
    {"name": "hat", "images": ["data:image/png;base64,iVBORw0KGgo="], "voice_id": "v1"},
]


def test_subjects_go_to_reference2video_as_given():
    seen = []
    vidu = make(submit_ok(seen))
    request = SubmitRequest(prompt="@cat wears @hat", options={"subjects": SUBJECTS})
    assert endpoint_for(request) == "reference2video"
    asyncio.run(vidu.submit(request, None))
    assert seen[0].url.path == "/ent/v2/reference2video"
    body = json.loads(seen[0].content)
    assert body["subjects"] == SUBJECTS and "images" not in body


@pytest.mark.parametrize(
    ("options", "extra", "field"),
    [
        ({"subjects": "cat"}, {}, "options.subjects"),
        ({"subjects": []}, {}, "options.subjects"),
        ({"subjects": [SUBJECTS[0]] * 8}, {}, "options.subjects"),
        ({"subjects": ["cat"]}, {}, "options.subjects[0]"),
        ({"subjects": [{**SUBJECTS[0], "tags": []}]}, {}, "options.subjects[0]"),
        ({"subjects": [{"images": ["https://i/1.png"]}]}, {}, "options.subjects[0].name"),
        ({"subjects": [{"name": "cat", "images": ["a", "b", "c", "d"]}]}, {},
         "options.subjects[0].images"),
        ({"subjects": [{"name": "cat", "images": []}]}, {}, "options.subjects[0].images"),
        ({"subjects": [{"name": "cat", "images": [""]}]}, {}, "options.subjects[0].images"),
        ({"subjects": [{**SUBJECTS[0], "voice_id": 3}]}, {}, "options.subjects[0].voice_id"),
        ({"subjects": SUBJECTS}, {"images": ["https://i/1.png"]}, "images"),
        ({"subjects": SUBJECTS}, {"mode": "text2video"}, "options.subjects"),
    ],
)  # fmt: skip
def test_bad_subjects_name_the_field_and_send_nothing(options, extra, field):
    seen = []
    vidu = make(submit_ok(seen))
    request = SubmitRequest(prompt="@cat", options=options, **extra)
    with pytest.raises(InvalidRequest) as caught:
        asyncio.run(vidu.submit(request, None))
    assert field in caught.value.fields, caught.value.fields
    assert seen == []

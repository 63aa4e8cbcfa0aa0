import asyncio
import json

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
from receiver.providers.newapi import (
    MODEL_REQUIRED,
    TASK_PATH,
    VIDEO_PATH,
    NewApi,
    observation,
    task_observation,
    video_observation,
)
from receiver.states import Status

KEY = Secret("sk-newapi-unit-key")
OLD = Secret("sk-newapi-old-key")
TASK_ID = "task_9b1Yq2"
ACCEPTED = {
    "id": TASK_ID,
    "object": "video",
    "model": "kling-v1",
    "created_at": 1640995200,
    "task_id": TASK_ID,
    "status": "processing",
}


def make(handler, default_model="kling-v1", base_url="https://gw.test"):
    config = ProviderConfig(
        name="gateway",
        type="newapi",
        base_url=base_url,
        api_key=KEY,
        previous_api_keys=(OLD,),
        default_model=default_model,
    )
    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    return NewApi(config, client)


def submit_ok(seen, body=None):
    def handler(request):
        seen.append(request)
        return httpx.Response(201, json=ACCEPTED if body is None else body)

    return handler


def envelope(**data):
    return {"code": "success", "message": "", "data": {"task_id": TASK_ID, **data}}


def job(fingerprint=KEY.fingerprint, task_id=TASK_ID):
    return JobRef("job-1", task_id, fingerprint)


# --- submit --------------------------------------------------------------------


def test_submit_posts_json_with_bearer_default_model_and_options():
    seen = []
    gateway = make(submit_ok(seen))
    options = {"duration": 5, "size": "1920x1080", "metadata": {"negative_prompt": "blur"}}
    request = SubmitRequest(prompt="an astronaut", options=options)
    submission = asyncio.run(gateway.submit(request, "https://hooks.example/cb/ignored"))
    sent = seen[0]
    assert (sent.method, str(sent.url)) == ("POST", "https://gw.test/v1/video/generations")
    assert sent.headers["authorization"] == "Bearer sk-newapi-unit-key"
    assert sent.headers["content-type"] == "application/json"
    # No callback_url anywhere: the gateway cannot call back.
    assert json.loads(sent.content) == {
        "model": "kling-v1",
        "prompt": "an astronaut",
        "duration": 5,
        "size": "1920x1080",
        "metadata": {"negative_prompt": "blur"},
    }
    assert submission.provider_job_id == TASK_ID
    assert submission.key_fingerprint == KEY.fingerprint
    accepted = submission.observation
    assert (accepted.status, accepted.provider_status, accepted.known) == (
        Status.QUEUED,
        "processing",
        True,
    )
    assert accepted.raw == ACCEPTED


@pytest.mark.parametrize(
    "image", ["https://cdn.example/a.jpg", "data:image/png;base64,iVBORw0KGgo=", "iVBORw0KGgo="]
)
def test_one_image_goes_in_the_image_field_as_given(image):
    seen = []
    gateway = make(submit_ok(seen))
    request = SubmitRequest(prompt="p", model="kling-v2-master", images=[image])
    asyncio.run(gateway.submit(request, None))
    body = json.loads(seen[0].content)
    assert (body["model"], body["image"]) == ("kling-v2-master", image)
    assert "images" not in body


def test_the_task_id_falls_back_to_id_and_is_required():
    seen = []
    gateway = make(submit_ok(seen, {"id": "video_123", "object": "video", "status": "queued"}))
    submission = asyncio.run(gateway.submit(SubmitRequest(prompt="p"), None))
    assert submission.provider_job_id == "video_123"

    for body in ({"object": "video", "status": "processing"}, ["task_1"]):
        gateway = make(submit_ok(seen, body))
        with pytest.raises(ProviderError) as caught:
            asyncio.run(gateway.submit(SubmitRequest(prompt="p"), None))
        assert not caught.value.transient  # retrying could bill a second task


def test_a_base_url_ending_in_v1_is_not_doubled():
    seen = []
    gateway = make(submit_ok(seen), base_url="https://gw.test/v1")
    asyncio.run(gateway.submit(SubmitRequest(prompt="p"), None))
    asyncio.run(gateway.fetch(job()))
    assert [r.url.path for r in seen] == [
        "/v1/video/generations",
        f"/v1/video/generations/{TASK_ID}",
    ]


# --- validation ------------------------------------------------------------------


def test_a_missing_model_is_reported_with_what_to_do():
    seen = []
    gateway = make(submit_ok(seen), default_model=None)
    with pytest.raises(InvalidRequest) as caught:
        asyncio.run(gateway.submit(SubmitRequest(prompt="p"), None))
    assert caught.value.fields == {"model": MODEL_REQUIRED}
    assert MODEL_REQUIRED == "required for new-api gateways; set default_model or pass model"
    assert seen == []
    gateway.validate(SubmitRequest(prompt="p", model="viduq1"))  # a model per request is enough


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (SubmitRequest(prompt=None), "prompt"),
        (SubmitRequest(prompt="   "), "prompt"),
        (SubmitRequest(prompt="p", images=[""]), "images"),
        (SubmitRequest(prompt="p", images=["https://i/1.png", ""]), "images"),
        (SubmitRequest(prompt="p", mode="img2video"), "mode"),
        (SubmitRequest(prompt="p", options={"model": "kling-v1"}), "options.model"),
        (SubmitRequest(prompt="p", options={"prompt": "x"}), "options.prompt"),
        (SubmitRequest(prompt="p", options={"image": "https://i/1.png"}), "options.image"),
        (SubmitRequest(prompt="p", options={"images": []}), "options.images"),
        (SubmitRequest(prompt="p", options={"callback_url": "https://x"}), "options.callback_url"),
        (SubmitRequest(prompt="p", options={"duration": 5.5}), "options.duration"),
        (SubmitRequest(prompt="p", options={"duration": "5.5"}), "options.duration"),
        (SubmitRequest(prompt="p", options={"duration": "five"}), "options.duration"),
        (SubmitRequest(prompt="p", options={"duration": 0}), "options.duration"),
        (SubmitRequest(prompt="p", options={"duration": "-3"}), "options.duration"),
        (SubmitRequest(prompt="p", options={"duration": True}), "options.duration"),
        (SubmitRequest(prompt="p", options={"fps": 24.5}), "options.fps"),
        (SubmitRequest(prompt="p", options={"seed": True}), "options.seed"),
        (SubmitRequest(prompt="p", options={"width": "1280"}), "options.width"),
        (SubmitRequest(prompt="p", options={"n": 2}), "options.n"),
        (SubmitRequest(prompt="p", options={"size": "big"}), "options.size"),
        (SubmitRequest(prompt="p", options={"size": 1080}), "options.size"),
        (SubmitRequest(prompt="p", options={"metadata": ["x"]}), "options.metadata"),
        (SubmitRequest(prompt="p", options={"user": 7}), "options.user"),
    ],
)
def test_invalid_requests_name_the_field_and_send_nothing(request_, field):
    seen = []
    with pytest.raises(InvalidRequest) as caught:
        asyncio.run(make(submit_ok(seen)).submit(request_, None))
    assert field in caught.value.fields
    assert seen == []


def test_every_problem_is_reported_at_once():
    request = SubmitRequest(prompt=None, images=["a", ""], options={"model": "m", "fps": "x"})
    with pytest.raises(InvalidRequest) as caught:
        make(submit_ok([]), default_model=None).validate(request)
    assert set(caught.value.fields) == {"model", "prompt", "images", "options.model", "options.fps"}


def test_documented_and_vendor_options_pass_through():
    options = {
        "duration": 6, "fps": 24, "height": 1080, "width": 1920, "seed": 0, "n": 1,
        "response_format": "url", "user": "u-1", "metadata": {"aspect_ratio": "16:9"},
        "resolution": "1080p",
    }  # fmt: skip
    seen = []
    asyncio.run(make(submit_ok(seen)).submit(SubmitRequest(prompt="p", options=options), None))
    assert json.loads(seen[0].content) == {"model": "kling-v1", "prompt": "p", **options}


@pytest.mark.parametrize("duration", [5, 5.0, "5", " 5 "])
def test_duration_is_sent_as_an_integer(duration):
    seen = []
    request = SubmitRequest(prompt="p", options={"duration": duration})
    asyncio.run(make(submit_ok(seen)).submit(request, None))
    sent = json.loads(seen[0].content)["duration"]
    assert sent == 5 and type(sent) is int


def test_several_images_go_in_images():
    seen = []
    images = ["https://i/1.png", "data:image/png;base64,iVBORw0KGgo=", "https://i/3.png"]
    asyncio.run(make(submit_ok(seen)).submit(SubmitRequest(prompt="p", images=images), None))
    body = json.loads(seen[0].content)
    assert body["images"] == images and "image" not in body


def test_the_real_gateways_200_answer_is_accepted():
    seen = []
    answer = {"id": TASK_ID, "task_id": TASK_ID, "object": "video", "model": "kling-v1",
              "status": "queued", "progress": 0, "created_at": 1640995200}  # fmt: skip

    def handler(request):
        seen.append(request)
        return httpx.Response(200, json=answer)

    submission = asyncio.run(make(handler).submit(SubmitRequest(prompt="p"), None))
    assert submission.provider_job_id == TASK_ID
    assert (submission.observation.status, submission.observation.provider_status) == (
        Status.QUEUED,
        "queued",
    )
    assert submission.observation.progress == Progress(percent=0)


# --- fetch and the two status shapes -------------------------------------------------


def test_fetch_asks_the_task_endpoint_with_the_key_that_created_the_job():
    seen = []

    def handler(request):
        seen.append((request.method, request.url.path, request.headers["authorization"]))
        return httpx.Response(200, json=envelope(status="IN_PROGRESS", progress="30%"))

    gateway = make(handler)
    assert asyncio.run(gateway.fetch(job(OLD.fingerprint))).status is Status.PROCESSING
    asyncio.run(gateway.fetch(job("sha256:gone")))
    path = f"/v1/video/generations/{TASK_ID}"
    assert seen == [
        ("GET", path, "Bearer sk-newapi-old-key"),
        ("GET", path, "Bearer sk-newapi-unit-key"),
    ]


def test_fetch_quotes_the_task_id_into_the_path():
    seen = []

    def handler(request):
        seen.append(request.url.raw_path)
        return httpx.Response(200, json=envelope(status="QUEUED"))

    asyncio.run(make(handler).fetch(job(task_id="a/b?c")))
    assert seen == [b"/v1/video/generations/a%2Fb%3Fc"]


def test_fetch_without_a_task_id_is_transient():
    with pytest.raises(ProviderError) as caught:
        asyncio.run(make(submit_ok([])).fetch(JobRef("job-1", None, KEY.fingerprint)))
    assert caught.value.transient


def not_found():
    error = {"code": "", "message": "Invalid URL", "param": "", "type": "invalid_request_error"}
    body = {"error": error}
    return httpx.Response(404, json=body)


def test_a_404_task_endpoint_falls_back_to_videos_and_is_remembered():
    seen = []

    def handler(request):
        seen.append(request.url.path)
        if request.url.path.startswith("/v1/video/generations/"):
            return not_found()
        return httpx.Response(200, json={"id": TASK_ID, "object": "video", "status": "queued"})

    gateway = make(handler)
    assert asyncio.run(gateway.fetch(job())).provider_status == "queued"
    assert asyncio.run(gateway.fetch(job())).provider_status == "queued"
    assert seen == [
        f"/v1/video/generations/{TASK_ID}",
        f"/v1/videos/{TASK_ID}",
        f"/v1/videos/{TASK_ID}",
    ]
    # Memory is per adapter instance: a new one starts from the default order.
    seen.clear()
    asyncio.run(make(handler).fetch(job()))
    assert len(seen) == 2


def test_the_videos_endpoint_can_be_preferred_and_falls_back_too():
    seen = []

    def handler(request):
        seen.append(request.url.path)
        if request.url.path.startswith("/v1/videos/"):
            return not_found()
        return httpx.Response(200, json=envelope(status="SUCCESS", result_url="https://cdn/v.mp4"))

    gateway = make(handler)
    gateway.status_paths = (VIDEO_PATH, TASK_PATH)
    assert asyncio.run(gateway.fetch(job())).result_url == "https://cdn/v.mp4"
    asyncio.run(gateway.fetch(job()))
    assert seen == [
        f"/v1/videos/{TASK_ID}",
        f"/v1/video/generations/{TASK_ID}",
        f"/v1/video/generations/{TASK_ID}",
    ]


def test_404_on_both_endpoints_is_permanent():
    seen = []

    def handler(request):
        seen.append(request.url.path)
        return not_found()

    with pytest.raises(ProviderError) as caught:
        asyncio.run(make(handler).fetch(job()))
    assert (caught.value.transient, caught.value.status_code) == (False, 404)
    assert len(seen) == 2


def test_an_unknown_task_is_permanent_and_does_not_fall_back():
    seen = []

    def handler(request):
        seen.append(request.url.path)
        body = {"code": "task_not_exist", "message": "task_not_exist", "param": "", "type": ""}
        return httpx.Response(400, json=body)

    with pytest.raises(ProviderError) as caught:
        asyncio.run(make(handler).fetch(job()))
    error = caught.value
    assert (error.transient, error.status_code, error.code) == (False, 400, "task_not_exist")
    assert seen == [f"/v1/video/generations/{TASK_ID}"]


@pytest.mark.parametrize(
    ("body", "transient", "code"),
    [
        ({"code": "task_not_exist", "message": "task_not_exist", "data": None}, False,
         "task_not_exist"),
        ({"code": "get_task_failed", "message": "database is locked", "data": None}, True,
         "get_task_failed"),
        ({"code": "success", "message": "", "data": None}, True, None),
        ({"object": "video"}, True, None),
        ([{"status": "SUCCESS"}], True, None),
        ("SUCCESS", True, None),
    ],
)  # fmt: skip
def test_unexpected_status_bodies_with_http_200(body, transient, code):
    with pytest.raises(ProviderError) as caught:
        asyncio.run(make(lambda request: httpx.Response(200, json=body)).fetch(job()))
    assert (caught.value.transient, caught.value.code) == (transient, code)


@pytest.mark.parametrize(
    ("word", "status"),
    [
        ("NOT_START", Status.QUEUED),
        ("SUBMITTED", Status.QUEUED),
        ("QUEUED", Status.QUEUED),
        ("UNKNOWN", Status.QUEUED),
        ("IN_PROGRESS", Status.PROCESSING),
        ("SUCCESS", Status.COMPLETED),
        ("FAILURE", Status.FAILED),
    ],
)
def test_task_envelope_words(word, status):
    seen = task_observation({"task_id": TASK_ID, "status": word})
    assert (seen.status, seen.provider_status, seen.known) == (status, word, True)
    assert seen.provider_job_id == TASK_ID


@pytest.mark.parametrize(
    ("word", "status"),
    [
        ("queued", Status.QUEUED),
        ("in_progress", Status.PROCESSING),
        ("completed", Status.COMPLETED),
        ("failed", Status.FAILED),
        ("unknown", Status.QUEUED),
    ],
)
def test_video_object_words(word, status):
    seen = video_observation({"id": TASK_ID, "object": "video", "status": word})
    assert (seen.status, seen.provider_status, seen.known) == (status, word, True)
    assert seen.provider_job_id == TASK_ID


@pytest.mark.parametrize(
    "body",
    [
        envelope(status="WAITING"),
        {"id": TASK_ID, "object": "video", "status": "waiting"},
        envelope(status=None),
        envelope(),
        {"id": TASK_ID, "status": 7},
    ],
)
def test_unknown_or_missing_words_are_queued_and_kept_raw(body):
    seen = observation(body)
    raw_word = (body.get("data") or body).get("status")
    assert (seen.status, seen.known) == (Status.QUEUED, False)
    assert seen.provider_status == (None if raw_word is None else str(raw_word))


@pytest.mark.parametrize(
    ("body", "percent"),
    [
        (envelope(status="IN_PROGRESS", progress="30%"), 30),
        (envelope(status="QUEUED", progress="20%"), 20),
        ({"id": TASK_ID, "object": "video", "status": "in_progress", "progress": 33}, 33),
        ({"id": TASK_ID, "object": "video", "status": "queued", "progress": 0}, 0),
    ],
)
def test_the_gateways_progress_is_read_from_either_shape(body, percent):
    gateway = make(lambda request: httpx.Response(200, json=body))
    seen = asyncio.run(gateway.fetch(job()))
    assert seen.progress == Progress(percent=percent)


def test_a_task_without_progress_reports_none():
    assert observation(envelope(status="IN_PROGRESS")).progress is None
    assert observation(envelope(status="IN_PROGRESS", progress="")).progress is None


def test_fetch_maps_an_unknown_word_without_raising():
    gateway = make(lambda request: httpx.Response(200, json=envelope(status="WAITING")))
    seen = asyncio.run(gateway.fetch(job()))
    assert (seen.status, seen.provider_status, seen.known) == (Status.QUEUED, "WAITING", False)


def test_task_envelope_success_failure_and_quota():
    done = observation(
        envelope(
            status="SUCCESS",
            result_url="https://cdn/v.mp4",
            fail_reason="",
            quota=250000,
            progress="100%",
        )
    )
    assert (done.status, done.result_url, done.error, done.credits) == (
        Status.COMPLETED,
        "https://cdn/v.mp4",
        None,
        250000.0,
    )
    assert done.raw is not None and done.raw["progress"] == "100%"
    failed = observation(envelope(status="FAILURE", fail_reason="upstream refused", quota=True))
    assert (failed.status, failed.error, failed.result_url, failed.credits) == (
        Status.FAILED,
        "upstream refused",
        None,
        None,
    )
    assert observation(envelope(status="FAILURE", fail_reason="")).error
    # fail_reason is only an error once the task failed.
    running = observation(envelope(status="IN_PROGRESS", fail_reason="retrying upstream"))
    assert running.error is None


def test_older_gateways_put_the_video_url_in_fail_reason():
    done = observation(envelope(status="SUCCESS", fail_reason="https://cdn/old.mp4"))
    assert (done.result_url, done.error) == ("https://cdn/old.mp4", None)
    not_a_url = observation(envelope(status="SUCCESS", fail_reason="data:video/mp4;base64,AA"))
    assert not_a_url.result_url is None


def test_video_object_success_and_failure():
    done = observation(
        {
            "id": TASK_ID,
            "object": "video",
            "status": "completed",
            "progress": 100,
            "metadata": {"url": "https://cdn/v.mp4"},
        }
    )
    assert (done.status, done.result_url, done.error) == (
        Status.COMPLETED,
        "https://cdn/v.mp4",
        None,
    )
    failed = observation(
        {"id": TASK_ID, "status": "failed", "error": {"message": "moderated", "code": "x"}}
    )
    assert (failed.status, failed.error) == (Status.FAILED, "moderated")
    only_code = observation({"id": TASK_ID, "status": "failed", "error": {"code": "task_failed"}})
    assert only_code.error == "task_failed"
    bare = observation({"id": TASK_ID, "status": "failed", "metadata": "junk"})
    assert bare.error and bare.result_url is None


# --- errors ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "transient"),
    [(400, False), (401, False), (402, False), (403, False), (404, False), (429, True),
     (500, True), (502, True), (503, True)],
)  # fmt: skip
@pytest.mark.parametrize("nested", [False, True])
def test_http_errors_are_classified_with_the_gateways_code(status, transient, nested):
    error = {"code": "some_code", "message": "told you so", "param": "model"}
    error["type"] = "new_api_error"

    def handler(request):
        body = {"error": error} if nested else error
        return httpx.Response(status, json=body, headers={"Retry-After": "3"})

    with pytest.raises(ProviderError) as caught:
        asyncio.run(make(handler).submit(SubmitRequest(prompt="p"), None))
    seen = caught.value
    assert (seen.transient, seen.status_code, seen.message) == (transient, status, "told you so")
    assert seen.code == "some_code"
    assert seen.retry_after == 3.0
    assert "sk-newapi-unit-key" not in str(seen)


@pytest.mark.parametrize(
    ("body", "code", "message"),
    [
        ({"code": None, "message": "bad", "param": "", "type": "invalid_request_error"},
         "invalid_request_error", "bad"),
        ({"error": {"message": "invalid token", "type": "new_api_error", "code": None}},
         "new_api_error", "invalid token"),
        ({"code": "task_not_exist", "message": "", "data": None}, "task_not_exist",
         "task_not_exist"),
        ({"error": "plain text error"}, None, "plain text error"),
        ({"code": 400, "message": "numeric code"}, None, "numeric code"),
        ({"unrelated": True}, None, "HTTP 400 Bad Request"),
        ([1, 2], None, "HTTP 400 Bad Request"),
    ],
)  # fmt: skip
def test_error_shapes(body, code, message):
    gateway = make(lambda request: httpx.Response(400, json=body))
    with pytest.raises(ProviderError) as caught:
        asyncio.run(gateway.fetch(job()))
    assert (caught.value.code, caught.value.message) == (code, message)


def test_an_error_that_is_not_json_keeps_the_status():
    gateway = make(lambda request: httpx.Response(502, text="<html>Bad Gateway</html>"))
    with pytest.raises(ProviderError) as caught:
        asyncio.run(gateway.fetch(job()))
    assert (caught.value.transient, caught.value.message) == (True, "HTTP 502 Bad Gateway")


def test_network_errors_and_timeouts_are_transient():
    def refuse(request):
        raise httpx.ConnectError("refused")

    def slow(request):
        raise httpx.ReadTimeout("slow")

    for handler in (refuse, slow):
        for call in (
            lambda g: g.fetch(job()),
            lambda g: g.submit(SubmitRequest(prompt="p"), None),
        ):
            with pytest.raises(ProviderError) as caught:
                asyncio.run(call(make(handler)))
            assert caught.value.transient
            assert "sk-newapi" not in str(caught.value)


def test_malformed_json_is_transient():
    gateway = make(lambda request: httpx.Response(200, content=b'{"code": "success", "data": {'))
    with pytest.raises(ProviderError) as caught:
        asyncio.run(gateway.fetch(job()))
    assert caught.value.transient


def test_no_callbacks():
    gateway = make(submit_ok([]))
    assert gateway.supports_callbacks is False
    with pytest.raises(NotImplementedError):
        gateway.parse_callback({})


# --- Gemini and Vertex (Veo) channels ----------------------------------------------

GEMINI_URL = "https://gw.test/v1/videos/task_9b1Yq2/content"


def gemini(**fields):
    """What a Gemini or Vertex channel's task looks like (new-api's VideoTaskResponse)."""
    return {"task_id": TASK_ID, **fields}


@pytest.mark.parametrize(
    ("word", "status"),
    [
        ("queued", Status.QUEUED),
        ("processing", Status.PROCESSING),
        ("succeeded", Status.COMPLETED),
        ("failed", Status.FAILED),
    ],
)
@pytest.mark.parametrize("enveloped", [True, False])
def test_gemini_words_with_and_without_the_envelope(word, status, enveloped):
    task = gemini(status=word)
    seen = observation({"code": "success", "data": task} if enveloped else task)
    assert (seen.status, seen.provider_status, seen.known) == (status, word, True)
    assert seen.provider_job_id == TASK_ID


@pytest.mark.parametrize("enveloped", [True, False])
def test_a_gemini_task_completes_with_its_url(enveloped):
    task = gemini(status="succeeded", url=GEMINI_URL, format="mp4",
                  metadata={"duration": 8.0, "fps": 24, "width": 1280, "height": 720,
                            "seed": 7})  # fmt: skip
    body = {"code": "success", "message": "", "data": task} if enveloped else task
    gateway = make(lambda request: httpx.Response(200, json=body))
    seen = asyncio.run(gateway.fetch(job()))
    assert (seen.status, seen.result_url, seen.error) == (Status.COMPLETED, GEMINI_URL, None)


@pytest.mark.parametrize("enveloped", [True, False])
def test_a_gemini_failure_gives_its_message(enveloped):
    task = gemini(status="failed", error={"code": 400, "message": "blocked by safety filters"})
    seen = observation({"code": "success", "data": task} if enveloped else task)
    assert (seen.status, seen.error, seen.result_url) == (
        Status.FAILED,
        "blocked by safety filters",
        None,
    )


def test_a_row_id_is_not_taken_for_the_task_id():
    seen = observation(envelope(status="QUEUED", id=12, task_id=None))
    assert seen.provider_job_id is None


# --- results served by the gateway itself ------------------------------------------


@pytest.mark.parametrize(
    ("base_url", "expected"),
    [
        ("https://gw.test", f"https://gw.test/v1/videos/{TASK_ID}/content"),
        ("https://gw.test/v1", f"https://gw.test/v1/videos/{TASK_ID}/content"),
        ("https://gw.test/relay", f"https://gw.test/relay/v1/videos/{TASK_ID}/content"),
    ],
)
def test_a_completed_task_without_a_link_is_fetched_from_the_content_route(base_url, expected):
    body = {"id": TASK_ID, "object": "video", "status": "completed", "progress": 100}
    gateway = make(lambda request: httpx.Response(200, json=body), base_url=base_url)
    seen = asyncio.run(gateway.fetch(job()))
    assert (seen.status, seen.result_url) == (Status.COMPLETED, expected)
    running = {"id": TASK_ID, "object": "video", "status": "in_progress"}
    gateway = make(lambda request: httpx.Response(200, json=running), base_url=base_url)
    assert asyncio.run(gateway.fetch(job())).result_url is None


def test_metadata_url_from_the_videos_endpoint():
    body = {"id": TASK_ID, "object": "video", "status": "completed",
            "metadata": {"url": "https://cdn.kling.example/v.mp4"}}  # fmt: skip
    gateway = make(lambda request: httpx.Response(200, json=body))
    gateway.status_paths = (VIDEO_PATH, TASK_PATH)
    assert asyncio.run(gateway.fetch(job())).result_url == "https://cdn.kling.example/v.mp4"


def test_download_adds_the_key_only_on_the_gateways_own_origin():
    gateway = make(submit_ok([]))
    own = gateway.download(job(OLD.fingerprint), GEMINI_URL)
    assert (own.url, dict(own.headers)) == (
        GEMINI_URL,
        {"Authorization": "Bearer sk-newapi-old-key"},
    )
    explicit_port = gateway.download(job(), "https://gw.test:443/v1/videos/x/content")
    assert explicit_port.headers == {"Authorization": "Bearer sk-newapi-unit-key"}
    for elsewhere in (
        "https://cdn.kling.example/v.mp4",
        "http://gw.test/v1/videos/x/content",  # another scheme is another origin
        "https://gw.test:8443/v1/videos/x/content",
        "https://gw.test.evil.example/v1/videos/x/content",
        "https://evil.example/gw.test/v.mp4",
        "not a url at all",
    ):
        assert gateway.download(job(), elsewhere).headers == {}, elsewhere


def test_the_content_route_under_another_address_is_fetched_from_the_gateway():
    gateway = make(submit_ok([]), base_url="http://newapi:3000")
    public = f"https://api.example.com/v1/videos/{TASK_ID}/content"
    fetched = gateway.download(job(), public)
    assert fetched.url == f"http://newapi:3000/v1/videos/{TASK_ID}/content"
    assert fetched.headers == {"Authorization": "Bearer sk-newapi-unit-key"}
    other_task = gateway.download(job(), "https://api.example.com/v1/videos/task_other/content")
    assert (other_task.url, other_task.headers) == (
        "https://api.example.com/v1/videos/task_other/content",
        {},
    )


# --- 501: a platform without a converter to the video object -------------------------


def not_implemented():
    error = {"message": "video conversion is not supported for this platform",
             "type": "new_api_error", "code": "convert_not_supported"}  # fmt: skip
    return httpx.Response(501, json={"error": error})


def test_501_on_videos_falls_back_to_the_task_endpoint():
    seen = []

    def handler(request):
        seen.append(request.url.path)
        if request.url.path.startswith("/v1/videos/"):
            return not_implemented()
        return httpx.Response(200, json=envelope(status="SUCCESS", result_url="https://cdn/v.mp4"))

    gateway = make(handler)
    gateway.status_paths = (VIDEO_PATH, TASK_PATH)
    assert asyncio.run(gateway.fetch(job())).result_url == "https://cdn/v.mp4"
    asyncio.run(gateway.fetch(job()))
    assert seen == [
        f"/v1/videos/{TASK_ID}",
        f"/v1/video/generations/{TASK_ID}",
        f"/v1/video/generations/{TASK_ID}",
    ]


def test_501_with_no_task_endpoint_fails_clearly_and_for_good():
    def handler(request):
        return not_implemented() if request.url.path.startswith("/v1/videos/") else not_found()

    with pytest.raises(ProviderError) as caught:
        asyncio.run(make(handler).fetch(job()))
    error = caught.value
    assert (error.transient, error.status_code, error.code) == (False, 501, "convert_not_supported")
    assert "/v1/videos answers 501" in error.message

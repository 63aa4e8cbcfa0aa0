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
from receiver.providers.runway import API_VERSION, Runway, observation
from receiver.states import Status

KEY = Secret("key_runway_unit_0123456789")
OLD = Secret("key_runway_old_0123456789")
TASK_ID = "497f6eca-6276-4993-bfeb-53cbbbba6f08"
VIDEO = "https://dnznrvs05pmza.cloudfront.net/output.mp4?_jwt=abc"
CREATED = "2024-06-27T19:49:32.335Z"


def make(handler, default_model="gen4.5"):
    config = ProviderConfig(
        name="runway",
        type="runway",
        base_url="https://runway.test",
        api_key=KEY,
        previous_api_keys=(OLD,),
        default_model=default_model,
    )
    return Runway(config, httpx.AsyncClient(transport=httpx.MockTransport(handler)))


def recorder(*answers):
    seen = []
    queue = list(answers)

    def handler(request):
        seen.append(request)
        return queue.pop(0) if len(queue) > 1 else queue[0]

    return seen, handler


def answer(status_code, body=None, headers=None):
    if body is None:
        return httpx.Response(status_code, headers=headers)
    return httpx.Response(status_code, json=body, headers=headers)


def task(status, **extra):
    return {"id": TASK_ID, "status": status, "createdAt": CREATED} | extra


def job(fingerprint=KEY.fingerprint, task_id=TASK_ID):
    return JobRef("job-1", task_id, fingerprint)


def fetch(runway, ref=None):
    return asyncio.run(runway.fetch(ref or job()))


def submit(runway, request):
    return asyncio.run(runway.submit(request, None))


def test_every_request_names_the_api_version():
    seen, handler = recorder(answer(200, {"id": TASK_ID}), answer(200, task("PENDING")))
    runway = make(handler)
    submit(runway, SubmitRequest(prompt="a cat"))
    fetch(runway)
    for request in seen:
        assert request.headers["x-runway-version"] == API_VERSION == "2024-11-06"
        assert request.headers["authorization"] == f"Bearer {KEY.reveal()}"


def test_text_to_video_without_images():
    seen, handler = recorder(answer(200, {"id": TASK_ID}))
    submission = submit(make(handler), SubmitRequest(prompt="a cat", options={"seed": 7}))
    assert seen[0].url.path == "/v1/text_to_video"
    assert json.loads(seen[0].content) == {
        "model": "gen4.5",
        "promptText": "a cat",
        "ratio": "1280:720",
        "duration": 5,
        "seed": 7,
    }
    assert submission.provider_job_id == TASK_ID
    assert submission.observation.status is Status.QUEUED
    assert submission.key_fingerprint == KEY.fingerprint


def test_image_to_video_with_one_image():
    seen, handler = recorder(answer(200, {"id": TASK_ID}))
    request = SubmitRequest(
        prompt=None,
        model="gen3a_turbo",
        images=["https://example.com/a.png"],
        options={"duration": 10},
    )
    submit(make(handler), request)
    assert seen[0].url.path == "/v1/image_to_video"
    assert json.loads(seen[0].content) == {
        "model": "gen3a_turbo",
        "promptImage": "https://example.com/a.png",
        "ratio": "1280:768",
        "duration": 10,
    }


def test_two_images_are_the_first_and_last_frames():
    seen, handler = recorder(answer(200, {"id": TASK_ID}))
    images = ["https://example.com/a.png", "data:image/png;base64,iVBORw0KGgo="]
    submit(make(handler), SubmitRequest(prompt="a", model="veo3.1", images=images))
    body = json.loads(seen[0].content)
    assert body["promptImage"] == [
        {"uri": images[0], "position": "first"},
        {"uri": images[1], "position": "last"},
    ]
    assert (body["ratio"], body["duration"]) == ("1280:720", 8)


def test_an_unlisted_model_gets_only_what_the_request_says():
    seen, handler = recorder(answer(200, {"id": TASK_ID}))
    submit(make(handler), SubmitRequest(prompt="a", model="gen5", options={"ratio": "960:960"}))
    assert json.loads(seen[0].content) == {"model": "gen5", "promptText": "a", "ratio": "960:960"}


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (SubmitRequest(prompt=None), "prompt"),
        (SubmitRequest(prompt="x" * 1001), "prompt"),
        # 501 emoji are 1002 UTF-16 code units, as Runway counts them.
        (SubmitRequest(prompt="\U0001f600" * 501), "prompt"),
        (SubmitRequest(prompt="a", mode="text_to_video", images=["https://e.com/a.png"]), "images"),
        (SubmitRequest(prompt="a", images=["https://e.com/a.png"] * 3), "images"),
        (SubmitRequest(prompt="a", images=["http://e.com/a.png"]), "images"),
        (SubmitRequest(prompt="a", images=["data:text/plain;base64,aGk="]), "images"),
        (SubmitRequest(prompt="a", mode="video_to_video"), "mode"),
        (SubmitRequest(prompt="a", options={"ratio": "16:9x"}), "options.ratio"),
        (SubmitRequest(prompt="a", options={"duration": "5"}), "options.duration"),
        (SubmitRequest(prompt="a", options={"seed": -1}), "options.seed"),
        (SubmitRequest(prompt="a", options={"audio": "yes"}), "options.audio"),
        (
            SubmitRequest(prompt="a", options={"contentModeration": "low"}),
            "options.contentModeration",
        ),
        (SubmitRequest(prompt="a", options={"promptText": "b"}), "options.promptText"),
    ],
)
def test_invalid_submissions_name_the_field_and_send_nothing(request_, field):
    seen, handler = recorder(answer(200, {"id": TASK_ID}))
    with pytest.raises(InvalidRequest) as caught:
        submit(make(handler), request_)
    assert field in caught.value.fields
    assert seen == []


def test_a_500_emoji_prompt_is_within_the_limit():
    make(recorder(answer(200, {}))[1]).validate(SubmitRequest(prompt="\U0001f600" * 500))


@pytest.mark.parametrize(
    ("body", "status", "provider_status"),
    [
        (task("PENDING"), Status.QUEUED, "PENDING"),
        (task("THROTTLED"), Status.QUEUED, "THROTTLED"),
        (task("RUNNING", progress=0.42), Status.PROCESSING, "RUNNING"),
        (task("SUCCEEDED", output=[VIDEO]), Status.COMPLETED, "SUCCEEDED"),
        (task("CANCELLED"), Status.CANCELED, "CANCELLED"),
    ],
)
def test_statuses(body, status, provider_status):
    seen = fetch(make(recorder(answer(200, body))[1]))
    assert (seen.status, seen.provider_status, seen.known) == (status, provider_status, True)
    assert seen.result_url == (VIDEO if status is Status.COMPLETED else None)
    assert seen.raw == body


def test_a_running_tasks_fraction_done_is_its_progress():
    seen = fetch(make(recorder(answer(200, task("RUNNING", progress=0.42)))[1]))
    assert seen.progress == Progress(percent=42)
    assert observation(task("RUNNING", progress=0)).progress == Progress(percent=0)
    assert observation(task("PENDING")).progress is None
    assert observation(task("RUNNING", progress="soon")).progress is None


def test_failure_keeps_the_reason_and_the_code():
    body = task("FAILED", failure="Input text was flagged.", failureCode="SAFETY.INPUT.TEXT")
    seen = fetch(make(recorder(answer(200, body))[1]))
    assert seen.status is Status.FAILED
    assert seen.error == "Input text was flagged. (SAFETY.INPUT.TEXT)"
    assert observation(task("FAILED", failureCode="INTERNAL.BAD_OUTPUT")).error == (
        "INTERNAL.BAD_OUTPUT"
    )
    assert observation(task("FAILED")).error == "failed without a reason"


def test_an_unknown_status_is_kept_raw_as_queued():
    seen = fetch(make(recorder(answer(200, task("ASSIGNED")))[1]))
    assert (seen.status, seen.provider_status, seen.known) == (Status.QUEUED, "ASSIGNED", False)


def test_a_success_without_output_is_asked_again():
    with pytest.raises(ProviderError) as caught:
        fetch(make(recorder(answer(200, task("SUCCEEDED", output=[])))[1]))
    assert caught.value.transient


def test_the_key_that_created_the_job_polls_it():
    seen, handler = recorder(answer(200, task("RUNNING")))
    fetch(make(handler), job(OLD.fingerprint))
    assert seen[0].headers["authorization"] == f"Bearer {OLD.reveal()}"


@pytest.mark.parametrize(
    ("status", "transient"),
    [(400, False), (401, False), (404, False), (405, False), (429, True), (502, True), (503, True)],
)
def test_http_errors_carry_runway_s_message(status, transient):
    body = {"error": "Something specific went wrong."}
    with pytest.raises(ProviderError) as caught:
        fetch(make(recorder(answer(status, body, {"Retry-After": "3"}))[1]))
    assert caught.value.transient is transient
    assert caught.value.message == "Something specific went wrong."
    if status == 429:
        assert caught.value.retry_after == 3


def test_validation_issues_are_named():
    body = {
        "error": "Validation of body failed",
        "issues": [{"path": ["ratio"], "message": "Invalid enum value"}],
    }
    with pytest.raises(ProviderError) as caught:
        submit(make(recorder(answer(400, body))[1]), SubmitRequest(prompt="a"))
    assert caught.value.message == "Validation of body failed: ratio: Invalid enum value"


def test_a_submit_answer_without_an_id_is_not_retried():
    with pytest.raises(ProviderError) as caught:
        submit(make(recorder(answer(200, {}))[1]), SubmitRequest(prompt="a"))
    assert not caught.value.transient


@pytest.mark.parametrize("deleted", [answer(204), answer(200), answer(200, {})])
def test_cancel_deletes_a_running_task(deleted):
    seen, handler = recorder(answer(200, task("RUNNING", progress=0.1)), deleted)
    runway = make(handler)
    canceled = asyncio.run(runway.cancel(job()))
    assert [(r.method, r.url.path) for r in seen] == [
        ("GET", f"/v1/tasks/{TASK_ID}"),
        ("DELETE", f"/v1/tasks/{TASK_ID}"),
    ]
    assert seen[1].headers["x-runway-version"] == API_VERSION
    assert canceled is not None
    assert canceled.status is Status.CANCELED and canceled.provider_status == "CANCELLED"
    assert Runway.supports_cancel


def test_after_a_delete_a_404_for_that_task_reads_as_canceled_and_for_others_not():
    gone = answer(404, {"error": "Task not found."})
    _seen, handler = recorder(answer(200, task("RUNNING")), answer(204), gone)
    runway = make(handler)
    asyncio.run(runway.cancel(job()))
    polled = fetch(runway)  # a poll racing the cancel's own write
    assert polled.status is Status.CANCELED and polled.provider_status == "CANCELLED"
    with pytest.raises(ProviderError) as caught:
        fetch(runway, job(task_id="0b5c6a3e-other-task"))
    assert caught.value.status_code == 404 and not caught.value.transient


def test_a_refused_delete_leaves_a_404_an_error():
    _seen, handler = recorder(
        answer(200, task("PENDING")), answer(400, {"error": "Bad."}), answer(404, {"error": "No."})
    )
    runway = make(handler)
    with pytest.raises(ProviderError):
        asyncio.run(runway.cancel(job()))
    with pytest.raises(ProviderError) as caught:
        fetch(runway)
    assert caught.value.status_code == 404


def test_cancel_leaves_an_ended_task_alone():
    seen, handler = recorder(answer(200, task("SUCCEEDED", output=[VIDEO])))
    ended = asyncio.run(make(handler).cancel(job()))
    assert [r.method for r in seen] == ["GET"]
    assert ended is not None and ended.status is Status.COMPLETED


def test_cancel_of_a_task_runway_no_longer_knows_is_an_error():
    seen, handler = recorder(answer(404, {"error": "Task not found."}))
    with pytest.raises(ProviderError) as caught:
        asyncio.run(make(handler).cancel(job()))
    assert caught.value.status_code == 404 and not caught.value.transient
    assert [r.method for r in seen] == ["GET"]


def test_a_refused_delete_is_an_error():
    seen, handler = recorder(answer(200, task("PENDING")), answer(503, {"error": "Busy."}))
    with pytest.raises(ProviderError) as caught:
        asyncio.run(make(handler).cancel(job()))
    assert caught.value.transient and caught.value.status_code == 503
    assert [r.method for r in seen] == ["GET", "DELETE"]

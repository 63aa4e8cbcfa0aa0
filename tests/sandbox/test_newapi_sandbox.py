"""The fake new-api gateway, run for real on loopback and driven by the real adapter."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import httpx
import pytest

from receiver.config import ProviderConfig, Secret
from receiver.providers.base import (
    JobRef,
    Observation,
    Progress,
    ProviderError,
    Submission,
    SubmitRequest,
)
from receiver.providers.newapi import VIDEO_PATH, NewApi
from receiver.sandbox.base import Faults, Timing
from receiver.sandbox.newapi import NewApiFake, NewApiFakeSettings
from receiver.sandbox.server import ServerThread
from receiver.states import Status

KEY = "sk-newapi-sandbox-key"
OTHER_KEY = "sk-newapi-other-key"
T = TypeVar("T")


def fast_settings() -> NewApiFakeSettings:
    return NewApiFakeSettings(
        api_keys=[KEY, OTHER_KEY], timing=Timing(0.03, 0.03, 0.03, slow_factor=10)
    )


@pytest.fixture(scope="module")
def server_and_fake() -> Iterator[tuple[ServerThread, NewApiFake]]:
    fake = NewApiFake(fast_settings())
    with ServerThread(fake.app) as server:
        yield server, fake


@pytest.fixture
def fake(server_and_fake: tuple[ServerThread, NewApiFake]) -> Iterator[NewApiFake]:
    fake = server_and_fake[1]
    yield fake
    # Tests tweak settings on the shared server; restore them for the next test.
    vars(fake.settings).update(vars(fast_settings()))


@pytest.fixture
def url(server_and_fake: tuple[ServerThread, NewApiFake], fake: NewApiFake) -> str:
    return server_and_fake[0].url


def config(url: str, key: str = KEY, timeout: float = 5.0) -> ProviderConfig:
    return ProviderConfig(
        name="gateway",
        type="newapi",
        base_url=url,
        api_key=Secret(key),
        default_model="kling-v1",
        timeout=timeout,
    )


def with_adapter(
    url: str, work: Callable[[NewApi], Awaitable[T]], key: str = KEY, timeout: float = 5.0
) -> T:
    async def run() -> T:
        async with httpx.AsyncClient() as client:
            return await work(NewApi(config(url, key, timeout), client))

    return asyncio.run(run())


def ref(submission: Submission) -> JobRef:
    return JobRef("job-1", submission.provider_job_id, submission.key_fingerprint)


async def poll(
    gateway: NewApi, job: JobRef, until: Callable[[Observation], bool], timeout: float = 5.0
) -> list[Observation]:
    """Every observation, until one satisfies ``until``."""
    seen: list[Observation] = []
    deadline = time.monotonic() + timeout
    while True:
        seen.append(await gateway.fetch(job))
        if until(seen[-1]):
            return seen
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached in time; last {seen[-1]}")
        await asyncio.sleep(0.01)


def terminal(observation: Observation) -> bool:
    return observation.status.terminal


async def submit_and_finish(gateway: NewApi, prompt: str) -> list[Observation]:
    submission = await gateway.submit(SubmitRequest(prompt=prompt), None)
    return await poll(gateway, ref(submission), terminal)


def raw_client(url: str, key: str = KEY) -> httpx.Client:
    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"})


def assert_gateway_error(
    response: httpx.Response, status: int, code: str | None, nested: bool = False
) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    error = body["error"] if nested else body
    assert set(error) == {"code", "message", "param", "type"}
    assert error["code"] == code
    assert isinstance(error["message"], str) and error["message"]
    return dict(error)


# --- the adapter against the fake -------------------------------------------------


def test_submit_then_poll_until_completed_with_a_result_url(url: str, fake: NewApiFake) -> None:
    async def work(gateway: NewApi) -> tuple[Submission, list[Observation]]:
        submission = await gateway.submit(SubmitRequest(prompt="an astronaut"), None)
        return submission, await poll(gateway, ref(submission), terminal)

    submission, seen = with_adapter(url, work)
    assert submission.observation.provider_status == "queued"
    assert submission.observation.status is Status.QUEUED
    words = [o.provider_status for o in seen]
    assert words[0] in ("SUBMITTED", "QUEUED")
    assert words[-1] == "SUCCESS" and "IN_PROGRESS" in words
    assert all(o.known for o in seen)
    # new-api's figures: "0%" on submit, then one per status word.
    assert submission.observation.progress == Progress(percent=0)
    running = [o.progress for o in seen if o.provider_status == "IN_PROGRESS"]
    assert running and set(running) == {Progress(percent=30)}
    done = seen[-1]
    assert done.status is Status.COMPLETED
    assert done.provider_job_id == submission.provider_job_id
    assert done.result_url == f"{url}/files/{submission.provider_job_id}.mp4"
    assert done.credits is not None and done.credits > 0
    video = httpx.get(done.result_url)
    assert video.status_code == 200 and video.headers["content-type"] == "video/mp4"
    task = fake.task(submission.provider_job_id)
    assert task is not None and list(task.status_times) == [
        "SUBMITTED",
        "QUEUED",
        "IN_PROGRESS",
        "SUCCESS",
    ]


def test_fail_marker_ends_failed_with_the_gateways_reason(url: str, fake: NewApiFake) -> None:
    fake.settings.fail_reason = "upstream: content rejected by Kling"
    seen = with_adapter(url, lambda g: submit_and_finish(g, "boom [fail]"))
    assert (seen[-1].status, seen[-1].provider_status) == (Status.FAILED, "FAILURE")
    assert seen[-1].error == "upstream: content rejected by Kling"
    assert seen[-1].result_url is None


def test_unknown_marker_is_observed_as_unknown_then_completes(url: str) -> None:
    seen = with_adapter(url, lambda g: submit_and_finish(g, "hmm [unknown]"))
    strange = [o for o in seen if not o.known]
    assert strange and all(
        (o.status, o.provider_status) == (Status.QUEUED, "WAITING") for o in strange
    )
    assert seen[-1].status is Status.COMPLETED and seen[-1].known


def test_a_wrong_key_is_a_permanent_401(url: str) -> None:
    async def work(gateway: NewApi) -> None:
        await gateway.submit(SubmitRequest(prompt="p"), None)

    with pytest.raises(ProviderError) as caught:
        with_adapter(url, work, key="sk-wrong")
    error = caught.value
    assert (error.transient, error.status_code, error.message) == (False, 401, "invalid token")
    assert "sk-wrong" not in str(error)


def test_any_configured_key_can_read_a_task(url: str) -> None:
    submission = with_adapter(url, lambda g: g.submit(SubmitRequest(prompt="p"), None))
    seen = with_adapter(url, lambda g: g.fetch(ref(submission)), key=OTHER_KEY)
    assert seen.provider_job_id == submission.provider_job_id


def test_429_marker_is_transient_with_retry_after(url: str, fake: NewApiFake) -> None:
    fake.settings.retry_after = 4
    with pytest.raises(ProviderError) as caught:
        with_adapter(url, lambda g: g.submit(SubmitRequest(prompt="busy [429]"), None))
    error = caught.value
    assert (error.transient, error.status_code, error.retry_after) == (True, 429, 4.0)
    assert error.code == "rate_limit_exceeded"


@pytest.mark.parametrize(
    ("prompt", "status", "transient", "code"),
    [
        ("[500]", 500, True, "do_request_failed"),
        ("[policy]", 400, False, "sensitive_words_detected"),
    ],
)
def test_500_and_policy_markers_refuse_the_submit(
    url: str, fake: NewApiFake, prompt: str, status: int, transient: bool, code: str
) -> None:
    with pytest.raises(ProviderError) as caught:
        with_adapter(url, lambda g: g.submit(SubmitRequest(prompt=prompt), None))
    error = caught.value
    assert (error.status_code, error.transient, error.code) == (status, transient, code)
    assert fake.requests_to(r"/v1/video/generations$")[-1].task_id is None


def test_exhausted_quota_is_a_permanent_403(url: str, fake: NewApiFake) -> None:
    fake.settings.quota_exhausted = True
    with pytest.raises(ProviderError) as caught:
        with_adapter(url, lambda g: g.submit(SubmitRequest(prompt="p"), None))
    error = caught.value
    assert (error.status_code, error.transient, error.code) == (
        403,
        False,
        "insufficient_user_quota",
    )


def test_an_unknown_task_is_permanent(url: str) -> None:
    job = JobRef("job-1", "task_doesnotexist", None)
    with pytest.raises(ProviderError) as caught:
        with_adapter(url, lambda g: g.fetch(job))
    error = caught.value
    assert (error.status_code, error.transient, error.code) == (400, False, "task_not_exist")


def test_an_unknown_task_answers_as_the_gateway_does(url: str) -> None:
    with raw_client(url) as client:
        response = client.get("/v1/video/generations/task_doesnotexist")
    assert response.status_code == 400
    assert response.json() == {"code": "task_not_exist", "message": "task_not_exist", "data": None}


# --- Gemini and Vertex (Veo) channels, and the content route ---------------------------

VEO = "veo-3.0-generate-001"


@pytest.mark.parametrize("enveloped", [True, False])
def test_a_veo_task_completes_with_its_url_and_downloads_with_the_key(
    url: str, fake: NewApiFake, enveloped: bool
) -> None:
    fake.settings.gemini_envelope = enveloped

    async def work(gateway: NewApi) -> tuple[Submission, list[Observation], httpx.Response]:
        submission = await gateway.submit(SubmitRequest(prompt="waves", model=VEO), None)
        seen = await poll(gateway, ref(submission), terminal)
        assert seen[-1].result_url is not None
        how = gateway.download(ref(submission), seen[-1].result_url)
        video = await gateway.client.get(how.url, headers=dict(how.headers))
        return submission, seen, video

    submission, seen, video = with_adapter(url, work)
    task_id = submission.provider_job_id
    words = [o.provider_status for o in seen]
    assert words[-1] == "succeeded" and "processing" in words and all(o.known for o in seen)
    assert seen[-1].raw is not None and ("url" in seen[-1].raw) and ("status" in seen[-1].raw)
    assert seen[-1].result_url == f"{url}/v1/videos/{task_id}/content"
    assert video.status_code == 200 and video.headers["content-type"] == "video/mp4"
    with raw_client(url) as client:
        task = client.get(f"/v1/video/generations/{task_id}").json()
    answer = task["data"] if enveloped else task
    assert set(answer) == {"task_id", "status", "url", "format", "metadata"}
    assert ("code" in task) == enveloped


def test_a_failed_veo_task_gives_the_gateways_message(url: str, fake: NewApiFake) -> None:
    fake.settings.fail_reason = "the prompt was blocked by safety filters"
    seen = with_adapter(url, lambda g: submit_and_finish_with(g, "waves [fail]", VEO))
    assert (seen[-1].status, seen[-1].provider_status) == (Status.FAILED, "failed")
    assert seen[-1].error == "the prompt was blocked by safety filters"


async def submit_and_finish_with(gateway: NewApi, prompt: str, model: str) -> list[Observation]:
    submission = await gateway.submit(SubmitRequest(prompt=prompt, model=model), None)
    return await poll(gateway, ref(submission), terminal)


def test_the_content_route_opens_only_with_the_creators_key(url: str) -> None:
    submission = with_adapter(url, lambda g: g.submit(SubmitRequest(prompt="p", model=VEO), None))
    task_id = submission.provider_job_id
    content = f"/v1/videos/{task_id}/content"
    with raw_client(url) as client:
        deadline = time.monotonic() + 5
        while client.get(f"/v1/videos/{task_id}").json()["status"] != "completed":
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert client.get(content).status_code == 200
    assert_gateway_error(httpx.get(f"{url}{content}"), 401, None, nested=True)
    with raw_client(url, OTHER_KEY) as other:
        assert other.get(content).json()["code"] == "task_not_exist"
    # The video object of a Veo task carries no link of its own.
    with raw_client(url) as client:
        assert "metadata" not in client.get(f"/v1/videos/{task_id}").json()


def test_a_content_route_of_a_kling_task_in_progress_is_refused(url: str) -> None:
    submission = with_adapter(url, lambda g: g.submit(SubmitRequest(prompt="p [never]"), None))
    with raw_client(url) as client:
        response = client.get(f"/v1/videos/{submission.provider_job_id}/content")
    assert_gateway_error(response, 400, "task_not_completed")


# --- 501, duration, images ----------------------------------------------------------------


def test_501_on_videos_falls_back_to_the_task_route(url: str, fake: NewApiFake) -> None:
    fake.settings.no_video_converter = True

    async def work(gateway: NewApi) -> tuple[str, list[Observation]]:
        gateway.status_paths = (VIDEO_PATH, gateway.status_paths[0])
        submission = await gateway.submit(SubmitRequest(prompt="p"), None)
        return submission.provider_job_id, await poll(gateway, ref(submission), terminal)

    task_id, seen = with_adapter(url, work)
    assert seen[-1].status is Status.COMPLETED
    assert seen[-1].result_url == f"{url}/files/{task_id}.mp4"
    asked = [(r.path.split("/")[2], r.status_code) for r in fake.requests if r.task_id == task_id]
    # One 501 from /v1/videos, then the adapter keeps to the task route.
    assert asked[:3] == [("video", 200), ("videos", 501), ("video", 200)]
    assert all(a == ("video", 200) for a in asked[3:])


def test_501_without_a_task_route_fails_clearly(url: str, fake: NewApiFake) -> None:
    fake.settings.no_video_converter = True
    fake.settings.task_route = False
    submission = with_adapter(url, lambda g: g.submit(SubmitRequest(prompt="p"), None))
    with pytest.raises(ProviderError) as caught:
        with_adapter(url, lambda g: g.fetch(ref(submission)))
    error = caught.value
    assert (error.transient, error.status_code, error.code) == (False, 501, "convert_not_supported")
    assert "501" in error.message


@pytest.mark.parametrize(("sent", "kept"), [(6, 6), ("6", 6), (5.5, None), ("six", None)])
def test_the_gateway_keeps_an_integer_duration_and_drops_anything_else(
    url: str, fake: NewApiFake, sent: object, kept: int | None
) -> None:
    with raw_client(url) as client:
        body = {"model": "kling-v1", "prompt": "p", "duration": sent}
        task_id = client.post("/v1/video/generations", json=body).json()["task_id"]
    task = fake.task(task_id)
    assert task is not None and task.duration == kept


def test_the_adapter_sends_duration_as_the_gateway_keeps_it(url: str, fake: NewApiFake) -> None:
    request = SubmitRequest(prompt="p", options={"duration": "6"})
    submission = with_adapter(url, lambda g: g.submit(request, None))
    task = fake.task(submission.provider_job_id)
    assert task is not None and task.duration == 6 and task.body["duration"] == 6


def test_several_images_arrive_in_images(url: str, fake: NewApiFake) -> None:
    images = ["https://i.example/1.png", "https://i.example/2.png"]
    request = SubmitRequest(prompt="p", images=images)
    submission = with_adapter(url, lambda g: g.submit(request, None))
    task = fake.task(submission.provider_job_id)
    assert task is not None and task.body["images"] == images and "image" not in task.body
    with raw_client(url) as client:
        refused = client.post(
            "/v1/video/generations", json={"model": "kling-v1", "prompt": "p", "images": [""]}
        )
    assert assert_gateway_error(refused, 400, "invalid_request")["param"] == "images"


def test_an_error_burst_is_transient_then_the_fetch_succeeds(url: str, fake: NewApiFake) -> None:
    async def work(gateway: NewApi) -> tuple[list[ProviderError], Observation]:
        submission = await gateway.submit(SubmitRequest(prompt="p"), None)
        fake.settings.faults = Faults(error_burst=2, error_status=503, paths=r"^/v1/video/")
        errors: list[ProviderError] = []
        for _ in range(2):
            try:
                await gateway.fetch(ref(submission))
            except ProviderError as exc:
                errors.append(exc)
        return errors, await gateway.fetch(ref(submission))

    errors, seen = with_adapter(url, work)
    assert [(e.transient, e.status_code) for e in errors] == [(True, 503), (True, 503)]
    assert errors[0].message == "upstream failure"
    assert seen.known and seen.status in (Status.QUEUED, Status.PROCESSING)


def test_malformed_json_is_transient(url: str, fake: NewApiFake) -> None:
    async def work(gateway: NewApi) -> ProviderError:
        submission = await gateway.submit(SubmitRequest(prompt="p"), None)
        fake.settings.faults = Faults(malformed=1)
        with pytest.raises(ProviderError) as caught:
            await gateway.fetch(ref(submission))
        await gateway.fetch(ref(submission))  # the next answer is fine again
        return caught.value

    assert with_adapter(url, work).transient


def test_an_answer_slower_than_the_timeout_is_transient(url: str, fake: NewApiFake) -> None:
    fake.settings.faults = Faults(slow=1, slow_delay=1.0)
    started = time.monotonic()
    with pytest.raises(ProviderError) as caught:
        with_adapter(url, lambda g: g.submit(SubmitRequest(prompt="p"), None), timeout=0.2)
    assert caught.value.transient and "timed out" in caught.value.message
    assert time.monotonic() - started < 0.9


def test_without_the_task_route_fetch_falls_back_to_videos(url: str, fake: NewApiFake) -> None:
    fake.settings.task_route = False

    async def work(gateway: NewApi) -> tuple[str, list[Observation]]:
        submission = await gateway.submit(SubmitRequest(prompt="p"), None)
        return submission.provider_job_id, await poll(gateway, ref(submission), terminal)

    task_id, seen = with_adapter(url, work)
    assert [o.provider_status for o in seen][-1] == "completed"
    assert seen[-1].result_url == f"{url}/files/{task_id}.mp4"
    asked = [(r.path.split("/")[2], r.status_code) for r in fake.requests if r.task_id == task_id]
    # One 404 from the task route, then the adapter remembers /v1/videos.
    assert asked[:3] == [("video", 200), ("video", 404), ("videos", 200)]
    assert all(a == ("videos", 200) for a in asked[3:])


def test_videos_first_reads_the_same_task(url: str) -> None:
    async def work(gateway: NewApi) -> list[Observation]:
        gateway.status_paths = (VIDEO_PATH,)
        return await submit_and_finish(gateway, "p [fail]")

    seen = with_adapter(url, work)
    assert (seen[-1].status, seen[-1].provider_status) == (Status.FAILED, "failed")
    assert seen[-1].error == fast_settings().fail_reason


def test_older_gateways_with_the_url_in_fail_reason(url: str, fake: NewApiFake) -> None:
    fake.settings.url_in_fail_reason = True
    seen = with_adapter(url, lambda g: submit_and_finish(g, "p"))
    assert seen[-1].raw is not None and "result_url" not in seen[-1].raw
    assert seen[-1].result_url == seen[-1].raw["fail_reason"]
    assert seen[-1].error is None


def test_never_marker_stays_in_progress(url: str) -> None:
    async def work(gateway: NewApi) -> Observation:
        submission = await gateway.submit(SubmitRequest(prompt="p [never]"), None)
        await poll(gateway, ref(submission), lambda o: o.status is Status.PROCESSING)
        await asyncio.sleep(0.3)  # many run_times
        return await gateway.fetch(ref(submission))

    assert with_adapter(url, work).provider_status == "IN_PROGRESS"


def test_slow_marker_stretches_every_stage(url: str) -> None:
    async def work(gateway: NewApi) -> Observation:
        submission = await gateway.submit(SubmitRequest(prompt="p [slow]"), None)
        await asyncio.sleep(0.15)  # past a normal task's end, short of a slow one's queue
        return await gateway.fetch(ref(submission))

    assert with_adapter(url, work).provider_status == "SUBMITTED"


# --- the fake's own shapes ------------------------------------------------------------


def test_the_seed_pages_201_submit_answer_on_a_setting(url: str, fake: NewApiFake) -> None:
    fake.settings.seed_submit = True
    with raw_client(url) as client:
        response = client.post("/v1/video/generations", json={"model": "viduq1", "prompt": "p"})
    assert response.status_code == 201, response.text
    accepted = response.json()
    assert set(accepted) == {"id", "object", "model", "created_at", "task_id", "status"}
    assert accepted["status"] == "processing"
    submission = with_adapter(url, lambda g: g.submit(SubmitRequest(prompt="p"), None))
    assert (submission.observation.status, submission.observation.provider_status) == (
        Status.QUEUED,
        "processing",
    )


def test_submit_and_both_status_shapes(url: str) -> None:
    with raw_client(url) as client:
        body = {"model": "viduq1", "prompt": "p", "duration": 5, "size": "1920x1080"}
        response = client.post("/v1/video/generations", json=body)
        assert response.status_code == 200, response.text
        accepted = response.json()
        assert set(accepted) == {
            "id", "object", "model", "created_at", "task_id", "status", "progress"
        }  # fmt: skip
        assert (accepted["object"], accepted["model"], accepted["status"]) == (
            "video",
            "viduq1",
            "queued",
        )
        assert accepted["progress"] == 0
        task_id = accepted["task_id"]
        assert task_id.startswith("task_") and accepted["id"] == task_id

        def both() -> tuple[dict[str, Any], dict[str, Any]]:
            task = client.get(f"/v1/video/generations/{task_id}").json()
            video = client.get(f"/v1/videos/{task_id}").json()
            return task, video

        task, video = both()
        assert (task["code"], task["data"]["task_id"]) == ("success", task_id)
        assert task["data"]["status"] in ("SUBMITTED", "QUEUED")
        assert video["status"] == "queued" and video["id"] == task_id
        deadline = time.monotonic() + 5
        while task["data"]["status"] != "SUCCESS" and time.monotonic() < deadline:
            time.sleep(0.01)
            task, video = both()
    data = task["data"]
    assert (data["progress"], data["fail_reason"]) == ("100%", "")
    assert data["result_url"] == f"{url}/files/{task_id}.mp4"
    assert data["submit_time"] <= data["start_time"] <= data["finish_time"]
    assert data["platform"] == "52"
    assert video["status"] == "completed" and video["progress"] == 100
    assert video["metadata"] == {"url": data["result_url"]}
    assert (video["seconds"], video["size"]) == ("5", "1920x1080")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("model", None),
        ("model", "sora-9"),
        ("prompt", None),
        ("prompt", " "),
        ("fps", 2.5),
        ("n", True),
        ("size", "big"),
        ("image", ""),
        ("metadata", ["x"]),
        ("seed", "1"),
    ],
)
def test_invalid_fields_are_named_in_the_error(url: str, field: str, value: object) -> None:
    body: dict[str, Any] = {"model": "kling-v1", "prompt": "p", field: value}
    if value is None:
        del body[field]
    with raw_client(url) as client:
        response = client.post("/v1/video/generations", json=body)
    error = assert_gateway_error(response, 400, "invalid_request")
    assert (error["param"], error["type"]) == (field, "invalid_request_error")


@pytest.mark.parametrize("content", [b"not json", b"[1, 2]", b""])
def test_a_body_that_is_not_an_object_is_400(url: str, content: bytes) -> None:
    with raw_client(url) as client:
        response = client.post("/v1/video/generations", content=content)
    assert_gateway_error(response, 400, "invalid_request")


@pytest.mark.parametrize("authorization", [None, "Bearer", "Bearer sk-nope", f"Token {KEY}", KEY])
def test_bad_credentials_are_401_in_the_nested_shape(url: str, authorization: str | None) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    with httpx.Client(base_url=url, headers=headers) as client:
        for response in (
            client.post("/v1/video/generations", json={"model": "kling-v1", "prompt": "p"}),
            client.get("/v1/video/generations/task_x"),
            client.get("/v1/videos/task_x"),
        ):
            assert_gateway_error(response, 401, None, nested=True)


def test_unknown_routes_and_files_are_404_in_the_gateways_shape(url: str) -> None:
    with raw_client(url) as client:
        for response in (
            client.get("/v1/nowhere"),
            client.post("/v1/video/generations/task_x"),
            client.get("/files/task_x.mp4"),
        ):
            error = assert_gateway_error(response, 404, "", nested=True)
            assert error["message"].startswith("Invalid URL (")


def test_injected_errors_use_the_gateways_shape(url: str, fake: NewApiFake) -> None:
    fake.settings.faults = Faults(rate_limit=1, retry_after=2)
    with raw_client(url) as client:
        response = client.get("/v1/videos/task_x")
    assert_gateway_error(response, 429, None)
    assert response.headers["Retry-After"] == "2"


def test_the_request_log_names_the_task(url: str, fake: NewApiFake) -> None:
    fake.settings.task_route = False
    with raw_client(url) as client:
        task_id = client.post("/v1/video/generations", json={"model": "kling-v1", "prompt": "p"})
        task_id = task_id.json()["task_id"]
        client.get(f"/v1/video/generations/{task_id}")
        client.get(f"/v1/videos/{task_id}")

    def mine() -> list[tuple[str, str, int]]:
        return [(r.method, r.path, r.status_code) for r in fake.requests if r.task_id == task_id]

    # Recorded once the response is sent, so the last one can trail the client a little.
    deadline = time.monotonic() + 2
    while len(mine()) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert mine() == [
        ("POST", "/v1/video/generations", 200),
        ("GET", f"/v1/video/generations/{task_id}", 404),
        ("GET", f"/v1/videos/{task_id}", 200),
    ]


def test_mounted_under_a_prefix_the_result_url_keeps_it() -> None:
    from starlette.applications import Starlette
    from starlette.routing import Mount

    fake = NewApiFake(fast_settings())
    app = Starlette(routes=[Mount(f"/{fake.prefix}", app=fake.app)])
    with ServerThread(app) as server:
        base = f"{server.url}/{NewApiFake.prefix}"
        seen = with_adapter(base, lambda g: submit_and_finish(g, "p"))
        assert seen[-1].result_url is not None
        assert seen[-1].result_url.startswith(f"{base}/files/task_")
        assert httpx.get(seen[-1].result_url).status_code == 200


def test_settings_are_a_fake_settings() -> None:
    settings = dataclasses.replace(fast_settings(), task_route=False)
    assert NewApiFake(settings).settings.task_route is False
    assert NewApiFake().settings.api_keys == []

"""The fake kvid on loopback, driven by the real adapter."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.routing import Mount

from receiver.config import ProviderConfig, Secret
from receiver.providers.base import JobRef, Observation, ProviderError, SubmitRequest
from receiver.providers.kvid import Kvid
from receiver.sandbox.base import FakeSettings, Faults, Timing
from receiver.sandbox.kvid import FAIL_MESSAGE, POLICY_MESSAGE, KvidFake
from receiver.sandbox.media import sample_video
from receiver.sandbox.server import ServerThread
from receiver.states import Status

KEY = "kvid-test-key"
OTHER_KEY = "kvid-other-key"
TIMING = Timing(queue_delay=0.03, start_delay=0.03, run_time=0.05, slow_factor=8)


def mounted(fake: KvidFake) -> Starlette:
    """The fake under /kvid, as the sandbox app serves it, with its lifespan run."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with fake.app.router.lifespan_context(fake.app):
            yield

    return Starlette(routes=[Mount(f"/{fake.prefix}", app=fake.app)], lifespan=lifespan)


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[KvidFake, str]]:
    fake = KvidFake(FakeSettings(api_keys=[KEY, OTHER_KEY], timing=TIMING))
    with ServerThread(mounted(fake)) as server:
        yield fake, f"{server.url}/kvid"


@pytest.fixture
def fake(served: tuple[KvidFake, str]) -> Iterator[KvidFake]:
    yield served[0]
    served[0].settings.faults = Faults()


@pytest.fixture
def base_url(served: tuple[KvidFake, str], fake: KvidFake) -> str:
    return served[1]


def drive(
    base_url: str,
    scenario: Callable[[Kvid], Coroutine[Any, Any, Any]],
    *,
    key: str = KEY,
    timeout: float = 5.0,
) -> Any:
    """Run scenario with a fresh adapter (a fresh request gate) against the fake."""

    async def run() -> Any:
        config = ProviderConfig(
            name="kvid",
            type="kvid",
            base_url=base_url,
            api_key=Secret(key),
            default_model="v2",
            timeout=timeout,
        )
        async with httpx.AsyncClient() as client:
            return await scenario(Kvid(config, client))

    return asyncio.run(run())


def job_of(provider_job_id: str) -> JobRef:
    return JobRef("job", provider_job_id, Secret(KEY).fingerprint)


async def poll(kvid: Kvid, job_id: str, timeout: float = 5.0) -> list[Observation]:
    """Every observation until a terminal one."""
    seen: list[Observation] = []
    deadline = time.monotonic() + timeout
    while not seen or not seen[-1].status.terminal:
        if time.monotonic() > deadline:
            raise AssertionError(f"not finished in time: {seen[-1:]}")
        seen.append(await kvid.fetch(job_of(job_id)))
        await asyncio.sleep(0.01)
    return seen


def refused(call: Callable[[], Any]) -> ProviderError:
    with pytest.raises(ProviderError) as caught:
        call()
    return caught.value


def test_a_job_is_submitted_polled_and_completed_with_a_video(fake, base_url):
    async def scenario(kvid: Kvid) -> Any:
        submission = await kvid.submit(SubmitRequest(prompt="a cat dancing"), None)
        return submission, await poll(kvid, submission.provider_job_id)

    submission, seen = drive(base_url, scenario)
    assert (submission.observation.status, submission.observation.provider_status) == (
        Status.QUEUED,
        "queued",
    )
    words = [o.provider_status for o in seen]
    assert words[-1] == "completed" and "processing" in words
    assert all(o.known for o in seen)
    done = seen[-1]
    assert done.credits == 54.0
    assert done.result_url == f"{base_url}/files/{submission.provider_job_id}.mp4"
    video = httpx.get(done.result_url)
    assert (video.status_code, video.headers["content-type"]) == (200, "video/mp4")
    assert video.content == sample_video()
    job_id = submission.provider_job_id
    results = [r for r in fake.requests_to(r"/result$") if r.task_id == job_id]
    statuses = [r for r in fake.requests_to(r"/status$") if r.task_id == job_id]
    assert len(results) == 1 and results[0].status_code == 200
    assert len(statuses) == len(seen)


def test_an_image_job_goes_to_image_to_video(fake, base_url):
    async def scenario(kvid: Kvid) -> Any:
        request = SubmitRequest(prompt="the tiger blinks", images=["https://h.example/t.jpg"])
        submission = await kvid.submit(request, None)
        return submission, await poll(kvid, submission.provider_job_id)

    submission, seen = drive(base_url, scenario)
    assert seen[-1].status is Status.COMPLETED
    job = fake.tasks[submission.provider_job_id]
    assert (job.video_type, job.params["image_url"]) == (
        "image-to-video",
        "https://h.example/t.jpg",
    )


def test_fail_ends_failed_with_the_providers_message(fake, base_url):
    async def scenario(kvid: Kvid) -> Any:
        submission = await kvid.submit(SubmitRequest(prompt="a cat [fail]"), None)
        return submission, await poll(kvid, submission.provider_job_id)

    submission, seen = drive(base_url, scenario)
    assert (seen[-1].status, seen[-1].error) == (Status.FAILED, FAIL_MESSAGE)
    job_id = submission.provider_job_id
    assert not [r for r in fake.requests_to(r"/result$") if r.task_id == job_id]


def test_unknown_reports_an_undocumented_status_then_completes(base_url):
    async def scenario(kvid: Kvid) -> Any:
        submission = await kvid.submit(SubmitRequest(prompt="a cat [unknown]"), None)
        return await poll(kvid, submission.provider_job_id)

    seen = drive(base_url, scenario)
    unknown = [o for o in seen if not o.known]
    assert unknown and all(
        (o.status, o.provider_status) == (Status.QUEUED, "waiting") for o in unknown
    )
    assert seen[-1].status is Status.COMPLETED
    assert seen.index(unknown[-1]) < len(seen) - 1


def test_slow_jobs_take_longer(base_url):
    async def scenario(kvid: Kvid) -> Any:
        slow = await kvid.submit(SubmitRequest(prompt="a cat [slow]"), None)
        quick = await kvid.submit(SubmitRequest(prompt="a cat"), None)
        await poll(kvid, quick.provider_job_id)
        return await kvid.fetch(job_of(slow.provider_job_id))

    assert not drive(base_url, scenario).status.terminal


def test_never_stays_processing(base_url):
    async def scenario(kvid: Kvid) -> Any:
        submission = await kvid.submit(SubmitRequest(prompt="a cat [never]"), None)
        await asyncio.sleep(3 * (TIMING.queue_delay + TIMING.start_delay + TIMING.run_time))
        return await kvid.fetch(job_of(submission.provider_job_id))

    assert drive(base_url, scenario).status is Status.PROCESSING


def test_a_wrong_key_is_refused_for_good(base_url):
    wrong = "kvid-wrong-key-5f2a"
    error = refused(
        lambda: drive(base_url, lambda k: k.submit(SubmitRequest(prompt="p"), None), key=wrong)
    )
    assert (error.transient, error.status_code, error.code) == (False, 401, "UNAUTHORIZED")
    assert wrong not in str(error)

    job_id = drive(base_url, lambda k: k.submit(SubmitRequest(prompt="p"), None)).provider_job_id
    error = refused(lambda: drive(base_url, lambda k: k.fetch(job_of(job_id)), key=wrong))
    assert (error.transient, error.status_code) == (False, 401)
    # Another account's key does not see the job at all.
    error = refused(lambda: drive(base_url, lambda k: k.fetch(job_of(job_id)), key=OTHER_KEY))
    assert (error.transient, error.status_code, error.message) == (False, 404, "Job not found")


@pytest.mark.parametrize(
    ("marker", "status", "transient", "message"),
    [("429", 429, True, "Too many requests"), ("500", 500, True, "Internal server error"),
     ("policy", 400, False, POLICY_MESSAGE)],
)  # fmt: skip
def test_submit_refusals(fake, base_url, marker, status, transient, message):
    request = SubmitRequest(prompt=f"a cat [{marker}]")
    error = refused(lambda: drive(base_url, lambda k: k.submit(request, None)))
    assert (error.status_code, error.transient, error.message) == (status, transient, message)
    assert error.retry_after == (1.0 if marker == "429" else None)


def test_a_field_the_fake_refuses_comes_back_in_kvids_shape(base_url):
    request = SubmitRequest(prompt="a cat", model="v9")
    error = refused(lambda: drive(base_url, lambda k: k.submit(request, None)))
    assert (error.status_code, error.transient, error.code) == (400, False, "INVALID_REQUEST")
    assert error.message == "model must be one of v1, v2, v3"


def test_an_error_burst_is_transient_then_passes(fake, base_url):
    job_id = drive(base_url, lambda k: k.submit(SubmitRequest(prompt="p"), None)).provider_job_id
    fake.settings.faults = Faults(error_burst=2, error_status=503, paths=r"/status$")

    async def scenario(kvid: Kvid) -> Any:
        outcomes: list[Any] = []
        for _ in range(3):
            try:
                outcomes.append(await kvid.fetch(job_of(job_id)))
            except ProviderError as exc:
                outcomes.append(exc)
        return outcomes

    first, second, third = drive(base_url, scenario)
    for error in (first, second):
        assert isinstance(error, ProviderError)
        assert (error.transient, error.status_code, error.code) == (
            True,
            503,
            "SERVICE_UNAVAILABLE",
        )
    assert isinstance(third, Observation) and third.known


def test_malformed_json_is_transient(fake, base_url):
    job_id = drive(base_url, lambda k: k.submit(SubmitRequest(prompt="p"), None)).provider_job_id
    fake.settings.faults = Faults(malformed=1)
    assert refused(lambda: drive(base_url, lambda k: k.fetch(job_of(job_id)))).transient
    assert drive(base_url, lambda k: k.fetch(job_of(job_id))).known


def test_an_answer_slower_than_the_timeout_is_transient(fake, base_url):
    fake.settings.faults = Faults(slow=1, slow_delay=1.0)
    started = time.monotonic()
    error = refused(
        lambda: drive(base_url, lambda k: k.submit(SubmitRequest(prompt="p"), None), timeout=0.2)
    )
    assert error.transient and "timed out" in error.message
    assert time.monotonic() - started < 0.9


def test_the_fakes_answers_have_the_documented_fields(base_url):
    with httpx.Client(base_url=base_url, headers={"api-key": KEY}) as client:
        answer = client.post(
            "/ai/generation/text-to-video/generate-async",
            json={"prompt": "[Truck left] A woman is drinking coffee.", "resolution": "1080p"},
        ).json()
        assert answer["success"] is True
        data = answer["data"]
        assert set(data) == {"job_id", "status", "message", "estimated_time", "video_type"}
        assert (data["status"], data["video_type"]) == ("queued", "text-to-video")
        assert data["job_id"].startswith("vid_")
        params = {"jobId": data["job_id"]}
        early = client.get("/ai/generation/result", params=params)
        assert early.status_code == 400 and early.json()["success"] is False
        deadline = time.monotonic() + 5
        while (status := client.get("/ai/generation/status", params=params).json())["data"][
            "status"
        ] != "completed":
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert set(status["data"]) == {"job_id", "status", "video_type", "prompt", "created_at"}
        result = client.get("/ai/generation/result", params=params).json()["data"]
        assert set(result) == {
            "job_id", "status", "result_url", "prompt", "width", "height", "type",
            "used_credit", "created_at",
        }  # fmt: skip
        assert (result["width"], result["height"], result["type"]) == (1920, 1080, "video/mp4")
        missing = client.get("/ai/generation/status")
        assert missing.status_code == 400
        assert missing.json() == {
            "success": False,
            "message": "jobId is required",
            "error": "INVALID_REQUEST",
        }


def test_errors_with_http_200_are_still_errors():
    fake = KvidFake(FakeSettings(api_keys=[KEY], timing=TIMING), errors_with_200=True)
    with ServerThread(fake.app) as server:
        policy = refused(
            lambda: drive(server.url, lambda k: k.submit(SubmitRequest(prompt="[policy]"), None))
        )
        busy = refused(
            lambda: drive(server.url, lambda k: k.submit(SubmitRequest(prompt="[429]"), None))
        )
        unknown_job = refused(lambda: drive(server.url, lambda k: k.fetch(job_of("vid_0_none"))))
    assert (policy.transient, policy.message) == (False, POLICY_MESSAGE)
    assert (busy.transient, busy.status_code) == (True, 429)
    assert (unknown_job.transient, unknown_job.message) == (False, "Job not found")
    assert {r.status_code for r in fake.requests} == {200}


@pytest.mark.parametrize(
    ("path", "body", "status", "message"),
    [
        ("text-to-video", {"prompt": " "}, 400, "prompt is required"),
        ("text-to-video", {"prompt": "p", "resolution": "4k"}, 400,
         "resolution must be one of 480p, 720p, 1080p"),
        ("text-to-video", {"prompt": "p", "seed": "7"}, 400, "seed must be an integer"),
        ("text-to-video", {"prompt": "p", "num_inference_steps": 0}, 400,
         "num_inference_steps must be a positive integer"),
        ("text-to-video", {"prompt": "p", "enable_safety_checker": "no"}, 400,
         "enable_safety_checker must be a boolean"),
        ("image-to-video", {"prompt": "p"}, 400, "image_url is required and must be an https URL"),
        ("image-to-video", {"prompt": "p", "image_url": "http://h/a.png"}, 400,
         "image_url is required and must be an https URL"),
        ("text-to-video", ["p"], 400, "Request body must be a JSON object"),
        ("video-to-video", {"prompt": "p"}, 404, "Not found"),
    ],
)  # fmt: skip
def test_the_fake_refuses_bad_submissions_in_kvids_shape(
    fake, base_url, path, body, status, message
):
    before = len(fake.tasks)
    with httpx.Client(base_url=base_url, headers={"api-key": KEY}) as client:
        answer = client.post(f"/ai/generation/{path}/generate-async", json=body)
    assert answer.status_code == status
    assert answer.json() == {
        "success": False,
        "message": message,
        "error": "INVALID_REQUEST" if status == 400 else "NOT_FOUND",
    }
    assert len(fake.tasks) == before

"""The fake Runway on loopback, driven by the real adapter and by plain requests."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import httpx
import pytest
from starlette.applications import Starlette

from receiver.config import ProviderConfig, Secret
from receiver.providers.base import JobRef, Observation, ProviderError, SubmitRequest
from receiver.providers.runway import Runway
from receiver.sandbox.base import Faults, Timing
from receiver.sandbox.runway import (
    DAILY_LIMIT_MESSAGE,
    FAIL_CODE,
    FAIL_MESSAGE,
    POLICY_CODE,
    UNDOCUMENTED_STATUS,
    RunwayFake,
    RunwayFakeSettings,
)
from receiver.sandbox.server import ServerThread
from receiver.states import Status
from tests.conftest import wait_for

T = TypeVar("T")
KEY = "key_sandbox_runway_0001"
HEADERS = {"Authorization": f"Bearer {KEY}", "X-Runway-Version": "2024-11-06"}


def fast_settings() -> RunwayFakeSettings:
    return RunwayFakeSettings(
        api_keys=[KEY],
        timing=Timing(queue_delay=0.03, start_delay=0.03, run_time=0.1, slow_factor=5),
        faults=Faults(),
        concurrency=2,
    )


@pytest.fixture(scope="module")
def server() -> Iterator[ServerThread]:
    with ServerThread(RunwayFake(fast_settings()).app) as running:
        yield running


@pytest.fixture
def fake(server: ServerThread) -> Iterator[RunwayFake]:
    app = server.app
    assert isinstance(app, Starlette)
    sandbox: RunwayFake = app.state.sandbox
    yield sandbox
    sandbox.settings = fast_settings()


@pytest.fixture
def url(server: ServerThread, fake: RunwayFake) -> str:
    return server.url


def run(base_url: str, call: Callable[[Runway], Awaitable[T]]) -> T:
    async def main() -> T:
        config = ProviderConfig(
            name="runway",
            type="runway",
            base_url=base_url,
            api_key=Secret(KEY),
            default_model="gen4.5",
            timeout=5.0,
        )
        async with httpx.AsyncClient() as client:
            return await call(Runway(config, client))

    return asyncio.run(main())


def job(task_id: str) -> JobRef:
    return JobRef("job", task_id, Secret(KEY).fingerprint)


async def until_ended(runway: Runway, task_id: str) -> list[Observation]:
    seen: list[Observation] = []
    deadline = time.monotonic() + 5
    while not seen or not seen[-1].status.terminal:
        assert time.monotonic() < deadline, seen[-1:]
        seen.append(await runway.fetch(job(task_id)))
        await asyncio.sleep(0.01)
    return seen


def create(url: str, prompt: str, **extra: Any) -> str:
    async def call(runway: Runway) -> Any:
        return await runway.submit(SubmitRequest(prompt=prompt, **extra), None)

    return str(run(url, call).provider_job_id)


def test_the_api_version_header_is_required(url):
    body = {"model": "gen4.5", "promptText": "a cat", "ratio": "1280:720", "duration": 5}
    auth = {"Authorization": f"Bearer {KEY}"}
    missing = httpx.post(f"{url}/v1/text_to_video", json=body, headers=auth)
    assert missing.status_code == 400 and "X-Runway-Version" in missing.json()["error"]
    wrong = httpx.post(
        f"{url}/v1/text_to_video", json=body, headers=auth | {"X-Runway-Version": "2024-09-13"}
    )
    assert wrong.status_code == 400
    right = httpx.post(f"{url}/v1/text_to_video", json=body, headers=HEADERS)
    assert right.status_code == 200 and set(right.json()) == {"id"}


def test_a_bad_key_is_401(url):
    answer = httpx.get(f"{url}/v1/tasks/x", headers=HEADERS | {"Authorization": "Bearer nope"})
    assert answer.status_code == 401 and answer.json()["error"]


def test_a_text_task_runs_with_progress_and_succeeds(url, fake):
    async def call(runway: Runway) -> Any:
        submission = await runway.submit(SubmitRequest(prompt="a cat"), None)
        return submission, await until_ended(runway, submission.provider_job_id)

    submission, seen = run(url, call)
    words = [o.provider_status for o in seen]
    assert words[-1] == "SUCCEEDED" and "RUNNING" in words
    progress = [o.raw["progress"] for o in seen if o.provider_status == "RUNNING" and o.raw]
    assert progress and all(0 <= p < 1 for p in progress)
    # The adapter reads the fraction as a percentage.
    running = [o for o in seen if o.provider_status == "RUNNING" and o.raw]
    assert [o.progress.percent for o in running if o.progress] == [
        round(100 * p, 1) for p in progress
    ]
    done = seen[-1]
    assert done.result_url and done.result_url.startswith(
        f"{url}/files/{submission.provider_job_id}.mp4?_jwt="
    )
    video = httpx.get(done.result_url)
    assert (video.status_code, video.headers["content-type"]) == (200, "video/mp4")
    task = fake.tasks[submission.provider_job_id]
    assert (task.params["model"], task.params["ratio"], task.params["duration"]) == (
        "gen4.5",
        "1280:720",
        5,
    )


def test_an_image_task_with_first_and_last_frames(url, fake):
    images = ["https://example.com/first.png", "https://example.com/last.png"]
    task_id = create(url, "a cat", model="veo3.1", images=images)
    assert fake.tasks[task_id].params["promptImage"] == [
        {"uri": images[0], "position": "first"},
        {"uri": images[1], "position": "last"},
    ]


def test_tasks_past_the_concurrency_wait_throttled(url, fake):
    fake.settings.concurrency = 1
    first = create(url, "one [slow]")
    second = create(url, "two [slow]")
    body = httpx.get(f"{url}/v1/tasks/{second}", headers=HEADERS).json()
    assert body["status"] == "THROTTLED"

    async def call(runway: Runway) -> Any:
        return await until_ended(runway, second)

    words = [o.provider_status for o in run(url, call)]
    assert words[0] == "THROTTLED" and words[-1] == "SUCCEEDED"
    assert words.index("RUNNING") > words.index("THROTTLED")
    # The second ran only once the first had ended and freed the account's one slot.
    assert fake.tasks[first].status == "SUCCEEDED"


@pytest.mark.parametrize(
    ("prompt", "message", "code"),
    [("a storm [fail]", FAIL_MESSAGE, FAIL_CODE), ("a storm [policy]", None, POLICY_CODE)],
)
def test_failures_carry_a_reason_and_a_code(url, prompt, message, code):
    async def call(runway: Runway) -> Any:
        submission = await runway.submit(SubmitRequest(prompt=prompt), None)
        return await until_ended(runway, submission.provider_job_id)

    failed = run(url, call)[-1]
    assert failed.status is Status.FAILED
    assert failed.raw is not None and failed.raw["failureCode"] == code
    assert failed.error is not None and failed.error.endswith(f"({code})")
    if message:
        assert failed.error.startswith(message)


def test_an_undocumented_status_is_reported(url):
    async def call(runway: Runway) -> Any:
        submission = await runway.submit(SubmitRequest(prompt="lanterns [unknown] [slow]"), None)
        return await until_ended(runway, submission.provider_job_id)

    words = [o.provider_status for o in run(url, call)]
    assert UNDOCUMENTED_STATUS in words and words[-1] == "SUCCEEDED"


@pytest.mark.parametrize("delete_status", [204, 200])
def test_cancel_deletes_the_task_and_it_is_gone(url, fake, delete_status):
    fake.settings.delete_status = delete_status
    task_id = create(url, "a long one [never]")

    async def call(runway: Runway) -> Any:
        return await runway.cancel(job(task_id))

    canceled = run(url, call)
    assert canceled is not None and canceled.status is Status.CANCELED
    assert task_id not in fake.tasks
    deletes = wait_for(
        lambda: [r for r in fake.requests if r.method == "DELETE" and r.task_id == task_id]
    )
    assert [r.status_code for r in deletes] == [delete_status]
    gone = httpx.get(f"{url}/v1/tasks/{task_id}", headers=HEADERS)
    assert gone.status_code == 404

    async def again(runway: Runway) -> Any:
        return await runway.fetch(job(task_id))

    with pytest.raises(ProviderError) as caught:
        run(url, again)
    assert caught.value.status_code == 404 and not caught.value.transient


def test_cancel_does_not_delete_a_finished_task(url, fake):
    async def call(runway: Runway) -> Any:
        submission = await runway.submit(SubmitRequest(prompt="quick"), None)
        await until_ended(runway, submission.provider_job_id)
        return submission.provider_job_id, await runway.cancel(job(submission.provider_job_id))

    task_id, ended = run(url, call)
    assert ended is not None and ended.status is Status.COMPLETED
    assert task_id in fake.tasks
    assert not [r for r in fake.requests if r.method == "DELETE" and r.task_id == task_id]


def test_the_daily_limit_is_429_that_asking_again_today_cannot_lift(url, fake):
    fake.settings.daily_limit = 0

    async def call(runway: Runway) -> Any:
        return await runway.submit(SubmitRequest(prompt="one more"), None)

    with pytest.raises(ProviderError) as caught:
        run(url, call)
    assert caught.value.status_code == 429 and not caught.value.transient
    assert caught.value.retry_after is None
    assert caught.value.message == DAILY_LIMIT_MESSAGE


@pytest.mark.parametrize(
    ("endpoint", "body", "path"),
    [
        ("text_to_video", {"model": "gen4_turbo", "promptText": "a", "ratio": "1280:720"}, "model"),
        ("text_to_video", {"model": "gen4.5", "promptText": "a"}, "ratio"),
        ("text_to_video", {"model": "gen4.5", "ratio": "1280:720"}, "promptText"),
        (
            "text_to_video",
            {"model": "veo3", "promptText": "a", "ratio": "1280:720", "duration": 5},
            "duration",
        ),
        (
            "image_to_video",
            {"model": "gen4_turbo", "ratio": "1280:720", "promptImage": "http://e.com/a.png"},
            "promptImage",
        ),
    ],
)
def test_invalid_bodies_name_the_field(url, endpoint, body, path):
    answer = httpx.post(f"{url}/v1/{endpoint}", json=body, headers=HEADERS)
    assert answer.status_code == 400
    assert answer.json()["issues"][0]["path"] == [path]


def test_injected_rate_limits_answer_in_runway_s_shape(url, fake):
    fake.settings.faults.rate_limit, fake.settings.faults.retry_after = 1, 2
    answer = httpx.get(f"{url}/v1/tasks/x", headers=HEADERS)
    assert answer.status_code == 429 and answer.headers["retry-after"] == "2"
    assert answer.json() == {"error": "too many requests"}

"""The fake revid driven by the real adapter over loopback HTTP."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import httpx
import pytest
from starlette.applications import Starlette
from starlette.routing import Mount

from receiver.config import ProviderConfig, Secret
from receiver.providers.base import JobRef, Observation, ProviderError, SubmitRequest
from receiver.providers.revid import Revid
from receiver.sandbox.base import FakeSettings, Faults, Timing
from receiver.sandbox.revid import FAIL_MESSAGE, POLICY_MESSAGE, RevidFake
from receiver.sandbox.server import ServerThread
from receiver.states import Status

KEY = "sk_live_revid-sandbox-key"
OTHER = "sk_live_revid-other-key"
FAST = Timing(queue_delay=0.03, start_delay=0.03, run_time=0.06, slow_factor=5.0)
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4
T = TypeVar("T")


class Served(RevidFake):
    """The fake plus the base URL it is served at."""

    url = ""


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    revid = Served(FakeSettings(api_keys=[KEY, OTHER], timing=FAST))
    with ServerThread(revid.app) as server:
        revid.url = server.url
        yield revid


@pytest.fixture
def fake(served: Served) -> Served:
    """One server for the module, with the state a test may change reset."""
    served.settings.faults = Faults()
    served.failure_status = "failed"
    served.balances.clear()
    served.tasks.clear()
    served.requests.clear()
    return served


def run(make: Callable[[Revid], Awaitable[T]], fake: Served, **config: Any) -> T:
    """Run one coroutine against the fake with a fresh client and adapter."""

    async def main() -> T:
        settings: dict[str, Any] = {"base_url": fake.url, "api_key": Secret(KEY)}
        settings |= {"default_model": "kling-2.6", "timeout": 5.0} | config
        async with httpx.AsyncClient() as client:
            return await make(Revid(ProviderConfig(name="revid", type="revid", **settings), client))

    return asyncio.run(main())


def job_ref(job_id: str, key: str = KEY) -> JobRef:
    return JobRef("job", job_id, Secret(key).fingerprint)


async def poll(revid: Revid, job_id: str, timeout: float = 5.0) -> list[Observation]:
    """Every observation until a terminal one."""
    seen: list[Observation] = []
    deadline = time.monotonic() + timeout
    while not seen or not seen[-1].status.terminal:
        assert time.monotonic() < deadline, f"not terminal: {seen[-1:]}"
        seen.append(await revid.fetch(job_ref(job_id)))
        await asyncio.sleep(0.01)
    return seen


def submit_and_poll(fake: Served, request: SubmitRequest) -> tuple[str, list[Observation]]:
    async def go(revid: Revid) -> tuple[str, list[Observation]]:
        submission = await revid.submit(request, None)
        return submission.provider_job_id, [
            submission.observation,
            *await poll(revid, submission.provider_job_id),
        ]

    return run(go, fake)


def refused(fake: Served, request: SubmitRequest, **config: Any) -> ProviderError:
    with pytest.raises(ProviderError) as caught:
        run(lambda revid: revid.submit(request, None), fake, **config)
    assert KEY not in str(caught.value)
    return caught.value


# --- the happy path -----------------------------------------------------------------


def test_submit_then_poll_until_completed_with_a_result_url(fake: Served) -> None:
    job_id, seen = submit_and_poll(fake, SubmitRequest(prompt="A cinematic shot"))
    first, last = seen[0], seen[-1]
    assert (first.status, first.provider_status, first.credits) == (Status.QUEUED, "pending", 10.0)
    assert first.raw == {
        "job_id": job_id,
        "status": "pending",
        "cost": 10,
        "balance_remaining": 1490,
    }
    statuses = [o.provider_status for o in seen]
    assert statuses[-1] == "completed" and "processing" in statuses
    assert all(o.known for o in seen)
    assert last.raw == {"status": "completed", "result": last.result_url, "progress": 100}
    assert last.result_url == f"{fake.url}/files/{job_id}.mp4"
    video = httpx.get(last.result_url)
    assert video.status_code == 200 and video.headers["content-type"] == "video/mp4"
    assert list(fake.tasks[job_id].state_times) == ["pending", "processing", "completed"]


def test_the_form_reaches_the_fake_as_documented_fields(fake: Served) -> None:
    options = {"duration": 10, "resolution": "1080p", "audio": True, "speed": "fast",
               "aspect_ratio": "9:16", "server_id": "vip"}  # fmt: skip
    request = SubmitRequest(prompt="p", model="veo-3.1-fast", options=options)
    submission = run(lambda revid: revid.submit(request, None), fake)
    task = fake.tasks[submission.provider_job_id]
    assert task.params == {
        "prompt": "p", "model": "veo-3.1-fast", "mode": "t2v", "img_url": None,
        "aspect_ratio": "9:16", "resolution": "1080p", "duration": "10s", "audio": True,
        "speed": "fast", "server_id": "vip",
    }  # fmt: skip
    assert submission.observation.credits == 40.0 == task.cost
    assert fake.balances[KEY] == 1500 - 40


def test_a_data_uri_is_uploaded_intact(fake: Served) -> None:
    uri = "data:image/png;base64," + base64.b64encode(PNG).decode()
    job_id, seen = submit_and_poll(fake, SubmitRequest(prompt="move", images=[uri]))
    task = fake.tasks[job_id]
    assert task.image is not None
    assert (task.image.filename, task.image.content_type, task.image.content) == (
        "input.png",
        "image/png",
        PNG,
    )
    assert (task.params["mode"], task.params["img_url"]) == ("i2v", None)
    assert seen[-1].status is Status.COMPLETED


def test_an_image_url_is_sent_as_img_url(fake: Served) -> None:
    request = SubmitRequest(prompt="move", images=["https://cdn.example/cat.jpg"])
    submission = run(lambda revid: revid.submit(request, None), fake)
    task = fake.tasks[submission.provider_job_id]
    assert (task.params["mode"], task.params["img_url"], task.image) == (
        "i2v",
        "https://cdn.example/cat.jpg",
        None,
    )


# --- scenarios ----------------------------------------------------------------------


@pytest.mark.parametrize("word", ["failed", "error"])
def test_fail_marker_ends_failed_with_the_providers_message(fake: Served, word: str) -> None:
    fake.failure_status = word
    _, seen = submit_and_poll(fake, SubmitRequest(prompt="boom [fail]"))
    last = seen[-1]
    assert (last.status, last.provider_status, last.error, last.result_url) == (
        Status.FAILED,
        word,
        FAIL_MESSAGE,
        None,
    )
    assert "processing" in [o.provider_status for o in seen]


def test_unknown_marker_reports_an_undocumented_word_then_completes(fake: Served) -> None:
    _, seen = submit_and_poll(fake, SubmitRequest(prompt="[unknown]"))
    unknown = [o for o in seen if not o.known]
    assert unknown and all(
        (o.status, o.provider_status) == (Status.QUEUED, "waiting") for o in unknown
    )
    assert seen[-1].status is Status.COMPLETED and seen[-1].known
    later = seen[seen.index(unknown[-1]) + 1 :]
    assert "processing" in [o.provider_status for o in later]


def test_never_marker_stays_processing(fake: Served) -> None:
    async def go(revid: Revid) -> list[Observation]:
        job_id = (await revid.submit(SubmitRequest(prompt="[never]"), None)).provider_job_id
        await asyncio.sleep(0.4)  # several run times
        return [await revid.fetch(job_ref(job_id)) for _ in range(2)]

    seen = run(go, fake)
    assert [(o.status, o.raw and o.raw["progress"]) for o in seen] == [
        (Status.PROCESSING, 99),
        (Status.PROCESSING, 99),
    ]
    assert [o.progress and o.progress.to_json() for o in seen] == [{"percent": 99}] * 2


def test_slow_marker_stretches_every_stage(fake: Served) -> None:
    job_id, _ = submit_and_poll(fake, SubmitRequest(prompt="[slow]"))
    times = fake.tasks[job_id].state_times
    total = times["completed"] - times["pending"]
    assert total >= 5.0 * (FAST.queue_delay + FAST.start_delay + FAST.run_time) * 0.9


def test_policy_marker_is_a_permanent_400(fake: Served) -> None:
    error = refused(fake, SubmitRequest(prompt="[policy]"))
    assert (error.transient, error.status_code, error.code, error.message) == (
        False,
        400,
        "Bad Request",
        POLICY_MESSAGE,
    )
    assert fake.tasks == {}


def test_429_marker_is_transient_with_retry_after(fake: Served) -> None:
    fake.settings.faults.retry_after = 7
    error = refused(fake, SubmitRequest(prompt="[429]"))
    assert (error.transient, error.status_code, error.retry_after) == (True, 429, 7.0)
    assert error.code == "Too Many Requests"


def test_500_marker_is_transient(fake: Served) -> None:
    error = refused(fake, SubmitRequest(prompt="[500]"))
    assert (error.transient, error.status_code, error.code) == (True, 500, "Internal Server Error")


# --- refusals in revid's own words ---------------------------------------------------


def test_a_wrong_key_is_a_permanent_401(fake: Served) -> None:
    error = refused(fake, SubmitRequest(prompt="p"), api_key=Secret("sk_live_wrong"))
    assert (error.transient, error.status_code, error.code) == (False, 401, "Unauthorized")
    with pytest.raises(ProviderError) as caught:
        run(lambda revid: revid.fetch(job_ref("job_1")), fake, api_key=Secret("sk_live_wrong"))
    assert (caught.value.transient, caught.value.status_code) == (False, 401)


def test_an_unknown_job_is_a_permanent_404(fake: Served) -> None:
    with pytest.raises(ProviderError) as caught:
        run(lambda revid: revid.fetch(job_ref("job_404")), fake)
    assert (caught.value.transient, caught.value.status_code, caught.value.code) == (
        False,
        404,
        "Not Found",
    )


def test_an_empty_balance_is_a_permanent_402(fake: Served) -> None:
    fake.balances[KEY] = 9
    error = refused(fake, SubmitRequest(prompt="p"))
    assert (error.transient, error.status_code, error.code) == (False, 402, "Insufficient Funds")
    assert fake.balances[KEY] == 9 and fake.tasks == {}


def test_fields_the_adapter_passes_through_are_checked_by_the_fake(fake: Served) -> None:
    for request, word in [
        (SubmitRequest(prompt="p", model="kling-9"), "model"),
        (SubmitRequest(prompt="p", options={"duration": "five"}), "duration"),
        (SubmitRequest(prompt="p", options={"resolution": "4k"}), "resolution"),
        (SubmitRequest(prompt="p", options={"audio": "maybe"}), "audio"),
    ]:
        error = refused(fake, request)
        assert (error.transient, error.status_code) == (False, 400)
        assert word in error.message


@pytest.mark.parametrize(
    ("kwargs", "word"),
    [
        ({"json": {"prompt": "p", "model": "kling-2.6"}}, "multipart"),
        ({"files": {"model": (None, "kling-2.6")}}, "prompt"),
        ({"files": {"prompt": (None, "p")}}, "model"),
        ({"files": {"prompt": (None, "p"), "model": (None, "kling-2.6"), "mode": (None, "i2v")}},
         "input_image"),
        ({"files": {"prompt": (None, "p"), "model": (None, "kling-2.6"),
                    "input_image": ("a.txt", b"hi", "text/plain")}}, "file format"),
        ({"files": {"prompt": (None, "p"), "model": (None, "kling-2.6"),
                    "img_url": (None, "https://i/1.png"),
                    "input_image": ("a.png", PNG, "image/png")}}, "not both"),
    ],
)  # fmt: skip
def test_bad_payloads_get_a_400_in_revids_shape(
    fake: Served, kwargs: dict[str, Any], word: str
) -> None:
    headers = {"Authorization": f"Bearer {KEY}"}
    response = httpx.post(f"{fake.url}/v1/video/generate", headers=headers, **kwargs)
    assert response.status_code == 400
    body = response.json()
    assert (set(body), body["code"], body["error"]) == (
        {"code", "error", "message"},
        400,
        "Bad Request",
    )
    assert word in body["message"]


# --- injected faults ----------------------------------------------------------------


def test_an_error_burst_is_transient_then_the_job_completes(fake: Served) -> None:
    fake.settings.faults = Faults(error_burst=2, error_status=503, paths="/v1/jobs/")

    async def go(revid: Revid) -> tuple[list[ProviderError], list[Observation]]:
        job_id = (await revid.submit(SubmitRequest(prompt="p"), None)).provider_job_id
        errors: list[ProviderError] = []
        while True:
            try:
                return errors, await poll(revid, job_id)
            except ProviderError as exc:
                errors.append(exc)

    errors, seen = run(go, fake)
    assert [(e.transient, e.status_code, e.code) for e in errors] == [
        (True, 503, "Service Unavailable")
    ] * 2
    assert seen[-1].status is Status.COMPLETED
    assert [r.status_code for r in fake.requests_to("/v1/jobs/")][:3] == [503, 503, 200]


def test_malformed_json_is_transient(fake: Served) -> None:
    fake.settings.faults = Faults(malformed=1)
    assert refused(fake, SubmitRequest(prompt="p")).transient
    fake.settings.faults = Faults(malformed=1, paths="/v1/jobs/")
    submission = run(lambda revid: revid.submit(SubmitRequest(prompt="p"), None), fake)
    with pytest.raises(ProviderError) as caught:
        run(lambda revid: revid.fetch(job_ref(submission.provider_job_id)), fake)
    assert caught.value.transient


def test_a_reply_slower_than_the_timeout_is_transient(fake: Served) -> None:
    fake.settings.faults = Faults(slow=1, slow_delay=1.0)
    started = time.monotonic()
    error = refused(fake, SubmitRequest(prompt="p"), timeout=0.2)
    assert error.transient and error.status_code is None and "timed out" in error.message
    assert time.monotonic() - started < 0.9


def test_the_request_log_names_the_job(fake: Served) -> None:
    job_id, _ = submit_and_poll(fake, SubmitRequest(prompt="p"))
    deadline = time.monotonic() + 2
    while len(fake.requests_to(job_id)) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)  # the log is written just after each response
    # A hung request of an earlier test may still land in the log, so pick this job's own.
    submits = [r for r in fake.requests_to("/v1/video/generate") if r.task_id == job_id]
    assert [(r.method, r.status_code) for r in submits] == [("POST", 200)]
    polls = fake.requests_to(f"/v1/jobs/{job_id}")
    assert polls and all((r.method, r.task_id) == ("GET", job_id) for r in polls)


def test_result_urls_point_under_the_mount_prefix() -> None:
    revid = Served(FakeSettings(timing=FAST))
    app = Starlette(routes=[Mount(f"/{RevidFake.prefix}", app=revid.app)])
    with ServerThread(app) as server:
        revid.url = f"{server.url}/revid"
        _, seen = submit_and_poll(revid, SubmitRequest(prompt="p"))
        url = seen[-1].result_url
        assert url is not None and url.startswith(f"{server.url}/revid/files/job_")
        assert httpx.get(url).status_code == 200

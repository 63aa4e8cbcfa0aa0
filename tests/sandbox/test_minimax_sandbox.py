"""The fake MiniMax, run for real on loopback and driven by the real adapter."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import httpx
import pytest
from starlette.applications import Starlette

from receiver.config import ProviderConfig, Secret
from receiver.providers.base import JobRef, Observation, ProviderError, SubmitRequest
from receiver.providers.minimax import MiniMax
from receiver.sandbox.base import Timing
from receiver.sandbox.minimax import UNDOCUMENTED_STATUS, MiniMaxFake, MiniMaxFakeSettings
from receiver.sandbox.server import ServerThread
from receiver.states import Status
from tests.sandbox.hook_receiver import HookReceiver

KEY = "minimax-test-key"
OTHER_KEY = "minimax-other-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
T = TypeVar("T")


def fast_settings() -> MiniMaxFakeSettings:
    return MiniMaxFakeSettings(
        api_keys=[KEY, OTHER_KEY],
        timing=Timing(queue_delay=0.06, start_delay=0.05, run_time=0.05, slow_factor=10),
        challenge_timeout=1.0,
        callback_timeout=2.0,
    )


@pytest.fixture(scope="module")
def server() -> Iterator[ServerThread]:
    with ServerThread(MiniMaxFake(fast_settings()).app) as running:
        yield running


@pytest.fixture(scope="module")
def hooks() -> Iterator[HookReceiver]:
    receiver = HookReceiver(slow_delay=1.5)
    with receiver.server:
        yield receiver


@pytest.fixture
def fake(server: ServerThread) -> Iterator[MiniMaxFake]:
    app = server.app
    assert isinstance(app, Starlette)
    sandbox: MiniMaxFake = app.state.sandbox
    yield sandbox
    sandbox.settings = fast_settings()


@pytest.fixture
def url(server: ServerThread, fake: MiniMaxFake) -> str:
    return server.url


def wait_until(predicate: Callable[[], object], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.01)


def run(base_url: str, call: Callable[[MiniMax], Awaitable[T]], *, key: str = KEY) -> T:
    async def main() -> T:
        config = ProviderConfig(
            "minimax", "minimax", base_url, Secret(key), default_model="MiniMax-Hailuo-02"
        )
        async with httpx.AsyncClient() as client:
            provider = MiniMax(config, client)
            provider.rate_limit_pause = 0.2
            return await call(provider)

    return asyncio.run(main())


def submit(url: str, prompt: str | None = "a fox", callback: str | None = None, **kw: Any) -> str:
    async def call(provider: MiniMax) -> str:
        return (await provider.submit(SubmitRequest(prompt=prompt, **kw), callback)).provider_job_id

    return run(url, call)


def fetch(url: str, task_id: str) -> Observation:
    return run(url, lambda p: p.fetch(JobRef("job", task_id, Secret(KEY).fingerprint)))


def lifecycle(url: str, prompt: str, **kw: Any) -> tuple[str, list[Observation]]:
    async def call(provider: MiniMax) -> tuple[str, list[Observation]]:
        submission = await provider.submit(SubmitRequest(prompt=prompt, **kw), None)
        ref = JobRef("job", submission.provider_job_id, provider.config.api_key.fingerprint)
        seen: list[Observation] = []
        deadline = time.monotonic() + 5
        while not seen or not seen[-1].status.terminal:
            assert time.monotonic() < deadline
            seen.append(await provider.fetch(ref))
            await asyncio.sleep(0.01)
        return submission.provider_job_id, seen

    return run(url, call)


def refused(url: str, call: Callable[[MiniMax], Awaitable[Any]], **kw: Any) -> ProviderError:
    with pytest.raises(ProviderError) as caught:
        run(url, call, **kw)
    assert KEY not in str(caught.value)
    return caught.value


def creating(prompt: str | None = "a fox", **kw: Any) -> Callable[[MiniMax], Awaitable[Any]]:
    return lambda provider: provider.submit(SubmitRequest(prompt=prompt, **kw), None)


def words(observations: list[Observation]) -> list[str | None]:
    return [word for word, _ in itertools.groupby(o.provider_status for o in observations)]


# --- the task through the adapter ----------------------------------------------------


def test_a_task_succeeds_and_its_file_resolves_to_a_download(url: str, fake: MiniMaxFake) -> None:
    fake.settings.timing = Timing(queue_delay=0.2, start_delay=0.1, run_time=0.1)
    task_id, seen = lifecycle(url, "a fox", options={"resolution": "1080P"})
    assert task_id.isdigit() and len(task_id) == 15
    assert words(seen) == ["Preparing", "Queueing", "Processing", "Success"]
    done = seen[-1]
    assert done.status is Status.COMPLETED and done.result_url is not None
    assert done.result_url.startswith(f"{url}/download/main/{fake.tasks[task_id].file_id}.mp4?")
    assert done.raw is not None and (done.raw["video_width"], done.raw["video_height"]) == (
        1920,
        1080,
    )
    video = httpx.get(done.result_url)
    assert (video.status_code, video.headers["content-type"]) == (200, "video/mp4")


def test_the_backup_url_is_used_when_no_main_one_is_given(url: str, fake: MiniMaxFake) -> None:
    fake.settings.download_url = False
    done = lifecycle(url, "a fox")[1][-1]
    assert done.result_url is not None and "/download/backup/" in done.result_url
    assert httpx.get(done.result_url).status_code == 200


def test_download_urls_expire_and_cannot_be_forged(url: str, fake: MiniMaxFake) -> None:
    fake.settings.download_ttl = 1.0
    done = lifecycle(url, "a fox")[1][-1]
    link = done.result_url or ""
    assert httpx.get(link).status_code == 200
    assert httpx.get(link.replace("Signature=", "Signature=0")).status_code == 403
    time.sleep(2.1)
    assert httpx.get(link).status_code == 403


def test_images_reach_minimax_as_frames_and_subjects(url: str, fake: MiniMaxFake) -> None:
    images = ["https://img.example/first.png", "https://img.example/last.png"]
    params = fake.tasks[submit(url, "go", images=images)].params
    assert (params["first_frame_image"], params["last_frame_image"]) == tuple(images)
    subject = fake.tasks[submit(url, "hi", model="S2V-01", images=images[:1])].params
    assert subject["subject_reference"] == [{"type": "character", "image": images[:1]}]


@pytest.mark.parametrize("where", ["base_resp", "none"])
def test_fail_ends_failed_with_whatever_reason_minimax_gives(
    url: str, fake: MiniMaxFake, where: str
) -> None:
    fake.settings.fail_reason_in = where
    done = lifecycle(url, "[fail]")[1][-1]
    assert done.status is Status.FAILED and done.result_url is None
    if where == "base_resp":
        assert done.error == "output video sensitive (1027)"
    else:
        assert done.error == "MiniMax reported the task failed without a reason"


def test_unknown_is_kept_raw_on_the_way(url: str, fake: MiniMaxFake) -> None:
    fake.settings.timing = Timing(queue_delay=0.05, start_delay=0.15, run_time=0.05)
    _, seen = lifecycle(url, "[unknown]")
    odd = [o for o in seen if o.provider_status == UNDOCUMENTED_STATUS]
    assert odd and all(o.status is Status.QUEUED and not o.known for o in odd)
    assert seen[-1].status is Status.COMPLETED


# --- the challenge -------------------------------------------------------------------


def test_the_challenge_comes_first_and_must_be_echoed(
    url: str, fake: MiniMaxFake, hooks: HookReceiver
) -> None:
    target = hooks.url()
    task_id = submit(url, callback=target)
    first = hooks.received(target)[0]
    assert set(first.json) == {"challenge"} and len(first.json["challenge"]) >= 16
    check = fake.challenges[-1]
    assert (check.url, check.passed, check.status_code) == (target, True, 200)
    assert fake.tasks[task_id].callback_url == target


@pytest.mark.parametrize("answer", ["mute", 404, "slow"])
def test_a_url_that_fails_the_challenge_refuses_the_create(
    url: str, fake: MiniMaxFake, hooks: HookReceiver, answer: str | int
) -> None:
    before = set(fake.tasks)
    error = refused(url, lambda p: p.submit(SubmitRequest(prompt="x"), hooks.url(answer)))
    assert (error.code, error.transient) == ("2013", False)
    assert "callback_url" in error.message
    assert set(fake.tasks) == before
    assert fake.challenges[-1].passed is False


def test_a_url_that_fails_the_challenge_gets_no_callbacks_on_a_setting(
    url: str, fake: MiniMaxFake, hooks: HookReceiver
) -> None:
    fake.settings.failed_challenge = "ignore"
    target = hooks.url("mute")
    task_id = submit(url, callback=target)
    assert fetch(url, task_id).provider_job_id == task_id
    time.sleep(0.4)
    assert len(hooks.received(target)) == 1  # the challenge alone


# --- callbacks -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spelling", "expected"),
    [("lower", ["processing", "success"]), ("query", ["Processing", "Success"])],
)
def test_status_changes_call_back_as_the_query_reports_them(
    url: str, fake: MiniMaxFake, hooks: HookReceiver, spelling: str, expected: list[str]
) -> None:
    fake.settings.callback_words = spelling
    target = hooks.url()
    task_id = submit(url, callback=target)
    wait_until(lambda: len(hooks.received(target)) >= 3)
    time.sleep(0.2)
    reports = [r.json for r in hooks.received(target)[1:]]
    assert [r["status"] for r in reports] == expected
    assert all(r["task_id"] == task_id for r in reports)
    assert reports[-1]["file_id"] == fake.tasks[task_id].file_id
    assert reports[-1]["base_resp"] == {"status_code": 0, "status_msg": "success"}


def test_a_failed_task_calls_back_failed(url: str, hooks: HookReceiver) -> None:
    target = hooks.url()
    submit(url, "[fail]", callback=target)
    wait_until(lambda: len(hooks.received(target)) >= 3)
    assert hooks.received(target)[-1].json["status"] == "failed"


def test_duplicate_early_and_lost(url: str, fake: MiniMaxFake, hooks: HookReceiver) -> None:
    twice, early, lost = hooks.url(), hooks.url(), hooks.url()
    submit(url, "[duplicate]", callback=twice)
    submit(url, "[early] [never]", callback=early)
    submit(url, "[lost]", callback=lost)
    wait_until(lambda: len(hooks.received(twice)) >= 5 and len(hooks.received(early)) >= 3)
    time.sleep(0.2)
    doubled = [r.body for r in hooks.received(twice)[1:]]
    assert doubled[0] == doubled[1] and doubled[2] == doubled[3] and len(doubled) == 4
    assert [r.json["status"] for r in hooks.received(early)[1:]] == ["processing", "success"]
    assert len(hooks.received(lost)) == 1


def test_callbacks_are_retried_only_on_a_setting(
    url: str, fake: MiniMaxFake, hooks: HookReceiver
) -> None:
    once, thrice = hooks.url("picky"), hooks.url("picky")
    submit(url, "[never]", callback=once)
    wait_until(lambda: len(hooks.received(once)) >= 2)
    fake.settings.callback_retry_delays = (0.05, 0.05)
    submit(url, "[never]", callback=thrice)
    wait_until(lambda: len(hooks.received(thrice)) >= 4)
    time.sleep(0.3)
    assert [r.json.get("status") for r in hooks.received(once)[1:]] == ["processing"]
    assert [r.json.get("status") for r in hooks.received(thrice)[1:]] == ["processing"] * 3


# --- errors ----------------------------------------------------------------------------


def test_errors_come_as_200_with_their_code(url: str) -> None:
    task_id = submit(url)
    missing = httpx.get(f"{url}/v1/query/video_generation", params={"task_id": task_id})
    assert missing.status_code == 200
    assert missing.json()["base_resp"]["status_code"] == 1004
    error = refused(url, creating(), key="wrong-key")
    assert (error.code, error.transient, error.status_code) == ("2049", False, None)
    error = refused(url, lambda p: p.fetch(JobRef("j", "123", None)))
    assert (error.code, error.transient) == ("2013", False)
    assert "task not found" in error.message


@pytest.mark.parametrize(
    ("prompt", "code", "transient"), [("[policy]", "1026", False), ("[500]", "1024", True)]
)
def test_markers_refuse_the_create(url: str, prompt: str, code: str, transient: bool) -> None:
    error = refused(url, creating(prompt))
    assert (error.code, error.transient) == (code, transient)


def test_a_rate_limit_in_a_200_has_no_retry_after_and_the_adapter_pauses(url: str) -> None:
    error = refused(url, creating("[429]"))
    assert (error.code, error.transient, error.status_code) == ("1002", True, None)
    assert error.retry_after == 0.2  # the adapter's own pause, as set by run()


def test_errors_with_http_statuses_on_a_setting(url: str, fake: MiniMaxFake) -> None:
    fake.settings.http_errors = True
    fake.settings.retry_after = 3
    error = refused(url, creating("[429]"))
    assert (error.status_code, error.code, error.retry_after) == (429, "1002", 3.0)
    error = refused(url, creating(), key="wrong-key")
    assert (error.status_code, error.code, error.transient) == (401, "2049", False)
    error = refused(url, creating("[policy]"))
    assert (error.status_code, error.code, error.transient) == (400, "1026", False)


def test_requests_per_minute_on_a_setting() -> None:
    settings = MiniMaxFakeSettings(api_keys=[KEY], requests_per_minute=2)
    with ServerThread(MiniMaxFake(settings).app) as own:
        task_id = submit(own.url)
        fetch(own.url, task_id)
        error = refused(own.url, lambda p: p.fetch(JobRef("j", task_id, None)))
    assert (error.code, error.transient) == ("1002", True)


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"prompt": "x"}, "model"),
        ({"model": "T2V-01"}, "needs a prompt"),
        ({"model": "I2V-01", "prompt": "x"}, "first_frame_image"),
        ({"model": "S2V-01", "prompt": "x"}, "subject_reference"),
        ({"model": "T2V-01", "prompt": "x", "last_frame_image": "https://i/l.png"}, "last_frame"),
        ({"model": "MiniMax-Hailuo-02", "prompt": "x", "resolution": "720P"}, "resolution"),
        ({"model": "MiniMax-Hailuo-02", "prompt": "x", "resolution": "1080P", "duration": 10},
         "duration"),
        ({"model": "MiniMax-Hailuo-02", "prompt": "x" * 2001}, "prompt"),
        ({"model": "MiniMax-Hailuo-02", "prompt": "x", "callback_url": "ftp://x"}, "callback_url"),
        ({"model": "MiniMax-Hailuo-02", "prompt": "x", "prompt_optimizer": "no"},
         "prompt_optimizer"),
    ],
)  # fmt: skip
def test_invalid_creates_are_2013_naming_the_field(
    url: str, body: dict[str, Any], words: str
) -> None:
    answer = httpx.post(f"{url}/v1/video_generation", json=body, headers=AUTH)
    assert answer.status_code == 200
    resp = answer.json()["base_resp"]
    assert resp["status_code"] == 2013 and words in resp["status_msg"]


def test_another_accounts_task_and_file_are_not_found(url: str, fake: MiniMaxFake) -> None:
    task_id, _ = lifecycle(url, "mine")
    error = refused(url, lambda p: p.fetch(JobRef("j", task_id, None)), key=OTHER_KEY)
    assert "task not found" in error.message
    file_id = fake.tasks[task_id].file_id
    other = {"Authorization": f"Bearer {OTHER_KEY}"}
    answer = httpx.get(f"{url}/v1/files/retrieve", params={"file_id": file_id}, headers=other)
    assert answer.json()["base_resp"]["status_code"] == 2013


def test_injected_faults_answer_in_minimaxs_shape(url: str, fake: MiniMaxFake) -> None:
    task_id = submit(url)
    fake.settings.faults.paths = r"/query/"
    fake.settings.faults.error_burst = 1
    error = refused(url, lambda p: p.fetch(JobRef("j", task_id, None)))
    assert (error.code, error.transient, error.status_code) == ("1000", True, None)
    assert fetch(url, task_id).provider_job_id == task_id

"""The fake apimodels, run for real on loopback and driven by the real adapter."""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from receiver.config import ProviderConfig, Secret
from receiver.providers.apimodels import Apimodels
from receiver.providers.base import JobRef, Observation, ProviderError, SubmitRequest
from receiver.sandbox.apimodels import ApimodelsFake, ApimodelsFakeSettings, RecordedCallback
from receiver.sandbox.base import Faults, Timing
from receiver.sandbox.server import ServerThread
from receiver.states import Status

KEY = "apimodels-test-key"
OTHER_KEY = "apimodels-other-key"
PATH = "/api/v1/video/generations"
RETRY_DELAYS = (0.05, 0.1, 0.2)
T = TypeVar("T")


def fast_settings() -> ApimodelsFakeSettings:
    return ApimodelsFakeSettings(
        api_keys=[KEY, OTHER_KEY],
        timing=Timing(queue_delay=0.05, start_delay=0.05, run_time=0.05, slow_factor=10),
        faults=Faults(),
        callback_retry_delays=RETRY_DELAYS,
        callback_timeout=2.0,
    )


class Received:
    """A callback as the receiver saw it."""

    def __init__(self, request: Request, body: bytes) -> None:
        self.time = time.monotonic()
        self.headers = dict(request.headers.items())
        self.body = body
        self.json: dict[str, Any] = json.loads(body)


class CallbackReceiver:
    """Records POSTs to /cb/{status}/{token} and answers them with {status}."""

    def __init__(self) -> None:
        self._received: dict[str, list[Received]] = {}
        self._lock = threading.Lock()
        route = Route("/cb/{status:int}/{token}", self._record, methods=["POST"])
        self.server = ServerThread(Starlette(routes=[route]))

    async def _record(self, request: Request) -> Response:
        received = Received(request, await request.body())
        with self._lock:
            self._received.setdefault(request.path_params["token"], []).append(received)
        return Response(status_code=request.path_params["status"])

    def url(self, status: int = 200) -> str:
        return f"{self.server.url}/cb/{status}/{uuid.uuid4().hex}"

    def received(self, url: str) -> list[Received]:
        with self._lock:
            return list(self._received.get(url.rsplit("/", 1)[1], []))

    def wait(self, url: str, count: int) -> list[Received]:
        """The callbacks to url, once count arrived and any extra had time to follow."""
        wait_until(lambda: len(self.received(url)) >= count)
        time.sleep(0.15)
        return self.received(url)


@pytest.fixture(scope="module")
def server() -> Iterator[ServerThread]:
    with ServerThread(ApimodelsFake(fast_settings()).app) as running:
        yield running


@pytest.fixture(scope="module")
def hooks() -> Iterator[CallbackReceiver]:
    receiver = CallbackReceiver()
    with receiver.server:
        yield receiver


@pytest.fixture
def fake(server: ServerThread) -> Iterator[ApimodelsFake]:
    app = server.app
    assert isinstance(app, Starlette)
    sandbox: ApimodelsFake = app.state.sandbox
    yield sandbox
    # Tests tweak settings on the shared server; start the next one afresh.
    sandbox.settings = fast_settings()


@pytest.fixture
def url(server: ServerThread, fake: ApimodelsFake) -> str:
    return server.url


def wait_until(predicate: Callable[[], object], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.01)


def run(
    base_url: str,
    call: Callable[[Apimodels], Awaitable[T]],
    *,
    key: str = KEY,
    timeout: float = 5.0,
) -> T:
    """Run call with a fresh adapter (a fresh rate gate, too) against the fake."""

    async def main() -> T:
        config = ProviderConfig(
            name="apimodels",
            type="apimodels",
            base_url=base_url,
            api_key=Secret(key),
            default_model="grok-video-3",
            timeout=timeout,
        )
        async with httpx.AsyncClient() as client:
            return await call(Apimodels(config, client))

    return asyncio.run(main())


def submit(url: str, prompt: str = "a cat", callback_url: str | None = None, **kw: Any) -> str:
    async def call(provider: Apimodels) -> str:
        submission = await provider.submit(SubmitRequest(prompt=prompt, **kw), callback_url)
        assert submission.observation.provider_status == "pending"
        return submission.provider_job_id

    return run(url, call)


def fetch(url: str, task_id: str, **kw: Any) -> Observation:
    async def call(provider: Apimodels) -> Observation:
        return await provider.fetch(JobRef("job", task_id, Secret(KEY).fingerprint))

    return run(url, call, **kw)


async def poll_until_terminal(provider: Apimodels, task_id: str) -> list[Observation]:
    """Every observation until a terminal one, polling every 10 ms."""
    seen: list[Observation] = []
    deadline = time.monotonic() + 5.0
    ref = JobRef("job", task_id, provider.config.api_key.fingerprint)
    while not seen or not seen[-1].status.terminal:
        assert time.monotonic() < deadline, f"not terminal in time: {seen[-1:]}"
        seen.append(await provider.fetch(ref))
        await asyncio.sleep(0.01)
    return seen


def poll(url: str, task_id: str) -> list[Observation]:
    return run(url, lambda provider: poll_until_terminal(provider, task_id))


def lifecycle(url: str, prompt: str, **kw: Any) -> tuple[str, list[Observation]]:
    """Submit and poll on one client, so that no stage passes unseen between the two."""

    async def call(provider: Apimodels) -> tuple[str, list[Observation]]:
        submission = await provider.submit(SubmitRequest(prompt=prompt, **kw), None)
        seen = await poll_until_terminal(provider, submission.provider_job_id)
        return submission.provider_job_id, [submission.observation, *seen]

    return run(url, call)


def offline_adapter() -> Apimodels:
    """An adapter for the callback methods, which make no requests."""

    def refuse(request: httpx.Request) -> httpx.Response:
        raise AssertionError("no request expected")

    config = ProviderConfig("apimodels", "apimodels", "http://unused.test", Secret(KEY))
    return Apimodels(config, httpx.AsyncClient(transport=httpx.MockTransport(refuse)))


def provider_error(url: str, call: Callable[[Apimodels], Awaitable[Any]], **kw: Any) -> Any:
    with pytest.raises(ProviderError) as caught:
        run(url, call, **kw)
    assert KEY not in str(caught.value)
    return caught.value


def submitting(prompt: str = "a cat", **kw: Any) -> Callable[[Apimodels], Awaitable[Any]]:
    return lambda provider: provider.submit(SubmitRequest(prompt=prompt, **kw), None)


def fetching(task_id: str) -> Callable[[Apimodels], Awaitable[Any]]:
    return lambda provider: provider.fetch(JobRef("job", task_id, None))


def collapse(observations: list[Observation]) -> list[str | None]:
    words: list[str | None] = []
    for obs in observations:
        if not words or words[-1] != obs.provider_status:
            words.append(obs.provider_status)
    return words


def attempts(fake: ApimodelsFake, task_id: str) -> list[RecordedCallback]:
    return [c for c in list(fake.callbacks) if c.task_id == task_id]


# --- the task lifecycle through the adapter -------------------------------------


def test_submit_then_poll_until_completed_with_a_video(url: str, fake: ApimodelsFake) -> None:
    fake.settings.timing = Timing(queue_delay=0.1, start_delay=0.1, run_time=0.1)
    task_id, seen = lifecycle(url, "a cat", options={"size": "1080P", "duration": 8})
    assert task_id.startswith("cl") and len(task_id) == 25
    assert collapse(seen) == ["pending", "processing", "completed"]
    assert all(obs.known for obs in seen)
    done = seen[-1]
    assert done.status is Status.COMPLETED and done.provider_job_id == task_id
    assert done.result_url == f"{url}/files/{task_id}.mp4"
    assert done.raw is not None and set(done.raw) == {"code", "msg", "data"}
    assert set(done.raw["data"]) == {
        "task_id", "status", "model", "videos", "created_at", "completed_at"
    }  # fmt: skip
    assert done.raw["data"]["model"] == "cloud-video/grok-video-3"
    video = httpx.get(done.result_url)
    assert video.status_code == 200 and video.headers["content-type"] == "video/mp4"
    assert fake.tasks[task_id].params["size"] == "1080P"
    assert list(fake.tasks[task_id].status_times) == ["pending", "processing", "completed"]


def test_fail_marker_ends_failed_with_the_providers_message(url: str) -> None:
    done = poll(url, submit(url, "boom [fail]"))[-1]
    assert (done.status, done.error, done.result_url) == (
        Status.FAILED,
        "Content policy violation",
        None,
    )


def test_unknown_marker_is_seen_unknown_then_completes(url: str, fake: ApimodelsFake) -> None:
    fake.settings.timing = Timing(queue_delay=0.1, start_delay=0.15, run_time=0.1)
    _, seen = lifecycle(url, "[unknown]")
    assert collapse(seen) == ["pending", "waiting", "processing", "completed"]
    waiting = [obs for obs in seen if obs.provider_status == "waiting"]
    assert all(obs.status is Status.QUEUED and not obs.known for obs in waiting)
    assert seen[-1].known and seen[-1].status is Status.COMPLETED


def test_live_spelling_is_understood_by_the_adapter(url: str, fake: ApimodelsFake) -> None:
    fake.settings.field_style = "live"
    done = poll(url, submit(url))[-1]
    assert done.raw is not None and "resultUrls" in done.raw["data"]
    assert done.status is Status.COMPLETED and done.result_url
    failed = poll(url, submit(url, "[fail]"))[-1]
    assert (failed.status, failed.error) == (Status.FAILED, "Content policy violation")


def test_slow_and_never_markers_hold_the_task(url: str) -> None:
    slow, never = submit(url, "[slow]"), submit(url, "[never]")
    time.sleep(0.3)
    assert fetch(url, slow).provider_status == "pending"
    assert fetch(url, never).provider_status == "processing"
    time.sleep(0.3)
    assert fetch(url, never).provider_status == "processing"


def test_motion_control_is_accepted(url: str, fake: ApimodelsFake) -> None:
    task_id = submit(
        url,
        "",
        model="kling-motion-control",
        images=["https://example.com/c.png"],
        options={"video_urls": ["https://example.com/m.mp4"]},
    )
    params = fake.tasks[task_id].params
    assert (params["mode"], params["character_orientation"]) == ("720p", "video")
    assert poll(url, task_id)[-1].status is Status.COMPLETED


# --- errors ---------------------------------------------------------------------


def test_a_wrong_key_is_a_permanent_401(url: str) -> None:
    task_id = submit(url)
    for call in (submitting(), fetching(task_id)):
        error = provider_error(url, call, key="wrong-key")
        assert (error.transient, error.status_code) == (False, 401)
        assert "Invalid API key" in error.message


def test_429_marker_is_transient_with_retry_after(url: str, fake: ApimodelsFake) -> None:
    fake.settings.retry_after = 3
    error = provider_error(url, submitting("[429]"))
    assert (error.transient, error.status_code, error.retry_after) == (True, 429, 3.0)


def test_500_and_policy_markers(url: str) -> None:
    error = provider_error(url, submitting("[500]"))
    assert (error.transient, error.status_code) == (True, 500)
    error = provider_error(url, submitting("[policy]"))
    assert (error.transient, error.status_code) == (False, 400)
    assert "Content policy violation" in error.message


def test_unknown_task_is_a_permanent_404(url: str) -> None:
    error = provider_error(url, fetching("clnosuchtask"))
    assert (error.transient, error.status_code) == (False, 404)


def test_insufficient_credits_is_a_permanent_402(url: str, fake: ApimodelsFake) -> None:
    fake.settings.balance = 0.15
    submit(url, model="veo-3.1")
    error = provider_error(url, submitting(model="veo-3.1"))
    assert (error.transient, error.status_code) == (False, 402)
    assert "Insufficient credits" in error.message


def test_errors_inside_200_envelopes_are_classified_the_same(url: str, fake: ApimodelsFake) -> None:
    fake.settings.errors_in_envelope = True
    error = provider_error(url, submitting(), key="wrong-key")
    assert (error.transient, error.status_code) == (False, 401)
    error = provider_error(url, submitting("[500]"))
    assert (error.transient, error.status_code) == (True, 500)
    raw = httpx.get(f"{url}{PATH}", params={"task_id": "x"}, headers={"Authorization": "Bearer k"})
    assert raw.status_code == 200 and raw.json()["code"] == 401


def test_error_burst_is_transient_then_succeeds(url: str, fake: ApimodelsFake) -> None:
    task_id = submit(url)
    fake.settings.faults.paths = PATH
    fake.settings.faults.error_burst = 2
    for _ in range(2):
        error = provider_error(url, fetching(task_id))
        assert (error.transient, error.status_code) == (True, 500)
    assert fetch(url, task_id).provider_job_id == task_id


def test_malformed_json_is_transient(url: str, fake: ApimodelsFake) -> None:
    task_id = submit(url)
    fake.settings.faults.malformed = 1
    assert provider_error(url, fetching(task_id)).transient


def test_slow_answer_beyond_the_timeout_is_transient(url: str, fake: ApimodelsFake) -> None:
    task_id = submit(url)
    fake.settings.faults.slow = 1
    fake.settings.faults.slow_delay = 1.0
    error = provider_error(url, fetching(task_id), timeout=0.2)
    assert error.transient and "timed out" in error.message


# --- the fake's own shapes ----------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"prompt": "x"}, "model"),
        ({"model": "sora-2", "prompt": "x"}, "model"),
        ({"model": "grok-video-3"}, "prompt"),
        ({"model": "grok-video-3", "prompt": "x", "size": "2K"}, "size"),
        ({"model": "grok-video-3", "prompt": "x", "duration": 7}, "duration"),
        ({"model": "grok-video-3", "prompt": "x", "aspect_ratio": "4:3"}, "aspect_ratio"),
        ({"model": "veo-3.1", "prompt": "x", "images": ["nope"]}, "images"),
        ({"model": "veo-3.1", "prompt": "x", "generate_audio": "yes"}, "generate_audio"),
        ({"model": "grok-video-3", "prompt": "x", "callback_url": "ftp://x/y"}, "callback_url"),
        ({"model": "kling-motion-control", "video_urls": ["https://v/1"]}, "input_urls"),
        ({"model": "kling-motion-control", "input_urls": ["https://i/1"]}, "video_urls"),
        ({"model": "kling-motion-control", "input_urls": ["https://i/1"],
          "video_urls": ["https://v/1"], "mode": "4k"}, "mode"),
    ],
)  # fmt: skip
def test_invalid_submits_are_400_envelopes_naming_the_field(
    url: str, body: dict[str, Any], field: str
) -> None:
    response = httpx.post(f"{url}{PATH}", json=body, headers={"Authorization": f"Bearer {KEY}"})
    assert response.status_code == 400
    answer = response.json()
    assert set(answer) == {"code", "msg", "data"}
    assert (answer["code"], answer["data"]) == (400, None)
    assert answer["msg"].startswith(f"Bad Request - {field}:")


@pytest.mark.parametrize("authorization", [None, "Bearer", f"Token {KEY}", f"Bearer {KEY}x"])
def test_bad_credentials_are_401_envelopes(url: str, authorization: str | None) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    for response in (
        httpx.post(f"{url}{PATH}", json={"model": "grok-video-3", "prompt": "x"}, headers=headers),
        httpx.get(f"{url}{PATH}", params={"task_id": "x"}, headers=headers),
    ):
        assert response.status_code == 401
        assert response.json() == {
            "code": 401,
            "msg": "Unauthorized - Invalid API key",
            "data": None,
        }


def test_every_request_is_recorded_with_its_task(url: str, fake: ApimodelsFake) -> None:
    task_id = submit(url)
    fetch(url, task_id)

    def mine() -> list[tuple[str, str, int]]:
        return [(r.method, r.path, r.status_code) for r in fake.requests if r.task_id == task_id]

    wait_until(lambda: len(mine()) == 2)
    assert mine() == [("POST", PATH, 200), ("GET", PATH, 200)]


def test_a_file_is_served_only_once_the_task_completed(url: str) -> None:
    task_id = submit(url, "[never]")
    assert httpx.get(f"{url}/files/{task_id}.mp4").status_code == 404
    assert httpx.get(f"{url}/files/nothing.mp4").status_code == 404


# --- callbacks --------------------------------------------------------------------


def test_one_unsigned_callback_carries_the_status_envelope(
    url: str, fake: ApimodelsFake, hooks: CallbackReceiver
) -> None:
    target = hooks.url()
    task_id = submit(url, callback_url=target)
    [got] = hooks.wait(target, 1)
    assert got.headers["content-type"] == "application/json"
    assert not any(name.startswith("x-") or name == "authorization" for name in got.headers)
    final = fetch(url, task_id)
    assert final.raw == got.json  # the callback is the status answer
    provider = offline_adapter()
    obs = provider.parse_callback(got.json)
    assert (obs.status, obs.provider_job_id, obs.result_url) == (
        Status.COMPLETED,
        task_id,
        final.result_url,
    )
    assert provider.needs_confirmation(obs)
    assert [(c.status, c.status_code, c.body) for c in attempts(fake, task_id)] == [
        ("completed", 200, got.body)
    ]


def test_a_failed_task_sends_a_failed_callback(url: str, hooks: CallbackReceiver) -> None:
    target = hooks.url()
    submit(url, "[fail]", callback_url=target)
    [got] = hooks.wait(target, 1)
    assert got.json["data"]["status"] == "failed"
    assert got.json["data"]["error"] == "Content policy violation"


def test_a_failing_receiver_gets_three_byte_identical_retries(
    url: str, fake: ApimodelsFake, hooks: CallbackReceiver
) -> None:
    target = hooks.url(500)
    task_id = submit(url, callback_url=target)
    got = hooks.wait(target, 4)
    assert len(got) == 4
    assert len({r.body for r in got}) == 1
    job = JobRef("job", task_id, None, target)
    provider = offline_adapter()
    nonces = {provider.verify_callback(job, r.headers, r.body, tolerance=300) for r in got}
    assert len(nonces) == 1
    gaps = [b.time - a.time for a, b in itertools.pairwise(got)]
    for gap, delay in zip(gaps, RETRY_DELAYS, strict=True):
        assert gap >= delay * 0.9
    assert [c.status_code for c in attempts(fake, task_id)] == [500] * 4


def test_an_unreachable_receiver_is_recorded_as_errors(url: str, fake: ApimodelsFake) -> None:
    with ServerThread(Starlette()) as gone:
        target = f"{gone.url}/cb"
    task_id = submit(url, callback_url=target)
    wait_until(lambda: len(attempts(fake, task_id)) == 4)
    assert all(c.status_code is None and c.error for c in attempts(fake, task_id))


def test_no_callback_url_means_no_callback(url: str, fake: ApimodelsFake) -> None:
    task_id = submit(url)
    poll(url, task_id)
    time.sleep(0.05)
    assert attempts(fake, task_id) == []


def test_lost_marker_sends_nothing_but_the_task_completes(
    url: str, fake: ApimodelsFake, hooks: CallbackReceiver
) -> None:
    target = hooks.url()
    task_id = submit(url, "[lost]", callback_url=target)
    assert poll(url, task_id)[-1].status is Status.COMPLETED
    assert hooks.wait(target, 0) == []
    assert attempts(fake, task_id) == []


def test_duplicate_marker_sends_each_callback_twice_byte_identical(
    url: str, hooks: CallbackReceiver
) -> None:
    target = hooks.url()
    submit(url, "[duplicate]", callback_url=target)
    first, second = hooks.wait(target, 2)
    assert first.body == second.body and first.headers == second.headers


def test_early_marker_claims_completion_while_the_status_says_processing(
    url: str, fake: ApimodelsFake, hooks: CallbackReceiver
) -> None:
    # Long enough that the checks below see the task still running on a loaded machine.
    fake.settings.timing.run_time = 3.0
    target = hooks.url()
    task_id = submit(url, "[early]", callback_url=target)
    wait_until(lambda: len(hooks.received(target)) >= 1)
    [early] = hooks.received(target)
    assert early.json["data"]["status"] == "completed"
    assert fetch(url, task_id).provider_status == "processing"
    assert httpx.get(early.json["data"]["videos"][0]).status_code == 404
    first, real = hooks.wait(target, 2)
    assert first.body == early.body and real.body != early.body
    # Different bodies, so the receiver counts the real one as a new delivery.
    provider, job = offline_adapter(), JobRef("job", task_id, None, target)
    nonces = {
        provider.verify_callback(job, r.headers, r.body, tolerance=300) for r in (early, real)
    }
    assert len(nonces) == 2
    assert provider.parse_callback(real.json).status is Status.COMPLETED
    assert fetch(url, task_id).status is Status.COMPLETED

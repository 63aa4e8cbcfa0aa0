"""The fake Luma, run for real on loopback and driven by the real adapter."""

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
from receiver.providers.luma import Luma
from receiver.sandbox.base import Timing
from receiver.sandbox.luma import UNDOCUMENTED_STATE, LumaFake, LumaFakeSettings
from receiver.sandbox.server import ServerThread
from receiver.states import Status
from tests.conftest import wait_for
from tests.sandbox.hook_receiver import HookReceiver

KEY = "luma-test-key"
OTHER_KEY = "luma-other-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
T = TypeVar("T")


def fast_settings() -> LumaFakeSettings:
    return LumaFakeSettings(
        api_keys=[KEY, OTHER_KEY],
        timing=Timing(queue_delay=0.05, start_delay=0.05, run_time=0.05, slow_factor=10),
        callback_retry_delay=0.1,
        callback_timeout=2.0,
    )


@pytest.fixture(scope="module")
def server() -> Iterator[ServerThread]:
    with ServerThread(LumaFake(fast_settings()).app) as running:
        yield running


@pytest.fixture(scope="module")
def hooks() -> Iterator[HookReceiver]:
    receiver = HookReceiver()
    with receiver.server:
        yield receiver


@pytest.fixture
def fake(server: ServerThread) -> Iterator[LumaFake]:
    app = server.app
    assert isinstance(app, Starlette)
    sandbox: LumaFake = app.state.sandbox
    yield sandbox
    sandbox.settings = fast_settings()


@pytest.fixture
def url(server: ServerThread, fake: LumaFake) -> str:
    return server.url


def wait_until(predicate: Callable[[], object], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.01)


def run(base_url: str, call: Callable[[Luma], Awaitable[T]], *, key: str = KEY) -> T:
    async def main() -> T:
        config = ProviderConfig("luma", "luma", base_url, Secret(key), default_model="ray-2")
        async with httpx.AsyncClient() as client:
            return await call(Luma(config, client))

    return asyncio.run(main())


def submit(
    url: str, prompt: str | None = "a koi pond", callback: str | None = None, **kw: Any
) -> str:
    async def call(provider: Luma) -> str:
        submission = await provider.submit(SubmitRequest(prompt=prompt, **kw), callback)
        return submission.provider_job_id

    return run(url, call)


def fetch(url: str, generation_id: str) -> Observation:
    return run(url, lambda p: p.fetch(JobRef("job", generation_id, Secret(KEY).fingerprint)))


def lifecycle(url: str, prompt: str, **kw: Any) -> tuple[str, list[Observation]]:
    async def call(provider: Luma) -> tuple[str, list[Observation]]:
        submission = await provider.submit(SubmitRequest(prompt=prompt, **kw), None)
        ref = JobRef("job", submission.provider_job_id, provider.config.api_key.fingerprint)
        seen = [submission.observation]
        deadline = time.monotonic() + 5
        while not seen[-1].status.terminal:
            assert time.monotonic() < deadline
            seen.append(await provider.fetch(ref))
            await asyncio.sleep(0.01)
        return submission.provider_job_id, seen

    return run(url, call)


def refused(url: str, call: Callable[[Luma], Awaitable[Any]], **kw: Any) -> ProviderError:
    with pytest.raises(ProviderError) as caught:
        run(url, call, **kw)
    assert KEY not in str(caught.value)
    return caught.value


def creating(prompt: str = "a koi pond", **kw: Any) -> Callable[[Luma], Awaitable[Any]]:
    return lambda provider: provider.submit(SubmitRequest(prompt=prompt, **kw), None)


def states(observations: list[Observation]) -> list[str | None]:
    return [word for word, _ in itertools.groupby(o.provider_status for o in observations)]


# --- the generation through the adapter -------------------------------------------------


def test_a_generation_dreams_then_completes_with_a_video_and_a_cover(
    url: str, fake: LumaFake
) -> None:
    fake.settings.timing = Timing(queue_delay=0.1, start_delay=0.05, run_time=0.1)
    generation_id, seen = lifecycle(url, "a koi pond", options={"aspect_ratio": "9:16"})
    assert states(seen) == ["queued", "dreaming", "completed"]
    assert [o.status for o in seen][-1] is Status.COMPLETED
    done = seen[-1]
    assert done.result_url == f"{url}/assets/{generation_id}.mp4"
    assert done.cover_url == f"{url}/assets/{generation_id}.png"
    assert done.raw is not None and done.raw["request"]["aspect_ratio"] == "9:16"
    assert set(done.raw) == {
        "id", "generation_type", "state", "failure_reason", "created_at", "model", "assets",
        "request",
    }  # fmt: skip
    video, cover = httpx.get(done.result_url), httpx.get(done.cover_url or "")
    assert (video.status_code, video.headers["content-type"]) == (200, "video/mp4")
    assert (cover.status_code, cover.headers["content-type"]) == (200, "image/png")


def test_keyframes_reach_luma_from_the_images(url: str, fake: LumaFake) -> None:
    images = ["https://img.example/first.jpg", "https://img.example/last.jpg"]
    generation_id = submit(url, None, images=images)
    assert fake.tasks[generation_id].request["keyframes"] == {
        "frame0": {"type": "image", "url": images[0]},
        "frame1": {"type": "image", "url": images[1]},
    }


def test_fail_ends_with_the_failure_reason(url: str, fake: LumaFake) -> None:
    _, seen = lifecycle(url, "a riot [fail]")
    assert (seen[-1].status, seen[-1].error) == (Status.FAILED, fake.settings.fail_reason)
    assert seen[-1].result_url is None


def test_unknown_is_kept_raw_on_the_way(url: str, fake: LumaFake) -> None:
    fake.settings.timing = Timing(queue_delay=0.05, start_delay=0.15, run_time=0.05)
    _, seen = lifecycle(url, "[unknown]")
    assert states(seen) == ["queued", UNDOCUMENTED_STATE, "dreaming", "completed"]
    odd = [o for o in seen if o.provider_status == UNDOCUMENTED_STATE]
    assert all(o.status is Status.QUEUED and not o.known for o in odd)


@pytest.mark.parametrize(
    "served", [("/generations/video",), CREATE_BOTH := ("/generations", "/generations/video")]
)
def test_either_create_route_works_for_the_adapter(
    url: str, fake: LumaFake, served: tuple[str, ...]
) -> None:
    fake.settings.create_paths = served
    generation_id = submit(url)
    posts = [r for r in fake.requests if r.method == "POST" and r.task_id == generation_id]
    assert posts[-1].path == served[0]


def test_the_route_a_deployment_lacks_answers_as_a_router_does(url: str, fake: LumaFake) -> None:
    body = {"model": "ray-2", "prompt": "x"}
    fake.settings.create_paths = ("/generations/video",)
    assert httpx.post(f"{url}/generations", json=body, headers=AUTH).status_code == 405
    fake.settings.create_paths = ("/generations",)
    assert httpx.post(f"{url}/generations/video", json=body, headers=AUTH).status_code == 404


# --- callbacks -------------------------------------------------------------------------


def test_every_state_calls_back_twice_with_the_same_bytes(
    url: str, fake: LumaFake, hooks: HookReceiver
) -> None:
    target = hooks.url()
    generation_id = submit(url, callback=target)
    wait_until(lambda: len(hooks.received(target)) >= 4)
    time.sleep(0.2)
    got = hooks.received(target)
    assert [r.json["state"] for r in got] == ["dreaming", "dreaming", "completed", "completed"]
    assert got[0].body == got[1].body and got[2].body == got[3].body
    assert all(r.json["id"] == generation_id for r in got)
    assert got[-1].json["assets"]["video"] == f"{url}/assets/{generation_id}.mp4"


def test_the_documented_states_only_on_a_setting(
    url: str, fake: LumaFake, hooks: HookReceiver
) -> None:
    fake.settings.callback_states = ("dreaming", "completed", "failed")
    fake.settings.callback_copies = 1
    target = hooks.url()
    submit(url, "[unknown]", callback=target)
    wait_until(lambda: len(hooks.received(target)) >= 2)
    time.sleep(0.2)
    assert [r.json["state"] for r in hooks.received(target)] == ["dreaming", "completed"]
    fake.settings.callback_states = None
    every = hooks.url()
    submit(url, "[unknown]", callback=every)
    wait_until(lambda: len(hooks.received(every)) >= 3)
    assert hooks.received(every)[0].json["state"] == UNDOCUMENTED_STATE


def test_a_callback_not_answered_200_is_sent_three_more_times_100_ms_apart(
    url: str, fake: LumaFake, hooks: HookReceiver
) -> None:
    fake.settings.callback_copies = 1
    target = hooks.url(202)  # a 2xx that is not 200 counts as not answered
    generation_id = submit(url, "[never]", callback=target)
    wait_until(lambda: len(hooks.received(target)) >= 4)
    time.sleep(0.3)
    got = hooks.received(target)
    assert len(got) == 4 and {r.body for r in got} == {got[0].body}
    gaps = [b.time - a.time for a, b in itertools.pairwise(got)]
    assert all(0.09 < gap < 0.5 for gap in gaps), gaps
    sent = [c for c in fake.callbacks if c.task_id == generation_id]
    assert [c.status_code for c in sent] == [202] * 4


def test_lost_early_and_out_of_order_callbacks(
    url: str, fake: LumaFake, hooks: HookReceiver
) -> None:
    fake.settings.callback_copies = 1
    lost, early, late = hooks.url(), hooks.url(), hooks.url()
    submit(url, "[lost]", callback=lost)
    submit(url, "[early] [never]", callback=early)
    submit(url, "[out-of-order]", callback=late)
    wait_until(lambda: len(hooks.received(early)) >= 2 and len(hooks.received(late)) >= 2)
    time.sleep(0.3)
    assert hooks.received(lost) == []
    assert [r.json["state"] for r in hooks.received(early)] == ["dreaming", "completed"]
    assert [r.json["state"] for r in hooks.received(late)] == ["completed", "dreaming"]


# --- errors, limits and the other endpoints ---------------------------------------------


def test_a_wrong_key_is_a_permanent_401(url: str) -> None:
    generation_id = submit(url)
    error = refused(url, creating(), key="wrong-key")
    assert (error.status_code, error.transient, error.message) == (401, False, "Invalid API key")
    with pytest.raises(ProviderError):
        run(url, lambda p: p.fetch(JobRef("job", generation_id, None)), key="wrong-key")


def test_another_accounts_generation_is_not_found(url: str) -> None:
    generation_id = submit(url)
    error = refused(url, lambda p: p.fetch(JobRef("j", generation_id, None)), key=OTHER_KEY)
    assert (error.status_code, error.transient, error.message) == (
        404,
        False,
        "Generation not found",
    )


def test_429_marker_and_limits_carry_retry_after(url: str, fake: LumaFake) -> None:
    fake.settings.retry_after = 4
    error = refused(url, creating("[429]"))
    assert (error.status_code, error.transient, error.retry_after) == (429, True, 4.0)
    fake.settings.retry_after = None
    assert refused(url, creating("[429]")).retry_after is None


@pytest.mark.parametrize(
    ("limit", "words"),
    [({"creates_per_minute": 2}, "too many"), ({"max_concurrent": 2}, "concurrent")],
)
def test_the_tiers_limits_answer_429(limit: dict[str, int], words: str) -> None:
    with ServerThread(LumaFake(LumaFakeSettings(api_keys=[KEY], **limit)).app) as own:
        submit(own.url, "[never]")
        submit(own.url, "[never]")
        error = refused(own.url, creating())
    assert (error.status_code, error.retry_after) == (429, 1.0)
    assert words in error.message


def test_500_marker_is_transient(url: str) -> None:
    error = refused(url, creating("[500]"))
    assert (error.status_code, error.transient) == (500, True)


@pytest.mark.parametrize("style", ["text", "list"])
def test_validation_errors_in_either_shape_name_the_field(
    url: str, fake: LumaFake, style: str
) -> None:
    fake.settings.validation_errors = style
    error = refused(url, creating(model="ray-9"))
    assert error.status_code == (400 if style == "text" else 422)
    assert "model" in error.message and not error.transient


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"prompt": "x"}, "model"),
        ({"model": "ray-2"}, "prompt"),
        ({"model": "ray-2", "prompt": "x", "aspect_ratio": "2:1"}, "aspect_ratio"),
        ({"model": "ray-2", "prompt": "x", "duration": "7s"}, "duration"),
        ({"model": "ray-2", "prompt": "x", "resolution": "8k"}, "resolution"),
        ({"model": "ray-2", "prompt": "x", "loop": "yes"}, "loop"),
        ({"model": "ray-2", "keyframes": {"frame0": {"type": "image"}}}, "keyframes.frame0.url"),
        ({"model": "ray-2", "keyframes": {"frame2": {}}}, "keyframes"),
        ({"model": "ray-2", "prompt": "x", "callback_url": "ftp://x/y"}, "callback_url"),
        ({"model": "ray-2", "prompt": "x", "concepts": ["zoom"]}, "concepts"),
    ],
)
def test_invalid_creates_are_400_naming_the_field(
    url: str, body: dict[str, Any], field: str
) -> None:
    response = httpx.post(f"{url}/generations", json=body, headers=AUTH)
    assert response.status_code == 400
    assert response.json()["detail"].startswith(f"Invalid request: {field} ")


def test_a_generation_made_from_another_one_is_accepted(url: str) -> None:
    parent = submit(url)
    body = {
        "model": "ray-2",
        "prompt": "go on",
        "keyframes": {"frame0": {"type": "generation", "id": parent}},
    }
    assert httpx.post(f"{url}/generations", json=body, headers=AUTH).status_code == 201


def test_delete_removes_the_generation_and_its_video(url: str, fake: LumaFake) -> None:
    generation_id, _ = lifecycle(url, "short lived")
    assert httpx.get(f"{url}/assets/{generation_id}.mp4").status_code == 200
    deleted = httpx.delete(f"{url}/generations/{generation_id}", headers=AUTH)
    assert deleted.status_code == 204
    assert httpx.get(f"{url}/generations/{generation_id}", headers=AUTH).status_code == 404
    assert httpx.get(f"{url}/assets/{generation_id}.mp4").status_code == 404
    assert generation_id in fake.deleted


def test_the_list_pages_newest_first(url: str) -> None:
    ids = [submit(url, f"n{i}", None) for i in range(3)]
    page = httpx.get(f"{url}/generations", params={"limit": 2, "offset": 0}, headers=AUTH).json()
    assert [g["id"] for g in page["generations"]] == ids[::-1][:2]
    assert page["limit"] == 2 and page["count"] >= 3


def test_assets_expire_after_their_lifetime_on_a_setting(url: str, fake: LumaFake) -> None:
    fake.settings.asset_ttl = 2.0
    generation_id, seen = lifecycle(url, "fleeting")
    assert httpx.get(seen[-1].result_url or "").status_code == 200
    wait_for(
        lambda: httpx.get(f"{url}/assets/{generation_id}.mp4").status_code == 403,
        what="the asset to expire",
    )


def test_injected_faults_answer_in_lumas_shape(url: str, fake: LumaFake) -> None:
    generation_id = submit(url)
    fake.settings.faults.paths = r"^/generations/"
    fake.settings.faults.rate_limit = 1
    fake.settings.faults.retry_after = 2
    error = refused(url, lambda p: p.fetch(JobRef("j", generation_id, None)))
    assert (error.status_code, error.retry_after, error.message) == (429, 2.0, "too many requests")
    assert fetch(url, generation_id).provider_job_id == generation_id
    assert [r.status_code for r in fake.requests if r.path == f"/generations/{generation_id}"][
        -2:
    ] == [429, 200]

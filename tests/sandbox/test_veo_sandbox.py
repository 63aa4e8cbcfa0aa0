"""The fake Gemini API for Veo on loopback, driven by plain requests and by the real adapter."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import httpx
import pytest
from starlette.applications import Starlette

from receiver.config import ProviderConfig, Secret
from receiver.providers.base import (
    InvalidRequest,
    JobRef,
    Observation,
    ProviderError,
    SubmitRequest,
)
from receiver.providers.veo import Veo
from receiver.sandbox.base import Timing
from receiver.sandbox.server import ServerThread
from receiver.sandbox.veo import (
    FAIL_MESSAGE,
    FILTER_REASON,
    UNDOCUMENTED_STATE,
    VeoFake,
    VeoFakeSettings,
)
from receiver.states import Status

T = TypeVar("T")
KEY = "veo-sandbox-key"
OTHER_KEY = "veo-other-key"
MODEL = "veo-3.1-generate-preview"
PNG = b"\x89PNG\r\n\x1a\n" + bytes(16)


def fast_settings() -> VeoFakeSettings:
    return VeoFakeSettings(
        api_keys=[KEY, OTHER_KEY],
        timing=Timing(queue_delay=0.03, start_delay=0.03, run_time=0.1, slow_factor=5),
    )


@pytest.fixture(scope="module")
def server() -> Iterator[ServerThread]:
    with ServerThread(VeoFake(fast_settings()).app) as running:
        yield running


@pytest.fixture
def fake(server: ServerThread) -> Iterator[VeoFake]:
    app = server.app
    assert isinstance(app, Starlette)
    sandbox: VeoFake = app.state.sandbox
    yield sandbox
    sandbox.settings = fast_settings()


@pytest.fixture
def url(server: ServerThread, fake: VeoFake) -> str:
    return server.url


def create(url: str, body: dict[str, Any], key: str = KEY, model: str = MODEL) -> httpx.Response:
    return httpx.post(
        f"{url}/v1beta/models/{model}:predictLongRunning",
        json=body,
        headers={"x-goog-api-key": key},
    )


def start(url: str, prompt: str = "a heron", **parameters: Any) -> str:
    body: dict[str, Any] = {"instances": [{"prompt": prompt}]}
    if parameters:
        body["parameters"] = parameters
    answer = create(url, body)
    assert answer.status_code == 200, answer.text
    name: str = answer.json()["name"]
    return name


def get(url: str, name: str, key: str = KEY) -> httpx.Response:
    return httpx.get(f"{url}/v1beta/{name}", headers={"x-goog-api-key": key})


def until_done(url: str, name: str) -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []
    deadline = time.monotonic() + 5
    while not seen or not seen[-1].get("done"):
        assert time.monotonic() < deadline
        seen.append(get(url, name).json())
        time.sleep(0.01)
    return seen


def google_error(answer: httpx.Response) -> tuple[int, str]:
    error = answer.json()["error"]
    assert error["code"] == answer.status_code and error["message"]
    return answer.status_code, error["status"]


def run(url: str, call: Callable[[Veo], Awaitable[T]]) -> T:
    async def main() -> T:
        config = ProviderConfig("veo", "veo", url, Secret(KEY), default_model=MODEL)
        async with httpx.AsyncClient() as client:
            return await call(Veo(config, client))

    return asyncio.run(main())


def lifecycle(url: str, request: SubmitRequest) -> tuple[str, list[Observation]]:
    async def call(provider: Veo) -> tuple[str, list[Observation]]:
        submission = await provider.submit(request, None)
        ref = JobRef("job", submission.provider_job_id, Secret(KEY).fingerprint)
        seen: list[Observation] = []
        deadline = time.monotonic() + 5
        while not seen or not seen[-1].status.terminal:
            assert time.monotonic() < deadline
            seen.append(await provider.fetch(ref))
            await asyncio.sleep(0.01)
        return submission.provider_job_id, seen

    return run(url, call)


# --- operations -----------------------------------------------------------------------


def test_an_operation_runs_and_ends_with_a_video_only_the_key_opens(
    url: str, fake: VeoFake
) -> None:
    name = start(url)
    assert name.startswith(f"models/{MODEL}/operations/")
    seen = until_done(url, name)
    assert "done" not in seen[0]
    (sample,) = seen[-1]["response"]["generateVideoResponse"]["generatedSamples"]
    uri = sample["video"]["uri"]
    assert uri.startswith(f"{url}/v1beta/files/") and uri.endswith(":download?alt=media")
    assert httpx.get(uri).status_code == 403
    by_header = httpx.get(uri, headers={"x-goog-api-key": KEY})
    assert by_header.status_code == 200 and by_header.content[4:8] == b"ftyp"
    assert httpx.get(f"{uri}&key={KEY}").status_code == 200
    assert httpx.get(uri, headers={"x-goog-api-key": OTHER_KEY}).status_code == 403
    assert [d.with_key for d in fake.downloads_of(name)] == [False, True, True, False]


def test_several_samples_each_have_a_video(url: str) -> None:
    samples = until_done(url, start(url, sampleCount=2))[-1]["response"]["generateVideoResponse"]
    assert len({s["video"]["uri"] for s in samples["generatedSamples"]}) == 2


def test_a_failed_operation_carries_google_s_error(url: str) -> None:
    last = until_done(url, start(url, "a storm [fail]"))[-1]
    assert last["error"] == {"code": 13, "message": FAIL_MESSAGE} and "response" not in last


@pytest.mark.parametrize("reasons", [True, False])
def test_a_filtered_operation_has_no_sample(url: str, fake: VeoFake, reasons: bool) -> None:
    fake.settings.filter_reasons = reasons
    answer = until_done(url, start(url, "a crowd [filtered]"))[-1]["response"]
    expected: dict[str, Any] = {"raiMediaFilteredCount": 1}
    if reasons:
        expected["raiMediaFilteredReasons"] = [FILTER_REASON]
    assert answer["generateVideoResponse"] == expected


def test_an_inline_video_comes_as_encoded_bytes(url: str) -> None:
    answer = until_done(url, start(url, "a fox [inline]"))[-1]["response"]
    (sample,) = answer["generateVideoResponse"]["generatedSamples"]
    assert base64.b64decode(sample["video"]["encodedVideo"])[4:8] == b"ftyp"


def test_an_undocumented_state_shows_while_it_waits(url: str) -> None:
    seen = until_done(url, start(url, "lanterns [unknown] [slow]"))
    assert seen[0]["metadata"] == {"state": UNDOCUMENTED_STATE}
    assert "metadata" not in seen[-1]


def test_a_redirect_to_signed_storage_on_a_setting(url: str, fake: VeoFake) -> None:
    fake.settings.download_redirect = True
    last = until_done(url, start(url))[-1]
    uri = last["response"]["generateVideoResponse"]["generatedSamples"][0]["video"]["uri"]
    moved = httpx.get(uri, headers={"x-goog-api-key": KEY})
    assert moved.status_code == 302 and "/storage/" in moved.headers["location"]
    assert httpx.get(moved.headers["location"]).content[4:8] == b"ftyp"
    forged = moved.headers["location"].rsplit("=", 1)[0] + "=" + "0" * 32
    assert httpx.get(forged).status_code == 403


def test_a_video_is_kept_for_its_retention(url: str, fake: VeoFake) -> None:
    last = until_done(url, start(url))[-1]
    uri = last["response"]["generateVideoResponse"]["generatedSamples"][0]["video"]["uri"]
    assert httpx.get(uri, headers={"x-goog-api-key": KEY}).status_code == 200
    fake.settings.retention = 0.0  # as if two days had passed
    assert httpx.get(uri, headers={"x-goog-api-key": KEY}).status_code == 404


# --- refusals -------------------------------------------------------------------------


def test_the_key_is_required_and_checked(url: str) -> None:
    body = {"instances": [{"prompt": "x"}]}
    missing = httpx.post(f"{url}/v1beta/models/{MODEL}:predictLongRunning", json=body)
    assert google_error(missing) == (403, "PERMISSION_DENIED")
    assert google_error(create(url, body, key="wrong")) == (400, "INVALID_ARGUMENT")


def test_another_account_s_operation_is_not_found(url: str) -> None:
    assert google_error(get(url, start(url), key=OTHER_KEY)) == (404, "NOT_FOUND")


@pytest.mark.parametrize(
    "body",
    [
        {"instances": [{"prompt": "x"}], "parameters": {"seed": 1}},
        {"instances": [{"prompt": "x"}], "parameters": {"generateAudio": True}},
        {"instances": [{"prompt": "x"}], "parameters": {"durationSeconds": 10}},
        {"instances": [{"prompt": "x"}], "parameters": {"aspectRatio": "1:1"}},
        {"instances": [{"prompt": "x", "image": {"gcsUri": "gs://b/a.png"}}]},
        {
            "instances": [
                {"prompt": "x", "image": {"bytesBase64Encoded": "!!", "mimeType": "image/png"}}
            ]
        },
        {"instances": [{"prompt": "x"}, {"prompt": "y"}]},
        {"instances": []},
        {"prompt": "x"},
    ],
)
def test_what_the_gemini_api_refuses_is_400(url: str, body: dict[str, Any]) -> None:
    assert google_error(create(url, body)) == (400, "INVALID_ARGUMENT")


def test_an_unknown_model_is_404(url: str) -> None:
    answer = create(url, {"instances": [{"prompt": "x"}]}, model="veo-9")
    assert google_error(answer) == (404, "NOT_FOUND")


@pytest.mark.parametrize(
    ("marker", "status", "google"),
    [("[429]", 429, "RESOURCE_EXHAUSTED"), ("[500]", 500, "INTERNAL")],
)
def test_markers_refuse_the_create(url: str, marker: str, status: int, google: str) -> None:
    answer = create(url, {"instances": [{"prompt": f"x {marker}"}]})
    assert google_error(answer) == (status, google)
    assert (answer.headers.get("retry-after") == "1") is (status == 429)


def test_injected_faults_answer_in_google_s_shape(url: str, fake: VeoFake) -> None:
    fake.settings.faults.rate_limit, fake.settings.faults.retry_after = 1, 2.0
    answer = get(url, "models/x/operations/y")
    assert google_error(answer) == (429, "RESOURCE_EXHAUSTED")
    assert answer.headers["retry-after"] == "2"


# --- the adapter against the fake -----------------------------------------------------


def test_the_adapter_runs_an_image_job_to_its_video(url: str, fake: VeoFake) -> None:
    image = "data:image/png;base64," + base64.b64encode(PNG).decode()
    request = SubmitRequest(prompt="it moves [slow]", images=[image, image],
                            options={"duration_seconds": 6})  # fmt: skip
    name, seen = lifecycle(url, request)
    assert [o.provider_status for o in seen][-1] == "done"
    assert {o.status for o in seen[:-1]} == {Status.PROCESSING}
    assert seen[-1].status is Status.COMPLETED and seen[-1].result_url
    sent = fake.tasks[name]
    assert sent.instance["image"] == {"bytesBase64Encoded": base64.b64encode(PNG).decode(),
                                      "mimeType": "image/png"}  # fmt: skip
    assert "lastFrame" in sent.instance and sent.parameters == {"durationSeconds": 6}

    async def download(provider: Veo) -> int:
        plan = provider.download(JobRef("job", name, Secret(KEY).fingerprint), seen[-1].result_url)
        return (await provider.client.get(plan.url, headers=dict(plan.headers))).status_code

    assert run(url, download) == 200
    assert fake.downloads_of(name)[-1].with_key


@pytest.mark.parametrize(
    ("marker", "word", "error"),
    [("[fail]", "error", f"{FAIL_MESSAGE} (code 13)"),
     ("[filtered]", "filtered", f"Google's safety filters removed the video: {FILTER_REASON}")],
)  # fmt: skip
def test_the_adapter_reads_failures(url: str, marker: str, word: str, error: str) -> None:
    _, seen = lifecycle(url, SubmitRequest(prompt=f"a storm {marker}"))
    assert (seen[-1].status, seen[-1].provider_status, seen[-1].error) == (
        Status.FAILED, word, error,
    )  # fmt: skip


def test_the_adapter_fails_an_inline_video_without_keeping_its_bytes(url: str) -> None:
    _, seen = lifecycle(url, SubmitRequest(prompt="a fox [inline]"))
    assert seen[-1].status is Status.FAILED and "encodedVideo" in (seen[-1].error or "")
    assert len(str(seen[-1].raw)) < 2000


def test_the_adapter_is_refused_vertex_fields_before_asking(url: str, fake: VeoFake) -> None:
    before = len(fake.requests)
    with pytest.raises(InvalidRequest):
        run(url, lambda p: p.submit(SubmitRequest(prompt="x", options={"seed": 3}), None))
    assert len(fake.requests) == before


def test_the_adapter_takes_a_429_as_passing(url: str) -> None:
    with pytest.raises(ProviderError) as caught:
        run(url, lambda p: p.submit(SubmitRequest(prompt="x [429]"), None))
    assert caught.value.transient and caught.value.retry_after == 1.0
    assert caught.value.code == "RESOURCE_EXHAUSTED"

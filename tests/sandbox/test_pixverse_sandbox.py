"""The fake PixVerse on loopback, driven by plain requests and by the real adapter."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar
from urllib.parse import quote_plus

import httpx
import pytest
from starlette.applications import Starlette

from receiver.config import ProviderConfig, Secret
from receiver.providers.base import JobRef, Observation, ProviderError, SubmitRequest
from receiver.providers.pixverse import PixVerse
from receiver.sandbox.base import Timing
from receiver.sandbox.pixverse import (
    CONCURRENCY_MESSAGE,
    UNDOCUMENTED_STATUS,
    PixVerseFake,
    PixVerseFakeSettings,
)
from receiver.sandbox.server import ServerThread
from receiver.states import Status
from tests.sandbox.hook_receiver import HookReceiver

T = TypeVar("T")
KEY = "pixverse-sandbox-key"
OTHER_KEY = "pixverse-other-key"
SECRET = "pixverse-sandbox-webhook-secret"
PNG = b"\x89PNG\r\n\x1a\n" + bytes(32)


def fast_settings() -> PixVerseFakeSettings:
    return PixVerseFakeSettings(
        api_keys=[KEY, OTHER_KEY],
        timing=Timing(queue_delay=0.03, start_delay=0.03, run_time=0.1, slow_factor=5),
        webhook_secret=SECRET,
        webhook_retry_delays=(0.05, 0.05),
    )


@pytest.fixture(scope="module")
def server() -> Iterator[ServerThread]:
    with ServerThread(PixVerseFake(fast_settings()).app) as running:
        yield running


@pytest.fixture(scope="module")
def hooks() -> Iterator[HookReceiver]:
    receiver = HookReceiver()
    with receiver.server:
        yield receiver


@pytest.fixture
def fake(server: ServerThread) -> Iterator[PixVerseFake]:
    app = server.app
    assert isinstance(app, Starlette)
    sandbox: PixVerseFake = app.state.sandbox
    yield sandbox
    sandbox.settings = fast_settings()


@pytest.fixture
def url(server: ServerThread, fake: PixVerseFake) -> str:
    return server.url


def headers(key: str = KEY) -> dict[str, str]:
    return {"API-KEY": key, "Ai-trace-id": str(uuid.uuid4())}


def post(url: str, path: str, key: str = KEY, **kw: Any) -> dict[str, Any]:
    answer = httpx.post(f"{url}/openapi/v2{path}", headers=headers(key), **kw)
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


def generate(url: str, prompt: str = "a fox", **fields: Any) -> int:
    body = {"model": "v5", "prompt": prompt, "duration": 5, "quality": "540p",
            "aspect_ratio": "16:9", **fields}  # fmt: skip
    answer = post(url, "/video/text/generate", json=body)
    assert answer["ErrCode"] == 0, answer
    video_id: int = answer["Resp"]["video_id"]
    return video_id


def result(url: str, video_id: int | str, key: str = KEY) -> dict[str, Any]:
    answer = httpx.get(f"{url}/openapi/v2/video/result/{video_id}", headers=headers(key))
    assert answer.status_code == 200
    body: dict[str, Any] = answer.json()
    return body


def wait_until(predicate: Callable[[], Any], timeout: float = 5.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)
    return value


def statuses(url: str, video_id: int) -> list[int]:
    seen: list[int] = []
    deadline = time.monotonic() + 5
    while not seen or seen[-1] not in (1, 7, 8):
        assert time.monotonic() < deadline
        status = result(url, video_id)["Resp"]["status"]
        if not seen or seen[-1] != status:
            seen.append(status)
        time.sleep(0.01)
    return seen


def signature(body: bytes, timestamp: str, nonce: str, *, sort: bool = True) -> str:
    """PixVerse's signature, made here from the body the fake sent."""
    fields = json.loads(body)
    names = sorted(fields) if sort else list(fields)

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        return "" if v is None else str(v)

    query = "&".join(f"{quote_plus(k)}={quote_plus(value(fields[k]))}" for k in names)
    mac = hmac.new(SECRET.encode(), f"{timestamp}\n{nonce}\n{query}".encode(), hashlib.sha256)
    return base64.b64encode(mac.digest()).decode()


def run(url: str, call: Callable[[PixVerse], Awaitable[T]]) -> T:
    async def main() -> T:
        config = ProviderConfig("pixverse", "pixverse", url, Secret(KEY), default_model="v5",
                                webhook_secret=Secret(SECRET))  # fmt: skip
        async with httpx.AsyncClient() as client:
            return await call(PixVerse(config, client))

    return asyncio.run(main())


def lifecycle(url: str, request: SubmitRequest) -> tuple[str, list[Observation]]:
    async def call(provider: PixVerse) -> tuple[str, list[Observation]]:
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


# --- videos ---------------------------------------------------------------------------


def test_a_text_video_generates_and_is_served_as_a_real_mp4(url: str, fake: PixVerseFake) -> None:
    video_id = generate(url)
    assert statuses(url, video_id) == [5, 1]
    resp = result(url, video_id)["Resp"]
    assert resp["url"] == f"{url}/media/{video_id}.mp4"
    assert (resp["outputWidth"], resp["outputHeight"], resp["credits"]) == (960, 540, 30)
    video = httpx.get(resp["url"])
    assert video.headers["content-type"] == "video/mp4" and video.content[4:8] == b"ftyp"
    assert resp["size"] == len(video.content)


@pytest.mark.parametrize(("marker", "end"), [("[fail]", 8), ("[moderation]", 7)])
def test_failures_end_in_their_status(url: str, marker: str, end: int) -> None:
    video_id = generate(url, f"a storm {marker}")
    assert statuses(url, video_id) == [5, end]
    assert result(url, video_id)["Resp"]["url"] == ""


def test_an_undocumented_status_comes_first(url: str) -> None:
    assert statuses(url, generate(url, "lanterns [unknown] [slow]")) == [UNDOCUMENTED_STATUS, 5, 1]


def test_an_image_is_uploaded_by_url_form_or_json_or_as_a_file(
    url: str, fake: PixVerseFake
) -> None:
    by_form = post(url, "/image/upload", files={"image_url": (None, "https://img.test/a.jpg")})
    by_json = post(url, "/image/upload", json={"image_url": "https://img.test/b.jpg"})
    by_file = post(url, "/image/upload", files={"image": ("a.png", PNG, "image/png")})
    ids = [a["Resp"]["img_id"] for a in (by_form, by_json, by_file)]
    assert len(set(ids)) == 3
    assert [fake.images[i][1] for i in ids[:2]] == [
        "https://img.test/a.jpg",
        "https://img.test/b.jpg",
    ]
    assert fake.images[ids[2]][1] == f"upload:image/png:{len(PNG)}"
    assert httpx.get(by_file["Resp"]["img_url"]).headers["content-type"] == "image/png"
    body = {"img_id": ids[0], "model": "v5", "prompt": "it moves", "duration": 5, "quality": "540p"}
    made = post(url, "/video/img/generate", json=body)
    assert made["ErrCode"] == 0
    # Generating (5), then done (1); a busy machine may look only once it is done.
    seen = statuses(url, made["Resp"]["video_id"])
    assert seen in ([5, 1], [1])


def test_an_image_of_another_account_or_unknown_is_refused(url: str) -> None:
    img_id = post(url, "/image/upload", json={"image_url": "https://img.test/a.jpg"})["Resp"][
        "img_id"
    ]
    body = {"model": "v5", "prompt": "x", "duration": 5, "quality": "540p"}
    for key, given in ((OTHER_KEY, img_id), (KEY, 12345), (KEY, "one")):
        answer = post(url, "/video/img/generate", key, json={**body, "img_id": given})
        assert (answer["ErrCode"], answer["ErrMsg"]) == (400017, "Invalid parameter: img_id")


@pytest.mark.parametrize(
    "change",
    [{"model": "v9"}, {"duration": 6}, {"duration": "5"}, {"quality": "4k"}, {"prompt": ""},
     {"quality": "1080p", "duration": 8}, {"motion_mode": "fast", "duration": 8},
     {"seed": -1}, {"aspect_ratio": "2:1"}],
)  # fmt: skip
def test_invalid_generations_are_refused_inside_a_200(url: str, change: dict[str, Any]) -> None:
    body = {"model": "v5", "prompt": "x", "duration": 5, "quality": "540p", "aspect_ratio": "16:9"}
    answer = post(url, "/video/text/generate", json={**body, **change})
    assert answer["ErrCode"] == 400017 and answer["ErrMsg"].startswith("Invalid parameter")


def test_the_key_and_a_trace_id_are_required(url: str, fake: PixVerseFake) -> None:
    path = f"{url}/openapi/v2/video/result/1"
    assert httpx.get(path).json()["ErrMsg"] == "Invalid API-KEY"
    assert (
        httpx.get(path, headers={"API-KEY": "wrong", "Ai-trace-id": "t"}).json()["ErrCode"] == 10005
    )
    assert httpx.get(path, headers={"API-KEY": KEY}).json()["ErrMsg"] == "Ai-trace-id is required"


def test_another_account_s_video_does_not_exist(url: str) -> None:
    video_id = generate(url)
    answer = result(url, video_id, OTHER_KEY)
    assert (answer["ErrCode"], answer["ErrMsg"]) == (400018, "Video does not exist")


@pytest.mark.parametrize(
    ("marker", "code", "message"),
    [("[429]", 500069, "Too many requests, please try again later"),
     ("[500]", 500000, "Internal server error"),
     ("[concurrent]", 500044, CONCURRENCY_MESSAGE)],
)  # fmt: skip
def test_markers_refuse_the_generate_inside_a_200(
    url: str, marker: str, code: int, message: str
) -> None:
    body = {"model": "v5", "prompt": f"x {marker}", "duration": 5, "quality": "540p",
            "aspect_ratio": "16:9"}  # fmt: skip
    assert post(url, "/video/text/generate", json=body) | {"Resp": {}} == {
        "ErrCode": code, "ErrMsg": message, "Resp": {},
    }  # fmt: skip


def test_errors_with_http_statuses_on_a_setting(url: str, fake: PixVerseFake) -> None:
    fake.settings.http_errors = True
    body = {"model": "v5", "prompt": "x [429]", "duration": 5, "quality": "540p",
            "aspect_ratio": "16:9"}  # fmt: skip
    answer = httpx.post(f"{url}/openapi/v2/video/text/generate", json=body, headers=headers())
    assert (answer.status_code, answer.headers["retry-after"]) == (429, "1")
    assert answer.json()["ErrCode"] == 500069
    missing = httpx.get(f"{url}/openapi/v2/video/result/1", headers=headers())
    assert missing.status_code == 404


def test_injected_faults_answer_in_pixverse_s_shape(url: str, fake: PixVerseFake) -> None:
    fake.settings.faults.rate_limit, fake.settings.faults.retry_after = 1, 2.0
    answer = httpx.get(f"{url}/openapi/v2/video/result/1", headers=headers())
    assert (answer.status_code, answer.headers["retry-after"]) == (429, "2")
    assert set(answer.json()) == {"ErrCode", "ErrMsg", "Resp"}


def test_a_link_stops_working_after_its_lifetime_on_a_setting(url: str, fake: PixVerseFake) -> None:
    fake.settings.url_lifetime = 60.0
    video_id = generate(url)
    statuses(url, video_id)
    link = result(url, video_id)["Resp"]["url"]
    assert httpx.get(link).status_code == 200
    fake.settings.url_lifetime = 0.0  # as if a lifetime had passed
    assert httpx.get(link).status_code == 404


# --- webhooks -------------------------------------------------------------------------


def test_the_end_is_sent_to_the_console_url_signed_with_sorted_keys(
    url: str, fake: PixVerseFake, hooks: HookReceiver
) -> None:
    fake.settings.webhook_url = hooks.url("plain")
    video_id = generate(url)
    (sent,) = wait_until(lambda: fake.webhooks_of(video_id))
    assert (sent.status, sent.status_code, sent.answer) == (1, 200, b"ok")
    body = json.loads(sent.body)
    assert list(body) == ["id", "status", "url", "size", "has_audio", "credits"]
    assert body["id"] == str(video_id) and body["url"] == f"{url}/media/{video_id}.mp4"
    stamp, nonce = sent.headers["Webhook-Timestamp"], sent.headers["Webhook-Nonce"]
    assert abs(int(stamp) - time.time()) < 5 and len(nonce) == 32
    assert uuid.UUID(sent.headers["Ai-Trace-Id"])
    assert sent.headers["Webhook-Signature"] == signature(sent.body, stamp, nonce)
    assert sent.headers["Webhook-Signature"] != signature(sent.body, stamp, nonce, sort=False)


def test_the_key_order_is_a_setting(url: str, fake: PixVerseFake, hooks: HookReceiver) -> None:
    fake.settings.webhook_url = hooks.url("plain")
    fake.settings.key_order = "as sent"
    video_id = generate(url, "a storm [fail]")
    (sent,) = wait_until(lambda: fake.webhooks_of(video_id))
    stamp, nonce = sent.headers["Webhook-Timestamp"], sent.headers["Webhook-Nonce"]
    assert sent.headers["Webhook-Signature"] == signature(sent.body, stamp, nonce, sort=False)
    assert json.loads(sent.body)["status"] == 8


@pytest.mark.parametrize("answer", [500, "ok"])  # "ok" answers JSON, not the text ok
def test_anything_but_200_with_ok_is_sent_again_freshly_signed(
    url: str, fake: PixVerseFake, hooks: HookReceiver, answer: str | int
) -> None:
    fake.settings.webhook_url = hooks.url(answer)
    video_id = generate(url)
    sent = wait_until(lambda: (w := fake.webhooks_of(video_id)) and len(w) == 3 and w)
    time.sleep(0.15)
    assert len(fake.webhooks_of(video_id)) == 3  # the first try and the two retries
    assert len({w.body for w in sent}) == 1
    assert len({w.headers["Webhook-Nonce"] for w in sent}) == 3
    for attempt in sent:
        stamp, nonce = attempt.headers["Webhook-Timestamp"], attempt.headers["Webhook-Nonce"]
        assert attempt.headers["Webhook-Signature"] == signature(attempt.body, stamp, nonce)


def test_lost_duplicated_and_start_webhooks(
    url: str, fake: PixVerseFake, hooks: HookReceiver
) -> None:
    fake.settings.webhook_url = hooks.url("plain")
    lost = generate(url, "a fox [lost]")
    twice = generate(url, "a fox [duplicate]")
    pair = wait_until(lambda: (w := fake.webhooks_of(twice)) and len(w) == 2 and w)
    assert pair[0].headers == pair[1].headers and pair[0].body == pair[1].body
    wait_until(lambda: result(url, lost)["Resp"]["status"] == 1)
    assert fake.webhooks_of(lost) == []
    fake.settings.webhook_on_start = True
    started = generate(url)
    sent = wait_until(lambda: (w := fake.webhooks_of(started)) and len(w) == 2 and w)
    assert [w.status for w in sent] == [5, 1]


def test_no_console_url_no_webhooks(url: str, fake: PixVerseFake) -> None:
    video_id = generate(url)
    statuses(url, video_id)
    time.sleep(0.05)
    assert fake.webhooks_of(video_id) == []


# --- the adapter against the fake -----------------------------------------------------


def test_the_adapter_runs_a_text_video_to_its_end(url: str, fake: PixVerseFake) -> None:
    before = len(fake.trace_ids)
    video_id, seen = lifecycle(url, SubmitRequest(prompt="a fox [slow]"))
    assert [o.provider_status for o in seen][-1] == "1"
    assert seen[-1].result_url == f"{url}/media/{video_id}.mp4"
    assert seen[-1].credits == 30.0
    traces = fake.trace_ids[before:]
    assert len(traces) == len(set(traces)) == 1 + len(seen)


@pytest.mark.parametrize(
    "image", ["https://img.test/cat.jpg", "data:image/png;base64," + base64.b64encode(PNG).decode()]
)
def test_the_adapter_uploads_the_image_first(url: str, fake: PixVerseFake, image: str) -> None:
    video_id, seen = lifecycle(url, SubmitRequest(prompt="it moves", images=[image]))
    assert seen[-1].status is Status.COMPLETED
    img_id = fake.tasks[video_id].params["img_id"]
    expected = image if image.startswith("https") else f"upload:image/png:{len(PNG)}"
    assert fake.images[img_id][1] == expected


@pytest.mark.parametrize(("marker", "word"), [("[fail]", "8"), ("[moderation]", "7")])
def test_the_adapter_reads_failures(url: str, marker: str, word: str) -> None:
    _, seen = lifecycle(url, SubmitRequest(prompt=f"a storm {marker}"))
    assert (seen[-1].status, seen[-1].provider_status) == (Status.FAILED, word)
    assert seen[-1].error and f"status {word}" in seen[-1].error


@pytest.mark.parametrize(
    ("prompt", "transient"), [("x [concurrent]", True), ("x [500]", False), ("x [429]", True)]
)
def test_the_adapter_classifies_refusals_inside_a_200(
    url: str, prompt: str, transient: bool
) -> None:
    # "Internal server error" in a 200 says nothing the adapter can tell is passing.
    with pytest.raises(ProviderError) as caught:
        run(url, lambda p: p.submit(SubmitRequest(prompt=prompt), None))
    assert caught.value.transient is transient and not caught.value.may_have_acted


@pytest.mark.parametrize("order", ["sorted", "as sent"])
def test_the_adapter_verifies_the_fake_s_webhooks(
    url: str, fake: PixVerseFake, hooks: HookReceiver, order: str
) -> None:
    fake.settings.webhook_url = hooks.url("plain")
    fake.settings.key_order = order
    video_id = generate(url)
    (sent,) = wait_until(lambda: fake.webhooks_of(video_id))

    async def check(provider: PixVerse) -> tuple[str, Observation]:
        named = provider.verify_account_callback(sent.headers, sent.body, tolerance=300)
        return named.task_id, provider.parse_callback(json.loads(sent.body))

    task_id, seen = run(url, check)
    assert task_id == str(video_id)
    assert (seen.status, seen.result_url) == (Status.COMPLETED, f"{url}/media/{video_id}.mp4")

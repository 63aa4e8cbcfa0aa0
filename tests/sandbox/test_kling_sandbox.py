"""The fake Kling on loopback: its JWT checks (tokens made by PyJWT), its tasks and
callbacks, driven by the real adapter where one is involved."""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import httpx
import jwt
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from receiver.config import KeyPair, ProviderConfig, Secret
from receiver.providers.base import JobRef, Observation, ProviderError, SubmitRequest
from receiver.providers.kling import Kling
from receiver.sandbox.base import Faults, Timing
from receiver.sandbox.kling import (
    FAIL_MESSAGE,
    POLICY_MESSAGE,
    UNDOCUMENTED_STATUS,
    KlingFake,
    KlingFakeSettings,
)
from receiver.sandbox.server import ServerThread
from receiver.states import Status

T = TypeVar("T")
ACCESS, SECRET = "ak-sandbox-0001", "sk-sandbox-0001-long-enough-for-hs256"
OTHER_ACCESS, OTHER_SECRET = "ak-sandbox-0002", "sk-sandbox-0002-long-enough-for-hs256"
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n a tiny image").decode()


def fast_settings() -> KlingFakeSettings:
    return KlingFakeSettings(
        key_pairs={ACCESS: SECRET, OTHER_ACCESS: OTHER_SECRET},
        timing=Timing(queue_delay=0.03, start_delay=0.03, run_time=0.05, slow_factor=8),
        faults=Faults(),
        callback_retry_delays=(0.05, 0.05),
        callback_timeout=2.0,
    )


def token(access: str = ACCESS, secret: str = SECRET, **claims: Any) -> str:
    now = int(time.time())
    payload = {"iss": access, "exp": now + 1800, "nbf": now - 5} | claims
    return jwt.encode({k: v for k, v in payload.items() if v is not None}, secret, "HS256")


class Hooks:
    """Records the callbacks POSTed to /cb/{status}/{token}, answering {status}."""

    def __init__(self) -> None:
        self.seen: dict[str, list[bytes]] = {}
        self.lock = threading.Lock()
        route = Route("/cb/{status:int}/{token}", self.record, methods=["POST"])
        self.server = ServerThread(Starlette(routes=[route]))

    async def record(self, request: Request) -> Response:
        body = await request.body()
        with self.lock:
            self.seen.setdefault(request.path_params["token"], []).append(body)
        return Response(status_code=request.path_params["status"])

    def url(self, status: int = 200) -> str:
        return f"{self.server.url}/cb/{status}/{uuid.uuid4().hex}"

    def bodies(self, url: str) -> list[dict[str, Any]]:
        with self.lock:
            return [json.loads(b) for b in self.seen.get(url.rsplit("/", 1)[1], [])]


@pytest.fixture(scope="module")
def server() -> Iterator[ServerThread]:
    with ServerThread(KlingFake(fast_settings()).app) as running:
        yield running


@pytest.fixture(scope="module")
def hooks() -> Iterator[Hooks]:
    receiver = Hooks()
    with receiver.server:
        yield receiver


@pytest.fixture
def fake(server: ServerThread) -> Iterator[KlingFake]:
    app = server.app
    assert isinstance(app, Starlette)
    sandbox: KlingFake = app.state.sandbox
    yield sandbox
    sandbox.settings = fast_settings()


@pytest.fixture
def url(server: ServerThread, fake: KlingFake) -> str:
    return server.url


def run(
    base_url: str, call: Callable[[Kling], Awaitable[T]], pair: tuple[str, str] = (ACCESS, SECRET)
) -> T:
    async def main() -> T:
        config = ProviderConfig(
            name="kling",
            type="kling",
            base_url=base_url,
            api_key=KeyPair(Secret(pair[0]), Secret(pair[1])),
            default_model="kling-v2-6",
            timeout=5.0,
        )
        async with httpx.AsyncClient() as client:
            return await call(Kling(config, client))

    return asyncio.run(main())


async def until_ended(kling: Kling, task_id: str, job_id: str = "job") -> list[Observation]:
    fingerprint = kling.config.api_key.fingerprint
    seen: list[Observation] = []
    deadline = time.monotonic() + 5
    while not seen or not seen[-1].status.terminal:
        assert time.monotonic() < deadline, seen[-1:]
        seen.append(await kling.fetch(JobRef(job_id, task_id, fingerprint)))
        await asyncio.sleep(0.01)
    return seen


def wait_until(predicate: Callable[[], object], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


# -- auth -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("authorization", "code", "message"),
    [
        (None, 1001, "Authorization is empty"),
        ("Bearer", 1002, "Authorization is invalid"),
        ("Bearer not.a-token", 1002, "Authorization is invalid"),
        ("Basic " + token(), 1002, "Authorization is invalid"),
        (
            "Bearer " + token(secret="the wrong secret, but long enough too"),
            1000,
            "Authentication failed",
        ),
        ("Bearer " + token(access="ak-nobody"), 1000, "Authentication failed"),
        ("Bearer " + token(exp=None), 1002, "Authorization is invalid"),
        ("Bearer " + token(nbf=int(time.time()) + 600), 1003, "Authorization is not yet valid"),
        ("Bearer " + token(exp=int(time.time()) - 1), 1004, "Authorization has expired"),
    ],
)
def test_tokens_are_checked_as_kling_checks_them(url, fake, authorization, code, message):
    headers = {"Authorization": authorization} if authorization else {}
    answer = httpx.get(f"{url}/v1/videos/text2video/123", headers=headers)
    assert answer.status_code == 401
    body = answer.json()
    assert (body["code"], body["message"]) == (code, message)
    assert body["request_id"]


def test_an_unsigned_token_is_refused(url):
    unsigned = jwt.encode({"iss": ACCESS, "exp": int(time.time()) + 60}, None, algorithm="none")
    answer = httpx.get(
        f"{url}/v1/videos/text2video/1", headers={"Authorization": f"Bearer {unsigned}"}
    )
    assert (answer.status_code, answer.json()["code"]) == (401, 1002)


def test_a_valid_token_reaches_the_api(url):
    answer = httpx.get(
        f"{url}/v1/videos/text2video/1", headers={"Authorization": f"Bearer {token()}"}
    )
    assert (answer.status_code, answer.json()["code"]) == (404, 1203)


def test_the_adapter_s_tokens_pass(url, fake):
    async def call(kling: Kling) -> Any:
        return await kling.submit(SubmitRequest(prompt="a cat"), None)

    assert run(url, call).observation.provider_status == "submitted"


# -- tasks ------------------------------------------------------------------------------------


def test_a_text_task_succeeds_with_a_video(url, fake):
    async def call(kling: Kling) -> Any:
        submission = await kling.submit(SubmitRequest(prompt="a cat", job_id="job-t2v"), None)
        return submission, await until_ended(kling, submission.provider_job_id)

    submission, seen = run(url, call)
    words = [o.provider_status for o in seen]
    assert words[-1] == "succeed" and all(o.known for o in seen)
    done = seen[-1]
    assert done.result_url == f"{url}/files/{submission.provider_job_id}.mp4"
    assert done.credits == 1.0
    video = httpx.get(done.result_url)
    assert (video.status_code, video.headers["content-type"]) == (200, "video/mp4")
    task = fake.tasks[submission.provider_job_id]
    assert (task.kind, task.external_task_id, task.params["model_name"]) == (
        "text2video",
        "job-t2v",
        "kling-v2-6",
    )


def test_an_image_task_takes_the_image_without_its_data_prefix(url, fake):
    async def call(kling: Kling) -> Any:
        request = SubmitRequest(prompt=None, images=[f"data:image/png;base64,{PNG}", PNG])
        submission = await kling.submit(request, None)
        return submission, await until_ended(kling, submission.provider_job_id)

    submission, seen = run(url, call)
    assert seen[-1].status is Status.COMPLETED
    task = fake.tasks[submission.provider_job_id]
    assert (task.kind, task.params["image"], task.params["image_tail"]) == ("image2video", PNG, PNG)


def test_the_fake_refuses_what_kling_refuses(url):
    headers = {"Authorization": f"Bearer {token()}"}
    cases = [
        ("text2video", {"prompt": ""}, "prompt is required"),
        ("text2video", {"prompt": "a", "duration": 5}, "duration must be one of 5, 10"),
        ("text2video", {"prompt": "a", "model_name": "kling-v9"}, "model_name is invalid"),
        ("image2video", {"prompt": "a"}, "at least one of image and image_tail"),
        ("image2video", {"image": f"data:image/png;base64,{PNG}"}, "without the data: prefix"),
    ]
    for kind, body, message in cases:
        answer = httpx.post(f"{url}/v1/videos/{kind}", json=body, headers=headers)
        assert answer.status_code == 400, body
        assert answer.json()["code"] == 1201 and message in answer.json()["message"]


def test_a_failed_task_says_why(url):
    async def call(kling: Kling) -> Any:
        submission = await kling.submit(SubmitRequest(prompt="a storm [fail]"), None)
        return await until_ended(kling, submission.provider_job_id)

    failed = run(url, call)[-1]
    assert (failed.status, failed.error) == (Status.FAILED, FAIL_MESSAGE)


def test_an_undocumented_status_comes_before_processing(url):
    async def call(kling: Kling) -> Any:
        submission = await kling.submit(SubmitRequest(prompt="lanterns [unknown] [slow]"), None)
        return await until_ended(kling, submission.provider_job_id)

    words = [o.provider_status for o in run(url, call)]
    assert UNDOCUMENTED_STATUS in words
    assert words.index(UNDOCUMENTED_STATUS) < words.index("processing")


@pytest.mark.parametrize(
    ("marker", "status", "code", "transient"),
    [
        ("[429]", 429, "1302", True),
        ("[busy]", 429, "1303", True),
        ("[arrears]", 429, "1101", False),
        ("[policy]", 400, "1301", False),
        ("[500]", 500, "5000", True),
    ],
)
def test_refused_submissions(url, marker, status, code, transient):
    async def call(kling: Kling) -> Any:
        return await kling.submit(SubmitRequest(prompt=f"a cat {marker}"), None)

    with pytest.raises(ProviderError) as caught:
        run(url, call)
    error = caught.value
    assert (error.status_code, error.code, error.transient) == (status, code, transient)
    if marker == "[429]":
        assert error.retry_after == 1
    if marker == "[policy]":
        assert POLICY_MESSAGE in error.message


def test_a_submission_sent_twice_makes_one_task(url, fake):
    async def call(kling: Kling) -> Any:
        request = SubmitRequest(prompt="a cat", job_id="job-twice")
        return [await kling.submit(request, None) for _ in range(2)]

    before = len(fake.requests)
    first, second = run(url, call)
    assert first.provider_job_id == second.provider_job_id
    assert [t.external_task_id for t in fake.tasks.values()].count("job-twice") == 1
    # The second was refused as a duplicate, then found by its external_task_id.
    wait_until(lambda: len(fake.requests) - before == 3)
    answers = [(r.method, r.status_code) for r in fake.requests[before:]]
    assert answers == [("POST", 200), ("POST", 400), ("GET", 200)]


def test_a_task_is_found_by_its_external_id_and_only_by_its_account(url):
    async def call(kling: Kling) -> Any:
        return await kling.submit(SubmitRequest(prompt="a cat", job_id="job-lookup"), None)

    task_id = run(url, call).provider_job_id
    headers = {"Authorization": f"Bearer {token()}"}
    by_external = httpx.get(f"{url}/v1/videos/text2video/job-lookup", headers=headers)
    assert by_external.json()["data"]["task_id"] == task_id
    other = {"Authorization": f"Bearer {token(OTHER_ACCESS, OTHER_SECRET)}"}
    assert httpx.get(f"{url}/v1/videos/text2video/{task_id}", headers=other).status_code == 404


def test_a_task_is_found_only_under_its_own_kind_unless_told(url, fake):
    async def call(kling: Kling) -> Any:
        return await kling.submit(SubmitRequest(prompt="a cat"), None)

    task_id = run(url, call).provider_job_id
    headers = {"Authorization": f"Bearer {token()}"}
    other_kind = f"{url}/v1/videos/image2video/{task_id}"
    assert httpx.get(other_kind, headers=headers).status_code == 404
    fake.settings.strict_kinds = False
    assert httpx.get(other_kind, headers=headers).status_code == 200


def test_the_list_shows_the_account_s_tasks_newest_first(url, fake):
    async def call(kling: Kling) -> Any:
        return [(await kling.submit(SubmitRequest(prompt=f"cat {i}"), None)) for i in range(2)]

    made = [s.provider_job_id for s in run(url, call)]
    headers = {"Authorization": f"Bearer {token()}"}
    listed = httpx.get(f"{url}/v1/videos/text2video?pageNum=1&pageSize=2", headers=headers).json()
    assert [t["task_id"] for t in listed["data"]] == made[::-1]


def test_injected_rate_limits_answer_in_kling_s_shape(url, fake):
    fake.settings.faults.rate_limit, fake.settings.faults.retry_after = 1, 2
    answer = httpx.get(
        f"{url}/v1/videos/text2video/1", headers={"Authorization": f"Bearer {token()}"}
    )
    assert answer.status_code == 429 and answer.headers["retry-after"] == "2"
    assert answer.json()["code"] == 1302


# -- callbacks --------------------------------------------------------------------------------


def submit_with_callback(url: str, prompt: str, callback_url: str) -> str:
    async def call(kling: Kling) -> Any:
        request = SubmitRequest(prompt=prompt, job_id=f"job-{uuid.uuid4().hex[:8]}")
        return await kling.submit(request, callback_url)

    return run(url, call).provider_job_id


def test_every_status_change_is_called_back_with_the_bare_task(url, fake, hooks):
    target = hooks.url()
    task_id = submit_with_callback(url, "a cat [unknown]", target)
    wait_until(lambda: [b["task_status"] for b in hooks.bodies(target)][-1:] == ["succeed"])
    bodies = hooks.bodies(target)
    assert [b["task_status"] for b in bodies] == [UNDOCUMENTED_STATUS, "processing", "succeed"]
    assert all(b["task_id"] == task_id for b in bodies)
    assert bodies[-1]["task_result"]["videos"][0]["url"].endswith(f"/files/{task_id}.mp4")
    assert "code" not in bodies[-1]


def test_callbacks_can_come_enveloped(url, fake, hooks):
    fake.settings.callback_envelope = True
    target = hooks.url()
    task_id = submit_with_callback(url, "a cat [fail]", target)
    wait_until(lambda: len(hooks.bodies(target)) == 2)
    last = hooks.bodies(target)[-1]
    assert (last["code"], last["message"]) == (0, "SUCCEED")
    assert (last["data"]["task_id"], last["data"]["task_status"]) == (task_id, "failed")
    assert last["data"]["task_status_msg"] == FAIL_MESSAGE


def test_a_refused_callback_is_retried_as_set(url, fake, hooks):
    target = hooks.url(503)
    task_id = submit_with_callback(url, "a cat", target)
    wait_until(lambda: len([c for c in fake.callbacks if c.task_id == task_id]) == 6)
    tries = [c for c in fake.callbacks if c.task_id == task_id]
    assert [c.status for c in tries] == ["processing"] * 3 + ["succeed"] * 3
    assert len({c.body for c in tries if c.status == "succeed"}) == 1  # byte-identical


def test_lost_callbacks_are_never_sent(url, fake, hooks):
    target = hooks.url()
    task_id = submit_with_callback(url, "a cat [lost]", target)
    wait_until(lambda: fake.tasks[task_id].status == "succeed")
    time.sleep(0.1)
    assert hooks.bodies(target) == []

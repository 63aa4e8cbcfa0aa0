"""The fake Replicate on loopback, driven by the real adapter and by plain requests."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import httpx
import pytest
from starlette.applications import Starlette

from receiver.config import ProviderConfig, Secret
from receiver.providers.base import JobRef, ProviderError, SubmitRequest
from receiver.providers.replicate import Replicate
from receiver.sandbox.base import Timing
from receiver.sandbox.replicate import (
    FAIL_MESSAGE,
    THROTTLED,
    UNDOCUMENTED_STATUS,
    ReplicateFake,
    ReplicateFakeSettings,
    version_of,
)
from receiver.sandbox.server import ServerThread
from receiver.states import Status
from tests.sandbox.hooks import Delivery, Hooks

T = TypeVar("T")
KEY = "r8_sandbox_replicate_0001"
SECRET = "whsec_" + base64.b64encode(b"replicate-sandbox-secret-0123456").decode()
HEADERS = {"Authorization": f"Bearer {KEY}"}
MODEL = "google/veo-3.1-fast"


def fast_settings() -> ReplicateFakeSettings:
    return ReplicateFakeSettings(
        api_keys=[KEY],
        timing=Timing(queue_delay=0.03, start_delay=0.03, run_time=0.1, slow_factor=5),
        webhook_secret=SECRET,
        webhook_retry_delays=(0.05, 0.05),
    )


@pytest.fixture(scope="module")
def server() -> Iterator[ServerThread]:
    with ServerThread(ReplicateFake(fast_settings()).app) as running:
        yield running


@pytest.fixture(scope="module")
def hooks() -> Iterator[Hooks]:
    receiver = Hooks()
    with receiver.server:
        yield receiver


@pytest.fixture
def fake(server: ServerThread) -> Iterator[ReplicateFake]:
    app = server.app
    assert isinstance(app, Starlette)
    sandbox: ReplicateFake = app.state.sandbox
    yield sandbox
    sandbox.settings = fast_settings()


@pytest.fixture
def url(server: ServerThread, fake: ReplicateFake) -> str:
    return server.url


def create(url: str, prompt: str, webhook: str | None = None, **extra: Any) -> httpx.Response:
    body: dict[str, Any] = {"input": {"prompt": prompt}} | extra
    if webhook:
        body["webhook"] = webhook
    return httpx.post(f"{url}/v1/models/{MODEL}/predictions", json=body, headers=HEADERS)


def get(url: str, prediction_id: str) -> dict[str, Any]:
    answer = httpx.get(f"{url}/v1/predictions/{prediction_id}", headers=HEADERS)
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


def until(url: str, prediction_id: str, statuses: tuple[str, ...]) -> dict[str, Any]:
    deadline = time.monotonic() + 5
    while (body := get(url, prediction_id))["status"] not in statuses:
        assert time.monotonic() < deadline, body
        time.sleep(0.01)
    return body


def verify(delivery: Delivery, secret: str = SECRET) -> None:
    """Standard Webhooks, checked here rather than by vidhook's verifier."""
    headers = delivery.headers
    key = base64.b64decode(secret.removeprefix("whsec_"))
    content = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + delivery.body
    expected = base64.b64encode(hmac.new(key, content, hashlib.sha256).digest()).decode()
    assert headers["webhook-signature"] == f"v1,{expected}"
    assert abs(int(headers["webhook-timestamp"]) - time.time()) < 60


def run(base_url: str, call: Callable[[Replicate], Awaitable[T]]) -> T:
    async def main() -> T:
        config = ProviderConfig(
            name="replicate",
            type="replicate",
            base_url=base_url,
            api_key=Secret(KEY),
            default_model=MODEL,
            timeout=5.0,
            webhook_secret=Secret(SECRET),
        )
        async with httpx.AsyncClient() as client:
            return await call(Replicate(config, client))

    return asyncio.run(main())


# -- creating --------------------------------------------------------------------------------


def test_a_create_answers_the_prediction(url):
    answer = create(url, "A heron")
    assert answer.status_code == 201
    body = answer.json()
    assert body["status"] == "starting" and body["model"] == MODEL
    assert body["version"] == version_of(MODEL)
    assert body["urls"]["get"] == f"{url}/v1/predictions/{body['id']}"
    assert body["urls"]["cancel"].endswith(f"/v1/predictions/{body['id']}/cancel")
    assert (body["output"], body["error"], body["data_removed"]) == (None, None, False)
    assert len(body["id"]) == 26


@pytest.mark.parametrize("version", [version_of(MODEL), f"{MODEL}:{version_of(MODEL)}"])
def test_a_create_by_version(url, version):
    body = {"version": version, "input": {"prompt": "A heron"}}
    answer = httpx.post(f"{url}/v1/predictions", json=body, headers=HEADERS)
    assert answer.status_code == 201 and answer.json()["model"] == MODEL


@pytest.mark.parametrize(
    ("path", "body", "status"),
    [
        ("/v1/models/nobody/nothing/predictions", {"input": {"prompt": "x"}}, 404),
        ("/v1/predictions", {"version": "0" * 64, "input": {"prompt": "x"}}, 422),
        ("/v1/predictions", {"version": f"other/model:{version_of(MODEL)}", "input": {}}, 422),
        (f"/v1/models/{MODEL}/predictions", {"input": "x"}, 422),
        (f"/v1/models/{MODEL}/predictions", {"input": {}}, 422),
        (f"/v1/models/{MODEL}/predictions", {"input": {"prompt": "x"}, "webhook": "nope"}, 422),
        (
            f"/v1/models/{MODEL}/predictions",
            {"input": {"prompt": "x"}, "webhook_events_filter": ["everything"]},
            422,
        ),
    ],
)
def test_the_fake_refuses_what_replicate_refuses(url, path, body, status):
    answer = httpx.post(f"{url}{path}", json=body, headers=HEADERS)
    assert answer.status_code == status
    assert set(answer.json()) == {"title", "detail", "status"}


def test_errors_can_be_detail_only_and_keys_are_checked(url, fake):
    refused = httpx.get(f"{url}/v1/predictions/x", headers={"Authorization": "Bearer nope"})
    assert refused.status_code == 401 and refused.json()["title"] == "Unauthenticated"
    fake.settings.problem_json = False
    refused = httpx.get(f"{url}/v1/predictions/x", headers=HEADERS)
    assert refused.status_code == 404 and set(refused.json()) == {"detail"}


def test_another_account_cannot_see_a_prediction(url, fake):
    fake.settings.api_keys = [KEY, "r8_other"]
    prediction_id = create(url, "A heron").json()["id"]
    other = httpx.get(
        f"{url}/v1/predictions/{prediction_id}", headers={"Authorization": "Bearer r8_other"}
    )
    assert other.status_code == 404


def test_the_create_status_is_a_setting(url, fake):
    fake.settings.create_status = 200
    assert create(url, "A heron").status_code == 200


def test_throttled_creates_say_when_to_come_back(url, fake):
    fake.settings.retry_after = 3
    answer = create(url, "A heron [429]")
    assert answer.status_code == 429
    assert answer.headers["retry-after"] == "3"
    assert answer.json()["detail"] == THROTTLED


def test_the_secret_is_served(url):
    answer = httpx.get(f"{url}/v1/webhooks/default/secret", headers=HEADERS)
    assert answer.json() == {"key": SECRET}


# -- progress, output, retention -------------------------------------------------------------


def test_a_prediction_succeeds_with_a_url_and_its_file(url):
    prediction_id = create(url, "A heron").json()["id"]
    done = until(url, prediction_id, ("succeeded",))
    assert done["output"] == f"{url}/files/{prediction_id}/output.mp4"
    assert done["started_at"] and done["completed_at"] and done["metrics"]["predict_time"] > 0
    assert httpx.get(done["output"]).content[4:8] == b"ftyp"


def test_output_as_a_list(url, fake):
    marked = until(url, create(url, "A heron [list]").json()["id"], ("succeeded",))
    fake.settings.output_list = True
    listed = until(url, create(url, "A heron").json()["id"], ("succeeded",))
    for body in (marked, listed):
        assert isinstance(body["output"], list) and body["output"][0].endswith("output.mp4")


def test_outputs_are_removed_after_the_retention(url, fake):
    # Long enough for a busy machine to fetch the output before it goes.
    fake.settings.retention = 1.0
    done = until(url, create(url, "A heron").json()["id"], ("succeeded",))
    assert httpx.get(done["output"]).status_code == 200
    time.sleep(1.05)
    gone = get(url, done["id"])
    assert (gone["data_removed"], gone["output"], gone["input"]) == (True, None, {})
    assert gone["status"] == "succeeded"
    assert httpx.get(done["output"]).status_code == 404


def test_a_failure_and_an_undocumented_status(url):
    failed = until(url, create(url, "A heron [fail]").json()["id"], ("failed",))
    assert failed["error"] == FAIL_MESSAGE and failed["output"] is None
    prediction_id = create(url, "A heron [unknown] [slow]").json()["id"]
    assert until(url, prediction_id, (UNDOCUMENTED_STATUS,))["status"] == UNDOCUMENTED_STATUS


def test_cancel_stops_a_running_prediction_and_leaves_an_ended_one(url):
    prediction_id = create(url, "A heron [never]").json()["id"]
    until(url, prediction_id, ("processing",))
    answer = httpx.post(f"{url}/v1/predictions/{prediction_id}/cancel", headers=HEADERS)
    assert answer.status_code == 200 and answer.json()["status"] == "canceled"
    done = until(url, create(url, "A heron").json()["id"], ("succeeded",))
    again = httpx.post(f"{url}/v1/predictions/{done['id']}/cancel", headers=HEADERS)
    assert again.json()["status"] == "succeeded"


# -- webhooks --------------------------------------------------------------------------------


def test_the_filter_picks_the_events_and_each_is_signed(url, fake, hooks):
    hook = hooks.url()
    create(url, "A heron", hook, webhook_events_filter=["start", "completed"])
    start, completed = hooks.wait(hook, 2)
    for delivery in (start, completed):
        verify(delivery)
    assert [json.loads(d.body)["status"] for d in (start, completed)] == [
        "processing",
        "succeeded",
    ]
    assert start.headers["webhook-id"] != completed.headers["webhook-id"]
    time.sleep(0.1)
    assert len(hooks.deliveries(hook)) == 2  # no output or logs events
    assert [w.event for w in fake.webhooks if w.prediction_id == json.loads(start.body)["id"]] == [
        "start",
        "completed",
    ]


def test_without_a_filter_output_and_completion_are_sent(url, hooks):
    hook = hooks.url()
    create(url, "A heron", hook)
    output, completed = hooks.wait(hook, 2)
    assert json.loads(output.body)["status"] == "processing"
    assert json.loads(output.body)["output"] and json.loads(completed.body)["status"] == "succeeded"


def test_only_the_end_is_retried_with_the_same_id_and_bytes(url, fake, hooks):
    hook = hooks.url(status=500)
    create(url, "A heron", hook, webhook_events_filter=["start", "completed"])
    got = hooks.wait(hook, 4)  # start once; the end three times
    time.sleep(0.15)
    got = hooks.deliveries(hook)
    statuses = [json.loads(d.body)["status"] for d in got]
    assert statuses == ["processing", "succeeded", "succeeded", "succeeded"]
    ends = got[1:]
    assert len({d.headers["webhook-id"] for d in ends}) == 1
    assert len({d.body for d in ends}) == 1
    for delivery in got:
        verify(delivery)


def test_lost_and_duplicated_webhooks(url, hooks):
    lost = hooks.url()
    create(url, "A heron [lost]", lost)
    twice = hooks.url()
    create(url, "A heron [duplicate]", twice, webhook_events_filter=["completed"])
    first, second = hooks.wait(twice, 2)
    assert first.body == second.body and first.headers["webhook-id"] == second.headers["webhook-id"]
    assert hooks.deliveries(lost) == []


def test_a_cancel_is_announced_as_the_end(url, hooks):
    hook = hooks.url()
    prediction_id = create(url, "A heron [never]", hook, webhook_events_filter=["completed"])
    prediction_id = prediction_id.json()["id"]
    until(url, prediction_id, ("processing",))
    httpx.post(f"{url}/v1/predictions/{prediction_id}/cancel", headers=HEADERS)
    (end,) = hooks.wait(hook, 1)
    assert json.loads(end.body)["status"] == "canceled"


# -- the adapter against the fake ------------------------------------------------------------


def test_the_adapter_runs_a_prediction_to_its_end(url, hooks):
    hook = hooks.url()

    async def call(replicate: Replicate) -> Any:
        submitted = await replicate.submit(SubmitRequest(prompt="A heron"), hook)
        ref = JobRef("job", submitted.provider_job_id, replicate.config.api_key.fingerprint)
        while not (seen := await replicate.fetch(ref)).status.terminal:
            await asyncio.sleep(0.01)
        return submitted, seen

    submitted, seen = run(url, call)
    assert seen.status is Status.COMPLETED
    assert seen.result_url == f"{url}/files/{submitted.provider_job_id}/output.mp4"
    start, end = hooks.wait(hook, 2)
    ref = JobRef("job", submitted.provider_job_id, None)

    async def check(replicate: Replicate) -> list[str]:
        return [
            replicate.verify_callback(ref, d.headers, d.body, tolerance=300) for d in (start, end)
        ]

    assert run(url, check) == [start.headers["webhook-id"], end.headers["webhook-id"]]


def test_the_adapter_reads_a_throttled_create(url):
    async def call(replicate: Replicate) -> Any:
        return await replicate.submit(SubmitRequest(prompt="A heron [429]"), None)

    with pytest.raises(ProviderError) as caught:
        run(url, call)
    assert caught.value.status_code == 429 and caught.value.retry_after == 1
    assert caught.value.message == THROTTLED


@pytest.mark.parametrize(
    "settings", [{"create_status": 200}, {"output_list": True}, {"problem_json": False}]
)
def test_the_adapter_reads_either_reading_of_what_the_docs_leave_open(url, fake, settings):
    for name, value in settings.items():
        setattr(fake.settings, name, value)

    async def call(replicate: Replicate) -> Any:
        submitted = await replicate.submit(SubmitRequest(prompt="A heron"), None)
        ref = JobRef("job", submitted.provider_job_id, replicate.config.api_key.fingerprint)
        while not (seen := await replicate.fetch(ref)).status.terminal:
            await asyncio.sleep(0.01)
        try:
            await replicate.fetch(JobRef("job", "nosuchprediction", None))
        except ProviderError as exc:
            return submitted, seen, exc
        raise AssertionError("an unknown prediction was found")

    submitted, seen, refused = run(url, call)
    assert seen.result_url == f"{url}/files/{submitted.provider_job_id}/output.mp4"
    assert (refused.status_code, refused.transient) == (404, False)
    assert refused.message == "The requested resource could not be found."

"""The fake fal queue on loopback, driven by the real adapter and by plain requests."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import httpx
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from starlette.applications import Starlette

from receiver.config import ProviderConfig, Secret
from receiver.providers.base import JobRef, Progress, SubmitRequest
from receiver.providers.fal import Fal
from receiver.sandbox.base import Timing
from receiver.sandbox.fal import (
    PAYLOAD_ERROR,
    POLICY_MESSAGE,
    POLICY_TYPE,
    UNDOCUMENTED_STATUS,
    FalFake,
    FalFakeSettings,
)
from receiver.sandbox.server import ServerThread
from receiver.states import Status
from tests.sandbox.hooks import Delivery, Hooks

T = TypeVar("T")
KEY = "fal-sandbox-id:fal-sandbox-secret"
HEADERS = {"Authorization": f"Key {KEY}"}
MODEL = "fal-ai/kling-video/v2.5-turbo/pro/text-to-video"
APP = "fal-ai/kling-video"


def fast_settings() -> FalFakeSettings:
    return FalFakeSettings(
        api_keys=[KEY],
        timing=Timing(queue_delay=0.03, start_delay=0.03, run_time=0.1, slow_factor=5),
        webhook_retry_delays=(0.05, 0.05),
    )


@pytest.fixture(scope="module")
def server() -> Iterator[ServerThread]:
    with ServerThread(FalFake(fast_settings()).app) as running:
        yield running


@pytest.fixture(scope="module")
def hooks() -> Iterator[Hooks]:
    receiver = Hooks()
    with receiver.server:
        yield receiver


@pytest.fixture
def fake(server: ServerThread) -> Iterator[FalFake]:
    app = server.app
    assert isinstance(app, Starlette)
    sandbox: FalFake = app.state.sandbox
    yield sandbox
    sandbox.settings = fast_settings()


@pytest.fixture
def url(server: ServerThread, fake: FalFake) -> str:
    return server.url


def submit(url: str, prompt: str, webhook: str | None = None, model: str = MODEL) -> Any:
    params = {"fal_webhook": webhook} if webhook else None
    answer = httpx.post(f"{url}/{model}", json={"prompt": prompt}, headers=HEADERS, params=params)
    assert answer.status_code == 200, answer.text
    return answer.json()


def status(url: str, request_id: str, app: str = APP) -> httpx.Response:
    return httpx.get(f"{url}/{app}/requests/{request_id}/status", headers=HEADERS)


def until(url: str, request_id: str, word: str) -> dict[str, Any]:
    deadline = time.monotonic() + 5
    while (body := status(url, request_id).json())["status"] != word:
        assert time.monotonic() < deadline, body
        time.sleep(0.01)
    return body


def public_keys(url: str) -> dict[str, Ed25519PublicKey]:
    """The JWKS, decoded here rather than by vidhook's loader."""
    keys = httpx.get(f"{url}/.well-known/jwks.json").json()["keys"]
    return {
        k["kid"]: Ed25519PublicKey.from_public_bytes(
            base64.urlsafe_b64decode(k["x"] + "=" * (-len(k["x"]) % 4))
        )
        for k in keys
        if k["kty"] == "OKP" and k["crv"] == "Ed25519"
    }


def verifying_kids(url: str, delivery: Delivery) -> list[str]:
    headers = delivery.headers
    text = "\n".join(
        [
            headers["x-fal-webhook-request-id"],
            headers["x-fal-webhook-user-id"],
            headers["x-fal-webhook-timestamp"],
            hashlib.sha256(delivery.body).hexdigest(),
        ]
    ).encode()
    kids = []
    for kid, key in public_keys(url).items():
        try:
            key.verify(bytes.fromhex(headers["x-fal-webhook-signature"]), text)
        except InvalidSignature:
            continue
        kids.append(kid)
    return kids


def run(base_url: str, call: Callable[[Fal], Awaitable[T]]) -> T:
    async def main() -> T:
        config = ProviderConfig(
            name="fal",
            type="fal",
            base_url=base_url,
            api_key=Secret(KEY),
            default_model=MODEL,
            timeout=5.0,
            jwks_url=f"{base_url}/.well-known/jwks.json",
        )
        async with httpx.AsyncClient() as client:
            return await call(Fal(config, client))

    return asyncio.run(main())


# -- submitting ------------------------------------------------------------------------------


def test_a_submit_answers_urls_under_the_app(url):
    body = submit(url, "A heron")
    at = f"{url}/{APP}/requests/{body['request_id']}"
    assert body == {
        "request_id": body["request_id"],
        "gateway_request_id": body["request_id"],
        "response_url": at,
        "status_url": f"{at}/status",
        "cancel_url": f"{at}/cancel",
        "status": "IN_QUEUE",
        "queue_position": 0,
    }


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        ("urls", {"request_id", "response_url", "status_url", "cancel_url"}),
        ("ids", {"request_id", "gateway_request_id"}),
    ],
)
def test_the_submit_answer_s_keys_are_a_setting(url, fake, keys, expected):
    fake.settings.submit_keys = keys
    assert set(submit(url, "A heron")) == expected


def test_a_request_is_found_under_its_app_only(url):
    request_id = submit(url, "A heron")["request_id"]
    assert status(url, request_id).status_code == 200
    assert status(url, request_id, app=MODEL).status_code == 404
    assert status(url, request_id, app="fal-ai/veo3").status_code == 404


@pytest.mark.parametrize(
    ("headers", "body", "code"),
    [
        ({}, {"prompt": "x"}, 401),
        ({"Authorization": f"Bearer {KEY}"}, {"prompt": "x"}, 401),
        ({"Authorization": "Key wrong"}, {"prompt": "x"}, 401),
        (HEADERS, {"seed": 1}, 422),
        (HEADERS, {"prompt": "x", "duration": "7"}, 422),
        (HEADERS, ["x"], 422),
    ],
)
def test_the_fake_refuses_what_fal_refuses(url, headers, body, code):
    answer = httpx.post(f"{url}/{MODEL}", json=body, headers=headers)
    assert answer.status_code == code and "detail" in answer.json()


def test_a_rate_limited_submit_says_when_to_come_back(url):
    answer = httpx.post(f"{url}/{MODEL}", json={"prompt": "x [429]"}, headers=HEADERS)
    assert answer.status_code == 429 and answer.headers["retry-after"] == "1"


# -- status and result -----------------------------------------------------------------------


def test_a_request_is_queued_runs_and_completes_with_a_video(url):
    request_id = submit(url, "A heron [slow]")["request_id"]
    queued = status(url, request_id).json()
    assert queued["status"] == "IN_QUEUE" and isinstance(queued["queue_position"], int)
    early = httpx.get(f"{url}/{APP}/requests/{request_id}", headers=HEADERS)
    assert early.status_code == 400
    running = until(url, request_id, "IN_PROGRESS")
    assert running["logs"] is None
    with_logs = httpx.get(
        f"{url}/{APP}/requests/{request_id}/status", params={"logs": "1"}, headers=HEADERS
    ).json()
    assert with_logs["logs"][0]["message"] == "Starting generation"
    done = until(url, request_id, "COMPLETED")
    assert done["metrics"]["inference_time"] > 0
    result = httpx.get(f"{url}/{APP}/requests/{request_id}", headers=HEADERS).json()
    assert result["video"]["url"] == f"{url}/files/{request_id}/output.mp4"
    assert result["video"]["content_type"] == "video/mp4"
    assert httpx.get(result["video"]["url"]).content[4:8] == b"ftyp"


def test_an_undocumented_status_comes_before_the_run(url):
    request_id = submit(url, "A heron [unknown] [slow]")["request_id"]
    assert until(url, request_id, UNDOCUMENTED_STATUS)


@pytest.mark.parametrize(
    ("settings", "code", "detail"),
    [
        ({}, 422, [{"loc": ["body", "prompt"], "msg": POLICY_MESSAGE, "type": POLICY_TYPE}]),
        ({"detail_as_list": False}, 422, POLICY_MESSAGE),
        ({"failed_result_status": 400}, 400, None),
    ],
)
def test_a_failed_request_completes_and_its_result_is_the_error(url, fake, settings, code, detail):
    for name, value in settings.items():
        setattr(fake.settings, name, value)
    request_id = submit(url, "A heron [fail]")["request_id"]
    done = until(url, request_id, "COMPLETED")
    assert "error" not in done
    result = httpx.get(f"{url}/{APP}/requests/{request_id}", headers=HEADERS)
    assert result.status_code == code
    assert result.headers["x-fal-error-type"] == POLICY_TYPE
    if detail is not None:
        got = result.json()["detail"]
        if isinstance(got, list):
            got = [{k: e[k] for k in ("loc", "msg", "type")} for e in got]
        assert got == detail


def test_the_status_of_a_failed_request_may_carry_its_error(url, fake):
    fake.settings.status_carries_error = True
    done = until(url, submit(url, "A heron [fail]")["request_id"], "COMPLETED")
    assert (done["error"], done["error_type"]) == (POLICY_MESSAGE, POLICY_TYPE)


# -- cancel ----------------------------------------------------------------------------------


def cancel(url: str, request_id: str) -> httpx.Response:
    return httpx.put(f"{url}/{APP}/requests/{request_id}/cancel", headers=HEADERS)


def test_cancel_answers(url, fake):
    queued = submit(url, "A heron [slow]")["request_id"]
    taken = cancel(url, queued)
    assert (taken.status_code, taken.json()) == (202, {"status": "CANCELLATION_REQUESTED"})
    ended = submit(url, "A heron")["request_id"]
    until(url, ended, "COMPLETED")
    late = cancel(url, ended)
    assert (late.status_code, late.json()) == (400, {"status": "ALREADY_COMPLETED"})
    unknown = cancel(url, "00000000-0000-4000-8000-000000000000")
    assert (unknown.status_code, unknown.json()) == (404, {"status": "NOT_FOUND"})
    fake.settings.cancel_codes = {**fake.settings.cancel_codes, "ALREADY_COMPLETED": 200}
    assert cancel(url, ended).status_code == 200


def test_a_canceled_running_request_stops(url):
    request_id = submit(url, "A heron [never]")["request_id"]
    until(url, request_id, "IN_PROGRESS")
    assert cancel(url, request_id).status_code == 202
    assert status(url, request_id).json()["status"] == "COMPLETED"
    result = httpx.get(f"{url}/{APP}/requests/{request_id}", headers=HEADERS)
    assert result.status_code == 422


# -- webhooks and keys -----------------------------------------------------------------------


def test_the_webhook_carries_the_output_and_is_signed_with_the_published_key(url, fake, hooks):
    hook = hooks.url()
    request_id = submit(url, "A heron", hook)["request_id"]
    (delivery,) = hooks.wait(hook, 1)
    body = json.loads(delivery.body)
    assert body["request_id"] == body["gateway_request_id"] == request_id
    assert body["status"] == "OK" and body["error"] is None
    assert body["payload"]["video"]["url"] == f"{url}/files/{request_id}/output.mp4"
    assert delivery.headers["x-fal-webhook-request-id"] == request_id
    assert delivery.headers["x-fal-webhook-user-id"] == fake.settings.user_id
    assert abs(int(delivery.headers["x-fal-webhook-timestamp"]) - time.time()) < 60
    assert verifying_kids(url, delivery) == [fake.signing_key.kid]


def test_an_error_webhook_and_an_unsendable_payload(url, hooks):
    failed, odd = hooks.url(), hooks.url()
    submit(url, "A heron [fail]", failed)
    submit(url, "A heron [badjson]", odd)
    (error,) = hooks.wait(failed, 1)
    body = json.loads(error.body)
    assert (body["status"], body["error"]) == ("ERROR", "Invalid status code: 422")
    assert body["payload"]["detail"][0]["type"] == POLICY_TYPE
    (unsendable,) = hooks.wait(odd, 1)
    body = json.loads(unsendable.body)
    assert (body["status"], body["payload"], body["payload_error"]) == ("OK", None, PAYLOAD_ERROR)


def test_a_refused_webhook_is_retried_with_the_same_body(url, hooks):
    hook = hooks.url(status=503)
    submit(url, "A heron", hook)
    got = hooks.wait(hook, 3)
    assert len({d.body for d in got}) == 1
    time.sleep(0.15)
    assert len(hooks.deliveries(hook)) == 3


def test_lost_and_duplicated_webhooks(url, hooks):
    lost, twice = hooks.url(), hooks.url()
    submit(url, "A heron [lost]", lost)
    submit(url, "A heron [duplicate]", twice)
    first, second = hooks.wait(twice, 2)
    assert first.body == second.body
    assert hooks.deliveries(lost) == []


def test_a_rotated_key_signs_and_replaces_the_published_one(url, fake, hooks):
    old = fake.signing_key.kid
    new = fake.rotate_key().kid
    assert list(public_keys(url)) == [new]
    hook = hooks.url()
    submit(url, "A heron", hook)
    (delivery,) = hooks.wait(hook, 1)
    assert verifying_kids(url, delivery) == [new]
    fake.settings.keep_rotated_keys = True
    assert old in public_keys(url) and new in public_keys(url)


# -- the adapter against the fake ------------------------------------------------------------


def test_the_adapter_reads_a_waiting_request_s_place_in_the_queue(url, fake):
    async def call(fal: Fal) -> Any:
        ahead = await fal.submit(SubmitRequest(prompt="First [slow]"), None)
        behind = await fal.submit(SubmitRequest(prompt="Second [slow]"), None)
        ref = JobRef("job", behind.provider_job_id, fal.config.api_key.fingerprint)
        return ahead, behind, await fal.fetch(ref)

    ahead, behind, polled = run(url, call)
    assert ahead.observation.progress == Progress(queue_position=0)
    assert behind.observation.progress == Progress(queue_position=1)
    assert (polled.provider_status, polled.progress) == ("IN_QUEUE", Progress(queue_position=1))


def test_the_adapter_runs_a_request_to_its_end_and_verifies_its_webhook(url, hooks):
    hook = hooks.url()

    async def call(fal: Fal) -> Any:
        submitted = await fal.submit(SubmitRequest(prompt="A heron"), hook)
        ref = JobRef("job", submitted.provider_job_id, fal.config.api_key.fingerprint)
        while not (seen := await fal.fetch(ref)).status.terminal:
            await asyncio.sleep(0.01)
        (delivery,) = hooks.wait(hook, 1)
        await fal.prepare_callback(delivery.headers, delivery.body)
        nonce = fal.verify_callback(ref, delivery.headers, delivery.body, tolerance=300)
        return submitted, seen, nonce, fal.parse_callback(json.loads(delivery.body))

    submitted, seen, nonce, said = run(url, call)
    request_id = submitted.provider_job_id.rsplit("/", 1)[1]
    assert submitted.provider_job_id == f"{APP}/requests/{request_id}"
    assert (seen.status, seen.result_url) == (Status.COMPLETED, said.result_url)
    assert nonce == request_id


@pytest.mark.parametrize("keys", ["full", "urls", "ids"])
def test_the_adapter_finds_the_request_whatever_the_submit_answer_holds(url, fake, keys):
    fake.settings.submit_keys = keys

    async def call(fal: Fal) -> Any:
        submitted = await fal.submit(SubmitRequest(prompt="A heron [fail]"), None)
        ref = JobRef("job", submitted.provider_job_id, fal.config.api_key.fingerprint)
        while not (seen := await fal.fetch(ref)).status.terminal:
            await asyncio.sleep(0.01)
        return seen

    seen = run(url, call)
    assert seen.status is Status.FAILED
    assert seen.error == f"prompt: {POLICY_MESSAGE} ({POLICY_TYPE})"


@pytest.mark.parametrize(
    "settings",
    [
        {"status_carries_error": True},
        {"detail_as_list": False},
        {"failed_result_status": 500},
        {"failed_result_status": 400, "detail_as_list": False},
    ],
)
def test_the_adapter_reads_every_shape_of_a_failed_request(url, fake, settings):
    for name, value in settings.items():
        setattr(fake.settings, name, value)

    async def call(fal: Fal) -> Any:
        submitted = await fal.submit(SubmitRequest(prompt="A heron [fail]"), None)
        ref = JobRef("job", submitted.provider_job_id, fal.config.api_key.fingerprint)
        while not (seen := await fal.fetch(ref)).status.terminal:
            await asyncio.sleep(0.01)
        return seen

    seen = run(url, call)
    assert seen.status is Status.FAILED
    assert POLICY_MESSAGE in seen.error and POLICY_TYPE in seen.error

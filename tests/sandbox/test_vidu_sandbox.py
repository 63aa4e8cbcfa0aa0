"""The fake Vidu, run for real on loopback and driven over HTTP."""

from __future__ import annotations

import dataclasses
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from receiver.sandbox import (
    ServerThread,
    ViduSandbox,
    ViduSandboxSettings,
    create_sandbox_app,
)
from receiver.sandbox.vidu import RecordedCallback
from signing import SignatureError
from signing import vidu as vidu_signing

KEY = "vidu-test-key"
OTHER_KEY = "vidu-other-key"
FAST = ViduSandboxSettings(
    api_keys=[KEY, OTHER_KEY],
    queue_delay=0.05,
    start_delay=0.05,
    run_time=0.05,
    slow_factor=10,
    callback_retry_delay=0.05,
    callback_timeout=2.0,
)
SUBMIT_KEYS = {
    "task_id", "type", "state", "model", "style", "prompt", "images", "duration", "seed",
    "aspect_ratio", "resolution", "movement_amplitude", "created_at", "credits", "payload",
    "cus_priority", "off_peak", "watermark", "is_rec", "wm_position", "wm_url", "meta_data",
    "client_request_id",
}  # fmt: skip
ENDPOINT_BODIES: dict[str, dict[str, Any]] = {
    "text2video": {"prompt": "a cat"},
    "img2video": {"images": ["https://example.com/a.png"]},
    "start-end2video": {"images": ["https://example.com/a.png", "https://example.com/b.png"]},
    "reference2video": {"prompt": "a cat", "images": ["https://example.com/a.png"]},
}


class Received:
    """A callback as the receiver saw it."""

    def __init__(self, request: Request, body: bytes) -> None:
        self.url = str(request.url)
        self.raw_headers = list(request.headers.raw)
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
        time.sleep(0.1)
        return self.received(url)


@pytest.fixture(scope="module")
def sandbox_server() -> Iterator[ServerThread]:
    with ServerThread(create_sandbox_app(dataclasses.replace(FAST))) as server:
        yield server


@pytest.fixture(scope="module")
def hooks() -> Iterator[CallbackReceiver]:
    receiver = CallbackReceiver()
    with receiver.server:
        yield receiver


@pytest.fixture
def sandbox(sandbox_server: ServerThread) -> Iterator[ViduSandbox]:
    app = sandbox_server.app
    assert isinstance(app, Starlette)
    vidu: ViduSandbox = app.state.vidu
    yield vidu
    # Tests tweak settings on the shared server; restore them for the next test.
    vars(vidu.settings).update(vars(dataclasses.replace(FAST)))


@pytest.fixture(scope="module")
def shared_client(sandbox_server: ServerThread) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Token {KEY}"}
    with httpx.Client(base_url=f"{sandbox_server.url}/vidu", headers=headers) as c:
        yield c


@pytest.fixture
def client(shared_client: httpx.Client, sandbox: ViduSandbox) -> httpx.Client:
    return shared_client


def wait_until(predicate: Callable[[], object], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.01)


def submit(client: httpx.Client, prompt: str = "a cat", **fields: Any) -> dict[str, Any]:
    response = client.post(
        "/ent/v2/text2video", json={"model": "viduq2", "prompt": prompt, **fields}
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def status(client: httpx.Client, task_id: str) -> dict[str, Any]:
    response = client.get(f"/ent/v2/tasks/{task_id}/creations")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def wait_terminal(client: httpx.Client, task_id: str) -> dict[str, Any]:
    result: dict[str, Any] = {}

    def done() -> bool:
        result.update(status(client, task_id))
        return result["state"] in ("success", "failed", "canceled")

    wait_until(done)
    return result


def attempts(sandbox: ViduSandbox, task_id: str) -> list[RecordedCallback]:
    return [c for c in sandbox.callbacks if c.task_id == task_id]


def assert_vidu_error(response: httpx.Response, status_code: int, reason: str) -> None:
    assert response.status_code == status_code, response.text
    body = response.json()
    assert body["code"] == status_code
    assert body["reason"] == reason
    assert isinstance(body["message"], str) and body["message"]
    assert len(body["metadata"]["trace_id"]) == 32


# --- submit ------------------------------------------------------------------


def test_submit_text2video_with_token_has_the_documented_shape(client: httpx.Client) -> None:
    body = submit(client, "a cat", payload="p-1", seed=42)
    assert set(body) == SUBMIT_KEYS
    assert body["task_id"].isdigit() and len(body["task_id"]) == 18
    assert body["type"] == "text2video"
    assert body["state"] == "created"
    assert body["model"] == "viduq2"
    assert body["prompt"] == "a cat"
    assert body["payload"] == "p-1"
    assert body["seed"] == 42
    assert (body["duration"], body["aspect_ratio"], body["resolution"]) == (5, "16:9", "720p")
    assert body["movement_amplitude"] == "auto"
    assert body["created_at"].endswith("Z")
    assert isinstance(body["credits"], int) and body["credits"] > 0


def test_submit_accepts_bearer_and_keeps_the_creating_key(
    client: httpx.Client, sandbox: ViduSandbox
) -> None:
    headers = {"Authorization": f"Bearer {OTHER_KEY}"}
    response = client.post(
        "/ent/v2/text2video", json={"model": "viduq1", "prompt": "x"}, headers=headers
    )
    assert response.status_code == 200, response.text
    task = sandbox.tasks[response.json()["task_id"]]
    assert task.key == OTHER_KEY
    assert response.json()["seed"] > 0  # 0/absent means "pick one"


@pytest.mark.parametrize(
    "authorization",
    [None, "Token wrong-key", "Bearer", f"Basic {KEY}", KEY, f"Token {KEY}x"],
)
def test_bad_credentials_are_401(client: httpx.Client, authorization: str | None) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    with httpx.Client(base_url=client.base_url, headers=headers) as anonymous:
        response = anonymous.post("/ent/v2/text2video", json={"model": "viduq2", "prompt": "x"})
        assert_vidu_error(response, 401, "Unauthorized")
        assert_vidu_error(anonymous.get("/ent/v2/tasks/1/creations"), 401, "Unauthorized")


@pytest.mark.parametrize(
    ("endpoint", "count"),
    [
        ("text2video", 1),
        ("img2video", 0),
        ("img2video", 2),
        ("start-end2video", 1),
        ("start-end2video", 3),
        ("reference2video", 0),
        ("reference2video", 8),
    ],
)
def test_wrong_image_count_is_field_invalid(
    client: httpx.Client, endpoint: str, count: int
) -> None:
    body = {**ENDPOINT_BODIES[endpoint], "model": "viduq2"}
    body["images"] = [f"https://example.com/{i}.png" for i in range(count)]
    response = client.post(f"/ent/v2/{endpoint}", json=body)
    assert_vidu_error(response, 400, "FieldInvalid")
    assert "images" in response.json()["message"]


@pytest.mark.parametrize("endpoint", list(ENDPOINT_BODIES))
def test_each_endpoint_accepts_a_valid_body(client: httpx.Client, endpoint: str) -> None:
    response = client.post(
        f"/ent/v2/{endpoint}", json={**ENDPOINT_BODIES[endpoint], "model": "viduq3-pro"}
    )
    assert response.status_code == 200, response.text
    assert response.json()["type"] == endpoint
    assert response.json()["images"] == ENDPOINT_BODIES[endpoint].get("images", [])


@pytest.mark.parametrize(
    ("endpoint", "prompt"),
    [
        ("text2video", None),
        ("text2video", "   "),
        ("reference2video", None),
        ("text2video", "x" * 2001),
    ],
)
def test_prompt_missing_or_too_long_is_field_invalid(
    client: httpx.Client, endpoint: str, prompt: str | None
) -> None:
    body = {**ENDPOINT_BODIES[endpoint], "model": "viduq2"}
    body.pop("prompt", None)
    if prompt is not None:
        body["prompt"] = prompt
    response = client.post(f"/ent/v2/{endpoint}", json=body)
    assert_vidu_error(response, 400, "FieldInvalid")
    assert "prompt" in response.json()["message"]


def test_prompt_of_exactly_2000_chars_is_accepted(client: httpx.Client) -> None:
    submit(client, "x" * 2000)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("model", "vidu2.0"),
        ("model", None),
        ("duration", "5"),
        ("duration", 0),
        ("movement_amplitude", "huge"),
        ("resolution", "4k"),
        ("bgm", "yes"),
        ("seed", -1),
        ("callback_url", "ftp://example.com/x"),
        ("callback_url", "http://"),
        ("callback_url", 7),
    ],
)
def test_invalid_field_is_named(client: httpx.Client, field: str, value: object) -> None:
    body = {"model": "viduq2", "prompt": "a cat", field: value}
    response = client.post("/ent/v2/text2video", json=body)
    assert_vidu_error(response, 400, "FieldInvalid")
    assert field in response.json()["message"]


@pytest.mark.parametrize("content", [b"not json", b"[1, 2]", b""])
def test_body_that_is_not_a_json_object_is_bad_request(
    client: httpx.Client, content: bytes
) -> None:
    response = client.post("/ent/v2/text2video", content=content)
    assert_vidu_error(response, 400, "BadRequest")


def test_policy_and_500_markers_reject_the_submit(client: httpx.Client) -> None:
    response = client.post("/ent/v2/text2video", json={"model": "viduq2", "prompt": "[policy]"})
    assert_vidu_error(response, 400, "TaskPromptPolicyViolation")
    response = client.post("/ent/v2/text2video", json={"model": "viduq2", "prompt": "[500]"})
    assert_vidu_error(response, 500, "InternalServiceFailure")


def test_429_marker_and_rate_limit_setting(client: httpx.Client, sandbox: ViduSandbox) -> None:
    response = client.post("/ent/v2/text2video", json={"model": "viduq2", "prompt": "hi [429]"})
    assert_vidu_error(response, 429, "TooManyRequests")
    assert response.headers["Retry-After"] == "1"

    sandbox.settings.rate_limit_submits = 2
    sandbox.settings.retry_after = 7
    for _ in range(2):
        response = client.post("/ent/v2/text2video", json={"model": "viduq2", "prompt": "x"})
        assert_vidu_error(response, 429, "TooManyRequests")
        assert response.headers["Retry-After"] == "7"
    submit(client)


# --- status, cancel, files ----------------------------------------------------


def test_status_progresses_to_success_with_a_creation(
    client: httpx.Client, sandbox: ViduSandbox
) -> None:
    task_id = submit(client, payload="pp")["task_id"]
    first = status(client, task_id)
    assert first["state"] in ("created", "queueing")
    assert first["creations"] == [] and first["err_code"] == ""

    final = wait_terminal(client, task_id)
    assert final["state"] == "success"
    assert final["id"] == task_id and final["payload"] == "pp" and final["err_code"] == ""
    [creation] = final["creations"]
    assert set(creation) == {"id", "url", "cover_url", "watermarked_url"}
    assert creation["url"].startswith(f"{client.base_url}files/{task_id}.mp4?expires=")
    video = httpx.get(creation["url"])
    assert video.status_code == 200 and video.headers["content-type"] == "video/mp4"
    cover = httpx.get(creation["cover_url"])
    assert cover.status_code == 200 and cover.headers["content-type"] == "image/png"
    assert cover.content.startswith(b"\x89PNG\r\n\x1a\n")

    times = sandbox.tasks[task_id].state_times
    assert list(times) == ["created", "queueing", "processing", "success"]
    assert sorted(times.values()) == list(times.values())


def test_fail_marker_ends_failed_with_err_code(client: httpx.Client, sandbox: ViduSandbox) -> None:
    sandbox.settings.fail_err_code = "CreationPolicyViolation"
    final = wait_terminal(client, submit(client, "boom [fail]")["task_id"])
    assert final["state"] == "failed"
    assert final["err_code"] == "CreationPolicyViolation"
    assert final["creations"] == []


def test_cancel_ends_failed_with_user_cancelled_and_only_before_processing(
    client: httpx.Client,
) -> None:
    task_id = submit(client, "[slow]")["task_id"]
    response = client.post(f"/ent/v2/tasks/{task_id}/cancel", json={"id": task_id})
    assert response.status_code == 200 and response.json() == {}
    after = status(client, task_id)
    assert (after["state"], after["err_code"], after["credits"]) == ("failed", "UserCancelled", 0)
    time.sleep(0.2)
    assert status(client, task_id)["state"] == "failed"  # progression stopped

    again = client.post(f"/ent/v2/tasks/{task_id}/cancel")
    assert_vidu_error(again, 400, "BadRequest")
    assert "can not cancel" in again.json()["message"]


def test_cancel_state_can_read_canceled(client: httpx.Client, sandbox: ViduSandbox) -> None:
    sandbox.settings.cancel_state = "canceled"
    task_id = submit(client, "[slow]")["task_id"]
    assert client.post(f"/ent/v2/tasks/{task_id}/cancel").json() == {}
    after = status(client, task_id)
    assert (after["state"], after["err_code"]) == ("canceled", "")


def test_a_scheduled_task_cannot_be_canceled(client: httpx.Client, sandbox: ViduSandbox) -> None:
    task_id = submit(client, "[unknown] [slow]")["task_id"]
    wait_until(lambda: status(client, task_id)["state"] == "scheduled")
    refused = client.post(f"/ent/v2/tasks/{task_id}/cancel")
    assert_vidu_error(refused, 400, "BadRequest")
    assert refused.json()["message"] == "task state is scheduled, can not cancel"
    assert wait_terminal(client, task_id)["state"] == "success"


def test_operation_in_process_answers_400_then_passes(
    client: httpx.Client, sandbox: ViduSandbox
) -> None:
    task_id = submit(client, "[slow]")["task_id"]
    sandbox.settings.operation_in_process = 2
    for _ in range(2):
        assert_vidu_error(
            client.get(f"/ent/v2/tasks/{task_id}/creations"), 400, "OperationInProcess"
        )
    assert status(client, task_id)["id"] == task_id


def test_unknown_fields_are_unwanted(client: httpx.Client) -> None:
    response = client.post(
        "/ent/v2/text2video", json={"model": "viduq2", "prompt": "a cat", "fps": 24}
    )
    assert_vidu_error(response, 400, "FieldUnwanted")
    assert "fps" in response.json()["message"]


SUBJECT = {"name": "cat", "images": ["https://example.com/cat1.png"]}


def test_reference2video_takes_subjects(client: httpx.Client) -> None:
    body = {"model": "viduq2", "prompt": "@cat plays", "subjects": [SUBJECT]}
    response = client.post("/ent/v2/reference2video", json=body)
    assert response.status_code == 200, response.text
    assert response.json()["images"] == []


@pytest.mark.parametrize(
    ("subjects", "reason", "named"),
    [
        ([{**SUBJECT, "tags": ["x"]}], "FieldUnwanted", "subjects[0].tags"),
        ([{**SUBJECT, "images": [f"https://e/{n}.png" for n in range(4)]}], "FieldInvalid",
         "subjects[0].images"),
        ([{"images": SUBJECT["images"]}], "FieldInvalid", "subjects[0].name"),
        ([], "FieldInvalid", "subjects"),
        ("cat", "FieldInvalid", "subjects"),
    ],
)  # fmt: skip
def test_bad_subjects_are_refused(
    client: httpx.Client, subjects: object, reason: str, named: str
) -> None:
    body = {"model": "viduq2", "prompt": "@cat", "subjects": subjects}
    response = client.post("/ent/v2/reference2video", json=body)
    assert_vidu_error(response, 400, reason)
    assert named in response.json()["message"]


def test_only_reference2video_takes_subjects(client: httpx.Client) -> None:
    body = {"model": "viduq2", "prompt": "a cat", "subjects": [SUBJECT]}
    assert_vidu_error(client.post("/ent/v2/text2video", json=body), 400, "FieldInvalid")


def test_unknown_task_is_404(client: httpx.Client) -> None:
    assert_vidu_error(client.get("/ent/v2/tasks/123/creations"), 404, "TaskNotFound")
    assert_vidu_error(client.post("/ent/v2/tasks/123/cancel"), 404, "TaskNotFound")


def test_status_outage_is_503_until_cleared(client: httpx.Client, sandbox: ViduSandbox) -> None:
    task_id = submit(client)["task_id"]
    sandbox.settings.status_outage = True
    response = client.get(f"/ent/v2/tasks/{task_id}/creations")
    assert response.status_code == 503
    assert response.json()["reason"] == "ServiceUnavailable"
    sandbox.settings.status_outage = False
    assert status(client, task_id)["id"] == task_id


def test_expired_file_link_is_refused(client: httpx.Client, sandbox: ViduSandbox) -> None:
    sandbox.settings.file_ttl = -10
    final = wait_terminal(client, submit(client)["task_id"])
    assert httpx.get(final["creations"][0]["url"]).status_code == 403


def test_every_request_is_recorded(client: httpx.Client, sandbox: ViduSandbox) -> None:
    task_id = submit(client)["task_id"]
    client.get(f"/ent/v2/tasks/{task_id}/creations")
    nowhere = f"/ent/v2/nowhere-{task_id}"
    client.get(nowhere)

    def mine() -> list[tuple[str, str, int, str | None]]:
        # Other tests' requests may still be landing, so pick out this test's own.
        return [
            (r.method, r.path, r.status_code, r.task_id)
            for r in list(sandbox.requests)
            if r.task_id == task_id or r.path == f"/vidu{nowhere}"
        ]

    # Recorded once the response is sent, so the last one can trail the client a little.
    wait_until(lambda: len(mine()) == 3)
    assert mine() == [
        ("POST", "/vidu/ent/v2/text2video", 200, task_id),
        ("GET", f"/vidu/ent/v2/tasks/{task_id}/creations", 200, task_id),
        ("GET", f"/vidu{nowhere}", 405, None),
    ]


# --- callbacks ----------------------------------------------------------------


def test_callbacks_are_signed_and_sent_for_processing_then_success(
    client: httpx.Client, sandbox: ViduSandbox, hooks: CallbackReceiver
) -> None:
    url = hooks.url()
    task_id = submit(client, payload="cb", callback_url=url)["task_id"]
    got = hooks.wait(url, 2)
    assert [r.json["state"] for r in got] == ["processing", "success"]
    for r in got:
        assert r.headers["content-type"] == "application/json"
        vidu_signing.verify(KEY, "POST", url, r.headers)
        with pytest.raises(SignatureError):
            vidu_signing.verify(OTHER_KEY, "POST", url, r.headers)
        assert r.json["id"] == task_id and r.json["payload"] == "cb"
    assert got[1].json == status(client, task_id)
    recorded = [(c.state, c.url, c.status_code, c.error) for c in attempts(sandbox, task_id)]
    assert recorded == [("processing", url, 200, None), ("success", url, 200, None)]


def test_callbacks_are_signed_with_the_key_that_created_the_task(
    client: httpx.Client, hooks: CallbackReceiver
) -> None:
    url = hooks.url()
    body = {"model": "viduq2", "prompt": "x", "callback_url": url}
    headers = {"Authorization": f"Bearer {OTHER_KEY}"}
    assert client.post("/ent/v2/text2video", json=body, headers=headers).status_code == 200
    for r in hooks.wait(url, 2):
        vidu_signing.verify(OTHER_KEY, "POST", url, r.headers)


def test_no_callback_url_means_no_callbacks(client: httpx.Client, sandbox: ViduSandbox) -> None:
    task_id = submit(client)["task_id"]
    wait_terminal(client, task_id)
    time.sleep(0.05)
    assert attempts(sandbox, task_id) == []


def test_callback_state_field_can_be_status(
    client: httpx.Client, sandbox: ViduSandbox, hooks: CallbackReceiver
) -> None:
    sandbox.settings.callback_state_field = "status"
    url = hooks.url()
    submit(client, callback_url=url)
    got = hooks.wait(url, 2)
    assert [("state" in r.json, r.json["status"]) for r in got] == [
        (False, "processing"),
        (False, "success"),
    ]


def test_duplicate_sends_byte_identical_pairs(
    client: httpx.Client, hooks: CallbackReceiver
) -> None:
    url = hooks.url()
    submit(client, "twice [duplicate]", callback_url=url)
    got = hooks.wait(url, 4)
    assert len(got) == 4
    for first, second in (got[0:2], got[2:4]):
        assert first.raw_headers == second.raw_headers
        assert first.body == second.body
        vidu_signing.verify(KEY, "POST", url, first.headers)
    assert [r.json["state"] for r in got[::2]] == ["processing", "success"]


def test_out_of_order_sends_terminal_before_processing(
    client: httpx.Client, hooks: CallbackReceiver
) -> None:
    url = hooks.url()
    task_id = submit(client, "[out-of-order][fail]", callback_url=url)["task_id"]
    assert [r.json["state"] for r in hooks.wait(url, 2)] == ["failed", "processing"]
    assert status(client, task_id)["state"] == "failed"


def test_lost_sends_no_callbacks_but_the_task_completes(
    client: httpx.Client, sandbox: ViduSandbox, hooks: CallbackReceiver
) -> None:
    url = hooks.url()
    task_id = submit(client, "[lost]", callback_url=url)["task_id"]
    assert wait_terminal(client, task_id)["state"] == "success"
    assert hooks.wait(url, 0) == []
    assert attempts(sandbox, task_id) == []


def test_unknown_marker_passes_through_scheduled(
    client: httpx.Client, sandbox: ViduSandbox, hooks: CallbackReceiver
) -> None:
    url = hooks.url()
    task_id = submit(client, "[unknown]", callback_url=url)["task_id"]
    states = [r.json["state"] for r in hooks.wait(url, 3)]
    assert states == ["scheduled", "processing", "success"]
    assert list(sandbox.tasks[task_id].state_times) == ["created", "queueing", *states]


def test_cancel_sends_a_failed_callback(client: httpx.Client, hooks: CallbackReceiver) -> None:
    url = hooks.url()
    task_id = submit(client, "[slow]", callback_url=url)["task_id"]
    assert client.post(f"/ent/v2/tasks/{task_id}/cancel").status_code == 200
    [got] = hooks.wait(url, 1)
    assert (got.json["state"], got.json["err_code"]) == ("failed", "UserCancelled")


def test_failing_receiver_gets_the_terminal_callback_retried(
    client: httpx.Client, sandbox: ViduSandbox, hooks: CallbackReceiver
) -> None:
    url = hooks.url(500)
    task_id = submit(client, callback_url=url)["task_id"]
    got = hooks.wait(url, 5)
    # processing is sent once; success once plus callback_retries (3) retries
    assert [r.json["state"] for r in got] == ["processing"] + ["success"] * 4
    assert len({r.headers["x-request-nonce"] for r in got}) == 5  # each attempt signed afresh
    for r in got:
        vidu_signing.verify(KEY, "POST", url, r.headers)
    recorded = [(c.state, c.status_code) for c in attempts(sandbox, task_id)]
    assert recorded == [("processing", 500)] + [("success", 500)] * 4


def test_unreachable_receiver_is_recorded_as_an_error(
    client: httpx.Client, sandbox: ViduSandbox
) -> None:
    sandbox.settings.callback_retries = 1
    with ServerThread(Starlette()) as gone:
        url = f"{gone.url}/cb"
    task_id = submit(client, callback_url=url)["task_id"]
    wait_until(lambda: len(attempts(sandbox, task_id)) == 3)
    assert all(c.status_code is None and c.error for c in attempts(sandbox, task_id))


# --- ServerThread ---------------------------------------------------------------


def test_server_thread_binds_free_ports_and_stops() -> None:
    with ServerThread(Starlette()) as a, ServerThread(Starlette()) as b:
        assert a.port != b.port
        assert a.url == f"http://127.0.0.1:{a.port}"
        assert httpx.get(f"{a.url}/missing").status_code == 404
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{a.url}/missing")


def test_server_thread_raises_when_startup_fails() -> None:
    async def broken(scope: Scope, receive: Receive, send: Send) -> None:
        raise RuntimeError("lifespan startup fails")

    server = ServerThread(broken)
    with pytest.raises(RuntimeError, match="failed to start"):
        server.start()
    with pytest.raises(httpx.ConnectError):
        httpx.get(server.url)


def test_shutdown_cancels_running_tasks() -> None:
    app = create_sandbox_app(dataclasses.replace(FAST))
    with ServerThread(app) as server:
        headers = {"Authorization": f"Token {KEY}"}
        with httpx.Client(base_url=f"{server.url}/vidu", headers=headers) as c:
            task_id = submit(c, "[slow]")["task_id"]
    vidu: ViduSandbox = app.state.vidu
    runner = vidu.tasks[task_id].runner
    assert runner is not None and runner.cancelled()


def test_server_thread_can_bind_before_the_app_exists() -> None:
    server = ServerThread(None).bind()
    with pytest.raises(RuntimeError, match="no app"):
        server.start()
    url = server.url

    async def echo_url(request: Request) -> Response:
        return Response(url)

    server.app = Starlette(routes=[Route("/", echo_url)])
    with server:
        assert server.url == url
        assert httpx.get(url).text == url

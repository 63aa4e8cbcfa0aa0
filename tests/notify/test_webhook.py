"""The signed webhook channel against a real endpoint that verifies like a user's app would."""

from __future__ import annotations

import asyncio
import base64
import json
import math
import re
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import standardwebhooks
from cryptography.exceptions import InvalidSignature
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from receiver.config import ChannelConfig, Secret, parse_config
from receiver.notify.base import DeliveryError, Event
from receiver.notify.webhook import WebhookChannel
from receiver.sandbox.server import ServerThread
from receiver.views import render_job
from signing import standard

V1_SECRET = "whsec_" + base64.b64encode(b"vidhook-webhook-test-secret-0001").decode()
WRONG_SECRET = "whsec_" + base64.b64encode(b"some-other-apps-secret-000000002").decode()
SK, PK = standard.new_signing_key()
PATH = "/hooks/t0k3n-in-the-path"  # a URL secret the channel must never repeat

STORED_JOB = {
    "id": "job_01",
    "provider": "vidu",
    "provider_job_id": "9110",
    "status": "completed",
    "provider_status": "success",
    "model": "viduq1",
    "prompt": "a café at dawn ☕",
    "request": {"duration": 5},
    "result_url": "https://cdn.example/v.mp4",
    "cover_url": None,
    "error": None,
    "credits": 20,
    "notify": ["myapp"],
    "anomalies": [],
    "key_fingerprint": "sha256:0123456789abcdef",
    "created_at": 1767225600.0,
    "updated_at": 1767225660.5,
    "finished_at": 1767225660.5,
    "callback_url": "https://me.example/callbacks/vidu/abcdefgh",
    "callback_token": "abcdefgh",
}
EVENT = Event(
    id="dlv_7f3a9c", type="job.completed", created_at=1767225660.5, job=render_job(STORED_JOB)
)
# Written out by hand, so that a change to the envelope or the job view shows up here.
EXPECTED_BODY = {
    "type": "job.completed",
    "id": "dlv_7f3a9c",
    "created_at": "2026-01-01T00:01:00.500Z",
    "data": {
        "id": "job_01",
        "provider": "vidu",
        "provider_job_id": "9110",
        "status": "completed",
        "provider_status": "success",
        "model": "viduq1",
        "prompt": "a café at dawn ☕",
        "request": {"duration": 5},
        "result_url": "https://cdn.example/v.mp4",
        "cover_url": None,
        "error": None,
        "credits": 20,
        "notify": ["myapp"],
        "anomalies": [],
        "key_fingerprint": "sha256:0123456789abcdef",
        "created_at": "2026-01-01T00:00:00.000Z",
        "updated_at": "2026-01-01T00:01:00.500Z",
        "finished_at": "2026-01-01T00:01:00.500Z",
        "last_callback_at": None,
        "next_poll_at": None,
        "callback_url": "https://me.example/callbacks/vidu/abcd…",
        "progress": None,
        "submission": None,
        "media": {"status": "off", "video": None, "cover": None, "error": None},
    },
}


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    verified_by: str | None  # which verifier accepted it, None when unsigned


@dataclass
class Sink:
    """The user's app: checks each request's signature, records it, answers as told."""

    # (label, check): check(headers, body) raises unless the request is genuine.
    verifier: tuple[str, Callable[[dict[str, str], bytes], object]] | None = None
    status: int = 204
    answer_headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    received: list[Received] = field(default_factory=list)

    async def hook(self, request: Request) -> Response:
        body = await request.body()
        headers = dict(request.headers)
        label = None
        if self.verifier is not None:
            label, check = self.verifier
            try:
                check(headers, body)
            except Exception:  # whatever the verifier raises, the app refuses the request
                return Response(status_code=401)
        self.received.append(Received(headers, body, label))
        if self.delay:
            await asyncio.sleep(self.delay)
        return Response(status_code=self.status, headers=self.answer_headers)


def by_library(secret: str) -> tuple[str, Callable[[dict[str, str], bytes], object]]:
    return "standardwebhooks", lambda h, b: standardwebhooks.Webhook(secret).verify(b, h)


def by_signing(secret: str) -> tuple[str, Callable[[dict[str, str], bytes], object]]:
    return "signing.standard", lambda h, b: standard.verify(secret, h, b)


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[ServerThread, list[Sink]]]:
    holder = [Sink()]  # each test swaps in its own Sink; the server stays up

    async def hook(request: Request) -> Response:
        return await holder[0].hook(request)

    app = Starlette(routes=[Route(PATH, hook, methods=["POST"])])
    with ServerThread(app) as running:
        yield running, holder


@pytest.fixture
def sink(server: tuple[ServerThread, list[Sink]]) -> Sink:
    server[1][0] = Sink()
    return server[1][0]


@pytest.fixture
def url(server: tuple[ServerThread, list[Sink]]) -> str:
    return server[0].url + PATH


def channel(url: str, secret: str | None = None, **options: Any) -> ChannelConfig:
    secrets = {} if secret is None else {"secret": Secret(secret)}
    return ChannelConfig("myapp", "webhook", frozenset(), {"url": url, **options}, secrets)


def deliver(config: ChannelConfig, event: Event = EVENT) -> None:
    async def run() -> None:
        async with httpx.AsyncClient() as client:
            await WebhookChannel(config, client).send(event)

    asyncio.run(run())


def failure(config: ChannelConfig, event: Event = EVENT) -> DeliveryError:
    with pytest.raises(DeliveryError) as caught:
        deliver(config, event)
    error = caught.value
    for hidden in (PATH, "t0k3n", V1_SECRET, SK, config.options.get("url", "")):
        assert hidden not in error.message and hidden not in str(error)
    return error


# --- delivered ------------------------------------------------------------------------------


def test_v1_delivery_verifies_with_the_standardwebhooks_library(sink: Sink, url: str) -> None:
    sink.verifier = by_library(V1_SECRET)
    before = math.floor(time.time())
    deliver(channel(url, V1_SECRET))
    (got,) = sink.received
    assert got.verified_by == "standardwebhooks"
    assert json.loads(got.body) == EXPECTED_BODY
    assert got.headers["content-type"] == "application/json"
    assert got.headers["user-agent"] == "vidhook"
    assert got.headers["webhook-id"] == "dlv_7f3a9c"
    assert before <= int(got.headers["webhook-timestamp"]) <= time.time()
    assert got.headers["webhook-signature"].startswith("v1,")


def test_v1a_delivery_verifies_with_the_public_key(sink: Sink, url: str) -> None:
    sink.verifier = by_signing(PK)
    deliver(channel(url, SK))
    (got,) = sink.received
    assert got.verified_by == "signing.standard"
    assert got.headers["webhook-signature"].startswith("v1a,")
    assert json.loads(got.body) == EXPECTED_BODY


def test_without_a_secret_events_go_unsigned(sink: Sink, url: str) -> None:
    deliver(channel(url))
    (got,) = sink.received
    assert got.verified_by is None
    assert "webhook-signature" not in got.headers
    assert got.headers["webhook-id"] == EVENT.id
    assert got.headers["webhook-timestamp"].isdigit()
    assert json.loads(got.body) == EXPECTED_BODY


def test_body_is_compact_utf8_json_exactly_as_signed(sink: Sink, url: str) -> None:
    sink.verifier = by_library(V1_SECRET)
    deliver(channel(url, V1_SECRET))
    (got,) = sink.received
    assert "a café at dawn ☕".encode() in got.body  # not \\u escapes
    assert b'{"type":"job.completed","id":"dlv_7f3a9c","created_at":' in got.body
    assert b": " not in got.body and b", " not in got.body


def test_a_receiver_with_another_secret_refuses_it(sink: Sink, url: str) -> None:
    # Proves the sink's check has teeth: a wrong secret there is a 401 here.
    sink.verifier = by_library(WRONG_SECRET)
    error = failure(channel(url, V1_SECRET))
    assert (error.kind, error.status_code) == ("permanent", 401)
    assert sink.received == []


def test_every_retry_carries_the_same_id_and_body(sink: Sink, url: str) -> None:
    sink.verifier = by_library(V1_SECRET)
    sink.status = 503
    assert failure(channel(url, V1_SECRET)).kind == "transient"
    sink.status = 200
    deliver(channel(url, V1_SECRET))
    first, second = sink.received
    assert first.headers["webhook-id"] == second.headers["webhook-id"] == EVENT.id
    assert first.body == second.body


@pytest.mark.parametrize("event_type", ["job.failed", "job.processing", "job.queued"])
def test_other_event_types_travel_in_the_same_envelope(
    sink: Sink, url: str, event_type: str
) -> None:
    sink.verifier = by_library(V1_SECRET)
    event = Event("dlv_2", event_type, 1767225600.0, {"id": "job_02", "error": "nsfw"})
    deliver(channel(url, V1_SECRET), event)
    assert json.loads(sink.received[0].body) == {
        "type": event_type,
        "id": "dlv_2",
        "created_at": "2026-01-01T00:00:00.000Z",
        "data": {"id": "job_02", "error": "nsfw"},
    }


def test_channel_built_from_a_parsed_config(sink: Sink, url: str) -> None:
    section = {"type": "webhook", "url": url, "secret_env": "MYAPP_SECRET", "timeout": 3}
    config = parse_config(
        {
            "public_url": "https://vidhook.example",
            "database": "unused.db",
            "providers": {"vidu": {"api_key_env": "VIDU_KEY"}},
            "channels": {"myapp": section},
        },
        {"MYAPP_SECRET": V1_SECRET, "VIDU_KEY": "k", "VIDHOOK_ADMIN_TOKEN": "t"},
    )
    sink.verifier = by_library(V1_SECRET)
    deliver(config.channels["myapp"])
    assert sink.received[0].verified_by == "standardwebhooks"


# --- failures -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "status, kind",
    [
        (500, "transient"),
        (502, "transient"),
        (408, "transient"),
        (410, "gone"),
        (404, "gone"),
        (403, "gone"),
        (400, "permanent"),
        (422, "permanent"),
        (302, "permanent"),  # not followed: the receiver should fix its URL
    ],
)
def test_answers_are_classified(sink: Sink, url: str, status: int, kind: str) -> None:
    sink.status = status
    sink.answer_headers = {"Location": url} if status == 302 else {}
    error = failure(channel(url))
    assert (error.kind, error.status_code) == (kind, status)
    assert error.message == f"webhook 'myapp' answered HTTP {status}"
    assert len(sink.received) == 1


def test_429_passes_retry_after_on(sink: Sink, url: str) -> None:
    sink.status, sink.answer_headers = 429, {"Retry-After": "7"}
    error = failure(channel(url, V1_SECRET))
    assert (error.kind, error.status_code, error.retry_after) == ("transient", 429, 7.0)


def test_connection_refused_is_transient() -> None:
    with socket.socket() as sock:  # a port that was free a moment ago has no listener
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    error = failure(channel(f"http://127.0.0.1:{port}{PATH}", V1_SECRET))
    assert error.kind == "transient" and error.status_code is None
    assert error.message == "could not reach webhook 'myapp' (ConnectError)"


def test_slow_receiver_times_out_as_transient(sink: Sink, url: str) -> None:
    sink.delay = 1.0
    started = time.monotonic()
    error = failure(channel(url, timeout=0.2))
    assert time.monotonic() - started < 0.9
    assert (error.kind, error.message) == ("transient", "webhook 'myapp' timed out")


@pytest.mark.parametrize("event_id", ["dlv.1", "dlv_ü"])
def test_an_id_that_cannot_be_sent_signed_is_permanent(sink: Sink, url: str, event_id: str) -> None:
    event = Event(event_id, "job.completed", 1767225600.0, {"id": "job_01"})
    assert failure(channel(url, V1_SECRET), event).kind == "permanent"
    assert sink.received == []


# --- configuration --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options, secret",
    [
        ({"url": None}, None),
        ({"url": ""}, None),
        ({"url": "ftp://files.example/t0k3n"}, None),
        ({"url": "https:///t0k3n"}, None),
        ({"url": "http://[::1/t0k3n"}, None),
        ({"url": 42}, None),
        ({"url": "https://me.example/t0k3n", "timeout": "10"}, None),
        ({"url": "https://me.example/t0k3n", "timeout": 0}, None),
        ({"url": "https://me.example/t0k3n", "timeout": True}, None),
        ({"url": "https://me.example/t0k3n", "timeout": float("nan")}, None),
        # A public key cannot sign. Named, as its value is made afresh in each process.
        pytest.param({"url": "https://me.example/t0k3n"}, PK, id="public-key"),
        ({"url": "https://me.example/t0k3n"}, "whsec_t0k3n!!"),
        ({"url": "https://me.example/t0k3n"}, "t0k3n-without-prefix"),
    ],
)
def test_bad_options_fail_at_construction_without_echoing_them(
    options: dict[str, Any], secret: str | None
) -> None:
    config = ChannelConfig("myapp", "webhook", frozenset(), options, {})
    if secret is not None:
        config = ChannelConfig("myapp", "webhook", frozenset(), options, {"secret": Secret(secret)})
    with pytest.raises(ValueError, match=r"^channels\.myapp\.") as caught:
        WebhookChannel(config, httpx.AsyncClient())
    assert "t0k3n" not in str(caught.value)


def test_timeout_defaults_to_ten_seconds_and_accepts_numbers() -> None:
    client = httpx.AsyncClient()
    assert WebhookChannel(channel("https://me.example/h"), client).timeout == 10.0
    assert WebhookChannel(channel("https://me.example/h", timeout=2), client).timeout == 2.0


# --- the documentation's own verifiers ------------------------------------------------------

DOCS = Path(__file__).resolve().parents[2] / "docs" / "webhooks.md"


def doc_snippet(marker: str, namespace: dict[str, Any]) -> dict[str, Any]:
    """Run the docs' Python code block containing ``marker``, so the docs cannot rot."""
    blocks = re.findall(r"```python\n(.*?)```", DOCS.read_text(encoding="utf-8"), re.S)
    (code,) = [block for block in blocks if marker in block]
    exec(compile(code, str(DOCS), "exec"), namespace)  # noqa: S102 - our own documentation
    return namespace


def test_docs_stdlib_verifier_accepts_our_webhooks(sink: Sink, url: str) -> None:
    verify = doc_snippet("def verify(", {})["verify"]
    sink.verifier = "docs", lambda h, b: verify(V1_SECRET, h, b)
    deliver(channel(url, V1_SECRET))
    assert sink.received[0].verified_by == "docs"
    sink.verifier = "docs", lambda h, b: verify(WRONG_SECRET, h, b)
    assert failure(channel(url, V1_SECRET)).status_code == 401


def test_docs_v1a_snippet_accepts_our_signature() -> None:
    body = b'{"id":"dlv_1"}'
    signed = standard.sign_headers(SK, "dlv_1", body)
    names = {
        "base64": base64,
        "public": PK,
        "signature": signed["webhook-signature"].removeprefix("v1a,"),
        "msg_id": "dlv_1",
        "timestamp": signed["webhook-timestamp"],
        "body": body,
    }
    doc_snippet("Ed25519PublicKey", names)  # raises InvalidSignature on a mismatch
    names["body"] = body + b" "
    with pytest.raises(InvalidSignature):
        doc_snippet("Ed25519PublicKey", names)

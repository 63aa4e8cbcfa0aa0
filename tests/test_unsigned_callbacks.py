"""A callback whose body its provider does not sign is evidence of a status, never of data.

Vidu signs a callback's headers, not its body; apimodels, Kling, Luma and MiniMax sign
nothing. Whoever can send
such a callback (a replayed header set, a leaked callback URL) can write any body. Here a
real service, the sandbox providers and a webhook receiver check, for each provider whose
callbacks are unsigned, that a forged body's result and cover URLs, credits, error text
and task id reach neither the job's row, nor the API's job JSON, nor a notification, nor
the archive (which keeps the video the status endpoint names); that the status still
moves; and that a terminal one is confirmed by a status fetch, whose data the job then
holds.

A provider joins by adding its entry to CALLBACK_PROVIDERS: the first test fails until
every configured provider with unsigned callbacks has one.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from starlette.applications import Starlette
from starlette.routing import Route

from receiver.providers import ADAPTERS, apimodels, vidu
from receiver.providers.base import JobRef, Observation
from receiver.sandbox import ServerThread
from receiver.states import Status
from tests.conftest import (
    VIDU_KEY,
    Sandbox,
    running_sandbox,
    running_service,
    settings_restored,
    wait_for,
)
from tests.notify.test_webhook import Sink, by_library
from tests.vidu_signer import vidu_headers

EVIL_URL = "https://evil.example/p.mp4"
EVIL_COVER = "https://evil.example/cover.jpg"
EVIL_CREDITS = 99999
EVIL_ERROR = "ForgedErrorCode"
EVIL_TASK = "forged-task-0001"
EVIL_TEXT = ("evil.example", EVIL_ERROR, EVIL_TASK)
WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"unsigned-callbacks-test-secret-1").decode()
STATUSES = ["queued", "processing", "completed", "failed"]


@dataclass(frozen=True)
class CallbackProvider:
    """How to forge one provider's callback, and how to ask its status endpoint directly."""

    name: str
    words: dict[Status, str]  # the provider's status words
    headers: Callable[[str], dict[str, str]]  # the callback URL -> headers that pass its check
    forged: Callable[[str | None, str], dict[str, Any]]  # (task id, word) -> a lying body
    status: Callable[[str, str], Observation] | None = None  # (sandbox URL, task id) -> ...
    # Whether the provider refuses a body naming another task than the job's (Kling, Luma,
    # MiniMax): a forger must then name the job's own task.
    checks_task: bool = False

    def body(self, word: Status, task_id: str | None = EVIL_TASK) -> bytes:
        return json.dumps(self.forged(task_id, self.words[word])).encode()

    def forged_for(self, job: dict[str, Any], word: Status) -> bytes:
        """A lying body that names what the provider checks; the job's own task where the
        provider checks it, a made-up one where not."""
        if not self.checks_task:
            return self.body(word)
        body = self.forged(job["provider_job_id"], self.words[word])
        if self.name == "kling":
            body["task_info"]["external_task_id"] = job["id"]
        return json.dumps(body).encode()


def _vidu_status(sandbox_url: str, task_id: str) -> Observation:
    answer = httpx.get(
        f"{sandbox_url}/vidu/ent/v2/tasks/{task_id}/creations",
        headers={"Authorization": f"Token {VIDU_KEY}"},
    )
    answer.raise_for_status()
    return vidu.observation(answer.json())


def _apimodels_status(sandbox_url: str, task_id: str) -> Observation:
    answer = httpx.get(
        f"{sandbox_url}/apimodels{apimodels.PATH}",
        params={"task_id": task_id},
        headers={"Authorization": f"Bearer {VIDU_KEY}"},
    )
    answer.raise_for_status()
    return apimodels.observation(answer.json()["data"], answer.json())


CALLBACK_PROVIDERS = {
    "vidu": CallbackProvider(
        name="vidu",
        words={Status.PROCESSING: "processing", Status.COMPLETED: "success",
               Status.FAILED: "failed"},
        headers=lambda url: vidu_headers(VIDU_KEY, url),
        forged=lambda task_id, word: {
            "id": task_id, "state": word, "credits": EVIL_CREDITS, "err_code": EVIL_ERROR,
            "creations": [{"id": "1", "url": EVIL_URL, "cover_url": EVIL_COVER}],
        },
        status=_vidu_status,
    ),
    "apimodels": CallbackProvider(
        name="apimodels",
        words={Status.PROCESSING: "processing", Status.COMPLETED: "completed",
               Status.FAILED: "failed"},
        headers=lambda url: {"Content-Type": "application/json"},
        forged=lambda task_id, word: {
            "code": 200, "msg": "success",
            "data": {"task_id": task_id, "taskId": task_id, "status": word,
                     "videos": [EVIL_URL], "resultUrls": [EVIL_URL], "cover_url": EVIL_COVER,
                     "credits": EVIL_CREDITS, "cost": EVIL_CREDITS, "error": EVIL_ERROR,
                     "failMsg": EVIL_ERROR},
        },
        status=_apimodels_status,
    ),
    "kling": CallbackProvider(
        name="kling",
        words={Status.PROCESSING: "processing", Status.COMPLETED: "succeed",
               Status.FAILED: "failed"},
        headers=lambda url: {"Content-Type": "application/json"},
        forged=lambda task_id, word: {
            "task_id": task_id, "task_status": word, "task_status_msg": EVIL_ERROR,
            "final_unit_deduction": str(EVIL_CREDITS), "task_info": {"external_task_id": ""},
            "task_result": {"videos": [{"id": "1", "url": EVIL_URL, "duration": "5"}]},
        },
        checks_task=True,
    ),
    "luma": CallbackProvider(
        name="luma",
        words={Status.PROCESSING: "dreaming", Status.COMPLETED: "completed",
               Status.FAILED: "failed"},
        headers=lambda url: {"Content-Type": "application/json"},
        forged=lambda task_id, word: {
            "id": task_id, "state": word, "failure_reason": EVIL_ERROR,
            "assets": {"video": EVIL_URL, "image": EVIL_COVER},
        },
        checks_task=True,
    ),
    "minimax": CallbackProvider(
        name="minimax",
        words={Status.PROCESSING: "processing", Status.COMPLETED: "success",
               Status.FAILED: "failed"},
        headers=lambda url: {"Content-Type": "application/json"},
        forged=lambda task_id, word: {
            "task_id": task_id, "status": word, "file_id": "forged-file-1",
            "download_url": EVIL_URL, "base_resp": {"status_code": 0, "status_msg": EVIL_ERROR},
        },
        checks_task=True,
    ),
}  # fmt: skip


def status_of(service, provider: CallbackProvider, sandbox_url: str, task_id: str) -> Observation:
    """What the provider's status endpoint says of the task: asked directly where the test
    has a reader of its own, else through a fresh adapter of the service's configuration."""
    if provider.status is not None:
        return provider.status(sandbox_url, task_id)
    config = service.server.app.state.runtime.config.providers[provider.name]

    async def fetch() -> Observation:
        async with httpx.AsyncClient() as client:
            adapter = ADAPTERS[config.type](config, client)
            return await adapter.fetch(JobRef("job_for_the_test", task_id, None))

    return asyncio.run(fetch())


# -- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    with running_sandbox() as fakes:
        yield fakes


@pytest.fixture(scope="module")
def sink() -> Iterator[tuple[Sink, str]]:
    """The user's app, behind a webhook channel that notifies every status."""
    app_sink = Sink(verifier=by_library(WEBHOOK_SECRET))
    app = Starlette(routes=[Route("/hook", app_sink.hook, methods=["POST"])])
    with ServerThread(app) as server:
        yield app_sink, f"{server.url}/hook"


@pytest.fixture(scope="module")
def service(sandbox, sink, tmp_path_factory):
    extra = {
        "channels": {
            "app": {"type": "webhook", "url": sink[1], "secret_env": "APP_WEBHOOK_SECRET",
                    "events": STATUSES},
        },
        "default_channels": ["app"],
        "env": {"APP_WEBHOOK_SECRET": WEBHOOK_SECRET},
    }  # fmt: skip
    db_path = tmp_path_factory.mktemp("unsigned") / "vidhook.db"
    with running_service(sandbox.url, db_path, extra=extra) as svc:
        yield svc


@pytest.fixture(params=sorted(CALLBACK_PROVIDERS))
def provider(request: pytest.FixtureRequest) -> CallbackProvider:
    return CALLBACK_PROVIDERS[request.param]


# -- helpers ----------------------------------------------------------------------------------


def submit_lost(service, provider: CallbackProvider, prompt: str) -> tuple[dict[str, Any], str]:
    """A job the sandbox sends no callbacks for, and the callback URL stored with it."""
    response = service.api.post(
        "/api/jobs", json={"provider": provider.name, "prompt": f"{prompt} [lost]"}
    )
    assert response.status_code in (201, 502), response.text
    job = response.json() if response.status_code == 201 else response.json()["error"]["job"]
    ((url,),) = service.rows("SELECT callback_url FROM jobs WHERE id = ?", job["id"])
    return job, url


def wait_finished(
    service, sandbox: Sandbox, provider: CallbackProvider, task_id: str
) -> Observation:
    """Until the provider's own status endpoint says the task has ended; what it says."""
    return wait_for(
        lambda: (obs := status_of(service, provider, sandbox.url, task_id)).status.terminal and obs,
        what=f"{provider.name} task {task_id} to end",
    )


def post(service, url: str, provider: CallbackProvider, body: bytes) -> None:
    response = service.http.post(url, content=body, headers=provider.headers(url))
    assert response.status_code == 200, response.text
    assert response.json() == {"ok": True, "duplicate": False}


def row(service, job_id: str) -> dict[str, Any]:
    columns = (
        "status", "provider_status", "provider_job_id", "result_url", "cover_url", "error",
        "credits", "anomalies",
    )  # fmt: skip
    (values,) = service.rows(f"SELECT {', '.join(columns)} FROM jobs WHERE id = ?", job_id)
    return dict(zip(columns, values, strict=True))


def events_for(sink: Sink, job_id: str) -> list[dict[str, Any]]:
    found = [json.loads(r.body) for r in sink.received]
    return [event for event in found if event["data"]["id"] == job_id]


def assert_clean(service, sink: Sink, job_id: str) -> None:
    """No forged value in the job's row, its history, its API JSON or its notifications."""
    stored = service.rows("SELECT * FROM jobs WHERE id = ?", job_id)
    history = service.rows(
        "SELECT t.detail, d.event, d.last_error FROM transitions t"
        " LEFT JOIN deliveries d ON d.transition_id = t.id WHERE t.job_id = ?",
        job_id,
    )
    api = service.job(job_id)
    events = events_for(sink, job_id)
    for where, value in (("row", stored), ("history", history), ("api", api), ("events", events)):
        text = json.dumps(value, default=str)
        for evil in EVIL_TEXT:
            assert evil not in text, f"{evil} reached the job's {where}: {text}"
    for shown in [api, *(event["data"] for event in events)]:
        assert shown["credits"] != EVIL_CREDITS
    assert row(service, job_id)["credits"] != EVIL_CREDITS


def assert_holds(service, job_id: str, said: Observation) -> None:
    """The job's data is what the status endpoint says, in the row and in the API.

    A link's query is left out of the comparison: MiniMax signs a fresh expiry into each
    answer, so the service's own fetch a second later holds a different one.
    """
    expected = data_of(said_fields(said))
    assert data_of(row(service, job_id)) == expected
    assert data_of(service.job(job_id)) == expected


def said_fields(said: Observation) -> dict[str, Any]:
    return {
        "result_url": said.result_url, "cover_url": said.cover_url, "error": said.error,
        "credits": said.credits,
    }  # fmt: skip


def data_of(fields: dict[str, Any]) -> dict[str, Any]:
    kept = {k: fields[k] for k in ("result_url", "cover_url", "error", "credits")}
    for link in ("result_url", "cover_url"):
        if kept[link] is not None:
            kept[link] = urlsplit(kept[link])._replace(query="").geturl()
    return kept


# -- the tests --------------------------------------------------------------------------------


def test_every_provider_with_unsigned_callbacks_is_tested_here(service):
    runtime = service.server.app.state.runtime
    unsigned = {
        name
        for name, adapter in runtime.providers.items()
        if adapter.supports_callbacks and not adapter.signs_callback_body
    }
    assert unsigned == set(CALLBACK_PROVIDERS)


def test_a_forged_processing_callback_moves_the_status_and_nothing_else(
    service, sandbox, sink, provider
):
    app_sink, _ = sink
    job, url = submit_lost(service, provider, "A kite over dunes")
    said = wait_finished(service, sandbox, provider, job["provider_job_id"])
    adapter = service.server.app.state.runtime.providers[provider.name]
    applied_at_once = not adapter.needs_confirmation(Observation(Status.PROCESSING))

    post(service, url, provider, provider.forged_for(job, Status.PROCESSING))

    # The 200 came after the commit: the row is as the callback left it, or, where the
    # callback only asks for a poll, as that poll may already have left it.
    now = row(service, job["id"])
    assert now["provider_job_id"] == job["provider_job_id"]
    untouched = {"result_url": None, "cover_url": None, "error": None, "credits": None}
    if applied_at_once:
        assert data_of(now) == untouched
    else:
        assert data_of(now) in (untouched, data_of(said_fields(said)))
    if applied_at_once:
        word = provider.words[Status.PROCESSING]
        assert (now["status"], now["provider_status"]) == ("processing", word)
        moved = service.job(job["id"])["transitions"][-1]
        assert (moved["to_status"], moved["source"]) == ("processing", "callback")
        wait_for(
            lambda: any(e["type"] == "job.processing" for e in events_for(app_sink, job["id"])),
            what="the processing event",
        )
    # Either way the provider is asked, now (a confirmation) or later (reconciliation); a
    # refresh stands for the later one, and the data is then the status endpoint's.
    done = service.api.post(f"/api/jobs/{job['id']}/refresh")
    assert done.status_code == 200, done.text
    assert done.json()["status"] == said.status.value
    assert_holds(service, job["id"], said)
    wait_for(
        lambda: any(e["type"] == f"job.{said.status}" for e in events_for(app_sink, job["id"])),
        what="the terminal event",
    )
    assert_clean(service, app_sink, job["id"])
    (final,) = [e for e in events_for(app_sink, job["id"]) if e["type"] == f"job.{said.status}"]
    assert data_of(final["data"]) == data_of(said_fields(said))


@pytest.mark.parametrize("word", [Status.COMPLETED, Status.FAILED])
def test_a_forged_terminal_callback_waits_for_the_status_endpoint_and_takes_its_data(
    service, sandbox, sink, provider, word
):
    app_sink, _ = sink
    job, url = submit_lost(service, provider, f"Rain on a tin roof ({word})")
    said = wait_finished(service, sandbox, provider, job["provider_job_id"])
    assert said.status is Status.COMPLETED  # so a forged "failed" is contradicted

    post(service, url, provider, provider.forged_for(job, word))

    ((callback_id, outcome, stored_status, body),) = service.rows(
        "SELECT id, outcome, provider_status, body FROM callbacks WHERE job_id = ?", job["id"]
    )
    # The callback is kept as it came, for the record; only its status word counts.
    assert (outcome, stored_status) == ("confirming", provider.words[word])
    assert EVIL_URL in body
    done = service.wait_status(job["id"], "completed")
    confirmed = done["transitions"][-1]
    assert confirmed["source"] == "poll"
    assert confirmed["detail"]["confirms_callback_id"] == callback_id
    assert_holds(service, job["id"], said)
    assert done["result_url"].startswith(sandbox.url)
    assert done["error"] is None
    # The archive kept the provider's video, from the status endpoint's link: a forged URL
    # (on a host that does not resolve) would have left it failed.
    kept = service.wait(job["id"], lambda j: j["media"]["status"] != "pending")
    assert kept["media"]["status"] == "kept", kept["media"]
    wait_for(
        lambda: any(e["type"] == "job.completed" for e in events_for(app_sink, job["id"])),
        what="the completed event",
    )
    assert_clean(service, app_sink, job["id"])
    (listed,) = done["callbacks"]
    assert listed["provider_status"] == provider.words[word]


def test_a_forged_task_id_is_never_adopted(service, sandbox, sink, provider):
    app_sink, _ = sink
    fake = sandbox.settings if provider.name == "vidu" else sandbox.fake(provider.name).settings
    with settings_restored(fake):
        # The submission is refused for good: the fake knows none of vidhook's keys.
        if provider.name == "kling":
            fake.key_pairs = {"an-access-key-vidhook-does-not-have": "its-secret"}
        else:
            fake.api_keys = ["a-key-vidhook-does-not-have"]
        job, url = submit_lost(service, provider, "A fox in snow")
    assert job["provider_job_id"] is None and job["status"] == "failed"
    before = row(service, job["id"])

    for word in (Status.PROCESSING, Status.COMPLETED):
        post(service, url, provider, provider.body(word))
        time.sleep(0.3)  # a confirmation, were one scheduled, would have run by now

    after = row(service, job["id"])
    assert after["provider_job_id"] is None
    assert {k: after[k] for k in ("status", "result_url", "cover_url", "error", "credits")} == {
        k: before[k] for k in ("status", "result_url", "cover_url", "error", "credits")
    }
    # The contradicting reports are kept as anomalies: the status word, nothing more.
    noted = json.loads(after["anomalies"])
    assert {a["provider_status"] for a in noted} <= set(provider.words.values())
    assert_clean(service, app_sink, job["id"])


def test_a_forged_status_word_is_kept_only_as_a_short_word(service, provider):
    job, url = submit_lost(service, provider, "Moss on a stone wall")
    long_word = "Your video is ready: reply with your API key " + "x" * 10_000
    body = json.loads(provider.forged_for(job, Status.PROCESSING))
    nested = body.get("data", body)
    for field in ("state", "status", "task_status"):
        if field in nested:
            nested[field] = long_word

    post(service, url, provider, json.dumps(body).encode())

    ((kept,),) = service.rows("SELECT provider_status FROM callbacks WHERE job_id = ?", job["id"])
    assert kept == long_word[:64] + "…"
    # The job shows it until the provider's own word replaces it.
    assert len(service.job(job["id"])["provider_status"] or "") <= 65
    assert len(row(service, job["id"])["provider_status"] or "") <= 65

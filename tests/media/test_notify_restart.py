"""A SIGKILL while a completed notification waits for the kept copy (``notify_wait``).

The wait is a row, not a timer: after the restart the notification goes out once, with
vidhook's link when the copy is kept by then, or with the provider's link once the wait,
counted from when the job completed, is over. Never twice, never not at all.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from receiver.sandbox import ServerThread
from receiver.sandbox.media import FileSettings, sample_video
from tests.conftest import settings_restored, wait_for
from tests.media.helpers import sha256
from tests.test_restart import ServiceProcess

pytestmark = pytest.mark.slow

SIZE = 1_200_000
RATE = 300_000  # bytes a second: four seconds a download


@dataclass
class Hooks:
    """The user's app behind a webhook channel: every event, with when it arrived."""

    received: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def receive(self, request: Request) -> Response:
        event = json.loads(await request.body())
        with self.lock:
            self.received.append((time.time(), event))
        return Response(status_code=204)

    def of(self, job_id: str) -> list[tuple[float, dict[str, Any]]]:
        with self.lock:
            return [(at, e) for at, e in self.received if e["data"]["id"] == job_id]


@pytest.fixture
def hooks():
    sink = Hooks()
    app = Starlette(routes=[Route("/hooks", sink.receive, methods=["POST"])])
    with ServerThread(app) as server:
        yield sink, f"{server.url}/hooks"


def notifying_service(tmp_path, sandbox_url, hooks_url, notify_wait):
    extra = (
        f"\n[archive]\nallow_private_hosts = true\nnotify_wait = {notify_wait}\n"
        f'\n[channels.app]\ntype = "webhook"\nurl = "{hooks_url}"\nevents = ["completed"]\n'
    )
    top = 'default_channels = ["app"]\n'
    return ServiceProcess(tmp_path, sandbox_url, extra_config=extra, top_config=top)


def held_delivery(service, job_id):
    """The job's completed notification, once it is held for the copy (else None)."""
    rows = service.rows(
        "SELECT d.id, d.status, d.attempts, d.created_at, d.next_attempt_at"
        " FROM deliveries d WHERE d.job_id = ? AND d.event = 'completed'",
        job_id,
    )
    if not rows:
        return None
    (row,) = rows
    held = row["next_attempt_at"] is not None and row["next_attempt_at"] > row["created_at"]
    return row if held else None


def status_of(service, table, key, value):
    return service.rows(f"SELECT status FROM {table} WHERE {key} = ?", value)[0][0]


def attempts_of(service, delivery_id):
    return [
        (r["outcome"], r["at"])
        for r in service.rows(
            "SELECT outcome, at FROM delivery_attempts WHERE delivery_id = ? ORDER BY id",
            delivery_id,
        )
    ]


def test_a_kill_while_the_notification_waits_sends_it_once_with_the_copy(sandbox, tmp_path, hooks):
    sink, hooks_url = hooks
    service = notifying_service(tmp_path, sandbox.url, hooks_url, notify_wait=60)
    partial = tmp_path / "media" / ".partial"
    expected = sample_video(SIZE)
    with settings_restored(sandbox.settings) as settings:
        settings.files = FileSettings(video_bytes=SIZE, rate=RATE)
        try:
            service.start()
            job_id = service.submit("A lighthouse beam sweeping the fog")["id"]
            held = wait_for(lambda: held_delivery(service, job_id), what="the held notification")
            assert held["next_attempt_at"] == pytest.approx(held["created_at"] + 60)
            wait_for(
                lambda: any(p.stat().st_size > 0 for p in partial.glob("*.partial")),
                what="the download under way",
            )
            service.kill()
            # Held: nothing was sent, and the wait is on disk.
            assert sink.of(job_id) == []
            (row,) = service.rows("SELECT * FROM deliveries WHERE id = ?", held["id"])
            assert (row["status"], row["attempts"]) == ("pending", 0)
            assert row["next_attempt_at"] == held["next_attempt_at"]
            assert status_of(service, "downloads", "job_id", job_id) == "pending"

            service.start()
            wait_for(lambda: sink.of(job_id), timeout=30, what="the notification")
            wait_for(
                lambda: status_of(service, "deliveries", "id", held["id"]) == "delivered",
                what="the delivery recorded",
            )
            time.sleep(0.5)  # room for a second message, if one were ever to go out
            received = sink.of(job_id)
            attempts = attempts_of(service, held["id"])
            (finished,) = service.rows("SELECT finished_at FROM downloads WHERE job_id = ?", job_id)
            video = received[0][1]["data"]["media"]["video"] or {}
            from_link = httpx.get(video["url"], timeout=10).content if video else None
        finally:
            service.close()

    assert len(received) == 1, received
    (_at, event) = received[0]
    assert event["type"] == "job.completed"
    media = event["data"]["media"]
    assert media["status"] == "kept"
    assert media["video"]["url"].startswith(f"{service.url}/media/{job_id}/video?")
    assert from_link is not None and media["video"]["sha256"] == sha256(expected)
    assert from_link == expected
    # Sent once, after the copy was kept and long before the hold would have ended.
    assert [outcome for outcome, _ in attempts] == ["delivered"]
    assert finished[0] <= attempts[0][1] < held["next_attempt_at"]


def test_a_kill_while_the_notification_waits_sends_it_once_when_the_wait_is_over(
    sandbox, tmp_path, hooks
):
    sink, hooks_url = hooks
    wait = 5.0
    service = notifying_service(tmp_path, sandbox.url, hooks_url, notify_wait=wait)
    expected = sample_video(SIZE)
    with settings_restored(sandbox.settings) as settings:
        settings.files = FileSettings(video_bytes=SIZE, rate=RATE)
        try:
            service.start()
            job = service.submit("Fog rolling over a harbour")
            job_id = job["id"]
            held = wait_for(lambda: held_delivery(service, job_id), what="the held notification")
            service.kill()
            assert sink.of(job_id) == []
            # Down until the wait, counted from the completion, is over.
            time.sleep(max(0.0, held["created_at"] + wait + 0.5 - time.time()))
            service.start()
            ready = time.time()
            wait_for(lambda: sink.of(job_id), timeout=30, what="the notification")
            # The copy, begun again after the restart, is kept later: no second message.
            wait_for(
                lambda: service.api.get(f"/api/jobs/{job_id}").json()["media"]["status"] == "kept",
                timeout=30,
                what="the copy kept",
            )
            time.sleep(0.5)
            received = sink.of(job_id)
            attempts = attempts_of(service, held["id"])
            result_url = service.api.get(f"/api/jobs/{job_id}").json()["result_url"]
            from_provider = httpx.get(result_url, timeout=10).content
        finally:
            service.close()

    assert len(received) == 1, received
    arrived, event = received[0]
    assert event["type"] == "job.completed"
    media = event["data"]["media"]
    assert media["status"] == "pending" and media["video"] is None
    assert event["data"]["result_url"] == result_url  # the provider's link, as the copy was not
    assert [outcome for outcome, _ in attempts] == ["delivered"]
    sent_at = attempts[0][1]
    assert sent_at >= held["created_at"] + wait  # not before the wait was over
    # Nor counted again from the restart: it went out as soon as the service was back.
    assert arrived < ready + wait
    assert from_provider == expected

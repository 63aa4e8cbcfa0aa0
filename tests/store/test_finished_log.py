"""One INFO line when a job reaches its end, whatever told vidhook so, and only once it
is stored."""

from __future__ import annotations

import asyncio
import logging

import pytest

from receiver.providers.base import Observation
from receiver.states import Status
from receiver.store import Store, jobs
from tests.conftest import running_service, wait_for
from tests.store.test_store import new_job, route_all

FINISHED = "vidhook.jobs"


def finished_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == FINISHED]


@pytest.fixture
def finished_log(caplog):
    """The log records, with the finished lines of vidhook.jobs among them."""
    caplog.set_level(logging.INFO, logger=FINISHED)
    return caplog


def test_each_source_of_an_end_logs_one_line(sandbox, tmp_path, finished_log):
    caplog = finished_log
    overrides = {"revid": {"deadline": 0.5}}  # its [never] job ends by the deadline
    with running_service(sandbox.url, tmp_path / "vidhook.db", overrides) as service:
        done = service.submit("A fox")  # completed, confirmed by a poll
        failed = service.api.post("/api/jobs", json={"provider": "kvid", "prompt": "Storm [fail]"})
        never = service.api.post("/api/jobs", json={"provider": "revid", "prompt": "Wait [never]"})
        refused = service.api.post("/api/jobs", json={"provider": "vidu", "prompt": "No [policy]"})
        ids = {
            "done": done["id"],
            "failed": failed.json()["id"],
            "never": never.json()["id"],
            "refused": refused.json()["error"]["job"]["id"],
        }
        for job_id in ids.values():
            service.wait(job_id, lambda j: Status(j["status"]).terminal)
        result = service.job(ids["done"])["result_url"]
        wait_for(lambda: len(finished_lines(caplog)) >= 4, what="four finished lines")
    lines = finished_lines(caplog)
    assert len(lines) == 4, lines
    by_job = {job_id: [line for line in lines if job_id in line] for job_id in ids.values()}
    assert all(len(found) == 1 for found in by_job.values()), by_job
    (line,) = by_job[ids["done"]]
    assert line.startswith(f"job {ids['done']} completed after ")
    assert line.endswith(f"s (provider vidu, via poll): result {result.split('?')[0]}?…")
    (line,) = by_job[ids["failed"]]
    assert " failed after " in line and line.endswith(
        "(provider kvid, via poll): Video generation failed: the output was blocked by the "
        "safety checker"
    )
    (line,) = by_job[ids["never"]]
    assert line.endswith("(provider revid, via deadline): timed out")
    (line,) = by_job[ids["refused"]]
    assert "(provider vidu, via submit): vidu HTTP 400 TaskPromptPolicyViolation" in line


def test_an_end_that_is_rolled_back_is_not_logged(tmp_path, finished_log):
    caplog = finished_log
    store = Store(tmp_path / "vidhook.db", route=route_all).open()
    try:

        async def scenario() -> None:
            await store.insert_job(new_job())

            async def ended_then_failed(db):
                await jobs.apply(
                    db,
                    "job_1",
                    Observation(Status.COMPLETED, result_url="https://cdn.example.com/a.mp4"),
                    "poll",
                    now=store.clock(),
                    route=route_all,
                )
                raise RuntimeError("a later step of the same request failed")

            with pytest.raises(RuntimeError):
                await store.write(ended_then_failed)
            assert (await store.get_job("job_1"))["status"] == "queued"
            assert finished_lines(caplog) == []

            await store.apply("job_1", Observation(Status.FAILED, error="boom"), "callback")
            # Already ended: a second terminal observation is an anomaly, not a second line.
            await store.apply("job_1", Observation(Status.COMPLETED), "poll")

        asyncio.run(scenario())
    finally:
        store.close()
    (line,) = finished_lines(caplog)
    assert line.startswith("job job_1 failed after ")
    assert line.endswith("s (provider vidu, via callback): boom")

"""The archive's rows: a completed job queues its download in the transaction that completes it."""

import asyncio
import sqlite3

import pytest

from receiver.providers.base import Observation
from receiver.states import Status
from receiver.store import Store
from receiver.store import media as media_rows
from tests.store.test_store import new_job, route_all, rows


@pytest.fixture
def store(tmp_path):
    store = Store(tmp_path / "vidhook.db", route=route_all).open()
    yield store
    store.close()


def run(coro):
    return asyncio.run(coro)


def downloads(store):
    return rows(store.path, "SELECT job_id, status, attempts FROM downloads ORDER BY job_id")


def test_completing_a_job_queues_its_download_with_the_transition(store):
    async def go():
        await store.insert_job(new_job("job_1"))
        await store.apply("job_1", Observation(Status.PROCESSING), "poll")
        assert downloads(store) == []
        done = Observation(Status.COMPLETED, result_url="https://cdn.example/v.mp4")
        await store.apply("job_1", done, "poll")

    run(go())
    assert downloads(store) == [("job_1", "pending", 0)]
    # Queued at the very moment of the transition, in its transaction.
    (at,) = rows(store.path, "SELECT at FROM transitions WHERE to_status = 'completed'")[0]
    (queued,) = rows(store.path, "SELECT queued_at FROM downloads")[0]
    assert queued == at


def test_a_failed_job_or_a_repeated_completion_queues_nothing_more(store):
    async def go():
        await store.insert_job(new_job("job_f"))
        await store.apply("job_f", Observation(Status.FAILED, error="no"), "poll")
        await store.insert_job(new_job("job_c"))
        await store.apply("job_c", Observation(Status.COMPLETED, result_url="https://x/v"), "poll")
        await store.apply("job_c", Observation(Status.COMPLETED, result_url="https://x/v"), "poll")

    run(go())
    assert downloads(store) == [("job_c", "pending", 0)]


def test_a_transition_rolled_back_leaves_no_download(store):
    async def go():
        await store.insert_job(new_job("job_1"))

        async def complete_then_fail(db):
            from receiver.store import jobs

            done = Observation(Status.COMPLETED, result_url="https://x/v")
            await jobs.apply(db, "job_1", done, "poll", now=1.0, route=route_all)
            raise sqlite3.IntegrityError("refused later in the same request")

        with pytest.raises(sqlite3.IntegrityError):
            await store.write(complete_then_fail)

    run(go())
    assert downloads(store) == []
    assert rows(store.path, "SELECT status FROM jobs") == [("queued",)]


def test_finishing_a_download_releases_the_completed_notifications_it_held(store):
    async def go():
        await store.insert_job(new_job("job_1"))
        await store.apply("job_1", Observation(Status.COMPLETED, result_url="https://x/v"), "poll")
        (delivery_id,) = rows(store.path, "SELECT id FROM deliveries")[0]
        await store.defer_delivery(delivery_id, store.clock() + 100)
        await store.finish_download("job_1", media_rows.KEPT, None)
        return delivery_id

    delivery_id = run(go())
    (due,) = rows(store.path, "SELECT next_attempt_at FROM deliveries WHERE id = ?", delivery_id)[0]
    (finished,) = rows(store.path, "SELECT finished_at FROM downloads")[0]
    assert due == finished
    assert rows(store.path, "SELECT status, attempts FROM deliveries") == [("pending", 0)]


def test_backfill_queues_completed_jobs_without_a_copy_whose_links_may_still_work(store):
    async def go():
        for job_id, provider in (("job_a", "vidu"), ("job_b", "kvid"), ("job_c", "vidu")):
            job = new_job(job_id)
            await store.insert_job(job.__class__(**{**job.__dict__, "provider": provider}))
            await store.apply(job_id, Observation(Status.COMPLETED, result_url="https://x"), "poll")
        await store.switch_off_downloads()
        # job_c finished long ago: Vidu's links last a day.
        await store.write(
            lambda db: db.run(
                "UPDATE jobs SET finished_at = finished_at - 90000 WHERE id = 'job_c'"
            )
        )
        return await store.backfill_downloads({"vidu": 86400.0, "kvid": None})

    assert run(go()) == 2
    assert downloads(store) == [
        ("job_a", "pending", 0),
        ("job_b", "pending", 0),
        ("job_c", "off", 0),
    ]

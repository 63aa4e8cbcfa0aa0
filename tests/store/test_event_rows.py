"""The events log: a row per transition and per change of a kept copy, in the same
transaction; pruning from the oldest, remembered; reads in one snapshot."""

import asyncio
import sqlite3

import pytest

from receiver.providers.base import Observation
from receiver.states import Status
from receiver.store import Store, jobs
from receiver.store import media as media_rows
from tests.store.test_store import new_job, route_all, rows


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def store(tmp_path, clock):
    store = Store(tmp_path / "vidhook.db", route=route_all, clock=clock).open()
    yield store
    store.close()


def run(coro):
    return asyncio.run(coro)


def events(store):
    """(id, job_id, transition's to_status or None for a media change)."""
    return rows(
        store.path,
        "SELECT e.id, e.job_id, t.to_status FROM events e"
        " LEFT JOIN transitions t ON t.id = e.transition_id ORDER BY e.id",
    )


DONE = Observation(Status.COMPLETED, result_url="https://cdn.example/v.mp4")


async def completed(store, *job_ids):
    for job_id in job_ids:
        await store.insert_job(new_job(job_id))
        await store.apply(job_id, Observation(Status.PROCESSING), "callback")
        await store.apply(job_id, DONE, "poll")


def test_each_transition_writes_one_event_with_its_id_and_time(store):
    run(completed(store, "job_1"))
    # An observation that changes nothing writes no event.
    run(store.apply("job_1", Observation(Status.PROCESSING), "poll"))
    assert events(store) == [(1, "job_1", "queued"), (2, "job_1", "processing"),
                             (3, "job_1", "completed")]  # fmt: skip
    assert rows(store.path, "SELECT DISTINCT at FROM events") == [(1000.0,)]
    pairs = rows(
        store.path, "SELECT e.at, t.at FROM events e JOIN transitions t ON t.id = e.transition_id"
    )
    assert all(a == b for a, b in pairs)


def test_a_request_rolled_back_leaves_no_event(store):
    run(store.insert_job(new_job("job_1")))

    async def complete_then_fail(db):
        await jobs.apply(db, "job_1", DONE, "poll", now=1.0, route=route_all)
        raise sqlite3.IntegrityError("refused later in the same request")

    with pytest.raises(sqlite3.IntegrityError):
        run(store.write(complete_then_fail))
    assert events(store) == [(1, "job_1", "queued")]


def test_changes_of_a_kept_copy_write_one_event_per_job(store, clock):
    run(completed(store, "job_a", "job_b", "job_c"))
    before = len(events(store))

    async def go():
        # A failed try and a stored file are steps on the way: no event yet.
        await store.retry_download("job_a", "HTTP 503", clock.now + 10)
        await store.record_file("job_a", "video", store="local", location="a.mp4", size=1,
                                sha256="0" * 64, content_type="video/mp4")  # fmt: skip
        await store.record_file("job_a", "cover", store="local", location="a.png", size=1,
                                sha256="0" * 64, content_type="image/png")  # fmt: skip
        assert len(events(store)) == before
        await store.finish_download("job_a", media_rows.KEPT, None)
        await store.finish_download("job_b", media_rows.FAILED, "too large")
        await store.mark_pruned([("job_a", "video"), ("job_a", "cover")], 1)  # one job
        await store.requeue_download("job_b")  # download again
        await store.switch_off_downloads()  # job_b and job_c were pending

    run(go())
    assert [(job, to) for _id, job, to in events(store)[before:]] == [
        ("job_a", None), ("job_b", None), ("job_a", None), ("job_b", None),
        ("job_b", None), ("job_c", None),
    ]  # fmt: skip


def test_pruning_removes_the_oldest_and_remembers_how_far(store, clock):
    async def go():
        await store.insert_job(new_job("job_1"))  # event 1 at 1000
        clock.now = 2000.0
        await store.apply("job_1", Observation(Status.PROCESSING), "poll")  # 2 at 2000
        clock.now = 1500.0  # a clock set back: an older time after a newer one
        await store.apply("job_1", DONE, "poll")  # 3 at 1500
        assert await store.prune_events(before=1800.0, limit=100) == 1
        # Event 3 is older than the cut, but event 2 before it is not: both stay.
        assert await store.event_position() == 3
        assert await store.prune_events(before=1800.0, limit=100) == 0
        clock.now = 3000.0
        assert await store.prune_events(before=2500.0, limit=1) == 1  # in batches
        assert await store.prune_events(before=2500.0, limit=1) == 1
        # Nothing left: the position is still the newest id ever given out.
        assert await store.event_position() == 3
        await store.insert_job(new_job("job_2"))

    run(go())
    assert rows(store.path, "SELECT through FROM events_pruned") == [(3,)]
    assert [event_id for event_id, _job, _to in events(store)] == [4]  # never an id again


def test_a_read_gives_events_in_order_with_their_jobs_in_full(store):
    run(completed(store, "job_a", "job_b"))

    def shape(found):
        return found

    found = run(store.read_events(1, 3, shape))
    assert found.rows == [(2, "job_a"), (3, "job_a"), (4, "job_b")]
    assert set(found.jobs) == {"job_a", "job_b"}
    job = found.jobs["job_a"]
    assert [t["to_status"] for t in job["transitions"]] == ["queued", "processing", "completed"]
    assert job["download"]["status"] == "pending" and job["files"] == {}
    assert "deliveries" in job and "callbacks" in job
    assert found.pruned_through == 0
    only_b = run(store.read_events(0, 10, shape, until=5, job="job_b"))
    assert only_b.rows == [(4, "job_b"), (5, "job_b")]
    assert run(store.count_events(0, 6, at_most=4)) == 4

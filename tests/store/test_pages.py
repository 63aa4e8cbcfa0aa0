"""The dashboard's reads: exact counts kept up to date, keyset pages, bounded searches."""

from __future__ import annotations

import asyncio
import random
import sqlite3
from collections import Counter

import pytest

from receiver.providers.base import Observation
from receiver.states import Status
from receiver.store import NewJob, Store
from receiver.store import pages as queries
from receiver.store.db import run_sync
from receiver.store.pages import JobCounts, JobFilter, by_status, jobs_page
from receiver.store.writer import SqliteDb, connect

PROVIDERS = ("vidu", "kling", "rare")
WORDS = ("fox", "lighthouse", "rain", "tea", "paper")


def no_channels(status, notify):
    return []


def new_job(number: int, provider: str, prompt: str) -> NewJob:
    return NewJob(
        id=f"job_{number:026d}",
        provider=provider,
        model="m",
        prompt=prompt,
        request={"images": []},
        callback_token=None,
        callback_url=None,
        key_fingerprint=None,
        notify=None,
    )


def ends(rng: random.Random) -> list[Status]:
    """A status history after queued: none, processing, or on to an end."""
    choice = rng.random()
    if choice < 0.2:
        return []
    if choice < 0.35:
        return [Status.PROCESSING]
    return [Status.PROCESSING, rng.choice([Status.COMPLETED, Status.FAILED, Status.CANCELED])]


async def fill(store: Store, count: int, seed: int, start: int = 0) -> None:
    rng = random.Random(seed)
    for number in range(start, start + count):
        # "rare" is rare, and only among the oldest jobs: the worst case for a walk by id.
        provider = "rare" if number < 40 and number % 4 == 0 else rng.choice(PROVIDERS[:2])
        prompt = f"{rng.choice(WORDS)} number {number}."
        await store.insert_job(new_job(number, provider, prompt))
        for status in ends(rng):
            await store.apply(f"job_{number:026d}", Observation(status=status), "poll")


@pytest.fixture
def store(tmp_path):
    store = Store(tmp_path / "vidhook.db", route=no_channels).open()
    yield store
    store.close()


@pytest.fixture
def conn(store):
    conn = connect(store.path)
    yield conn
    conn.close()


def refresh(counts: JobCounts, conn: sqlite3.Connection) -> dict[tuple[str, str], int]:
    return run_sync(counts.refresh(SqliteDb(conn)))


def read_page(conn: sqlite3.Connection, *args, **kwargs):
    return run_sync(jobs_page(SqliteDb(conn), *args, **kwargs))


def all_jobs(conn: sqlite3.Connection) -> list[dict]:
    return [dict(r) for r in conn.execute("SELECT * FROM jobs ORDER BY id DESC")]


def counted(conn: sqlite3.Connection) -> dict[tuple[str, str], int]:
    rows = conn.execute("SELECT provider, status, count(*) FROM jobs GROUP BY 1, 2")
    return {(provider, status): n for provider, status, n in rows}


def test_counts_are_exact_after_the_first_count_and_after_every_change(store, conn):
    asyncio.run(fill(store, 120, seed=1))
    counts = JobCounts()
    assert refresh(counts, conn) == counted(conn)
    asyncio.run(fill(store, 60, seed=2, start=120))
    # A change to a job counted before: its old status loses it, its new one gains it.
    asyncio.run(store.apply(f"job_{5:026d}", Observation(status=Status.FAILED), "poll"))
    assert refresh(counts, conn) == counted(conn)
    assert refresh(counts, conn) == counted(conn)  # nothing new: nothing moves


def test_an_observation_that_changes_nothing_moves_no_count(store, conn):
    asyncio.run(fill(store, 30, seed=3))
    counts = JobCounts()
    before = refresh(counts, conn)
    done = next(r["id"] for r in all_jobs(conn) if r["status"] == "completed")
    asyncio.run(store.apply(done, Observation(status=Status.PROCESSING), "callback"))
    assert refresh(counts, conn) == before


def expected(conn, where: JobFilter) -> list[str]:
    return [
        r["id"]
        for r in all_jobs(conn)
        if (where.status is None or r["status"] == where.status)
        and (where.provider is None or r["provider"] == where.provider)
        and (where.search is None or where.search.lower() in (r["prompt"] or "").lower())
    ]


def walk(conn, where: JobFilter, counts, limit: int) -> list[str]:
    """Every page, following the cursor, as the list's Older link does."""
    seen: list[str] = []
    before = None
    for _ in range(1000):
        page = read_page(conn, where, before=before, limit=limit, counts=counts)
        assert len(page.jobs) <= limit
        seen += [j["id"] for j in page.jobs]
        if page.older is None:
            return seen
        before = page.older
    raise AssertionError("the pages never ended")


FILTERS = [
    JobFilter(),
    JobFilter(status="completed"),
    JobFilter(status="queued"),
    JobFilter(provider="vidu"),
    JobFilter(provider="rare"),
    JobFilter(provider="rare", status="completed"),
    JobFilter(provider="kling", status="failed"),
    JobFilter(provider="gone"),
    JobFilter(search="fox"),
    JobFilter(search="FOX number 1"),
    JobFilter(search="lighthouse", provider="rare"),
    JobFilter(search="no such words"),
    JobFilter(search="100%_sure\\"),
]


@pytest.mark.parametrize("where", FILTERS, ids=str)
def test_pages_hold_every_matching_job_once_newest_first(store, conn, where, monkeypatch):
    monkeypatch.setattr(queries, "SEARCH_WINDOW", 25)  # so that searches span windows
    asyncio.run(fill(store, 200, seed=4))
    counts = refresh(JobCounts(), conn)
    assert walk(conn, where, counts, limit=7) == expected(conn, where)


def test_a_provider_filter_takes_the_cheaper_walk(store, conn):
    asyncio.run(fill(store, 200, seed=5))
    counts = refresh(JobCounts(), conn)
    # "rare": ten jobs, all among the oldest: reading them and sorting beats walking
    # every id; "vidu": about half of all jobs, so a page of ten is met within about
    # twenty ids, far fewer than its hundred jobs.
    assert queries._provider_walk(JobFilter(provider="rare"), counts, 10)
    assert not queries._provider_walk(JobFilter(provider="vidu"), counts, 10)


def test_a_search_reads_one_window_per_page_and_says_where_it_stopped(store, conn, monkeypatch):
    monkeypatch.setattr(queries, "SEARCH_WINDOW", 30)
    asyncio.run(fill(store, 100, seed=6))
    counts = refresh(JobCounts(), conn)
    first = read_page(conn, JobFilter(search="number 3."), before=None, limit=10, counts=counts)
    # "number 3." is only the fourth job, far below the newest window.
    assert first.jobs == []
    assert first.searched_to == all_jobs(conn)[29]["id"]
    assert first.older == first.searched_to
    found = walk(conn, JobFilter(search="number 3."), counts, limit=10)
    assert found == [f"job_{3:026d}"]


def test_counts_by_status_for_one_provider_or_all():
    counts = {("vidu", "completed"): 3, ("kling", "completed"): 2, ("vidu", "failed"): 1}
    assert by_status(counts, None) == Counter(completed=5, failed=1)
    assert by_status(counts, "kling") == Counter(completed=2)

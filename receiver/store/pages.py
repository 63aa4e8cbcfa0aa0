"""Reads for the dashboard's pages, shaped to stay fast with millions of jobs.

Lists walk jobs newest first by id and page with a cursor (the last id shown), never
with OFFSET. A status filter walks the (status, id) index. No index leads with the
provider and orders by id, so a provider filter takes the cheaper of two walks, judged
from the exact counts: down the id index skipping other providers' jobs, or through the
provider's own jobs, sorted. A search in prompts reads at most ``SEARCH_WINDOW`` jobs
per page and says where it stopped, so that a rare word costs a bounded read, not a
scan of every prompt.

Counts by provider and status are exact without a count over the table at every view:
``JobCounts`` counts once, then follows the transitions appended since; every status
change is one (``jobs.apply``), and jobs are never deleted.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from receiver.store import media, queries
from receiver.store.db import Db, among
from receiver.store.outbox import DEAD, HELD, PENDING
from receiver.store.queries import _rows

SEARCH_WINDOW = 10_000
# Rows one walk may read to fill a page before the other walk is cheaper (a row read in
# id order costs about what a sorted one does).
_SORT_COST = 1.0


@dataclass(frozen=True)
class JobFilter:
    status: str | None = None
    provider: str | None = None
    search: str | None = None


@dataclass(frozen=True)
class JobsPage:
    jobs: list[dict[str, Any]]
    older: str | None  # the cursor of the next page, None on the last
    # A search that read its window without filling the page: the id it stopped at.
    searched_to: str | None = None


class JobCounts:
    """Jobs per (provider, status), exact, kept up to date from the transitions table."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[tuple[str, str]] = Counter()
        self._last: int | None = None

    async def refresh(self, db: Db) -> dict[tuple[str, str], int]:
        """Read what changed since the last refresh (everything, the first time). A read is
        one snapshot: the counts and the transition they go up to agree."""
        while True:
            last = self._last
            if last is None:
                counts, top = await self._load(db)
            else:
                rows = await self._changes(db, last)
            # Applied only if no other refresh moved on meanwhile (reads run on several
            # threads, or interleave on the event loop); else read again from there.
            with self._lock:
                if self._last != last:
                    continue
                if last is None:
                    self._counts, self._last = counts, top
                else:
                    self._advance(rows)
                return {key: n for key, n in self._counts.items() if n}

    @staticmethod
    async def _load(db: Db) -> tuple[Counter[tuple[str, str]], int]:
        # NOT INDEXED (SQLite): a table scan reads pages in order; walking an index here
        # would look every row up at random.
        scan = " NOT INDEXED" if db.engine == "sqlite" else ""
        rows = await db.all(f"SELECT provider, status, count(*) FROM jobs{scan} GROUP BY 1, 2")
        last = await db.one("SELECT coalesce(max(id), 0) FROM transitions")
        assert last is not None
        return Counter({(provider, status): n for provider, status, n in rows}), int(last[0])

    @staticmethod
    async def _changes(db: Db, last: int) -> list[Any]:
        return await db.all(
            "SELECT j.provider, t.from_status, t.to_status, count(*), max(t.id)"
            " FROM transitions t JOIN jobs j ON j.id = t.job_id WHERE t.id > ?"
            " GROUP BY 1, 2, 3",
            (last,),
        )

    def _advance(self, rows: list[Any]) -> None:
        for provider, old, new, n, top in rows:
            if old is not None:
                self._counts[provider, old] -= n
            self._counts[provider, new] += n
            self._last = max(self._last or 0, top)


def by_status(counts: Mapping[tuple[str, str], int], provider: str | None) -> Counter[str]:
    totals: Counter[str] = Counter()
    for (name, status), n in counts.items():
        if provider is None or name == provider:
            totals[status] += n
    return totals


async def jobs_page(
    db: Db,
    where: JobFilter,
    *,
    before: str | None,
    limit: int,
    counts: Mapping[tuple[str, str], int],
) -> JobsPage:
    conditions: list[str] = []
    params: list[Any] = []
    # "+column": a test no index may serve, so that SQLite walks the index chosen here
    # (PostgreSQL's planner judges from its own statistics, and has no such hint).
    through_provider = where.provider is not None and _provider_walk(where, counts, limit)
    unindexed = "+" if db.engine == "sqlite" else ""
    if where.status is not None:
        conditions.append(f"{unindexed}status = ?" if through_provider else "status = ?")
        params.append(where.status)
    if where.provider is not None:
        conditions.append("provider = ?" if through_provider else f"{unindexed}provider = ?")
        params.append(where.provider)
    if before is not None:
        conditions.append("id < ?")
        params.append(before)
    clause = " WHERE " + " AND ".join(conditions) if conditions else ""
    if where.search:
        return await _search(db, clause, params, where.search, limit)
    rows = _rows(
        await db.all(f"SELECT * FROM jobs{clause} ORDER BY id DESC LIMIT ?", (*params, limit + 1))
    )
    await media.attach(db, rows)
    more = len(rows) > limit
    rows = rows[:limit]
    return JobsPage(rows, rows[-1]["id"] if more else None)


def _provider_walk(where: JobFilter, counts: Mapping[tuple[str, str], int], limit: int) -> bool:
    """Whether to read the provider's jobs and sort them, rather than walk ids (or the
    status's ids) in order, skipping other providers' jobs, until the page is full."""
    assert where.provider is not None
    statuses = by_status(counts, None)
    walked = statuses[where.status] if where.status else sum(statuses.values())
    mine = by_status(counts, where.provider)
    matching = mine[where.status] if where.status else sum(mine.values())
    if matching == 0:
        return True  # nothing to find: the provider's index says so at once
    expected_walk = walked / matching * (limit + 1)
    return sum(mine.values()) * _SORT_COST < expected_walk


async def _search(db: Db, clause: str, params: list[Any], search: str, limit: int) -> JobsPage:
    pattern = "%" + search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
    window = f"SELECT * FROM jobs{clause} ORDER BY id DESC LIMIT {SEARCH_WINDOW}"
    rows = _rows(
        await db.all(
            f"SELECT * FROM ({window}) AS w WHERE prompt LIKE ? ESCAPE '\\' LIMIT ?",
            (*params, pattern, limit + 1),
        )
    )
    await media.attach(db, rows)
    if len(rows) > limit:
        rows = rows[:limit]
        return JobsPage(rows, rows[-1]["id"])
    # The page is not full: the window was read to its end. Where did it end?
    found = await db.one(
        f"SELECT min(id), count(*) FROM (SELECT id FROM jobs{clause}"
        f" ORDER BY id DESC LIMIT {SEARCH_WINDOW}) AS w",
        params,
    )
    assert found is not None
    end, read = found[0], found[1]
    if read < SEARCH_WINDOW:
        return JobsPage(rows, None)
    return JobsPage(rows, end, searched_to=end)


async def job_page(db: Db, job_id: str) -> dict[str, Any] | None:
    """A job with all the store holds about it, delivery attempts included, in one read."""
    job = await queries.get_job(db, job_id)
    if job is None:
        return None
    job["transitions"] = await queries.transitions(db, job_id)
    job["deliveries"] = await queries.deliveries(db, job_id)
    job["callbacks"] = await queries.callbacks(db, job_id)
    await media.attach(db, [job])
    ids = [d["id"] for d in job["deliveries"]]
    attempts: dict[int, list[dict[str, Any]]] = {i: [] for i in ids}
    for row in _rows(
        await db.all(
            f"SELECT * FROM delivery_attempts WHERE {among('delivery_id', ids)} ORDER BY id", ids
        )
    ):
        attempts[row["delivery_id"]].append(row)
    job["attempts"] = attempts
    return job


async def stuck_deliveries(
    db: Db, *, channel: str | None, before: int | None, limit: int
) -> list[dict[str, Any]]:
    """Dead and held deliveries, newest first, each with its job's provider and prompt."""
    conditions = ["d.status IN (?, ?)"]
    params: list[Any] = [DEAD, HELD]
    if channel is not None:
        conditions.append("d.channel = ?")
        params.append(channel)
    if before is not None:
        conditions.append("d.id < ?")
        params.append(before)
    return _rows(
        await db.all(
            "SELECT d.*, j.provider, j.prompt, j.status AS job_status FROM deliveries d"
            " JOIN jobs j ON j.id = d.job_id WHERE " + " AND ".join(conditions) + ""
            " ORDER BY d.id DESC LIMIT ?",
            (*params, limit),
        )
    )


async def channel_health(db: Db) -> dict[str, dict[str, Any]]:
    """Per channel with deliveries waiting or stuck: counts by status, and why it is
    disabled if it is."""
    health: dict[str, dict[str, Any]] = {}
    for channel, status, n in await db.all(
        "SELECT channel, status, count(*) FROM deliveries WHERE status IN (?, ?, ?) GROUP BY 1, 2",
        (PENDING, DEAD, HELD),
    ):
        health.setdefault(channel, {})[status] = n
    for row in await db.all("SELECT name, disabled_at, reason FROM channel_states"):
        entry = health.setdefault(row["name"], {})
        entry["disabled_at"], entry["disabled_reason"] = row["disabled_at"], row["reason"]
    return health


async def provider_queues(db: Db, now: float) -> dict[str, dict[str, int]]:
    """Per provider: unfinished jobs with a poll scheduled, those due now, and the
    submissions waiting to be sent again."""
    queues: dict[str, dict[str, int]] = {}
    for provider, scheduled, due in await db.all(
        "SELECT provider, count(*),"
        " coalesce(sum(CASE WHEN next_poll_at <= ? THEN 1 ELSE 0 END), 0) FROM jobs"
        " WHERE next_poll_at IS NOT NULL AND status IN ('queued', 'processing') GROUP BY 1",
        (now,),
    ):
        queues.setdefault(provider, {}).update(polls_scheduled=scheduled, polls_due=int(due))
    for provider, waiting in await db.all(
        "SELECT provider, count(*) FROM jobs WHERE next_submit_at IS NOT NULL"
        " AND status IN ('queued', 'processing') GROUP BY 1"
    ):
        queues.setdefault(provider, {})["submissions_waiting"] = waiting
    return queues

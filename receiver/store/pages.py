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

import sqlite3
import threading
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from receiver.store import media, queries
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

    def refresh(self, conn: sqlite3.Connection) -> dict[tuple[str, str], int]:
        """Read what changed since the last refresh (everything, the first time)."""
        with self._lock:
            if self._last is None:
                self._load(conn)
            else:
                self._advance(conn)
            return {key: n for key, n in self._counts.items() if n}

    def _load(self, conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN")  # one snapshot: the counts and the transition they go up to
        try:
            # NOT INDEXED: a table scan reads pages in order; walking an index here would
            # look every row up at random.
            rows = conn.execute(
                "SELECT provider, status, count(*) FROM jobs NOT INDEXED GROUP BY 1, 2"
            ).fetchall()
            (last,) = conn.execute("SELECT coalesce(max(id), 0) FROM transitions").fetchone()
        finally:
            conn.execute("COMMIT")
        self._counts = Counter({(provider, status): n for provider, status, n in rows})
        self._last = last

    def _advance(self, conn: sqlite3.Connection) -> None:
        rows = conn.execute(
            "SELECT j.provider, t.from_status, t.to_status, count(*), max(t.id)"
            " FROM transitions t JOIN jobs j ON j.id = t.job_id WHERE t.id > ?"
            " GROUP BY 1, 2, 3",
            (self._last,),
        ).fetchall()
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


def jobs_page(
    conn: sqlite3.Connection,
    where: JobFilter,
    *,
    before: str | None,
    limit: int,
    counts: Mapping[tuple[str, str], int],
) -> JobsPage:
    conditions: list[str] = []
    params: list[Any] = []
    # "+column": a test no index may serve, so that SQLite walks the index chosen here.
    through_provider = where.provider is not None and _provider_walk(where, counts, limit)
    if where.status is not None:
        conditions.append("+status = ?" if through_provider else "status = ?")
        params.append(where.status)
    if where.provider is not None:
        conditions.append("provider = ?" if through_provider else "+provider = ?")
        params.append(where.provider)
    if before is not None:
        conditions.append("id < ?")
        params.append(before)
    clause = " WHERE " + " AND ".join(conditions) if conditions else ""
    if where.search:
        return _search(conn, clause, params, where.search, limit)
    rows = _rows(
        conn.execute(f"SELECT * FROM jobs{clause} ORDER BY id DESC LIMIT ?", (*params, limit + 1))
    )
    media.attach(conn, rows)
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


def _search(
    conn: sqlite3.Connection, clause: str, params: list[Any], search: str, limit: int
) -> JobsPage:
    pattern = "%" + search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
    window = f"SELECT * FROM jobs{clause} ORDER BY id DESC LIMIT {SEARCH_WINDOW}"
    rows = _rows(
        conn.execute(
            f"SELECT * FROM ({window}) WHERE prompt LIKE ? ESCAPE '\\' LIMIT ?",
            (*params, pattern, limit + 1),
        )
    )
    media.attach(conn, rows)
    if len(rows) > limit:
        rows = rows[:limit]
        return JobsPage(rows, rows[-1]["id"])
    # The page is not full: the window was read to its end. Where did it end?
    end, read = conn.execute(
        f"SELECT min(id), count(*) FROM (SELECT id FROM jobs{clause}"
        f" ORDER BY id DESC LIMIT {SEARCH_WINDOW})",
        params,
    ).fetchone()
    if read < SEARCH_WINDOW:
        return JobsPage(rows, None)
    return JobsPage(rows, end, searched_to=end)


def job_page(conn: sqlite3.Connection, job_id: str) -> dict[str, Any] | None:
    """A job with all the store holds about it, delivery attempts included, in one read."""
    job = queries.get_job(conn, job_id)
    if job is None:
        return None
    job["transitions"] = queries.transitions(conn, job_id)
    job["deliveries"] = queries.deliveries(conn, job_id)
    job["callbacks"] = queries.callbacks(conn, job_id)
    media.attach(conn, [job])
    ids = [d["id"] for d in job["deliveries"]]
    marks = ",".join("?" * len(ids))
    attempts: dict[int, list[dict[str, Any]]] = {i: [] for i in ids}
    for row in _rows(
        conn.execute(
            f"SELECT * FROM delivery_attempts WHERE delivery_id IN ({marks}) ORDER BY id", ids
        )
    ):
        attempts[row["delivery_id"]].append(row)
    job["attempts"] = attempts
    return job


def stuck_deliveries(
    conn: sqlite3.Connection, *, channel: str | None, before: int | None, limit: int
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
        conn.execute(
            "SELECT d.*, j.provider, j.prompt, j.status AS job_status FROM deliveries d"
            " JOIN jobs j ON j.id = d.job_id WHERE " + " AND ".join(conditions) + ""
            " ORDER BY d.id DESC LIMIT ?",
            (*params, limit),
        )
    )


def channel_health(conn: sqlite3.Connection) -> dict[str, dict[str, Any]]:
    """Per channel with deliveries waiting or stuck: counts by status, and why it is
    disabled if it is."""
    health: dict[str, dict[str, Any]] = {}
    for channel, status, n in conn.execute(
        "SELECT channel, status, count(*) FROM deliveries WHERE status IN (?, ?, ?) GROUP BY 1, 2",
        (PENDING, DEAD, HELD),
    ):
        health.setdefault(channel, {})[status] = n
    for row in conn.execute("SELECT name, disabled_at, reason FROM channel_states"):
        entry = health.setdefault(row["name"], {})
        entry["disabled_at"], entry["disabled_reason"] = row["disabled_at"], row["reason"]
    return health


def provider_queues(conn: sqlite3.Connection, now: float) -> dict[str, dict[str, int]]:
    """Per provider: unfinished jobs with a poll scheduled, those due now, and the
    submissions waiting to be sent again."""
    queues: dict[str, dict[str, int]] = {}
    for provider, scheduled, due in conn.execute(
        "SELECT provider, count(*), coalesce(sum(next_poll_at <= ?), 0) FROM jobs"
        " WHERE next_poll_at IS NOT NULL AND status IN ('queued', 'processing') GROUP BY 1",
        (now,),
    ):
        queues.setdefault(provider, {}).update(polls_scheduled=scheduled, polls_due=due)
    for provider, waiting in conn.execute(
        "SELECT provider, count(*) FROM jobs WHERE next_submit_at IS NOT NULL"
        " AND status IN ('queued', 'processing') GROUP BY 1"
    ):
        queues.setdefault(provider, {})["submissions_waiting"] = waiting
    return queues

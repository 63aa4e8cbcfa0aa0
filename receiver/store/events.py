"""The events log behind ``GET /api/events``: one row per change a client may want to see.

A row is written in the transaction that makes the change (a transition, or a change of
the job's kept copy), so an event is never told of a change that was not stored, and no
stored change goes without its event. Ids grow in commit order, which is what lets a
client resume after the last id it saw with no gap: SQLite's one writer assigns them in
that order; on PostgreSQL, where transactions commit in any order, a transaction takes
the events' lock (``Db.serialize``) before its insert and keeps it until it commits, so
that no reader moves past an id that is yet to be committed.

Rows older than a day are pruned (``prune``); ``events_pruned`` remembers how far, so
that a client resuming from before that is told it missed events rather than given a
silent gap.
"""

from __future__ import annotations

from collections.abc import Iterable

from receiver.store.db import Db


async def record(db: Db, job_id: str, transition_id: int | None, now: float) -> None:
    await db.serialize("events")
    await db.run(
        "INSERT INTO events (job_id, transition_id, at) VALUES (?, ?, ?)",
        (job_id, transition_id, now),
    )
    db.mark("events")


async def record_media(db: Db, job_ids: Iterable[str], now: float) -> None:
    """The kept copy of each job changed (kept, failed, expired, pruned, queued again)."""
    for job_id in dict.fromkeys(job_ids):
        await record(db, job_id, None, now)


async def position(db: Db) -> int:
    """The id of the newest event (0 when there has been none)."""
    row = await db.one("SELECT max(id) FROM events")
    newest = row[0] if row is not None else None
    return max(newest or 0, await pruned_through(db))


async def pruned_through(db: Db) -> int:
    row = await db.one("SELECT through FROM events_pruned WHERE id = 1")
    return int(row[0]) if row is not None else 0


async def after(
    db: Db,
    last_id: int,
    limit: int,
    until: int | None = None,
    job_id: str | None = None,
) -> list[tuple[int, str]]:
    """(id, job_id) of the events after ``last_id`` (up to ``until``, of ``job_id`` only
    when given), oldest first."""
    sql = "SELECT id, job_id FROM events WHERE id > ?"
    params: list[object] = [last_id]
    if until is not None:
        sql += " AND id <= ?"
        params.append(until)
    if job_id is not None:
        sql += " AND job_id = ?"
        params.append(job_id)
    rows = await db.all(sql + " ORDER BY id LIMIT ?", (*params, limit))
    return [(row[0], row[1]) for row in rows]


async def prune(db: Db, before: float, limit: int) -> int:
    """Delete up to ``limit`` of the oldest events, those written before ``before``; how
    many. Only a run from the oldest is taken, so what is left is always every event
    after ``events_pruned.through``."""
    through = None
    for event_id, at in await db.all("SELECT id, at FROM events ORDER BY id LIMIT ?", (limit,)):
        if at >= before:
            break
        through = event_id
    if through is None:
        return 0
    deleted = await db.run("DELETE FROM events WHERE id <= ?", (through,))
    await db.run(
        "INSERT INTO events_pruned (id, through) VALUES (1, ?) ON CONFLICT(id) DO UPDATE"
        " SET through = CASE WHEN events_pruned.through > excluded.through"
        " THEN events_pruned.through ELSE excluded.through END",
        (through,),
    )
    return deleted

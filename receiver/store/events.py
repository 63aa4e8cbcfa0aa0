"""The events log behind ``GET /api/events``: one row per change a client may want to see.

A row is written in the transaction that makes the change (a transition, or a change of
the job's kept copy), so an event is never told of a change that was not stored, and no
stored change goes without its event. Ids grow in commit order (the one writer assigns
them), which is what lets a client resume after the last id it saw with no gap. A store
whose transactions can commit out of id order (PostgreSQL's sequences) must keep that
promise by serializing its writes to this table (a transaction-level lock taken before
the insert), so that a reader never moves past an id that is yet to be committed.

Rows older than a day are pruned (``prune``); ``events_pruned`` remembers how far, so
that a client resuming from before that is told it missed events rather than given a
silent gap.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable

from receiver.store.writer import mark


def record(conn: sqlite3.Connection, job_id: str, transition_id: int | None, now: float) -> None:
    conn.execute(
        "INSERT INTO events (job_id, transition_id, at) VALUES (?, ?, ?)",
        (job_id, transition_id, now),
    )
    mark(conn, "events")


def record_media(conn: sqlite3.Connection, job_ids: Iterable[str], now: float) -> None:
    """The kept copy of each job changed (kept, failed, expired, pruned, queued again)."""
    for job_id in dict.fromkeys(job_ids):
        record(conn, job_id, None, now)


def position(conn: sqlite3.Connection) -> int:
    """The id of the newest event (0 when there has been none)."""
    (newest,) = conn.execute("SELECT max(id) FROM events").fetchone()
    return max(newest or 0, pruned_through(conn))


def pruned_through(conn: sqlite3.Connection) -> int:
    row = conn.execute("SELECT through FROM events_pruned WHERE id = 1").fetchone()
    return int(row[0]) if row is not None else 0


def after(
    conn: sqlite3.Connection,
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
    rows = conn.execute(sql + " ORDER BY id LIMIT ?", (*params, limit))
    return [(row[0], row[1]) for row in rows]


def prune(conn: sqlite3.Connection, before: float, limit: int) -> int:
    """Delete up to ``limit`` of the oldest events, those written before ``before``; how
    many. Only a run from the oldest is taken, so what is left is always every event
    after ``events_pruned.through``."""
    through = None
    for event_id, at in conn.execute("SELECT id, at FROM events ORDER BY id LIMIT ?", (limit,)):
        if at >= before:
            break
        through = event_id
    if through is None:
        return 0
    deleted = conn.execute("DELETE FROM events WHERE id <= ?", (through,)).rowcount
    conn.execute(
        "INSERT INTO events_pruned (id, through) VALUES (1, ?)"
        " ON CONFLICT(id) DO UPDATE SET through = max(through, excluded.through)",
        (through,),
    )
    return deleted

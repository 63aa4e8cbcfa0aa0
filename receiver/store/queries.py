"""Read operations, run on reader connections off the event loop."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping
from typing import Any

from receiver.states import TERMINAL_SQL

_JSON_COLUMNS = ("request", "notify", "anomalies", "detail", "headers", "progress")


def _row(row: sqlite3.Row | None) -> dict[str, Any] | None:
    if row is None:
        return None
    out = dict(row)
    for column in _JSON_COLUMNS:
        if isinstance(out.get(column), str):
            out[column] = json.loads(out[column])
    return out


def _rows(cur: sqlite3.Cursor) -> list[dict[str, Any]]:
    return [r for r in (_row(row) for row in cur.fetchall()) if r is not None]


def get_job(conn: sqlite3.Connection, job_id: str) -> dict[str, Any] | None:
    return _row(conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone())


def list_jobs(
    conn: sqlite3.Connection,
    *,
    status: str | None = None,
    provider: str | None = None,
    before: str | None = None,
    limit: int = 50,
) -> list[dict[str, Any]]:
    return newest_first(conn, "jobs", {"status": status, "provider": provider}, before, limit)


def newest_first(
    conn: sqlite3.Connection,
    table: str,
    equal: Mapping[str, object],
    before: object,
    limit: int,
) -> list[dict[str, Any]]:
    """A page of ``table``, highest id first, below ``before`` (the cursor) when given;
    ``equal`` maps columns to the value they must have, None for no filter."""
    where = [f"{column} = ?" for column, value in equal.items() if value is not None]
    params = [value for value in equal.values() if value is not None]
    if before is not None:
        where.append("id < ?")
        params.append(before)
    sql = f"SELECT * FROM {table}"
    if where:
        sql += " WHERE " + " AND ".join(where)
    return _rows(conn.execute(sql + " ORDER BY id DESC LIMIT ?", (*params, limit)))


def has_callback_token(conn: sqlite3.Connection, provider: str, token: str) -> bool:
    """Whether a job of ``provider`` has this callback token: one probe of a unique index."""
    row = conn.execute("SELECT provider FROM jobs WHERE callback_token = ?", (token,)).fetchone()
    return row is not None and row[0] == provider


def transitions(conn: sqlite3.Connection, job_id: str) -> list[dict[str, Any]]:
    return _rows(conn.execute("SELECT * FROM transitions WHERE job_id = ? ORDER BY id", (job_id,)))


def deliveries(conn: sqlite3.Connection, job_id: str) -> list[dict[str, Any]]:
    return _rows(conn.execute("SELECT * FROM deliveries WHERE job_id = ? ORDER BY id", (job_id,)))


def callbacks(conn: sqlite3.Connection, job_id: str) -> list[dict[str, Any]]:
    return _rows(conn.execute("SELECT * FROM callbacks WHERE job_id = ? ORDER BY id", (job_id,)))


def due_polls(
    conn: sqlite3.Connection, provider: str, now: float, limit: int, skip: list[str]
) -> list[dict[str, Any]]:
    """A provider's due polls, oldest first, leaving out the ids in ``skip`` (in flight)."""
    marks = ",".join("?" * len(skip))
    return _rows(
        conn.execute(
            "SELECT id, provider, provider_job_id, key_fingerprint, callback_url,"
            " confirm_callback_id, poll_failures, polls, next_poll_at FROM jobs"
            " WHERE provider = ? AND next_poll_at <= ?"
            f" AND status NOT IN {TERMINAL_SQL}"
            f" AND id NOT IN ({marks}) ORDER BY next_poll_at LIMIT ?",
            (provider, now, *skip, limit),
        )
    )


def overdue_deadlines(conn: sqlite3.Connection, now: float, limit: int) -> list[str]:
    return [
        row[0]
        for row in conn.execute(
            "SELECT id FROM jobs WHERE deadline_at <= ?"
            f" AND status NOT IN {TERMINAL_SQL} ORDER BY deadline_at LIMIT ?",
            (now, limit),
        )
    ]


def next_wake(conn: sqlite3.Connection, providers: list[str], skip: list[str]) -> float | None:
    """The earliest deadline of any unfinished job, or poll of one of ``providers``.

    Jobs in ``skip`` (polls in flight) are left out.
    """
    marks = ",".join("?" * len(providers))
    skipped = ",".join("?" * len(skip))
    # ORDER BY an indexed column with LIMIT 1 reads a few index entries, not the table.
    poll = conn.execute(
        "SELECT next_poll_at FROM jobs WHERE next_poll_at IS NOT NULL"
        f" AND status NOT IN {TERMINAL_SQL} AND provider IN ({marks})"
        f" AND id NOT IN ({skipped}) ORDER BY next_poll_at LIMIT 1",
        (*providers, *skip),
    ).fetchone()
    deadline = conn.execute(
        "SELECT deadline_at FROM jobs WHERE deadline_at IS NOT NULL"
        f" AND status NOT IN {TERMINAL_SQL} ORDER BY deadline_at LIMIT 1"
    ).fetchone()
    return min((row[0] for row in (poll, deadline) if row is not None), default=None)

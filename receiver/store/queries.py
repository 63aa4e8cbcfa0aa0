"""Read operations, run off the event loop (SQLite) or on a pooled connection (PostgreSQL)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from receiver.states import TERMINAL_SQL
from receiver.store import claims
from receiver.store.db import Db, Row, among

_JSON_COLUMNS = ("request", "notify", "anomalies", "detail", "headers", "progress")


def _row(row: Row | None) -> dict[str, Any] | None:
    if row is None:
        return None
    out = dict(zip(row.keys(), row, strict=True))
    for column in _JSON_COLUMNS:
        if isinstance(out.get(column), str):
            out[column] = json.loads(out[column])
    return out


def _rows(rows: Iterable[Row]) -> list[dict[str, Any]]:
    return [r for r in (_row(row) for row in rows) if r is not None]


async def get_job(db: Db, job_id: str) -> dict[str, Any] | None:
    return _row(await db.one("SELECT * FROM jobs WHERE id = ?", (job_id,)))


async def list_jobs(
    db: Db,
    *,
    status: str | None = None,
    provider: str | None = None,
    before: str | None = None,
    limit: int = 50,
) -> list[dict[str, Any]]:
    return await newest_first(db, "jobs", {"status": status, "provider": provider}, before, limit)


async def newest_first(
    db: Db,
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
    return _rows(await db.all(sql + " ORDER BY id DESC LIMIT ?", (*params, limit)))


async def has_callback_token(db: Db, provider: str, token: str) -> bool:
    """Whether a job of ``provider`` has this callback token: one probe of a unique index."""
    row = await db.one("SELECT provider FROM jobs WHERE callback_token = ?", (token,))
    return row is not None and row[0] == provider


async def transitions(db: Db, job_id: str) -> list[dict[str, Any]]:
    return _rows(await db.all("SELECT * FROM transitions WHERE job_id = ? ORDER BY id", (job_id,)))


async def deliveries(db: Db, job_id: str) -> list[dict[str, Any]]:
    return _rows(await db.all("SELECT * FROM deliveries WHERE job_id = ? ORDER BY id", (job_id,)))


async def callbacks(db: Db, job_id: str) -> list[dict[str, Any]]:
    return _rows(await db.all("SELECT * FROM callbacks WHERE job_id = ? ORDER BY id", (job_id,)))


async def due_polls(
    db: Db, provider: str, now: float, limit: int, skip: list[str]
) -> list[dict[str, Any]]:
    """A provider's due polls, oldest first, claimed; leaving out the ids in ``skip``
    (in flight here)."""
    return _rows(
        await claims.claim(
            db,
            "jobs",
            key="id",
            columns="id, provider, provider_job_id, key_fingerprint, callback_url,"
            " confirm_callback_id, poll_failures, polls, next_poll_at",
            where=f"provider = ? AND next_poll_at <= ? AND status NOT IN {TERMINAL_SQL}"
            f" AND {among('id', skip, negate=True)}",
            params=(provider, now, *skip),
            order="next_poll_at",
            sort=lambda row: row["next_poll_at"],
            limit=limit,
            now=now,
        )
    )


async def overdue_deadlines(db: Db, now: float, limit: int) -> list[str]:
    return [
        row[0]
        for row in await db.all(
            "SELECT id FROM jobs WHERE deadline_at <= ?"
            f" AND status NOT IN {TERMINAL_SQL} ORDER BY deadline_at LIMIT ?",
            (now, limit),
        )
    ]


async def next_wake(db: Db, providers: list[str], skip: list[str], now: float) -> float | None:
    """The earliest deadline of any unfinished job, or poll of one of ``providers``.

    Jobs in ``skip`` (polls in flight here) and those another replica holds are left out.
    """
    # ORDER BY an indexed column with LIMIT 1 reads a few index entries, not the table.
    poll = await db.one(
        "SELECT next_poll_at FROM jobs WHERE next_poll_at IS NOT NULL"
        f" AND status NOT IN {TERMINAL_SQL} AND {among('provider', providers)}"
        f" AND {among('id', skip, negate=True)} AND {claims.FREE}"
        " ORDER BY next_poll_at LIMIT 1",
        (*providers, *skip, now),
    )
    deadline = await db.one(
        "SELECT deadline_at FROM jobs WHERE deadline_at IS NOT NULL"
        f" AND status NOT IN {TERMINAL_SQL} ORDER BY deadline_at LIMIT 1"
    )
    return min((row[0] for row in (poll, deadline) if row is not None), default=None)

"""Submissions the provider has not taken yet: each attempt, its retry, and how it ended.

A job is inserted with its first attempt under way (``submitting_at``). An attempt ends
in ``jobs.record_submission`` (the provider took it), ``schedule`` (refused for now: sent
again at ``next_submit_at``) or ``fail``. A row still marked under way after a restart is
an attempt a crash cut short.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from receiver.providers.base import Observation
from receiver.states import TERMINAL_SQL, Status
from receiver.store import claims
from receiver.store.db import Db, among
from receiver.store.jobs import Applied, Route, apply
from receiver.store.queries import _rows

# What an attempt needs to send the job again, as stored.
_COLUMNS = (
    "id, provider, model, prompt, request, callback_url, created_at, deadline_at,"
    " submit_attempts, next_submit_at, submit_error"
)


async def start(db: Db, job_id: str, now: float) -> int | None:
    """Claim a waiting submission for an attempt; its attempt number, or None if it is no
    longer waiting (it ended meanwhile)."""
    # Conditional: of two replicas that read the same due submission, one starts it.
    claimed = await db.run(
        "UPDATE jobs SET submitting_at = ?, next_submit_at = NULL, claimed_by = ?,"
        " claimed_until = ?, submit_attempts = submit_attempts + 1 WHERE id = ?"
        f" AND next_submit_at IS NOT NULL AND status NOT IN {TERMINAL_SQL}",
        (now, *claims.lease(db, now), job_id),
    )
    if not claimed:
        return None
    row = await db.one("SELECT submit_attempts FROM jobs WHERE id = ?", (job_id,))
    assert row is not None
    return int(row[0])


async def schedule(db: Db, job_id: str, at: float, error: str, now: float) -> bool:
    """The attempt was refused for now: send it again at ``at``."""
    changed = await db.run(
        "UPDATE jobs SET submitting_at = NULL, next_submit_at = ?, submit_error = ?,"
        f" {claims.RELEASED}, updated_at = ? WHERE id = ? AND status NOT IN {TERMINAL_SQL}",
        (at, error, now, job_id),
    )
    return changed > 0


async def fail(
    db: Db,
    job_id: str,
    error: str,
    detail: Mapping[str, Any],
    *,
    now: float,
    route: Route,
) -> Applied:
    """The submission will not be sent again: the job fails with ``error``."""
    await db.run(
        "UPDATE jobs SET submitting_at = NULL, next_submit_at = NULL, submit_error = ?,"
        f" {claims.RELEASED} WHERE id = ?",
        (error, job_id),
    )
    failed = Observation(status=Status.FAILED, error=error)
    return await apply(db, job_id, failed, "submit", now=now, route=route, detail=detail)


async def due(
    db: Db, now: float, room: Mapping[str, int], skip: list[str]
) -> tuple[dict[str, list[dict[str, Any]]], float | None]:
    """Each provider's due submissions, oldest first (at most its ``room``), and when the
    next one of a provider with room left falls due. Jobs in ``skip`` are under way."""
    found: dict[str, list[dict[str, Any]]] = {}
    open_: list[str] = []
    for provider, limit in room.items():
        found[provider] = _rows(
            await db.all(
                f"SELECT {_COLUMNS} FROM jobs WHERE next_submit_at <= ? AND provider = ?"
                f" AND status NOT IN {TERMINAL_SQL} AND {among('id', skip, negate=True)}"
                " ORDER BY next_submit_at LIMIT ?",
                (now, provider, *skip, limit),
            )
        )
        if len(found[provider]) < limit:
            open_.append(provider)
    busy = [*skip, *(row["id"] for rows in found.values() for row in rows)]
    upcoming = await db.one(
        "SELECT min(next_submit_at) FROM jobs WHERE next_submit_at IS NOT NULL"
        f" AND status NOT IN {TERMINAL_SQL} AND {among('provider', open_)}"
        f" AND {among('id', busy, negate=True)}",
        (*open_, *busy),
    )
    return found, None if upcoming is None else upcoming[0]


async def interrupted(db: Db, before: float, now: float) -> list[dict[str, Any]]:
    """Jobs whose submission attempt began before ``before`` and never ended, and whose
    replica no longer holds them: a crash (or a kill) came while it was under way."""
    return _rows(
        await db.all(
            f"SELECT {_COLUMNS}, submitting_at FROM jobs WHERE submitting_at < ?"
            f" AND status NOT IN {TERMINAL_SQL} AND {claims.FREE} ORDER BY submitting_at",
            (before, now),
        )
    )


async def resume(db: Db, job_id: str, submitting_at: float, now: float) -> bool:
    """An interrupted attempt that may be sent again: due at once. Only the attempt that
    was found interrupted: not one another replica has begun since."""
    changed = await db.run(
        f"UPDATE jobs SET submitting_at = NULL, next_submit_at = ?, {claims.RELEASED}"
        f" WHERE id = ? AND submitting_at = ? AND status NOT IN {TERMINAL_SQL}",
        (now, job_id, submitting_at),
    )
    return changed > 0

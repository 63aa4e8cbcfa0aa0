"""Each provider's request budget, shared by the replicas through the database.

Every replica sends its requests to a provider through that provider's Gate
(receiver.providers.limits). On one machine the Gate's own clock spaces them; with
replicas on PostgreSQL the spacing must hold across all of them, so each request first
takes its turn here, when the turn is due: a conditional update of the row moves
``next_at`` one spacing on from now, or says how long to wait, by the database server's
clock (the replicas' own clocks may disagree).

PostgreSQL only: with SQLite there is one service, and its Gate alone is the budget.
"""

from __future__ import annotations

import time

from receiver.store.db import Db

_NOW = "extract(epoch from clock_timestamp())"


async def take(db: Db, provider: str, spacing: float) -> tuple[bool, float, float, float]:
    """Take the provider's turn if it is free now: whether it was taken, then seconds until
    the next turn and until the end of a pause the provider asked for (either may be
    negative: no wait), counted from the fourth value, the time.monotonic() at which the
    statement answered.

    A turn is taken only when it is due, never booked ahead: a replica that wakes late for
    a booked moment would send close to the next replica's, which is on time. Taken at the
    moment of sending, the spacing runs from when each request really left."""
    await db.run(
        "INSERT INTO provider_budgets (provider, next_at, blocked_until) VALUES (?, 0, 0)"
        " ON CONFLICT (provider) DO NOTHING",
        (provider,),
    )
    taken = await db.one(
        f"UPDATE provider_budgets SET next_at = {_NOW} + ?"
        f" WHERE provider = ? AND next_at <= {_NOW} AND blocked_until <= {_NOW}"
        " RETURNING 1",
        (spacing, provider),
    )
    if taken is not None:
        return True, 0.0, 0.0, time.monotonic()
    row = await db.one(
        f"SELECT next_at - {_NOW}, blocked_until - {_NOW} FROM provider_budgets WHERE provider = ?",
        (provider,),
    )
    answered = time.monotonic()
    assert row is not None
    return False, float(row[0]), float(row[1]), answered


async def block(db: Db, provider: str, seconds: float) -> None:
    """The provider asked for a pause (Retry-After): no replica asks before it ends."""
    await db.run(
        "INSERT INTO provider_budgets AS b (provider, next_at, blocked_until)"
        f" VALUES (?, 0, {_NOW} + ?) ON CONFLICT (provider) DO UPDATE"
        f" SET blocked_until = GREATEST(b.blocked_until, {_NOW} + ?)",
        (provider, seconds, seconds),
    )

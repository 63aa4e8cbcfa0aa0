"""Each provider's request budget, shared by the replicas through the database.

Every replica sends its requests to a provider through that provider's Gate
(receiver.providers.limits). On one machine the Gate's own clock spaces them; with
replicas on PostgreSQL the spacing must hold across all of them, so each request first
reserves its moment here: one statement takes the row's lock, moves ``next_at`` one
spacing on, and says how long to wait, by the database server's clock (the replicas'
own clocks may disagree).

PostgreSQL only: with SQLite there is one service, and its Gate alone is the budget.
"""

from __future__ import annotations

import time

from receiver.store.db import Db

_NOW = "extract(epoch from clock_timestamp())"


async def reserve(db: Db, provider: str, spacing: float) -> tuple[float, float, float]:
    """Reserve the provider's next request moment: seconds until it and until the end of
    a pause the provider asked for (either may be negative: no wait), counted from the
    third value, the time.monotonic() at which the statement answered.

    Counted from the statement, not from the commit: a commit that is slow for one
    request and quick for the next would otherwise send the two too close together."""
    row = await db.one(
        "INSERT INTO provider_budgets AS b (provider, next_at, blocked_until)"
        f" VALUES (?, {_NOW} + ?, 0) ON CONFLICT (provider) DO UPDATE"
        f" SET next_at = GREATEST(b.next_at, {_NOW}) + ?"
        f" RETURNING b.next_at - ? - {_NOW}, b.blocked_until - {_NOW}",
        (provider, spacing, spacing, spacing),
    )
    answered = time.monotonic()
    assert row is not None
    return float(row[0]), float(row[1]), answered


async def block(db: Db, provider: str, seconds: float) -> None:
    """The provider asked for a pause (Retry-After): no replica asks before it ends."""
    await db.run(
        "INSERT INTO provider_budgets AS b (provider, next_at, blocked_until)"
        f" VALUES (?, 0, {_NOW} + ?) ON CONFLICT (provider) DO UPDATE"
        f" SET blocked_until = GREATEST(b.blocked_until, {_NOW} + ?)",
        (provider, seconds, seconds),
    )

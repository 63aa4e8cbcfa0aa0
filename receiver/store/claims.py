"""Work done once across replicas: each piece claimed with a lease.

A row of work (a job's poll or submission attempt, a delivery, a download) is claimed by
writing who holds it and until when (``claimed_by``, ``claimed_until``). Picking the rows
to claim passes over those another replica is claiming at this moment (``FOR UPDATE SKIP
LOCKED``) and those it holds (a lease not yet run out), so replicas never wait for one
another and never take the same work. The holder renews its leases while the work is
under way (``renew``, every ``RENEW_EVERY``); the operation that records the outcome
clears the claim (``RELEASED``). A replica that dies renews nothing: its rows are free
again once their leases run out, and another replica takes them.

With SQLite there is no other replica (the file's lock admits one service), and the
workers keep what they have in flight in memory as they always did: the claim is then the
plain read, and no lease is written, which would cost each poller round a commit. A
``Db`` says which case it is in by its ``owner``: the replica's name, or None.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from receiver.store.db import Db, Row, among

LEASE = 15.0  # seconds a claim holds without renewal
RENEW_EVERY = LEASE / 3
# Set by the operation that records a claimed piece of work's outcome.
RELEASED = "claimed_by = NULL, claimed_until = NULL"
# The rows no live replica holds (every row, with SQLite: no lease is ever written).
FREE = "(claimed_until IS NULL OR claimed_until < ?)"


async def claim(
    db: Db,
    table: str,
    *,
    key: str,
    where: str,
    params: Sequence[Any],
    order: str,
    limit: int,
    now: float,
    columns: str = "*",
    sort: Callable[[Row], Any] | None = None,
) -> list[Row]:
    """Up to ``limit`` rows of ``table`` matching ``where`` that no live replica holds,
    in ``order``, claimed for ``db.owner`` (the ``columns`` of each; ``sort`` puts
    them back in order, as an UPDATE returns its rows in no particular one)."""
    if db.owner is None:
        return await db.all(
            f"SELECT {columns} FROM {table} WHERE {where} ORDER BY {order} LIMIT ?",
            (*params, limit),
        )
    # Its own claims too: work this replica let go of without an outcome (an error) is
    # its to take again at once; what it has in flight it leaves out itself.
    picked = (
        f"SELECT {key} FROM {table} WHERE {where} AND ({FREE} OR claimed_by = ?)"
        f" ORDER BY {order} LIMIT ?{db.skip_locked}"
    )
    rows = await db.all(
        f"UPDATE {table} SET claimed_by = ?, claimed_until = ? WHERE {key} IN ({picked})"
        f" RETURNING {columns}",
        (db.owner, now + LEASE, *params, now, db.owner, limit),
    )
    return sorted(rows, key=sort) if sort is not None else rows


async def renew(db: Db, table: str, key: str, held: Sequence[Any], now: float) -> int:
    """Extend this replica's leases on ``held``; how many it still had."""
    if db.owner is None or not held:
        return 0
    return await db.run(
        f"UPDATE {table} SET claimed_until = ? WHERE {among(key, held)} AND claimed_by = ?",
        (now + LEASE, *held, db.owner),
    )


def lease(db: Db, now: float) -> tuple[str | None, float | None]:
    """``claimed_by`` and ``claimed_until`` of work this replica starts on its own (a
    submission made while the API request waits): none with SQLite."""
    return (None, None) if db.owner is None else (db.owner, now + LEASE)


async def others_hold(db: Db, table: str, where: str, params: Sequence[Any], now: float) -> bool:
    """Whether another live replica holds a row of ``table`` matching ``where``."""
    if db.owner is None:
        return False
    row = await db.one(
        f"SELECT 1 FROM {table} WHERE {where} AND claimed_until >= ? AND claimed_by <> ? LIMIT 1",
        (*params, now, db.owner),
    )
    return row is not None

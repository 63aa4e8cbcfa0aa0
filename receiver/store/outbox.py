"""The outbox's rows: deliveries, their attempts, and channels that were disabled.

A delivery is ``pending`` (to be sent, maybe again), ``delivered``, ``dead`` (given up
on; a retry queues it again) or ``held``: its channel is disabled, or no longer in the
configuration. Held deliveries wait, in their order, for the channel to be enabled again
(its configuration changed, or a retry), and are then sent as if they had just been
queued.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from receiver.store import claims, media
from receiver.store.db import Db, among
from receiver.store.queries import _row, _rows, newest_first

PENDING, DELIVERED, DEAD, HELD = "pending", "delivered", "dead", "held"
STATUSES = (PENDING, DELIVERED, DEAD, HELD)
DISABLED = "channel disabled: "


async def due(db: Db, channel: str, now: float, limit: int) -> list[dict[str, Any]]:
    """The channel's due deliveries, in order, claimed. A channel is sent to by one
    replica at a time, so that its messages keep their order and its pace: none while
    another replica holds some of them."""
    await db.serialize(f"deliveries:{channel}")
    if await claims.others_hold(db, "deliveries", "channel = ?", (channel,), now):
        return []
    return _rows(
        await claims.claim(
            db,
            "deliveries",
            key="id",
            where="channel = ? AND status = 'pending' AND next_attempt_at <= ?",
            params=(channel, now),
            order="next_attempt_at, id",
            sort=lambda row: (row["next_attempt_at"], row["id"]),
            limit=limit,
            now=now,
        )
    )


async def due_with_sources(db: Db, channel: str, now: float, limit: int) -> list[dict[str, Any]]:
    """``due``, each delivery with its ``job`` and ``transition`` (None if gone), for
    rendering the events: one trip to a reader for a whole batch."""
    batch = await due(db, channel, now, limit)
    if batch:
        jobs = await _by_id(db, "jobs", {d["job_id"] for d in batch})
        transitions = await _by_id(db, "transitions", {d["transition_id"] for d in batch})
        await media.attach(db, jobs.values())
        for delivery in batch:
            delivery["job"] = jobs.get(delivery["job_id"])
            delivery["transition"] = transitions.get(delivery["transition_id"])
    return batch


async def _by_id(db: Db, table: str, ids: Iterable[Any]) -> dict[Any, dict[str, Any]]:
    wanted = list(ids)
    rows = _rows(await db.all(f"SELECT * FROM {table} WHERE {among('id', wanted)}", wanted))
    return {row["id"]: row for row in rows}


async def next_due(db: Db, now: float) -> dict[str, float]:
    """When each channel's earliest pending delivery is due; channels another replica is
    sending to are left to it."""
    if db.owner is None:
        rows = await db.all(
            "SELECT channel, MIN(next_attempt_at) FROM deliveries WHERE status = 'pending'"
            " GROUP BY channel"
        )
    else:
        rows = await db.all(
            "SELECT channel, MIN(next_attempt_at) FROM deliveries WHERE status = 'pending'"
            " AND channel NOT IN (SELECT channel FROM deliveries WHERE status = 'pending'"
            " AND claimed_until >= ? AND claimed_by <> ?) GROUP BY channel",
            (now, db.owner),
        )
    return {channel: at for channel, at in rows}


async def event_source(db: Db, delivery_id: int) -> dict[str, Any] | None:
    """The delivery with its job and transition, for rendering the event."""
    delivery = _row(await db.one("SELECT * FROM deliveries WHERE id = ?", (delivery_id,)))
    if delivery is None:
        return None
    delivery["job"] = _row(await db.one("SELECT * FROM jobs WHERE id = ?", (delivery["job_id"],)))
    if delivery["job"] is not None:
        await media.attach(db, [delivery["job"]])
    delivery["transition"] = _row(
        await db.one("SELECT * FROM transitions WHERE id = ?", (delivery["transition_id"],))
    )
    return delivery


async def record_attempt(
    db: Db,
    delivery_id: int,
    *,
    outcome: str,
    status: str,
    next_attempt_at: float | None,
    error: str | None,
    status_code: int | None,
    duration_ms: float,
    now: float,
) -> None:
    await db.run(
        "INSERT INTO delivery_attempts (delivery_id, at, outcome, status_code, error,"
        " duration_ms) VALUES (?,?,?,?,?,?)",
        (delivery_id, now, outcome, status_code, error, duration_ms),
    )
    await db.run(
        "UPDATE deliveries SET status = ?, attempts = attempts + 1, next_attempt_at = ?,"
        f" last_error = ?, updated_at = ?, {claims.RELEASED},"
        " delivered_at = CASE WHEN ? = 'delivered' THEN ? ELSE delivered_at END WHERE id = ?",
        (status, next_attempt_at, error, now, status, now, delivery_id),
    )


async def record_held_attempt(
    db: Db,
    delivery_id: int,
    reason: str,
    *,
    status_code: int | None,
    duration_ms: float,
    now: float,
) -> str:
    """An attempt that found the destination gone: the delivery is held. Its channel."""
    error = DISABLED + reason
    await record_attempt(
        db, delivery_id, outcome="disabled", status=HELD, next_attempt_at=None, error=error,
        status_code=status_code, duration_ms=duration_ms, now=now,
    )  # fmt: skip
    row = await db.one("SELECT channel FROM deliveries WHERE id = ?", (delivery_id,))
    assert row is not None
    return str(row["channel"])


async def disable_channel(db: Db, name: str, reason: str, fingerprint: str, now: float) -> int:
    """Note the channel as disabled and hold its pending deliveries; how many were held."""
    await db.run(
        "INSERT INTO channel_states (name, disabled_at, reason, config_fingerprint)"
        " VALUES (?,?,?,?) ON CONFLICT(name) DO UPDATE SET disabled_at = excluded.disabled_at,"
        " reason = excluded.reason, config_fingerprint = excluded.config_fingerprint",
        (name, now, reason, fingerprint),
    )
    return await hold(db, name, DISABLED + reason, now)


async def hold(db: Db, channel: str, reason: str, now: float) -> int:
    """Hold the channel's pending deliveries, saying why in ``last_error``."""
    return await db.run(
        f"UPDATE deliveries SET status = 'held', last_error = ?, updated_at = ?, {claims.RELEASED}"
        " WHERE channel = ? AND status = 'pending'",
        (reason, now, channel),
    )


async def hold_if_disabled(db: Db, channel: str, now: float) -> int:
    """``hold``, if the channel is still disabled (an enable may have come since the
    caller looked)."""
    row = await db.one("SELECT reason FROM channel_states WHERE name = ?", (channel,))
    return 0 if row is None else await hold(db, channel, DISABLED + row["reason"], now)


async def release(db: Db, channel: str, now: float) -> int:
    """Queue the channel's held deliveries again, in their original order.

    Each is due at its creation time (all in the past), so the outbox sends them oldest
    first, and before anything queued since. Their age for ``notify.max_age`` counts from
    now, as after a retry.
    """
    released = await db.run(
        "UPDATE deliveries SET status = 'pending', attempts = 0, next_attempt_at = created_at,"
        " requeued_at = ?, updated_at = ? WHERE channel = ? AND status = 'held'",
        (now, now, channel),
    )
    if released:
        db.mark("deliveries", channel)
    return released


async def enable_channel(db: Db, name: str, now: float) -> int:
    """Forget that the channel was disabled and release its held deliveries."""
    await db.run("DELETE FROM channel_states WHERE name = ?", (name,))
    return await release(db, name, now)


async def channel_states(db: Db) -> list[dict[str, Any]]:
    return _rows(await db.all("SELECT * FROM channel_states ORDER BY name"))


async def requeue(db: Db, delivery_id: int, now: float) -> dict[str, Any] | None:
    """Give a dead or held delivery a fresh set of attempts, and its channel another
    chance (its other held deliveries go too, in order)."""
    row = await db.one("SELECT channel, status FROM deliveries WHERE id = ?", (delivery_id,))
    if row is None:
        return None
    if row["status"] == DEAD:
        await db.run(
            "UPDATE deliveries SET status = 'pending', attempts = 0,"
            " next_attempt_at = created_at, requeued_at = ?, updated_at = ? WHERE id = ?",
            (now, now, delivery_id),
        )
        db.mark("deliveries", row["channel"])
    if row["status"] in (DEAD, HELD):
        await enable_channel(db, row["channel"], now)
    return _row(await db.one("SELECT * FROM deliveries WHERE id = ?", (delivery_id,)))


@dataclass(frozen=True)
class Requeued:
    dead: int = 0
    held: int = 0

    @property
    def total(self) -> int:
        return self.dead + self.held


async def requeue_all(db: Db, channels: Iterable[str], now: float) -> Requeued:
    """Every dead delivery of these channels queued again, and each channel enabled again
    with its held deliveries released: all in their original order."""
    dead = held = 0
    for channel in channels:
        requeued = await db.run(
            "UPDATE deliveries SET status = 'pending', attempts = 0,"
            " next_attempt_at = created_at, requeued_at = ?, updated_at = ?"
            " WHERE channel = ? AND status = 'dead'",
            (now, now, channel),
        )
        if requeued:
            db.mark("deliveries", channel)
        dead += requeued
        held += await enable_channel(db, channel, now)
    return Requeued(dead, held)


@dataclass
class ChannelsAtStart:
    """What ``settle_channels`` found: the channels still disabled (name -> reason), those
    enabled again because their configuration changed, and, per channel no longer in the
    configuration, how many of its deliveries were held."""

    disabled: dict[str, str] = field(default_factory=dict)
    changed: list[str] = field(default_factory=list)
    released: dict[str, int] = field(default_factory=dict)
    orphaned: dict[str, int] = field(default_factory=dict)


async def settled_channels(db: Db, configured: Mapping[str, str]) -> ChannelsAtStart | None:
    """The channels still disabled, if the deliveries are already in line with the
    configuration; None when ``settle_channels`` has work to do. Read first, so that a
    start with nothing to change writes nothing."""
    found = ChannelsAtStart()
    for state in await channel_states(db):
        name = state["name"]
        if name in configured:
            if state["config_fingerprint"] != configured[name]:
                return None
            found.disabled[name] = state["reason"]
    for name in configured:
        if name not in found.disabled and await db.one(
            "SELECT 1 FROM deliveries WHERE channel = ? AND status = 'held' LIMIT 1", (name,)
        ):
            return None
    names = list(configured)
    orphaned = await db.one(
        "SELECT 1 FROM deliveries WHERE status = 'pending'"
        f" AND {among('channel', names, negate=True)} LIMIT 1",
        names,
    )
    return None if orphaned else found


async def settle_channels(db: Db, configured: Mapping[str, str], now: float) -> ChannelsAtStart:
    """Bring the deliveries in line with the configuration (channel -> fingerprint).

    A disabled channel stays disabled while its configuration is unchanged; otherwise it
    is enabled again. Held deliveries of an enabled channel are released (it was changed,
    or it is back in the configuration). The pending deliveries of a channel that is not
    configured are held: no one would send them.
    """
    await db.serialize("channels")  # replicas starting together settle them in turn
    found = ChannelsAtStart()
    for state in await channel_states(db):
        name = state["name"]
        if name not in configured:
            continue
        if state["config_fingerprint"] == configured[name]:
            found.disabled[name] = state["reason"]
        else:
            found.changed.append(name)
            await db.run("DELETE FROM channel_states WHERE name = ?", (name,))
    for name in configured:
        if name not in found.disabled and (released := await release(db, name, now)):
            found.released[name] = released
    names = list(configured)
    for (name,) in await db.all(
        "SELECT DISTINCT channel FROM deliveries WHERE status = 'pending'"
        f" AND {among('channel', names, negate=True)}",
        names,
    ):
        found.orphaned[name] = await hold(db, name, not_configured(name), now)
    return found


def not_configured(channel: str) -> str:
    return f"channel {channel} is not in the configuration; add it back to send this"


async def list_deliveries(
    db: Db, *, status: str | None, before: int | None, limit: int
) -> list[dict[str, Any]]:
    return await newest_first(db, "deliveries", {"status": status}, before, limit)


async def attempts(db: Db, delivery_id: int) -> list[dict[str, Any]]:
    return _rows(
        await db.all(
            "SELECT * FROM delivery_attempts WHERE delivery_id = ? ORDER BY id", (delivery_id,)
        )
    )

"""The outbox's rows: deliveries, their attempts, and channels that were disabled.

A delivery is ``pending`` (to be sent, maybe again), ``delivered``, ``dead`` (given up
on; a retry queues it again) or ``held``: its channel is disabled, or no longer in the
configuration. Held deliveries wait, in their order, for the channel to be enabled again
(its configuration changed, or a retry), and are then sent as if they had just been
queued.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from receiver.store import media
from receiver.store.queries import _row, _rows, newest_first
from receiver.store.writer import mark

PENDING, DELIVERED, DEAD, HELD = "pending", "delivered", "dead", "held"
STATUSES = (PENDING, DELIVERED, DEAD, HELD)
DISABLED = "channel disabled: "


def due(conn: sqlite3.Connection, channel: str, now: float, limit: int) -> list[dict[str, Any]]:
    return _rows(
        conn.execute(
            "SELECT * FROM deliveries WHERE channel = ? AND status = 'pending'"
            " AND next_attempt_at <= ? ORDER BY next_attempt_at, id LIMIT ?",
            (channel, now, limit),
        )
    )


def due_with_sources(
    conn: sqlite3.Connection, channel: str, now: float, limit: int
) -> list[dict[str, Any]]:
    """``due``, each delivery with its ``job`` and ``transition`` (None if gone), for
    rendering the events: one trip to a reader for a whole batch."""
    batch = due(conn, channel, now, limit)
    if batch:
        jobs = _by_id(conn, "jobs", {d["job_id"] for d in batch})
        transitions = _by_id(conn, "transitions", {d["transition_id"] for d in batch})
        media.attach(conn, jobs.values())
        for delivery in batch:
            delivery["job"] = jobs.get(delivery["job_id"])
            delivery["transition"] = transitions.get(delivery["transition_id"])
    return batch


def _by_id(conn: sqlite3.Connection, table: str, ids: Iterable[Any]) -> dict[Any, dict[str, Any]]:
    wanted = list(ids)
    marks = ",".join("?" * len(wanted))
    rows = _rows(conn.execute(f"SELECT * FROM {table} WHERE id IN ({marks})", wanted))
    return {row["id"]: row for row in rows}


def next_due(conn: sqlite3.Connection) -> dict[str, float]:
    """When each channel's earliest pending delivery is due."""
    rows = conn.execute(
        "SELECT channel, MIN(next_attempt_at) FROM deliveries WHERE status = 'pending'"
        " GROUP BY channel"
    )
    return {channel: at for channel, at in rows}


def event_source(conn: sqlite3.Connection, delivery_id: int) -> dict[str, Any] | None:
    """The delivery with its job and transition, for rendering the event."""
    delivery = _row(
        conn.execute("SELECT * FROM deliveries WHERE id = ?", (delivery_id,)).fetchone()
    )
    if delivery is None:
        return None
    delivery["job"] = _row(
        conn.execute("SELECT * FROM jobs WHERE id = ?", (delivery["job_id"],)).fetchone()
    )
    if delivery["job"] is not None:
        media.attach(conn, [delivery["job"]])
    delivery["transition"] = _row(
        conn.execute(
            "SELECT * FROM transitions WHERE id = ?", (delivery["transition_id"],)
        ).fetchone()
    )
    return delivery


def record_attempt(
    conn: sqlite3.Connection,
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
    conn.execute(
        "INSERT INTO delivery_attempts (delivery_id, at, outcome, status_code, error,"
        " duration_ms) VALUES (?,?,?,?,?,?)",
        (delivery_id, now, outcome, status_code, error, duration_ms),
    )
    conn.execute(
        "UPDATE deliveries SET status = ?, attempts = attempts + 1, next_attempt_at = ?,"
        " last_error = ?, updated_at = ?,"
        " delivered_at = CASE WHEN ? = 'delivered' THEN ? ELSE delivered_at END WHERE id = ?",
        (status, next_attempt_at, error, now, status, now, delivery_id),
    )


def record_held_attempt(
    conn: sqlite3.Connection,
    delivery_id: int,
    reason: str,
    *,
    status_code: int | None,
    duration_ms: float,
    now: float,
) -> str:
    """An attempt that found the destination gone: the delivery is held. Its channel."""
    error = DISABLED + reason
    record_attempt(
        conn, delivery_id, outcome="disabled", status=HELD, next_attempt_at=None, error=error,
        status_code=status_code, duration_ms=duration_ms, now=now,
    )  # fmt: skip
    row = conn.execute("SELECT channel FROM deliveries WHERE id = ?", (delivery_id,)).fetchone()
    return str(row["channel"])


def disable_channel(
    conn: sqlite3.Connection, name: str, reason: str, fingerprint: str, now: float
) -> int:
    """Note the channel as disabled and hold its pending deliveries; how many were held."""
    conn.execute(
        "INSERT INTO channel_states (name, disabled_at, reason, config_fingerprint)"
        " VALUES (?,?,?,?) ON CONFLICT(name) DO UPDATE SET disabled_at = excluded.disabled_at,"
        " reason = excluded.reason, config_fingerprint = excluded.config_fingerprint",
        (name, now, reason, fingerprint),
    )
    return hold(conn, name, DISABLED + reason, now)


def hold(conn: sqlite3.Connection, channel: str, reason: str, now: float) -> int:
    """Hold the channel's pending deliveries, saying why in ``last_error``."""
    return conn.execute(
        "UPDATE deliveries SET status = 'held', last_error = ?, updated_at = ?"
        " WHERE channel = ? AND status = 'pending'",
        (reason, now, channel),
    ).rowcount


def hold_if_disabled(conn: sqlite3.Connection, channel: str, now: float) -> int:
    """``hold``, if the channel is still disabled (an enable may have come since the
    caller looked)."""
    row = conn.execute("SELECT reason FROM channel_states WHERE name = ?", (channel,)).fetchone()
    return 0 if row is None else hold(conn, channel, DISABLED + row["reason"], now)


def release(conn: sqlite3.Connection, channel: str, now: float) -> int:
    """Queue the channel's held deliveries again, in their original order.

    Each is due at its creation time (all in the past), so the outbox sends them oldest
    first, and before anything queued since. Their age for ``notify.max_age`` counts from
    now, as after a retry.
    """
    released = conn.execute(
        "UPDATE deliveries SET status = 'pending', attempts = 0, next_attempt_at = created_at,"
        " requeued_at = ?, updated_at = ? WHERE channel = ? AND status = 'held'",
        (now, now, channel),
    ).rowcount
    if released:
        mark(conn, "deliveries", channel)
    return released


def enable_channel(conn: sqlite3.Connection, name: str, now: float) -> int:
    """Forget that the channel was disabled and release its held deliveries."""
    conn.execute("DELETE FROM channel_states WHERE name = ?", (name,))
    return release(conn, name, now)


def channel_states(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    return _rows(conn.execute("SELECT * FROM channel_states ORDER BY name"))


def requeue(conn: sqlite3.Connection, delivery_id: int, now: float) -> dict[str, Any] | None:
    """Give a dead or held delivery a fresh set of attempts, and its channel another
    chance (its other held deliveries go too, in order)."""
    row = conn.execute(
        "SELECT channel, status FROM deliveries WHERE id = ?", (delivery_id,)
    ).fetchone()
    if row is None:
        return None
    if row["status"] == DEAD:
        conn.execute(
            "UPDATE deliveries SET status = 'pending', attempts = 0,"
            " next_attempt_at = created_at, requeued_at = ?, updated_at = ? WHERE id = ?",
            (now, now, delivery_id),
        )
        mark(conn, "deliveries", row["channel"])
    if row["status"] in (DEAD, HELD):
        enable_channel(conn, row["channel"], now)
    return _row(conn.execute("SELECT * FROM deliveries WHERE id = ?", (delivery_id,)).fetchone())


@dataclass(frozen=True)
class Requeued:
    dead: int = 0
    held: int = 0

    @property
    def total(self) -> int:
        return self.dead + self.held


def requeue_all(conn: sqlite3.Connection, channels: Iterable[str], now: float) -> Requeued:
    """Every dead delivery of these channels queued again, and each channel enabled again
    with its held deliveries released: all in their original order."""
    dead = held = 0
    for channel in channels:
        requeued = conn.execute(
            "UPDATE deliveries SET status = 'pending', attempts = 0,"
            " next_attempt_at = created_at, requeued_at = ?, updated_at = ?"
            " WHERE channel = ? AND status = 'dead'",
            (now, now, channel),
        ).rowcount
        if requeued:
            mark(conn, "deliveries", channel)
        dead += requeued
        held += enable_channel(conn, channel, now)
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


def settled_channels(
    conn: sqlite3.Connection, configured: Mapping[str, str]
) -> ChannelsAtStart | None:
    """The channels still disabled, if the deliveries are already in line with the
    configuration; None when ``settle_channels`` has work to do. Read first, so that a
    start with nothing to change writes nothing."""
    found = ChannelsAtStart()
    for state in channel_states(conn):
        name = state["name"]
        if name in configured:
            if state["config_fingerprint"] != configured[name]:
                return None
            found.disabled[name] = state["reason"]
    for name in configured:
        if (
            name not in found.disabled
            and conn.execute(
                "SELECT 1 FROM deliveries WHERE channel = ? AND status = 'held' LIMIT 1", (name,)
            ).fetchone()
        ):
            return None
    marks = ",".join("?" * len(configured))
    orphaned = conn.execute(
        f"SELECT 1 FROM deliveries WHERE status = 'pending' AND channel NOT IN ({marks}) LIMIT 1",
        list(configured),
    ).fetchone()
    return None if orphaned else found


def settle_channels(
    conn: sqlite3.Connection, configured: Mapping[str, str], now: float
) -> ChannelsAtStart:
    """Bring the deliveries in line with the configuration (channel -> fingerprint).

    A disabled channel stays disabled while its configuration is unchanged; otherwise it
    is enabled again. Held deliveries of an enabled channel are released (it was changed,
    or it is back in the configuration). The pending deliveries of a channel that is not
    configured are held: no one would send them.
    """
    found = ChannelsAtStart()
    for state in channel_states(conn):
        name = state["name"]
        if name not in configured:
            continue
        if state["config_fingerprint"] == configured[name]:
            found.disabled[name] = state["reason"]
        else:
            found.changed.append(name)
            conn.execute("DELETE FROM channel_states WHERE name = ?", (name,))
    for name in configured:
        if name not in found.disabled and (released := release(conn, name, now)):
            found.released[name] = released
    marks = ",".join("?" * len(configured))
    for (name,) in conn.execute(
        f"SELECT DISTINCT channel FROM deliveries WHERE status = 'pending'"
        f" AND channel NOT IN ({marks})",
        list(configured),
    ).fetchall():
        found.orphaned[name] = hold(conn, name, not_configured(name), now)
    return found


def not_configured(channel: str) -> str:
    return f"channel {channel} is not in the configuration; add it back to send this"


def list_deliveries(
    conn: sqlite3.Connection, *, status: str | None, before: int | None, limit: int
) -> list[dict[str, Any]]:
    return newest_first(conn, "deliveries", {"status": status}, before, limit)


def attempts(conn: sqlite3.Connection, delivery_id: int) -> list[dict[str, Any]]:
    return _rows(
        conn.execute(
            "SELECT * FROM delivery_attempts WHERE delivery_id = ? ORDER BY id", (delivery_id,)
        )
    )

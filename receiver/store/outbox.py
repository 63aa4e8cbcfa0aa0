"""The outbox's rows: deliveries, their attempts, and channels that were disabled."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from typing import Any

from receiver.store import media
from receiver.store.queries import _row, _rows, newest_first
from receiver.store.writer import mark

PENDING, DELIVERED, DEAD = "pending", "delivered", "dead"


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


def disable_channel(
    conn: sqlite3.Connection, name: str, reason: str, fingerprint: str, now: float
) -> None:
    conn.execute(
        "INSERT INTO channel_states (name, disabled_at, reason, config_fingerprint)"
        " VALUES (?,?,?,?) ON CONFLICT(name) DO UPDATE SET disabled_at = excluded.disabled_at,"
        " reason = excluded.reason, config_fingerprint = excluded.config_fingerprint",
        (name, now, reason, fingerprint),
    )


def enable_channel(conn: sqlite3.Connection, name: str) -> bool:
    return conn.execute("DELETE FROM channel_states WHERE name = ?", (name,)).rowcount > 0


def channel_states(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    return _rows(conn.execute("SELECT * FROM channel_states ORDER BY name"))


def requeue(conn: sqlite3.Connection, delivery_id: int, now: float) -> dict[str, Any] | None:
    """Give a dead delivery a fresh set of attempts, and its channel another chance."""
    row = conn.execute(
        "SELECT channel, status FROM deliveries WHERE id = ?", (delivery_id,)
    ).fetchone()
    if row is None:
        return None
    if row["status"] == DEAD:
        conn.execute(
            "UPDATE deliveries SET status = 'pending', attempts = 0, next_attempt_at = ?,"
            " requeued_at = ?, updated_at = ? WHERE id = ?",
            (now, now, now, delivery_id),
        )
        mark(conn, "deliveries", row["channel"])
        enable_channel(conn, row["channel"])
    return _row(conn.execute("SELECT * FROM deliveries WHERE id = ?", (delivery_id,)).fetchone())


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

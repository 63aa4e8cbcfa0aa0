"""Rows of the archive: the download queue (``downloads``) and the files kept (``media``).

A job's download is queued by ``jobs.apply`` in the transaction that completes the job.
A file's row is written only after the file is whole in its storage; the download's
status is settled after its files, and in the same transaction the job's ``completed``
notifications that were waiting for the copy are released.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Mapping
from typing import Any

from receiver.states import Status
from receiver.store import events
from receiver.store.queries import _row, _rows
from receiver.store.writer import mark

PENDING, KEPT, FAILED, EXPIRED, PRUNED, OFF = (
    "pending",
    "kept",
    "failed",
    "expired",
    "pruned",
    "off",
)
ENDED = (KEPT, FAILED, EXPIRED)


def queue_download(conn: sqlite3.Connection, job_id: str, now: float) -> None:
    conn.execute(
        "INSERT INTO downloads (job_id, status, next_attempt_at, queued_at, updated_at)"
        " VALUES (?, 'pending', ?, ?, ?) ON CONFLICT(job_id) DO NOTHING",
        (job_id, now, now, now),
    )
    mark(conn, "downloads")


def due(
    conn: sqlite3.Connection, now: float, limit: int, skip: Iterable[str]
) -> list[dict[str, Any]]:
    """Due downloads, oldest first, each with what fetching it needs and its ``files``."""
    skipped = list(skip)
    marks = ",".join("?" * len(skipped))
    rows = _rows(
        conn.execute(
            "SELECT d.job_id, d.attempts, d.queued_at, j.provider, j.provider_job_id,"
            " j.key_fingerprint, j.callback_url, j.result_url, j.cover_url, j.finished_at"
            " FROM downloads d JOIN jobs j ON j.id = d.job_id"
            " WHERE d.status = 'pending' AND d.next_attempt_at <= ?"
            f" AND d.job_id NOT IN ({marks}) ORDER BY d.next_attempt_at LIMIT ?",
            (now, *skipped, limit),
        )
    )
    for row in rows:
        row["files"] = files(conn, row["job_id"])
    return rows


def next_due(conn: sqlite3.Connection, skip: Iterable[str]) -> float | None:
    skipped = list(skip)
    marks = ",".join("?" * len(skipped))
    row = conn.execute(
        "SELECT min(next_attempt_at) FROM downloads WHERE status = 'pending'"
        f" AND job_id NOT IN ({marks})",
        skipped,
    ).fetchone()
    return None if row is None else row[0]


def files(conn: sqlite3.Connection, job_id: str) -> dict[str, dict[str, Any]]:
    rows = _rows(conn.execute("SELECT * FROM media WHERE job_id = ? ORDER BY kind", (job_id,)))
    return {row["kind"]: row for row in rows}


def file(conn: sqlite3.Connection, job_id: str, kind: str) -> dict[str, Any] | None:
    return _row(
        conn.execute(
            "SELECT * FROM media WHERE job_id = ? AND kind = ? AND pruned_at IS NULL",
            (job_id, kind),
        ).fetchone()
    )


def record_file(
    conn: sqlite3.Connection,
    job_id: str,
    kind: str,
    *,
    store: str,
    location: str,
    size: int,
    sha256: str,
    content_type: str,
    now: float,
) -> None:
    conn.execute(
        "INSERT INTO media (job_id, kind, store, location, bytes, sha256, content_type,"
        " stored_at, pruned_at) VALUES (?,?,?,?,?,?,?,?, NULL)"
        " ON CONFLICT(job_id, kind) DO UPDATE SET store = excluded.store,"
        " location = excluded.location, bytes = excluded.bytes, sha256 = excluded.sha256,"
        " content_type = excluded.content_type, stored_at = excluded.stored_at,"
        " pruned_at = NULL",
        (job_id, kind, store, location, size, sha256, content_type, now),
    )


def retry(
    conn: sqlite3.Connection, job_id: str, *, error: str, next_attempt_at: float, now: float
) -> None:
    conn.execute(
        "UPDATE downloads SET attempts = attempts + 1, error = ?, next_attempt_at = ?,"
        " updated_at = ? WHERE job_id = ? AND status = 'pending'",
        (error, next_attempt_at, now, job_id),
    )


def finish(
    conn: sqlite3.Connection, job_id: str, *, status: str, error: str | None, now: float
) -> None:
    """Settle the download, and send the notifications that were waiting for it now."""
    conn.execute(
        "UPDATE downloads SET status = ?, attempts = attempts + 1, error = ?,"
        " next_attempt_at = NULL, updated_at = ?, finished_at = ? WHERE job_id = ?",
        (status, error, now, now, job_id),
    )
    events.record_media(conn, [job_id], now)
    release_deliveries(conn, job_id, now)


def release_deliveries(conn: sqlite3.Connection, job_id: str, now: float) -> None:
    held = conn.execute(
        "SELECT id, channel FROM deliveries WHERE job_id = ? AND event = ?"
        " AND status = 'pending' AND attempts = 0 AND next_attempt_at > ?",
        (job_id, Status.COMPLETED.value, now),
    ).fetchall()
    for delivery_id, channel in held:
        conn.execute(
            "UPDATE deliveries SET next_attempt_at = ?, updated_at = ? WHERE id = ?",
            (now, now, delivery_id),
        )
        mark(conn, "deliveries", channel)


def defer_delivery(conn: sqlite3.Connection, delivery_id: int, until: float, now: float) -> bool:
    """A completed notification waits for the kept copy; no attempt is counted.

    Only while the download is still pending: one that settled since the delivery was
    read has released its deliveries already, and this one must not wait after that.
    """
    return (
        conn.execute(
            "UPDATE deliveries SET next_attempt_at = ?, updated_at = ?"
            " WHERE id = ? AND status = 'pending' AND EXISTS (SELECT 1 FROM downloads d"
            " WHERE d.job_id = deliveries.job_id AND d.status = 'pending')",
            (until, now, delivery_id),
        ).rowcount
        > 0
    )


def requeue(conn: sqlite3.Connection, job_id: str, now: float) -> None:
    """Try again from the start; files already kept are served until replaced."""
    conn.execute(
        "INSERT INTO downloads (job_id, status, next_attempt_at, queued_at, updated_at)"
        " VALUES (?, 'pending', ?, ?, ?) ON CONFLICT(job_id) DO UPDATE SET"
        " status = 'pending', attempts = 0, error = NULL, next_attempt_at = excluded.queued_at,"
        " queued_at = excluded.queued_at, updated_at = excluded.queued_at, finished_at = NULL",
        (job_id, now, now, now),
    )
    events.record_media(conn, [job_id], now)
    mark(conn, "downloads")


def switch_off(conn: sqlite3.Connection, now: float) -> int:
    """With the archive off, what was queued is not downloaded; --backfill can pick it up."""
    queued = conn.execute("SELECT job_id FROM downloads WHERE status = 'pending'").fetchall()
    events.record_media(conn, (job_id for (job_id,) in queued), now)
    return conn.execute(
        "UPDATE downloads SET status = 'off', next_attempt_at = NULL, updated_at = ?"
        " WHERE status = 'pending'",
        (now,),
    ).rowcount


def backfill(conn: sqlite3.Connection, now: float, lifetimes: Mapping[str, float | None]) -> int:
    """Queue every completed job with a result and no copy, whose link may still work.

    ``lifetimes`` maps each configured provider to how long its links last (None:
    unknown); jobs of providers no longer configured are tried too.
    """
    rows = conn.execute(
        "SELECT j.id, j.provider, j.finished_at FROM jobs j"
        " LEFT JOIN downloads d ON d.job_id = j.id"
        " WHERE j.status = ? AND j.result_url IS NOT NULL"
        " AND (d.job_id IS NULL OR d.status = 'off')",
        (Status.COMPLETED.value,),
    ).fetchall()
    queued = 0
    for job_id, provider, finished_at in rows:
        lifetime = lifetimes.get(provider)
        if lifetime is not None and finished_at is not None and now - finished_at > lifetime:
            continue
        requeue(conn, job_id, now)
        queued += 1
    return queued


def prunable(conn: sqlite3.Connection, before: float, limit: int) -> list[dict[str, Any]]:
    return _rows(
        conn.execute(
            "SELECT job_id, kind, store, location FROM media WHERE stored_at < ?"
            " AND pruned_at IS NULL ORDER BY stored_at LIMIT ?",
            (before, limit),
        )
    )


def mark_pruned(
    conn: sqlite3.Connection, pruned: Iterable[tuple[str, str]], keep_days: float, now: float
) -> None:
    pruned = list(pruned)
    events.record_media(conn, (job_id for job_id, _kind in pruned), now)
    for job_id, kind in pruned:
        conn.execute(
            "UPDATE media SET pruned_at = ? WHERE job_id = ? AND kind = ?", (now, job_id, kind)
        )
        conn.execute(
            "UPDATE downloads SET status = 'pruned', error = ?, updated_at = ?"
            " WHERE job_id = ? AND status = 'kept'",
            (f"removed after keep_days ({keep_days:g} days)", now, job_id),
        )


def attach(conn: sqlite3.Connection, jobs: Iterable[dict[str, Any]]) -> None:
    """Each job's ``download`` row (or None) and ``files``, for rendering its media."""
    by_id = {job["id"]: job for job in jobs}
    if not by_id:
        return
    marks = ",".join("?" * len(by_id))
    for job in by_id.values():
        job["download"], job["files"] = None, {}
    for row in _rows(conn.execute(f"SELECT * FROM downloads WHERE job_id IN ({marks})", [*by_id])):
        by_id[row["job_id"]]["download"] = row
    for row in _rows(conn.execute(f"SELECT * FROM media WHERE job_id IN ({marks})", [*by_id])):
        by_id[row["job_id"]]["files"][row["kind"]] = row


def status(conn: sqlite3.Connection, job_id: str) -> dict[str, Any] | None:
    return _row(conn.execute("SELECT * FROM downloads WHERE job_id = ?", (job_id,)).fetchone())


def summary(conn: sqlite3.Connection) -> dict[str, Any]:
    """Downloads by status, and the files kept now with their bytes."""
    counts = dict(conn.execute("SELECT status, count(*) FROM downloads GROUP BY status"))
    files, size = conn.execute(
        "SELECT count(*), coalesce(sum(bytes), 0) FROM media WHERE pruned_at IS NULL"
    ).fetchone()
    return {"downloads": counts, "files": files, "bytes": size}

"""Rows of the archive: the download queue (``downloads``) and the files kept (``media``).

A job's download is queued by ``jobs.apply`` in the transaction that completes the job.
A file's row is written only after the file is whole in its storage; the download's
status is settled after its files, and in the same transaction the job's ``completed``
notifications that were waiting for the copy are released.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from receiver.states import Status
from receiver.store import claims, events
from receiver.store.db import Db, among
from receiver.store.queries import _row, _rows

PENDING, KEPT, FAILED, EXPIRED, PRUNED, OFF = (
    "pending",
    "kept",
    "failed",
    "expired",
    "pruned",
    "off",
)
ENDED = (KEPT, FAILED, EXPIRED)


async def queue_download(db: Db, job_id: str, now: float) -> None:
    await db.run(
        "INSERT INTO downloads (job_id, status, next_attempt_at, queued_at, updated_at)"
        " VALUES (?, 'pending', ?, ?, ?) ON CONFLICT(job_id) DO NOTHING",
        (job_id, now, now, now),
    )
    db.mark("downloads")


async def due(db: Db, now: float, limit: int, skip: Iterable[str]) -> list[dict[str, Any]]:
    """Due downloads, oldest first, each with what fetching it needs and its ``files``."""
    skipped = list(skip)
    claimed = await claims.claim(
        db,
        "downloads",
        key="job_id",
        columns="job_id, next_attempt_at",
        where="status = 'pending' AND next_attempt_at <= ?"
        f" AND {among('job_id', skipped, negate=True)}",
        params=(now, *skipped),
        order="next_attempt_at",
        limit=limit,
        now=now,
    )
    ids = [row[0] for row in claimed]
    rows = _rows(
        await db.all(
            "SELECT d.job_id, d.attempts, d.queued_at, j.provider, j.provider_job_id,"
            " j.key_fingerprint, j.callback_url, j.result_url, j.cover_url, j.finished_at"
            " FROM downloads d JOIN jobs j ON j.id = d.job_id"
            f" WHERE {among('d.job_id', ids)} ORDER BY d.next_attempt_at",
            ids,
        )
    )
    for row in rows:
        row["files"] = await files(db, row["job_id"])
    return rows


async def next_due(db: Db, skip: Iterable[str], now: float) -> float | None:
    skipped = list(skip)
    row = await db.one(
        "SELECT min(next_attempt_at) FROM downloads WHERE status = 'pending'"
        f" AND {among('job_id', skipped, negate=True)} AND {claims.FREE}",
        (*skipped, now),
    )
    return None if row is None else row[0]


async def files(db: Db, job_id: str) -> dict[str, dict[str, Any]]:
    rows = _rows(await db.all("SELECT * FROM media WHERE job_id = ? ORDER BY kind", (job_id,)))
    return {row["kind"]: row for row in rows}


async def file(db: Db, job_id: str, kind: str) -> dict[str, Any] | None:
    return _row(
        await db.one(
            "SELECT * FROM media WHERE job_id = ? AND kind = ? AND pruned_at IS NULL",
            (job_id, kind),
        )
    )


async def record_file(
    db: Db,
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
    await db.run(
        "INSERT INTO media (job_id, kind, store, location, bytes, sha256, content_type,"
        " stored_at, pruned_at) VALUES (?,?,?,?,?,?,?,?, NULL)"
        " ON CONFLICT(job_id, kind) DO UPDATE SET store = excluded.store,"
        " location = excluded.location, bytes = excluded.bytes, sha256 = excluded.sha256,"
        " content_type = excluded.content_type, stored_at = excluded.stored_at,"
        " pruned_at = NULL",
        (job_id, kind, store, location, size, sha256, content_type, now),
    )


async def retry(db: Db, job_id: str, *, error: str, next_attempt_at: float, now: float) -> None:
    await db.run(
        "UPDATE downloads SET attempts = attempts + 1, error = ?, next_attempt_at = ?,"
        f" updated_at = ?, {claims.RELEASED} WHERE job_id = ? AND status = 'pending'",
        (error, next_attempt_at, now, job_id),
    )


async def finish(db: Db, job_id: str, *, status: str, error: str | None, now: float) -> None:
    """Settle the download, and send the notifications that were waiting for it now."""
    await db.run(
        "UPDATE downloads SET status = ?, attempts = attempts + 1, error = ?,"
        f" next_attempt_at = NULL, updated_at = ?, finished_at = ?, {claims.RELEASED}"
        " WHERE job_id = ?",
        (status, error, now, now, job_id),
    )
    await events.record_media(db, [job_id], now)
    await release_deliveries(db, job_id, now)


async def release_deliveries(db: Db, job_id: str, now: float) -> None:
    held = await db.all(
        "SELECT id, channel FROM deliveries WHERE job_id = ? AND event = ?"
        " AND status = 'pending' AND attempts = 0 AND next_attempt_at > ?",
        (job_id, Status.COMPLETED.value, now),
    )
    for delivery_id, channel in held:
        await db.run(
            "UPDATE deliveries SET next_attempt_at = ?, updated_at = ? WHERE id = ?",
            (now, now, delivery_id),
        )
        db.mark("deliveries", channel)


async def defer_delivery(db: Db, delivery_id: int, until: float, now: float) -> bool:
    """A completed notification waits for the kept copy; no attempt is counted.

    Only while the download is still pending: one that settled since the delivery was
    read has released its deliveries already, and this one must not wait after that.
    """
    delivery = await db.one("SELECT job_id FROM deliveries WHERE id = ?", (delivery_id,))
    if delivery is None:
        return False
    # Locked as ``finish`` locks it (PostgreSQL): a download settling at this moment on
    # another connection either comes first, and is seen as settled here, or waits for
    # this deferral and then releases it.
    download = await db.one(
        f"SELECT status FROM downloads WHERE job_id = ?{db.for_update}", (delivery["job_id"],)
    )
    if download is None or download["status"] != PENDING:
        return False
    changed = await db.run(
        f"UPDATE deliveries SET next_attempt_at = ?, updated_at = ?, {claims.RELEASED}"
        " WHERE id = ? AND status = 'pending'",
        (until, now, delivery_id),
    )
    return changed > 0


async def requeue(db: Db, job_id: str, now: float) -> None:
    """Try again from the start; files already kept are served until replaced."""
    await db.run(
        "INSERT INTO downloads (job_id, status, next_attempt_at, queued_at, updated_at)"
        " VALUES (?, 'pending', ?, ?, ?) ON CONFLICT(job_id) DO UPDATE SET"
        " status = 'pending', attempts = 0, error = NULL, next_attempt_at = excluded.queued_at,"
        " queued_at = excluded.queued_at, updated_at = excluded.queued_at, finished_at = NULL",
        (job_id, now, now, now),
    )
    await events.record_media(db, [job_id], now)
    db.mark("downloads")


async def switch_off(db: Db, now: float) -> int:
    """With the archive off, what was queued is not downloaded; --backfill can pick it up."""
    queued = await db.all("SELECT job_id FROM downloads WHERE status = 'pending'")
    await events.record_media(db, (job_id for (job_id,) in queued), now)
    return await db.run(
        "UPDATE downloads SET status = 'off', next_attempt_at = NULL, updated_at = ?"
        " WHERE status = 'pending'",
        (now,),
    )


async def backfill(db: Db, now: float, lifetimes: Mapping[str, float | None]) -> int:
    """Queue every completed job with a result and no copy, whose link may still work.

    ``lifetimes`` maps each configured provider to how long its links last (None:
    unknown); jobs of providers no longer configured are tried too.
    """
    rows = await db.all(
        "SELECT j.id, j.provider, j.finished_at FROM jobs j"
        " LEFT JOIN downloads d ON d.job_id = j.id"
        " WHERE j.status = ? AND j.result_url IS NOT NULL"
        " AND (d.job_id IS NULL OR d.status = 'off')",
        (Status.COMPLETED.value,),
    )
    queued = 0
    for job_id, provider, finished_at in rows:
        lifetime = lifetimes.get(provider)
        if lifetime is not None and finished_at is not None and now - finished_at > lifetime:
            continue
        await requeue(db, job_id, now)
        queued += 1
    return queued


async def prunable(db: Db, before: float, limit: int) -> list[dict[str, Any]]:
    return _rows(
        await db.all(
            "SELECT job_id, kind, store, location FROM media WHERE stored_at < ?"
            " AND pruned_at IS NULL ORDER BY stored_at LIMIT ?",
            (before, limit),
        )
    )


async def mark_pruned(
    db: Db, pruned: Iterable[tuple[str, str]], keep_days: float, now: float
) -> None:
    pruned = list(pruned)
    await events.record_media(db, (job_id for job_id, _kind in pruned), now)
    for job_id, kind in pruned:
        await db.run(
            "UPDATE media SET pruned_at = ? WHERE job_id = ? AND kind = ?", (now, job_id, kind)
        )
        await db.run(
            "UPDATE downloads SET status = 'pruned', error = ?, updated_at = ?"
            " WHERE job_id = ? AND status = 'kept'",
            (f"removed after keep_days ({keep_days:g} days)", now, job_id),
        )


async def attach(db: Db, jobs: Iterable[dict[str, Any]]) -> None:
    """Each job's ``download`` row (or None) and ``files``, for rendering its media."""
    by_id = {job["id"]: job for job in jobs}
    if not by_id:
        return
    ids = [*by_id]
    for job in by_id.values():
        job["download"], job["files"] = None, {}
    for row in _rows(await db.all(f"SELECT * FROM downloads WHERE {among('job_id', ids)}", ids)):
        by_id[row["job_id"]]["download"] = row
    for row in _rows(await db.all(f"SELECT * FROM media WHERE {among('job_id', ids)}", ids)):
        by_id[row["job_id"]]["files"][row["kind"]] = row


async def status(db: Db, job_id: str) -> dict[str, Any] | None:
    return _row(await db.one("SELECT * FROM downloads WHERE job_id = ?", (job_id,)))


async def summary(db: Db) -> dict[str, Any]:
    """Downloads by status, and the files kept now with their bytes."""
    counts = {
        status: count
        for status, count in await db.all("SELECT status, count(*) FROM downloads GROUP BY status")
    }
    kept = await db.one(
        "SELECT count(*), CAST(coalesce(sum(bytes), 0) AS BIGINT) FROM media"
        " WHERE pruned_at IS NULL"
    )
    assert kept is not None
    return {"downloads": counts, "files": kept[0], "bytes": kept[1]}

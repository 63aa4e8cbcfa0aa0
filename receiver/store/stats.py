"""The numbers /metrics reads from the database at each scrape."""

from __future__ import annotations

from dataclasses import dataclass, field

from receiver.store.db import Db

_ACTIVE = ("queued", "processing")  # the statuses of unfinished jobs


@dataclass
class Snapshot:
    """What the database says at one moment; ``last_transition`` makes the next read
    incremental (transitions are only ever appended)."""

    last_transition: int = 0
    transitions: dict[str, int] = field(default_factory=dict)
    active_jobs: dict[tuple[str, str], int] = field(default_factory=dict)
    polls_scheduled: dict[str, int] = field(default_factory=dict)
    polls_due: dict[str, int] = field(default_factory=dict)
    submissions_waiting: dict[str, int] = field(default_factory=dict)
    pending: dict[str, int] = field(default_factory=dict)
    dead: dict[str, int] = field(default_factory=dict)
    held: dict[str, int] = field(default_factory=dict)
    oldest_pending_age: dict[str, float] = field(default_factory=dict)
    disabled: set[str] = field(default_factory=set)
    downloads_pending: int = 0
    media_bytes: int = 0
    media_files: int = 0


async def read_snapshot(db: Db, now: float, previous: Snapshot) -> Snapshot:
    """One consistent read of the database's numbers (a read runs in one transaction)."""
    snap = Snapshot(transitions=dict(previous.transitions))
    # By id from the last id seen: each scrape reads only the new transitions.
    last = previous.last_transition
    for status, count, top in await db.all(
        "SELECT to_status, count(*), max(id) FROM transitions WHERE id > ? GROUP BY 1",
        (last,),
    ):
        snap.transitions[status] = snap.transitions.get(status, 0) + count
        last = max(last, top)
    snap.last_transition = last
    for provider, status, count in await db.all(
        "SELECT provider, status, count(*) FROM jobs WHERE status IN (?, ?) GROUP BY 1, 2",
        _ACTIVE,
    ):
        snap.active_jobs[provider, status] = count
    for provider, scheduled, due in await db.all(
        "SELECT provider, count(*), sum(CASE WHEN next_poll_at <= ? THEN 1 ELSE 0 END)"
        " FROM jobs WHERE next_poll_at IS NOT NULL AND status IN (?, ?) GROUP BY 1",
        (now, *_ACTIVE),
    ):
        snap.polls_scheduled[provider] = scheduled
        snap.polls_due[provider] = int(due or 0)
    for provider, count in await db.all(
        "SELECT provider, count(*) FROM jobs WHERE next_submit_at IS NOT NULL"
        " AND status IN (?, ?) GROUP BY 1",
        _ACTIVE,
    ):
        snap.submissions_waiting[provider] = count
    for channel, status, count, oldest in await db.all(
        "SELECT channel, status, count(*), min(coalesce(requeued_at, created_at))"
        " FROM deliveries WHERE status IN ('pending', 'dead', 'held') GROUP BY 1, 2"
    ):
        if status == "pending":
            snap.pending[channel] = count
            snap.oldest_pending_age[channel] = max(0.0, now - oldest)
        elif status == "dead":
            snap.dead[channel] = count
        else:
            snap.held[channel] = count
    snap.disabled = {name for (name,) in await db.all("SELECT name FROM channel_states")}
    pending = await db.one("SELECT count(*) FROM downloads WHERE status = 'pending'")
    kept = await db.one(
        "SELECT count(*), CAST(coalesce(sum(bytes), 0) AS BIGINT) FROM media"
        " WHERE pruned_at IS NULL"
    )
    assert pending is not None and kept is not None
    snap.downloads_pending = pending[0]
    snap.media_files, snap.media_bytes = kept[0], kept[1]
    return snap

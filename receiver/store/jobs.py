"""Write operations. Each runs inside the caller's transaction (see ``db``).

``apply`` is the one path of a state change: it decides with ``states``, updates the job,
appends the transition and enqueues its deliveries, all in the caller's transaction.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

from receiver.providers.base import Observation, Submission
from receiver.states import TERMINAL_SQL, Status, decide
from receiver.store import claims, events
from receiver.store.db import Db
from receiver.store.media import queue_download

log = logging.getLogger("vidhook.jobs")

Route = Callable[[Status, "list[str] | None"], "list[str]"]
CallbackOutcome = Literal["accepted", "duplicate", "replayed"]
MAX_ANOMALIES = 50


class JobNotFound(LookupError):
    pass


class UnknownToken(LookupError):
    """No job of this provider has the callback token (which is kept out of the message)."""


class UnknownTask(LookupError):
    """No job of this provider has the task an account-level webhook names."""


@dataclass(frozen=True)
class CallbackTarget:
    """What checking a callback needs to know about its job."""

    id: str
    provider_job_id: str | None
    key_fingerprint: str | None
    callback_url: str | None


@dataclass(frozen=True)
class AdmittedCallback:
    """An authenticated callback, as record_callback stores it."""

    nonce: str
    digest: str
    nonce_expires_at: float
    headers: Mapping[str, str]
    body: str
    obs: Observation
    confirm: bool
    received_url: str | None = None


@dataclass(frozen=True)
class NewJob:
    id: str
    provider: str
    model: str | None
    prompt: str | None
    request: Mapping[str, Any]
    callback_token: str | None
    callback_url: str | None
    key_fingerprint: str | None
    notify: list[str] | None
    deadline_at: float | None = None


@dataclass(frozen=True)
class Applied:
    job_id: str
    status: Status
    transition_id: int | None
    anomaly: str | None = None


# Made once: json.dumps builds a new encoder for every call that passes options.
dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


async def insert_job(db: Db, job: NewJob, *, now: float, route: Route) -> None:
    # Inserted with its first submission attempt under way (receiver.submitter).
    await db.run(
        "INSERT INTO jobs (id, provider, status, model, prompt, request, callback_token,"
        " callback_url, key_fingerprint, notify, deadline_at, created_at, updated_at,"
        " submit_attempts, submitting_at, claimed_by, claimed_until)"
        " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,1,?,?,?)",
        (
            job.id,
            job.provider,
            Status.QUEUED.value,
            job.model,
            job.prompt,
            dumps(dict(job.request)),
            job.callback_token,
            job.callback_url,
            job.key_fingerprint,
            None if job.notify is None else dumps(job.notify),
            job.deadline_at,
            now,
            now,
            now,
            *claims.lease(db, now),  # the first attempt is this replica's
        ),
    )
    await _transition(
        db, job.id, job.notify, None, Status.QUEUED, "api", None, now=now, route=route
    )


async def apply(
    db: Db,
    job_id: str,
    obs: Observation,
    source: str,
    *,
    now: float,
    route: Route,
    detail: Mapping[str, Any] | None = None,
) -> Applied:
    # Locked on PostgreSQL: two replicas applying to one job take turns, and the second
    # decides from what the first stored.
    row = await db.one(
        "SELECT status, notify, anomalies, provider, created_at, result_url, error"
        f" FROM jobs WHERE id = ?{db.for_update}",
        (job_id,),
    )
    if row is None:
        raise JobNotFound(job_id)
    current = Status(row["status"])
    decision = decide(current, obs.status)
    if decision.new is None:
        anomaly = decision.anomaly if obs.known else None
        if anomaly:
            anomalies = json.loads(row["anomalies"] or "[]")[-(MAX_ANOMALIES - 1) :]
            anomalies.append(
                {"at": now, "source": source, "observed": obs.status.value,
                 "provider_status": obs.provider_status, "note": anomaly}
            )  # fmt: skip
            await db.run(
                "UPDATE jobs SET anomalies = ?, updated_at = ? WHERE id = ?",
                (dumps(anomalies), now, job_id),
            )
        elif not current.terminal and obs.provider_status:
            await db.run(
                "UPDATE jobs SET provider_status = ?, updated_at = ? WHERE id = ?",
                (obs.provider_status, now, job_id),
            )
        return Applied(job_id, current, None, anomaly)

    new = decision.new
    await db.run(
        "UPDATE jobs SET status = ?, provider_status = COALESCE(?, provider_status),"
        " result_url = COALESCE(?, result_url), cover_url = COALESCE(?, cover_url),"
        " error = COALESCE(?, error), credits = COALESCE(?, credits), updated_at = ?,"
        " finished_at = ?, next_poll_at = CASE WHEN ? THEN NULL ELSE next_poll_at END,"
        " confirm_callback_id = CASE WHEN ? THEN NULL ELSE confirm_callback_id END"
        " WHERE id = ?",
        (
            new.value,
            obs.provider_status,
            obs.result_url,
            obs.cover_url,
            obs.error,
            obs.credits,
            now,
            now if new.terminal else None,
            new.terminal,
            new.terminal,
            job_id,
        ),
    )
    notify = None if row["notify"] is None else json.loads(row["notify"])
    info = {"provider_status": obs.provider_status, **(detail or {})}
    tid = await _transition(db, job_id, notify, current, new, source, info, now=now, route=route)
    if new is Status.COMPLETED:
        await queue_download(db, job_id, now)
    if new.terminal:
        # Whatever told us (submit, callback, poll, deadline, the API), the one log line.
        finished = Finished(
            job_id,
            row["provider"],
            new,
            source,
            obs.result_url or row["result_url"],
            obs.error or row["error"],
            now - row["created_at"],
        )
        db.on_commit(partial(log.info, "%s", finished))
    return Applied(job_id, new, tid)


@dataclass(frozen=True)
class Finished:
    """A job that reached a terminal status, as the service log tells it."""

    job_id: str
    provider: str
    status: Status
    source: str
    result_url: str | None
    error: str | None
    elapsed: float

    def __str__(self) -> str:
        line = (
            f"job {self.job_id} {self.status.value} after {self.elapsed:.1f}s"
            f" (provider {self.provider}, via {self.source})"
        )
        if self.status is Status.COMPLETED:
            return f"{line}: result {_without_query(self.result_url)}"
        return f"{line}: {self.error}" if self.error else line


def _without_query(url: str | None) -> str | None:
    # Result URLs are often signed: the query string is a credential to the file.
    if url is None or "?" not in url:
        return url
    return url.split("?", 1)[0] + "?…"


async def _transition(
    db: Db,
    job_id: str,
    notify: list[str] | None,
    old: Status | None,
    new: Status,
    source: str,
    detail: Mapping[str, Any] | None,
    *,
    now: float,
    route: Route,
) -> int:
    tid = await db.insert(
        "INSERT INTO transitions (job_id, from_status, to_status, source, at, detail)"
        " VALUES (?,?,?,?,?,?)",
        (job_id, old and old.value, new.value, source, now,
         dumps({k: v for k, v in detail.items() if v is not None}) if detail else None),
    )  # fmt: skip
    await events.record(db, job_id, tid, now)
    for channel in route(new, notify):
        await db.run(
            "INSERT INTO deliveries (job_id, transition_id, channel, event, status,"
            " next_attempt_at, created_at, updated_at, event_id)"
            " VALUES (?,?,?,?, 'pending', ?,?,?,?)",
            (job_id, tid, channel, new.value, now, now, now, "evt_" + secrets.token_hex(12)),
        )
        db.mark("deliveries", channel)
    return tid


async def record_submission(
    db: Db,
    job_id: str,
    submission: Submission,
    *,
    next_poll_at: float | None,
    now: float,
    route: Route,
) -> Applied:
    await db.run(
        "UPDATE jobs SET provider_job_id = ?, key_fingerprint = ?, next_poll_at = ?,"
        f" submitting_at = NULL, next_submit_at = NULL, progress = ?, {claims.RELEASED}"
        " WHERE id = ?",
        (submission.provider_job_id, submission.key_fingerprint, next_poll_at,
         _progress(submission.observation), job_id),
    )  # fmt: skip
    return await apply(db, job_id, submission.observation, "submit", now=now, route=route)


async def record_callback(
    db: Db,
    *,
    job_id: str,
    provider: str,
    nonce: str,
    digest: str,
    nonce_expires_at: float,
    headers: Mapping[str, str],
    body: str,
    obs: Observation,
    confirm: bool,
    now: float,
    route: Route,
    received_url: str | None = None,
) -> CallbackOutcome:
    """Store an authenticated callback; a nonce seen before is a retry or a replay."""
    # As few statements as possible: each one hands the GIL to the event loop and back,
    # and under a burst that was a good part of a callback's cost. A new nonce (the
    # usual case) is one INSERT; a known one is left alone and looked up.
    stored = await db.run(
        "INSERT INTO nonces (provider, nonce, digest, expires_at) VALUES (?,?,?,?)"
        " ON CONFLICT DO NOTHING",
        (provider, nonce, digest, nonce_expires_at),
    )
    if not stored:
        seen = await db.one(
            "SELECT digest FROM nonces WHERE provider = ? AND nonce = ?", (provider, nonce)
        )
        if seen is None:  # ignored for another reason than the primary key: say so
            raise RuntimeError(f"the nonce of a {provider} callback was not stored")
        return "duplicate" if seen["digest"] == digest else "replayed"
    callback_id = await db.insert(
        "INSERT INTO callbacks (job_id, provider, received_at, nonce, provider_status,"
        " headers, body, outcome, received_url) VALUES (?,?,?,?,?,?,?,?,?)",
        (job_id, provider, now, nonce, obs.provider_status, dumps(dict(headers)), body,
         "confirming" if confirm else "applied", received_url),
    )  # fmt: skip
    # A callback can overtake the submit response; its task id is then the first we see.
    if confirm:
        # The poller confirms with the provider before the job may turn terminal; the
        # schedule is a row, so a restart still performs the confirmation. A job that
        # has already ended keeps its schedule (every CASE reads the row as it was).
        ended = f"status IN {TERMINAL_SQL}"
        await db.run(
            "UPDATE jobs SET last_callback_at = ?, provider_job_id = COALESCE(provider_job_id, ?),"
            f" confirm_callback_id = CASE WHEN {ended} THEN confirm_callback_id ELSE ? END,"
            f" next_poll_at = CASE WHEN {ended} THEN next_poll_at ELSE ? END,"
            f" poll_failures = CASE WHEN {ended} THEN poll_failures ELSE 0 END WHERE id = ?",
            (now, obs.provider_job_id, callback_id, now, job_id),
        )
    else:
        await db.run(
            "UPDATE jobs SET last_callback_at = ?,"
            " provider_job_id = COALESCE(provider_job_id, ?) WHERE id = ?",
            (now, obs.provider_job_id, job_id),
        )
        detail = {"callback_id": callback_id}
        await apply(db, job_id, obs, "callback", now=now, route=route, detail=detail)
    return "accepted"


async def record_token_callback(
    db: Db,
    *,
    provider: str,
    token: str,
    admit: Callable[[CallbackTarget], AdmittedCallback],
    now: float,
    route: Route,
) -> tuple[str, CallbackOutcome, AdmittedCallback]:
    """Find the job by its callback token, let ``admit`` check the callback, store it.

    One trip to the writer for the whole callback: the lookup, the caller's checks
    (signature, body) and the writes. ``admit`` raises to refuse; nothing has been
    written by then. Returns the job id, the outcome and what ``admit`` returned.
    """
    # Locked first on PostgreSQL: callbacks of one job at two replicas take turns, whole.
    row = await db.one(
        "SELECT id, provider_job_id, key_fingerprint, callback_url FROM jobs"
        f" WHERE callback_token = ? AND provider = ?{db.for_update}",
        (token, provider),
    )
    if row is None:
        raise UnknownToken(f"no {provider} job has this callback token")
    return await _record_admitted(db, provider, CallbackTarget(*row), admit, now, route)


async def record_task_callback(
    db: Db,
    *,
    provider: str,
    task_id: str,
    admit: Callable[[CallbackTarget], AdmittedCallback],
    now: float,
    route: Route,
) -> tuple[str, CallbackOutcome, AdmittedCallback]:
    """As record_token_callback, for a webhook sent to the provider's one account-level
    URL: the job is the one whose provider task the webhook's verified body names.
    Raises UnknownTask, with nothing written, when no job has that task (yet)."""
    row = await db.one(
        "SELECT id, provider_job_id, key_fingerprint, callback_url FROM jobs"
        " WHERE provider = ? AND provider_job_id = ? ORDER BY created_at DESC LIMIT 1"
        f"{db.for_update}",
        (provider, task_id),
    )
    if row is None:
        raise UnknownTask(f"no {provider} job has this task")
    return await _record_admitted(db, provider, CallbackTarget(*row), admit, now, route)


async def _record_admitted(
    db: Db,
    provider: str,
    target: CallbackTarget,
    admit: Callable[[CallbackTarget], AdmittedCallback],
    now: float,
    route: Route,
) -> tuple[str, CallbackOutcome, AdmittedCallback]:
    admitted = admit(target)
    outcome = await record_callback(
        db,
        job_id=target.id,
        provider=provider,
        nonce=admitted.nonce,
        digest=admitted.digest,
        nonce_expires_at=admitted.nonce_expires_at,
        headers=admitted.headers,
        body=admitted.body,
        obs=admitted.obs,
        confirm=admitted.confirm,
        now=now,
        route=route,
        received_url=admitted.received_url,
    )
    return target.id, outcome, admitted


async def record_poll(
    db: Db,
    job_id: str,
    obs: Observation,
    *,
    next_poll_at: float | None,
    now: float,
    route: Route,
) -> Applied:
    row = await db.one(
        f"SELECT confirm_callback_id, progress FROM jobs WHERE id = ?{db.for_update}", (job_id,)
    )
    detail = {"confirms_callback_id": row["confirm_callback_id"]} if row else None
    applied = await apply(db, job_id, obs, "poll", now=now, route=route, detail=detail)
    progress = _progress(obs)
    await db.run(
        f"UPDATE jobs SET polls = polls + 1, poll_failures = 0, progress = ?, {claims.RELEASED},"
        f" next_poll_at = CASE WHEN status IN {TERMINAL_SQL} THEN NULL ELSE ? END"
        " WHERE id = ?",
        (progress, next_poll_at, job_id),
    )
    assert row is not None  # apply raised JobNotFound otherwise
    if applied.transition_id is None and progress != row["progress"]:
        # Progress is no change of state (no transition, nothing to notify), but those
        # who follow the job live want to see it move: an event of its own.
        await events.record(db, job_id, None, now)
    return applied


def _progress(obs: Observation) -> str | None:
    """The job's ``progress`` column: the provider's latest word on it, as JSON."""
    return None if obs.progress is None else dumps(obs.progress.to_json())


async def record_poll_failure(db: Db, job_id: str, *, next_poll_at: float) -> int:
    await db.run(
        "UPDATE jobs SET next_poll_at = ?, poll_failures = poll_failures + 1,"
        f" {claims.RELEASED} WHERE id = ?",
        (next_poll_at, job_id),
    )
    row = await db.one("SELECT poll_failures FROM jobs WHERE id = ?", (job_id,))
    return int(row["poll_failures"]) if row else 0


async def schedule_poll(db: Db, job_id: str, at: float) -> bool:
    changed = await db.run(
        f"UPDATE jobs SET next_poll_at = ? WHERE id = ? AND status NOT IN {TERMINAL_SQL}",
        (at, job_id),
    )
    return changed > 0


async def defer_provider(db: Db, provider: str, until: float) -> int:
    """Move every poll and waiting submission of a provider that asked for a pause to
    the end of the pause."""
    moved = 0
    for column in ("next_poll_at", "next_submit_at"):
        moved += await db.run(
            f"UPDATE jobs SET {column} = ? WHERE provider = ? AND {column} < ?"
            f" AND status NOT IN {TERMINAL_SQL}",
            (until, provider, until),
        )
    return moved


async def spread_overdue(db: Db, provider: str, now: float, window: float, min_step: float) -> int:
    """Reschedule overdue polls evenly over ``window`` seconds instead of all at once.

    Never closer together than ``min_step``, the provider's own request spacing.
    """
    ids = [
        row[0]
        for row in await db.all(
            "SELECT id FROM jobs WHERE provider = ? AND next_poll_at < ?"
            f" AND status NOT IN {TERMINAL_SQL} ORDER BY next_poll_at",
            (provider, now),
        )
    ]
    if ids:
        step = max(min_step, window / len(ids))
        await db.run_many(
            "UPDATE jobs SET next_poll_at = ? WHERE id = ?",
            [(now + i * step, job_id) for i, job_id in enumerate(ids)],
        )
    return len(ids)


async def purge_nonces(db: Db, now: float) -> int:
    return await db.run("DELETE FROM nonces WHERE expires_at < ?", (now,))

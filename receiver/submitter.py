"""Hands jobs to their providers, and sends again the submissions refused for now.

The first attempt is made while the API request waits, so a job the provider takes at
once is answered with its task id. A refusal that asking later may cure (429, 5xx, a
connection that could not be made) is scheduled in the database (``next_submit_at``)
and this worker sends it again, with backoff, never before the provider's Retry-After
and always through its Gate, until ``submit_max_age`` has passed; then the job fails
with the last error. The schedule is a row, so a restart resumes it.

A request the provider may have carried out although no answer said so (a timeout or a
dropped connection after it was sent, or an attempt a crash cut short) is sent again only
where the provider deduplicates submissions (``Provider.idempotent_submit``): otherwise
that could start a second, paid generation, and the job fails with a message saying the
outcome is unknown and where to look.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from receiver.poller import first_poll_delay, retry_delay
from receiver.providers.base import (
    InvalidRequest,
    LastError,
    Provider,
    ProviderError,
    SubmitRequest,
)
from receiver.responses import iso
from receiver.store import Store
from receiver.worker import IDLE_WAIT, Worker

log = logging.getLogger("vidhook.submitter")

Outcome = Literal["accepted", "pending", "refused", "unknown"]
Verdict = Literal["retry", "refused", "unknown"]
# How long a stop waits for attempts under way: one cut short cannot be sent again.
STOP_GRACE = 5.0
INTERRUPTED = "vidhook stopped while the request was under way"
# With replicas (PostgreSQL): how often to look for attempts a dead replica left.
RECOVER_EVERY = 15.0


def verdict(error: ProviderError, *, idempotent: bool) -> Verdict:
    """What a failed attempt means: try again later, give up, or the outcome is unknown."""
    if not error.transient:
        return "refused"
    if error.may_have_acted and not idempotent:
        return "unknown"
    return "retry"


def unknown_outcome(provider: str, job_id: str, sent_at: float, reason: str) -> str:
    """The job's error when the provider may have taken a request that no answer confirmed."""
    return (
        f"outcome unknown: the request was sent to {provider} at {iso(sent_at)} and no answer "
        f"said whether {provider} took it ({reason}). It was not sent again, which could "
        f"start a second, paid generation. Look in {provider}'s console or task list for a "
        f"task from that time with this prompt (vidhook job {job_id}); vidhook does not "
        "follow it."
    )


@dataclass(frozen=True)
class Pending:
    """A job to hand to its provider, and how long that may be tried."""

    job_id: str
    provider: str
    request: SubmitRequest
    callback_url: str | None
    created_at: float
    deadline_at: float | None

    @classmethod
    def of(cls, job: Mapping[str, Any]) -> Pending:
        """The submission as it was stored with the job."""
        stored = job.get("request") or {}
        request = SubmitRequest(
            prompt=job.get("prompt"),
            model=job.get("model"),
            images=tuple(stored.get("images") or ()),
            mode=stored.get("mode"),
            options=stored.get("options") or {},
        )
        return cls(
            job["id"], job["provider"], request, job.get("callback_url"),
            job["created_at"], job.get("deadline_at"),
        )  # fmt: skip

    def give_up_at(self, max_age: float) -> float:
        """No attempt after this: submit_max_age, or the job's deadline if that is sooner
        (the job then fails with the submission's last error, not "timed out")."""
        limit = self.created_at + max_age
        return limit if self.deadline_at is None else min(limit, self.deadline_at)


class Submitter(Worker):
    name = "submitter"

    def __init__(
        self,
        store: Store,
        providers: Mapping[str, Provider],
        *,
        on_submitted: Callable[[], None] | None = None,
    ) -> None:
        self.store = store
        self.providers = providers
        # Told when a job was taken, so that its first poll is planned (the poller's wake).
        self.on_submitted = on_submitted
        super().__init__()
        self._inflight: dict[str, set[str]] = {name: set() for name in providers}
        self._started_at = 0.0
        self._recovered_at = 0.0
        self._stopping = False

    def start(self) -> None:
        # An attempt marked as under way since before this moment was cut short.
        self._started_at = self.store.clock()
        self._stopping = False
        super().start()

    async def stop(self) -> None:
        self._stopping = True
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=STOP_GRACE)
        await super().stop()

    async def attempt(self, job: Pending, number: int) -> Outcome:
        """Send attempt ``number`` (the job is marked as under way); record how it ended."""
        job_id, provider = job.job_id, self.providers[job.provider]
        request = dataclasses.replace(job.request, job_id=job_id)
        sent_at = self.store.clock()
        try:
            submission = await provider.submit(request, job.callback_url)
        except ProviderError as exc:
            return await self._failed(job, provider, exc, sent_at, number)
        except InvalidRequest as exc:
            await self._fail(job_id, f"{provider.name}: {exc}")
            return "refused"
        except Exception as exc:  # an adapter's bug, maybe after the provider answered
            log.exception("job %s: submitting to %s failed unexpectedly", job_id, provider.name)
            reason = f"unexpected {exc.__class__.__name__}"
            return await self._unknown(job_id, provider, sent_at, reason)
        delay = first_poll_delay(provider.config, provider.supports_callbacks)
        await self.store.record_submission(
            job_id, submission, next_poll_at=self.store.clock() + delay
        )
        if self.on_submitted is not None:
            self.on_submitted()
        log.info("job %s submitted to %s as %s", job_id, provider.name, submission.provider_job_id)
        return "accepted"

    async def _failed(
        self, job: Pending, provider: Provider, exc: ProviderError, sent_at: float, number: int
    ) -> Outcome:
        job_id, error = job.job_id, str(exc)
        provider.last_error = LastError(self.store.clock(), error)
        judged = verdict(exc, idempotent=provider.idempotent_submit)
        if judged == "refused":
            log.warning("job %s: %s refused the submission: %s", job_id, provider.name, exc)
            await self._fail(job_id, error)
            return "refused"
        if judged == "unknown":
            return await self._unknown(job_id, provider, sent_at, error)
        now = self.store.clock()
        delay = retry_delay(provider.config, number - 1, exc.retry_after)
        if now + delay > job.give_up_at(provider.config.submit_max_age):
            log.warning("job %s: %s kept refusing the submission: %s", job_id, provider.name, exc)
            await self._fail(
                job_id,
                f"gave up after {number} attempts in {now - job.created_at:.0f} s"
                f" (submit_max_age or deadline); the last: {error}",
            )
            return "refused"
        if exc.retry_after:
            # Persisted, so that the pause outlives a restart: the provider's other
            # submissions and its polls wait too.
            await self.store.defer_provider(provider.name, now + exc.retry_after)
        await self.store.schedule_submission(job_id, now + delay, error)
        log.info(
            "job %s: %s refused the submission for now (%s); attempt %d in %.1f s",
            job_id, provider.name, exc, number + 1, delay,
        )  # fmt: skip
        self.wake()
        return "pending"

    async def _unknown(
        self, job_id: str, provider: Provider, sent_at: float, reason: str
    ) -> Outcome:
        message = unknown_outcome(provider.name, job_id, sent_at, reason)
        log.error("job %s: %s", job_id, message)
        await self._fail(job_id, message, outcome="unknown")
        return "unknown"

    async def _fail(self, job_id: str, error: str, outcome: str = "refused") -> None:
        await self.store.fail_submission(job_id, error, {"error": error, "submission": outcome})

    # -- the worker: submissions due again --

    async def prepare(self) -> None:
        await self.recover(self._started_at)

    async def recover(self, before: float) -> None:
        """Settle the attempts begun before ``before`` that no replica holds any more."""
        for job in await self.store.interrupted_submissions(before):
            provider = self.providers.get(job["provider"])
            if provider is not None and provider.idempotent_submit:
                log.info("job %s: sending the submission a stop cut short again", job["id"])
                await self.store.resume_submission(job["id"], job["submitting_at"])
            else:
                sent_at = job["submitting_at"]
                message = unknown_outcome(job["provider"], job["id"], sent_at, INTERRUPTED)
                log.error("job %s: %s", job["id"], message)
                await self._fail(job["id"], message, outcome="unknown")

    async def round(self) -> float:
        if self._stopping:
            return IDLE_WAIT
        now = self.store.clock()
        if self.store.shared and now - self._recovered_at >= RECOVER_EVERY:
            # Another replica may have died with attempts under way: their leases ran out.
            self._recovered_at = now
            await self.recover(now)
        room = {
            name: provider.gate.max_concurrency - len(self._inflight[name])
            for name, provider in self.providers.items()
            if provider.gate.blocked_for <= 0
            and provider.gate.max_concurrency > len(self._inflight[name])
        }
        skip = sorted(job_id for ids in self._inflight.values() for job_id in ids)
        due, upcoming = await self.store.due_submissions(room, skip)
        for name, rows in due.items():
            for row in rows:
                self._inflight[name].add(row["id"])
                self.spawn(self._retry(row))
        paused = [p.gate.blocked_for for p in self.providers.values() if p.gate.blocked_for > 0]
        delay = IDLE_WAIT if upcoming is None else upcoming - self.store.clock()
        return max(0.0, min(IDLE_WAIT, delay, *paused))

    async def _retry(self, job: Mapping[str, Any]) -> None:
        self.store.hold("jobs", "id", [job["id"]])
        try:
            number = await self.store.start_submission(job["id"])
            if number is not None:
                await self.attempt(Pending.of(job), number)
        except Exception:
            log.exception("submission of job %s failed", job["id"])
        finally:
            self._inflight[job["provider"]].discard(job["id"])
            self.store.let_go("jobs", "id", [job["id"]])
            self.wake()

"""Fetches job status from providers on a schedule kept in the database.

Every job that needs a poll has ``next_poll_at`` on its row: a poll-only provider's job,
a terminal callback awaiting confirmation, a webhook job whose callback is late, a
refresh. Nothing lives only in memory, so after a restart the poller resumes from the
stored schedule, spreading the polls that fell due while it was down.

Each provider is dispatched separately, never more polls in flight than its concurrency
limit, and every request passes through the provider's Gate (rate limit, Retry-After):
a provider that is down or slow only delays its own jobs.
"""

from __future__ import annotations

import logging
import random
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from receiver.config import ProviderConfig
from receiver.providers.base import JobRef, LastError, Observation, Provider, ProviderError
from receiver.states import Status
from receiver.store import Applied, DatabaseUnavailable, Store, queries
from receiver.store.db import Db
from receiver.worker import IDLE_WAIT, Worker

log = logging.getLogger("vidhook.poller")

GROWTH = 1.5  # each poll of an unfinished job waits this much longer than the last
JITTER = 0.1  # +-10 %, so jobs submitted together do not stay in lockstep
MAX_BACKOFF = 300.0
DEADLINE_BATCH = 100
HOUSEKEEPING_EVERY = 60.0
TIMED_OUT = "timed out"


def first_poll_delay(config: ProviderConfig, callbacks: bool) -> float:
    """Seconds from submission to the first poll."""
    return config.reconcile_after if callbacks else config.initial_delay


def next_interval(
    config: ProviderConfig,
    *,
    polls: int,
    callbacks: bool,
    confirming: bool,
    rng: Callable[[], float] = random.random,
) -> float:
    """Seconds until the next poll of a job that is still unfinished."""
    if confirming:
        base = config.poll_interval
    elif callbacks:
        # Reconciliation: the callback is late or lost; ask now and then, not often.
        base = config.reconcile_interval
    else:
        base = min(config.poll_max_interval, config.poll_interval * GROWTH**polls)
    return base * (1 + JITTER * (2 * rng() - 1))


def retry_delay(
    config: ProviderConfig,
    failures: int,
    retry_after: float | None,
    rng: Callable[[], float] = random.random,
) -> float:
    """Seconds before asking again after a transient error: backoff, or the provider's word."""
    backoff = min(MAX_BACKOFF, config.poll_interval * 2.0**failures) * (0.5 + 0.5 * rng())
    return max(retry_after or 0.0, backoff)


@dataclass
class _Plan:
    overdue: list[str] = field(default_factory=list)  # job ids past their deadline
    due: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # provider -> rows
    upcoming: float | None = None  # when the next poll or deadline falls due


async def _plan(
    db: Db,
    *,
    now: float,
    room: Mapping[str, int],
    inflight: Mapping[str, list[str]],
) -> _Plan:
    """What a round does, read in one go on a reader thread.

    One read instead of one per question: a round runs after nearly every finished poll,
    and each read is a trip to a reader thread and back, which cost the event loop about
    as much as the queries themselves.
    """
    overdue = await queries.overdue_deadlines(db, now, DEADLINE_BATCH)
    if overdue:
        return _Plan(overdue=overdue)
    due = {
        name: await queries.due_polls(db, name, now, free, inflight[name])
        for name, free in room.items()
    }
    # When to look again: a provider with every slot now taken is left out (a finishing
    # poll wakes the loop), and so are the polls in flight, including those just read.
    open_ = [name for name, free in room.items() if len(due[name]) < free]
    busy = [job_id for name in open_ for job_id in inflight[name]]
    busy += [row["id"] for name in open_ for row in due[name]]
    return _Plan(due=due, upcoming=await queries.next_wake(db, open_, busy, now))


class Poller(Worker):
    name = "poller"

    def __init__(
        self,
        store: Store,
        providers: Mapping[str, Provider],
        *,
        on_applied: Callable[[Applied], None] | None = None,
        on_poll: Callable[[str, str], None] | None = None,
    ) -> None:
        self.store = store
        self.providers = providers
        self.on_applied = on_applied
        # (provider, outcome) for every status fetch: metrics.POLL_OUTCOMES.
        self.on_poll = on_poll
        super().__init__()
        self._inflight: dict[str, set[str]] = {name: set() for name in providers}
        self._last_housekeeping = 0.0
        # Seconds between when a poll was due and when it was sent, latest first.
        self.lateness: deque[float] = deque(maxlen=10_000)

    async def round(self) -> float:
        if not await self.store.writable():
            return IDLE_WAIT  # a poll could not be recorded, and would be made again
        now = self.store.clock()
        if now - self._last_housekeeping >= HOUSEKEEPING_EVERY:
            self._last_housekeeping = now
            await self.store.purge_nonces()
        while True:
            plan = await self.store.take(
                _plan,
                now=self.store.clock(),
                room=self._room(),
                inflight={name: sorted(ids) for name, ids in self._inflight.items()},
            )
            if not plan.overdue:
                break
            # Failed before anything is polled, as a job past its deadline must not be;
            # then the plan is made again without them.
            for job_id in plan.overdue:
                log.warning("job %s %s: its deadline passed", job_id, TIMED_OUT)
                timed_out = Observation(status=Status.FAILED, error=TIMED_OUT)
                self._notify(await self.store.apply(job_id, timed_out, "deadline"))
        for name, rows in plan.due.items():
            for row in rows:
                self._inflight[name].add(row["id"])
                self.store.hold("jobs", "id", [row["id"]])
                self.lateness.append(max(0.0, self.store.clock() - row["next_poll_at"]))
                self.spawn(self._poll(name, row))
        # A provider that asked for a pause was left out of the plan: look again when it ends.
        paused = [p.gate.blocked_for for p in self.providers.values() if p.gate.blocked_for > 0]
        delay = IDLE_WAIT if plan.upcoming is None else plan.upcoming - self.store.clock()
        return max(0.0, min(IDLE_WAIT, delay, *paused))

    def in_flight(self, provider: str) -> int:
        return len(self._inflight.get(provider, ()))

    def _room(self) -> dict[str, int]:
        """Free request slots of each provider that may be asked now."""
        return {
            name: provider.gate.max_concurrency - len(self._inflight[name])
            for name, provider in self.providers.items()
            if self._has_room(name, provider)
        }

    async def prepare(self) -> None:
        """Spread the polls that fell due while the service was down."""
        for name, provider in self.providers.items():
            window = provider.config.poll_interval
            moved = await self.store.spread_overdue(name, window, provider.gate.spacing)
            if moved:
                log.info("%s: %d overdue polls spread over the next %.0f s", name, moved, window)

    def _has_room(self, name: str, provider: Provider) -> bool:
        free = provider.gate.max_concurrency > len(self._inflight[name])
        return free and provider.gate.blocked_for <= 0

    async def _poll(self, provider: str, row: Mapping[str, Any]) -> None:
        try:
            await self.poll(row)
        except DatabaseUnavailable:
            self._count(provider, "error")  # the store logs the outage; the next round waits
        except Exception:
            log.exception("poll of job %s failed", row["id"])
            self._count(provider, "error")
        finally:
            self._inflight[provider].discard(row["id"])
            self.store.let_go("jobs", "id", [row["id"]])
            self.wake()

    async def poll(self, row: Mapping[str, Any], *, raise_errors: bool = False) -> Applied | None:
        """Fetch one job's status and apply it.

        Provider errors are scheduled for a retry (transient) or fail the job (permanent),
        unless ``raise_errors``: then they propagate, as the refresh endpoint wants.
        """
        provider = self.providers[row["provider"]]
        ref = JobRef(row["id"], row["provider_job_id"], row["key_fingerprint"], row["callback_url"])
        try:
            obs = await provider.fetch(ref)
        except ProviderError as exc:
            provider.last_error = LastError(self.store.clock(), str(exc))
            self._count(row["provider"], "transient_error" if exc.transient else "permanent_error")
            if raise_errors:
                raise
            return await self._failed(row, provider, exc)
        interval = next_interval(
            provider.config,
            polls=int(row.get("polls") or 0),
            callbacks=provider.supports_callbacks,
            confirming=row.get("confirm_callback_id") is not None,
        )
        applied = await self.store.record_poll(
            row["id"], obs, next_poll_at=self.store.clock() + interval
        )
        self._count(row["provider"], "unchanged" if applied.transition_id is None else "changed")
        self._notify(applied)
        return applied

    async def _failed(
        self, row: Mapping[str, Any], provider: Provider, exc: ProviderError
    ) -> Applied | None:
        if not exc.transient:
            log.warning("poll of job %s refused: %s", row["id"], exc)
            obs = Observation(status=Status.FAILED, error=str(exc))
            applied = await self.store.apply(row["id"], obs, "poll", {"error": str(exc)})
            self._notify(applied)
            return applied
        failures = int(row.get("poll_failures") or 0)
        delay = retry_delay(provider.config, failures, exc.retry_after)
        log.info("poll of job %s will be retried in %.1f s: %s", row["id"], delay, exc)
        now = self.store.clock()
        await self.store.record_poll_failure(row["id"], next_poll_at=now + delay)
        if exc.retry_after:
            # Persisted with the jobs, so the pause outlives a restart.
            await self.store.defer_provider(provider.name, now + exc.retry_after)
        return None

    def _count(self, provider: str, outcome: str) -> None:
        if self.on_poll is not None:
            self.on_poll(provider, outcome)

    def _notify(self, applied: Applied) -> None:
        if self.on_applied is not None and applied.transition_id is not None:
            self.on_applied(applied)

"""Fetches job status from providers on a schedule kept in the database.

Every job that needs a poll has ``next_poll_at`` set on its row: a terminal callback
awaiting confirmation, a job whose callback is late, a refresh. Nothing lives only in
memory, so after a restart the poller resumes from the stored schedule.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable, Mapping
from typing import Any

from receiver.providers.base import JobRef, Observation, Provider, ProviderError
from receiver.states import Status
from receiver.store import Applied, Store

log = logging.getLogger("vidhook.poller")

BATCH = 200
IDLE_WAIT = 5.0
HOUSEKEEPING_EVERY = 60.0
MAX_BACKOFF = 300.0
PER_PROVIDER_CONCURRENCY = 8


class Poller:
    def __init__(
        self,
        store: Store,
        providers: Mapping[str, Provider],
        *,
        on_applied: Callable[[Applied], None] | None = None,
    ) -> None:
        self.store = store
        self.providers = providers
        self.on_applied = on_applied
        self._wake = asyncio.Event()
        self._inflight: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._limits = {name: asyncio.Semaphore(PER_PROVIDER_CONCURRENCY) for name in providers}
        self._main: asyncio.Task[None] | None = None
        self._last_housekeeping = 0.0

    @property
    def running(self) -> bool:
        return self._main is not None and not self._main.done()

    def start(self) -> None:
        self._main = asyncio.create_task(self._run(), name="vidhook-poller")

    async def stop(self) -> None:
        tasks = [t for t in (self._main, *self._tasks) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._main = None

    def wake(self) -> None:
        self._wake.set()

    async def _run(self) -> None:
        while True:
            # Cleared before the round, so a wake() during the round is not lost.
            self._wake.clear()
            try:
                await self._round()
                wait = await self._until_next()
            except Exception:
                log.exception("poller round failed; trying again shortly")
                wait = IDLE_WAIT
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=wait)

    async def _round(self) -> None:
        now = self.store.clock()
        if now - self._last_housekeeping >= HOUSEKEEPING_EVERY:
            self._last_housekeeping = now
            purged = await self.store.purge_nonces()
            if purged:
                log.debug("purged %d expired nonces", purged)
        for row in await self.store.due_polls(BATCH):
            if row["id"] in self._inflight or row["provider"] not in self.providers:
                continue
            self._inflight.add(row["id"])
            task = asyncio.create_task(self._poll(row))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _until_next(self) -> float:
        upcoming = await self.store.next_poll_at()
        if upcoming is None:
            return IDLE_WAIT
        delay = upcoming - self.store.clock()
        if delay <= 0:
            # Only jobs already being polled are due; their completion wakes the loop.
            return IDLE_WAIT
        return min(IDLE_WAIT, delay)

    async def _poll(self, row: Mapping[str, Any]) -> None:
        try:
            async with self._limits[row["provider"]]:
                await self.poll(row)
        except Exception:
            log.exception("poll of job %s failed", row["id"])
        finally:
            self._inflight.discard(row["id"])
            # The finished job is rescheduled; the main loop may have been waiting on it.
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
            if raise_errors:
                raise
            return await self._failed(row, provider, exc)
        next_at = self.store.clock() + provider.config.poll_interval
        applied = await self.store.record_poll(row["id"], obs, next_poll_at=next_at)
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
        backoff = min(MAX_BACKOFF, provider.config.poll_interval * 2**failures)
        delay = max(exc.retry_after or 0.0, backoff * random.uniform(0.5, 1.0))
        log.info("poll of job %s will be retried in %.1f s: %s", row["id"], delay, exc)
        await self.store.record_poll_failure(row["id"], next_poll_at=self.store.clock() + delay)
        return None

    def _notify(self, applied: Applied) -> None:
        if self.on_applied is not None and applied.transition_id is not None:
            self.on_applied(applied)

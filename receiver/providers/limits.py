"""Per-provider request limits: concurrency, requests per second, and Retry-After.

Every request to a provider passes through its Gate, so submissions, polls and refreshes
share one budget, and a provider that is slow or refusing never holds up another.

With replicas (PostgreSQL), the rate and the pauses are shared too: a Gate given a
``SharedBudget`` takes each request's turn in the database (receiver.store.budgets),
so that all the replicas together keep to ``requests_per_second``. Concurrency stays
each replica's own.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Protocol

log = logging.getLogger("vidhook.providers")

SAFETY = 1.1
# Replicas take turns in the database, each when its turn is due, and send from a process
# and a path of their own: the time from taking a turn to reaching the provider differs
# from one request to the next. The wider margin absorbs that.
SHARED_SAFETY = 1.25
MIN_RETRY = 0.005  # seconds before asking for a shared turn again that looked free


class GateClosed(Exception):
    """The provider may not be asked before ``wait`` seconds have passed."""

    def __init__(self, wait: float) -> None:
        super().__init__(f"{wait:.1f} s")
        self.wait = wait


class SharedBudget(Protocol):
    async def take(self, spacing: float) -> tuple[bool, float, float]:
        """Whether this request took the shared turn; if not, seconds until the next turn
        and until the shared pause ends."""
        ...

    async def block(self, seconds: float) -> None: ...


class Gate:
    def __init__(
        self,
        requests_per_second: float | None,
        max_concurrency: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        # Depth-one token bucket: requests are spaced at least 1/rate apart, so no
        # window of one second ever holds more than the rate allows. The 10 % margin
        # absorbs network jitter: the provider counts arrivals, not departures.
        self.spacing = SAFETY / requests_per_second if requests_per_second else 0.0
        self.max_concurrency = max_concurrency
        self._clock = clock
        self._slots = asyncio.Semaphore(max_concurrency)
        self._next_send = 0.0
        self._blocked_until = 0.0
        self.budget: SharedBudget | None = None
        self._telling: set[asyncio.Task[None]] = set()

    def share(self, budget: SharedBudget) -> None:
        """Keep to the rate and pauses together with the other replicas, through ``budget``."""
        self.budget = budget

    def block_for(self, seconds: float) -> None:
        """The provider asked for a pause (Retry-After): no request before it ends."""
        self._blocked_until = max(self._blocked_until, self._clock() + seconds)
        if self.budget is not None:
            task = asyncio.get_running_loop().create_task(self._tell(self.budget, seconds))
            self._telling.add(task)
            task.add_done_callback(self._telling.discard)

    @staticmethod
    async def _tell(budget: SharedBudget, seconds: float) -> None:
        try:
            await budget.block(seconds)
        except Exception as exc:  # this replica keeps the pause; the others learn by 429s
            log.warning("could not share a provider's pause with the other replicas: %s", exc)

    @property
    def blocked_for(self) -> float:
        return max(0.0, self._blocked_until - self._clock())

    @asynccontextmanager
    async def slot(self, max_wait: float | None = None) -> AsyncIterator[None]:
        """Hold one of the provider's request slots; raise GateClosed past ``max_wait``."""
        async with self._slots:
            while True:
                now = self._clock()
                wait = max(self._next_send, self._blocked_until) - now
                if wait <= 0:
                    break
                if max_wait is not None and wait > max_wait:
                    raise GateClosed(wait)
                await asyncio.sleep(wait)
            self._next_send = self._clock() + self.spacing
            if self.budget is not None and self.spacing > 0:
                shared = self.spacing * SHARED_SAFETY / SAFETY
                while True:
                    taken, until_turn, until_open = await self.budget.take(shared)
                    if taken:
                        break
                    wait = max(until_turn, until_open)
                    if max_wait is not None and wait > max_wait:
                        raise GateClosed(wait)
                    # Another replica may take the turn first: then ask again.
                    await asyncio.sleep(max(wait, MIN_RETRY))
            yield

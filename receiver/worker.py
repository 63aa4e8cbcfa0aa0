"""A background loop that sleeps until its next piece of work, or until woken.

The poller and the outbox are both such loops: each round does what is due and says how
long to sleep; ``wake()`` cuts the sleep short when new work may have arrived. Tasks the
round spawns are tracked so that ``stop()`` cancels them too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from typing import Any

from receiver.store.errors import DatabaseUnavailable

log = logging.getLogger("vidhook")

IDLE_WAIT = 5.0


class Worker:
    name = "worker"

    def __init__(self) -> None:
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._main: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self._main is not None and not self._main.done()

    def start(self) -> None:
        self._main = asyncio.create_task(self._run(), name=f"vidhook-{self.name}")

    async def stop(self) -> None:
        tasks = [t for t in (self._main, *self._tasks) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._main = None

    def wake(self) -> None:
        self._wake.set()

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def prepare(self) -> None:
        """Runs once before the first round."""

    async def round(self) -> float:
        """Do what is due; return the seconds to sleep unless woken."""
        raise NotImplementedError

    async def _run(self) -> None:
        await self.prepare()
        while True:
            # Cleared before the round, so a wake() during the round is not lost.
            self._wake.clear()
            try:
                wait = await self.round()
            except DatabaseUnavailable:
                wait = IDLE_WAIT  # the store logs an outage once; this would only repeat it
            except Exception:
                log.exception("%s round failed; trying again shortly", self.name)
                wait = IDLE_WAIT
            # asyncio.timeout, not wait_for: on Python 3.11, wait_for returns normally when
            # the task is cancelled in the same loop iteration as wake() (a finishing poll
            # wakes the loop while stop() cancels it), so the loop ran on, "cancelling"
            # forever, and stop() never returned.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, wait)):
                    await self._wake.wait()

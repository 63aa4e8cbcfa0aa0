"""The background loop the poller and the outbox share."""

from __future__ import annotations

import asyncio

from receiver.worker import Worker


class Counting(Worker):
    name = "counting"

    def __init__(self, wait: float) -> None:
        super().__init__()
        self.wait = wait
        self.rounds = 0
        self.asleep = asyncio.Event()

    async def round(self) -> float:
        self.rounds += 1
        self.asleep.set()
        return self.wait


def test_wake_cuts_the_sleep_short() -> None:
    asyncio.run(_wake_cuts_the_sleep_short())


async def _wake_cuts_the_sleep_short() -> None:
    worker = Counting(wait=60)
    worker.start()
    await asyncio.wait_for(worker.asleep.wait(), 1)
    worker.asleep.clear()
    worker.wake()
    await asyncio.wait_for(worker.asleep.wait(), 1)
    assert worker.rounds == 2
    await worker.stop()


def test_stop_ends_the_loop_even_when_woken_in_the_same_turn() -> None:
    asyncio.run(_stop_ends_the_loop_even_when_woken_in_the_same_turn())


async def _stop_ends_the_loop_even_when_woken_in_the_same_turn() -> None:
    # A finishing poll wakes the loop in the same turn as stop() cancels it: the
    # cancellation must still win (wait_for on Python 3.11 swallowed it, and stop() hung).
    for _ in range(20):
        worker = Counting(wait=60)
        worker.start()
        await asyncio.wait_for(worker.asleep.wait(), 1)
        await asyncio.sleep(0)  # let the loop reach its sleep
        worker.wake()
        async with asyncio.timeout(1):
            await worker.stop()
        assert not worker.running


def test_a_failing_round_is_retried() -> None:
    asyncio.run(_a_failing_round_is_retried())


async def _a_failing_round_is_retried() -> None:
    class Failing(Counting):
        async def round(self) -> float:
            await super().round()
            if self.rounds == 1:
                raise RuntimeError("boom")
            return 60

    worker = Failing(wait=60)
    worker.start()
    await asyncio.wait_for(worker.asleep.wait(), 1)
    worker.asleep.clear()
    worker.wake()  # the failed round's sleep is cut short too
    await asyncio.wait_for(worker.asleep.wait(), 1)
    assert worker.rounds == 2
    await worker.stop()

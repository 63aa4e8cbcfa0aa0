import asyncio
import itertools
import time

import pytest

from receiver.providers.limits import Gate, GateClosed


def test_requests_are_spaced_by_the_rate():
    async def run():
        gate = Gate(requests_per_second=20, max_concurrency=10)
        sent = []

        async def one():
            async with gate.slot():
                sent.append(time.monotonic())

        await asyncio.gather(*(one() for _ in range(10)))
        return sent

    sent = sorted(asyncio.run(run()))
    gaps = [b - a for a, b in itertools.pairwise(sent)]
    assert min(gaps) >= 0.05 * 0.95
    # Half-open one-second windows never hold more than the rate.
    assert all(sum(1 for t in sent if s <= t < s + 1.0) <= 20 for s in sent)


def test_concurrency_is_bounded():
    async def run():
        gate = Gate(requests_per_second=None, max_concurrency=3)
        active = peak = 0

        async def one():
            nonlocal active, peak
            async with gate.slot():
                active += 1
                peak = max(peak, active)
                await asyncio.sleep(0.02)
                active -= 1

        await asyncio.gather(*(one() for _ in range(12)))
        return peak

    assert asyncio.run(run()) == 3


def test_a_pause_holds_every_request_until_it_ends():
    async def run():
        gate = Gate(requests_per_second=None, max_concurrency=5)
        gate.block_for(0.2)
        started = time.monotonic()
        async with gate.slot():
            return time.monotonic() - started

    assert asyncio.run(run()) >= 0.19


def test_a_pause_longer_than_the_caller_will_wait_raises():
    async def run():
        gate = Gate(requests_per_second=None, max_concurrency=5)
        gate.block_for(30)
        async with gate.slot(max_wait=0.1):
            pass

    with pytest.raises(GateClosed) as caught:
        asyncio.run(run())
    assert 29 < caught.value.wait <= 30

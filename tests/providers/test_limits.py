import asyncio
import itertools
import time

import pytest

from receiver.providers import limits
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


class FakeTime:
    """A clock that moves only when the gate sleeps, by exactly what it asked for."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds
        await REAL_SLEEP(0)


REAL_SLEEP = asyncio.sleep


@pytest.fixture
def fake_time(monkeypatch):
    fake = FakeTime()
    monkeypatch.setattr(limits.asyncio, "sleep", fake.sleep)
    return fake


def test_spacing_is_the_rate_with_a_tenth_to_spare():
    assert Gate(requests_per_second=4, max_concurrency=1).spacing == pytest.approx(1.1 / 4)
    assert Gate(requests_per_second=None, max_concurrency=1).spacing == 0.0
    assert Gate(requests_per_second=0, max_concurrency=1).spacing == 0.0


class RecordingBudget:
    """A shared budget that is always open, and remembers the spacing each request asked."""

    def __init__(self) -> None:
        self.asked: list[float] = []

    async def take(self, spacing: float) -> tuple[bool, float, float]:
        self.asked.append(spacing)
        return True, 0.0, 0.0

    async def block(self, seconds: float) -> None:
        pass


def test_replicas_take_their_turns_with_a_quarter_to_spare():
    gate = Gate(requests_per_second=4, max_concurrency=1)
    budget = RecordingBudget()
    gate.share(budget)

    async def run():
        async with gate.slot():
            pass

    asyncio.run(run())
    assert budget.asked == [pytest.approx(1.25 / 4)]


def test_each_request_sleeps_exactly_the_spacing_after_the_last(fake_time):
    async def run():
        gate = Gate(requests_per_second=4, max_concurrency=1, clock=fake_time.clock)
        entered = []
        for _ in range(3):
            async with gate.slot():
                entered.append(fake_time.now)
        return entered

    entered = asyncio.run(run())
    assert fake_time.slept == pytest.approx([0.275, 0.275])
    assert entered == pytest.approx([1000.0, 1000.275, 1000.55])


def test_without_a_rate_requests_never_sleep(fake_time):
    async def run():
        gate = Gate(requests_per_second=None, max_concurrency=2, clock=fake_time.clock)
        for _ in range(5):
            async with gate.slot():
                pass

    asyncio.run(run())
    assert fake_time.slept == []


def test_blocked_for_counts_down_and_a_shorter_pause_does_not_cut_a_longer(fake_time):
    gate = Gate(requests_per_second=None, max_concurrency=1, clock=fake_time.clock)
    assert gate.blocked_for == 0.0
    gate.block_for(5)
    assert gate.blocked_for == 5.0
    fake_time.now += 2
    assert gate.blocked_for == 3.0
    gate.block_for(1)
    assert gate.blocked_for == 3.0
    gate.block_for(4)
    assert gate.blocked_for == 4.0
    fake_time.now += 10
    assert gate.blocked_for == 0.0


def test_a_pause_is_slept_through_in_one_sleep_then_spacing_resumes(fake_time):
    async def run():
        gate = Gate(requests_per_second=2, max_concurrency=1, clock=fake_time.clock)
        gate.block_for(3)
        async with gate.slot(max_wait=3):  # a wait of exactly max_wait is still waited
            pass
        async with gate.slot():
            pass
        gate.block_for(1.5)
        async with gate.slot(max_wait=1):
            pass

    with pytest.raises(GateClosed) as caught:
        asyncio.run(run())
    assert fake_time.slept == pytest.approx([3.0, 0.55])
    assert caught.value.wait == pytest.approx(1.5)


def test_a_wait_yields_the_loop_instead_of_spinning():
    async def run():
        reads = 0

        def clock():
            nonlocal reads
            reads += 1
            return time.monotonic()

        gate = Gate(requests_per_second=None, max_concurrency=1, clock=clock)
        gate.block_for(0.3)
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        beside = asyncio.create_task(ticker())
        async with gate.slot():
            pass
        beside.cancel()
        return reads, ticks

    reads, ticks = asyncio.run(run())
    assert ticks >= 10  # the loop ran other work meanwhile
    assert reads <= 10  # the clock was read a few times, not in a loop


def test_a_clock_that_starts_at_zero_is_neither_blocked_nor_spaced(fake_time):
    fake_time.now = 0.0

    async def run():
        gate = Gate(requests_per_second=1, max_concurrency=1, clock=fake_time.clock)
        assert gate.blocked_for == 0.0
        async with gate.slot():
            pass

    asyncio.run(run())
    assert fake_time.slept == []


def test_a_pause_shorter_than_the_callers_patience_is_waited(fake_time):
    async def run():
        gate = Gate(requests_per_second=None, max_concurrency=1, clock=fake_time.clock)
        gate.block_for(2)
        async with gate.slot(max_wait=3):
            pass

    asyncio.run(run())
    assert fake_time.slept == [2.0]


class BusyBudget:
    """A shared budget whose turn another replica takes first, once."""

    def __init__(self) -> None:
        self.answers = [(False, 0.05, 0.0), (False, -0.01, 0.0), (True, 0.0, 0.0)]
        self.asked = 0

    async def take(self, spacing: float) -> tuple[bool, float, float]:
        self.asked += 1
        return self.answers.pop(0)

    async def block(self, seconds: float) -> None:
        pass


def test_a_turn_another_replica_took_is_asked_for_again_until_taken():
    gate = Gate(requests_per_second=4, max_concurrency=1)
    budget = BusyBudget()
    gate.share(budget)

    async def run() -> float:
        began = time.monotonic()
        async with gate.slot():
            return time.monotonic() - began

    waited = asyncio.run(run())
    assert budget.asked == 3 and budget.answers == []
    assert waited >= 0.05  # the turn's wait was slept before asking again


def test_a_shared_pause_past_max_wait_closes_the_gate():
    gate = Gate(requests_per_second=4, max_concurrency=1)
    budget = BusyBudget()
    budget.answers = [(False, 0.0, 30.0)]
    gate.share(budget)

    async def run() -> None:
        async with gate.slot(max_wait=5.0):
            pass

    with pytest.raises(GateClosed):
        asyncio.run(run())

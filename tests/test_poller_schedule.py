"""The poller's schedule, as pure functions and against a real database file."""

import asyncio
import sqlite3

import pytest

from receiver.config import ProviderConfig, Secret
from receiver.poller import first_poll_delay, next_interval, retry_delay
from receiver.store import NewJob, Store

CONFIG = ProviderConfig(
    name="kvid",
    type="kvid",
    base_url="https://kvid.test",
    api_key=Secret("k"),
    initial_delay=45,
    poll_interval=4,
    poll_max_interval=30,
    reconcile_after=600,
    reconcile_interval=90,
)


def test_first_poll_waits_the_initial_delay_or_the_reconciliation_time():
    assert first_poll_delay(CONFIG, callbacks=False) == 45
    assert first_poll_delay(CONFIG, callbacks=True) == 600


@pytest.mark.parametrize("rng", [0.0, 0.5, 1.0])
def test_intervals_grow_from_the_minimum_to_the_maximum_with_jitter(rng):
    gaps = [
        next_interval(CONFIG, polls=n, callbacks=False, confirming=False, rng=lambda: rng)
        for n in range(12)
    ]
    factor = 1 + 0.1 * (2 * rng - 1)
    assert gaps[0] == pytest.approx(4 * factor)
    assert gaps == sorted(gaps)
    assert gaps[-1] == pytest.approx(30 * factor)


def test_webhook_jobs_reconcile_slowly_but_confirm_quickly():
    mid = lambda: 0.5  # noqa: E731 - no jitter
    assert next_interval(CONFIG, polls=3, callbacks=True, confirming=False, rng=mid) == 90
    assert next_interval(CONFIG, polls=3, callbacks=True, confirming=True, rng=mid) == 4


def test_retry_delay_backs_off_and_honours_retry_after():
    top = lambda: 1.0  # noqa: E731
    assert [retry_delay(CONFIG, n, None, rng=top) for n in range(4)] == [4, 8, 16, 32]
    assert retry_delay(CONFIG, 20, None, rng=top) == 300
    assert retry_delay(CONFIG, 0, 12.0, rng=top) == 12.0


def new_job(job_id, provider="kvid"):
    return NewJob(
        id=job_id,
        provider=provider,
        model="v2",
        prompt="p",
        request={},
        callback_token=None,
        callback_url=None,
        key_fingerprint=None,
        notify=None,
    )


def test_overdue_polls_are_spread_and_pauses_move_a_providers_polls(tmp_path):
    now = 1_000_000.0
    store = Store(tmp_path / "v.db", route=lambda s, n: [], clock=lambda: now).open()

    async def run():
        for i in range(10):
            await store.insert_job(new_job(f"job_{i}"))
        await store.insert_job(new_job("other", provider="revid"))
        await store.write(lambda db: db.run("UPDATE jobs SET next_poll_at = ?", (now - 50,)))
        moved = await store.spread_overdue("kvid", window=5.0, min_step=0.0)
        deferred = await store.defer_provider("revid", now + 30)
        return moved, deferred

    try:
        moved, deferred = asyncio.run(run())
    finally:
        store.close()
    assert (moved, deferred) == (10, 1)
    conn = sqlite3.connect(tmp_path / "v.db")
    kvid = [r[0] for r in conn.execute("SELECT next_poll_at FROM jobs WHERE provider='kvid'")]
    revid = conn.execute("SELECT next_poll_at FROM jobs WHERE provider='revid'").fetchone()[0]
    assert sorted(kvid) == pytest.approx([now + 0.5 * i for i in range(10)])
    assert revid == now + 30

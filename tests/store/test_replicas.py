"""Two replicas on one PostgreSQL database: each a Store of its own, as two `vidhook serve`
processes would have, racing for the same jobs and the same work."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter

import pytest

from receiver.providers.base import Observation
from receiver.providers.limits import Gate
from receiver.states import Status
from receiver.store import AdmittedCallback, Store, claims
from receiver.store.queries import due_polls
from tests.pg import PgRows
from tests.store.test_store import new_job

pytestmark = pytest.mark.postgres


def route_all(status, notify):
    return ["team"] if status in (Status.PROCESSING, Status.COMPLETED, Status.FAILED) else []


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def replicas(url, count=2, clock=time.time):
    return [
        Store(None, route=route_all, database_url=url, instance=f"replica-{i}", clock=clock).open()
        for i in range(count)
    ]


async def started(*stores):
    for store in stores:
        await store.start()


async def stopped(*stores):
    for store in stores:
        await store.stop()


def admitted(nonce, state):
    status = {"processing": Status.PROCESSING, "success": Status.COMPLETED}[state]
    return AdmittedCallback(
        nonce=nonce,
        digest=f"digest-{nonce}",
        nonce_expires_at=time.time() + 600,
        headers={},
        body="{}",
        obs=Observation(status, state),
        confirm=False,
    )


def test_callbacks_for_one_job_racing_at_two_replicas_give_one_transition_each(pg_url):
    a, b = replicas(pg_url)
    jobs = [f"job_{i}" for i in range(20)]

    async def go():
        await started(a, b)
        try:
            for job_id in jobs:
                await a.insert_job(new_job(job_id))
            # Every job gets processing then success from both replicas at once, each
            # callback with its own nonce: four callbacks, two state changes.
            sends = []
            nonces = itertools.count()
            for job_id in jobs:
                for state in ("processing", "success"):
                    for store in (a, b):
                        cb = admitted(f"n{next(nonces)}", state)
                        sends.append(
                            store.record_token_callback(
                                "vidu", f"tok-{job_id}", lambda t, cb=cb: cb
                            )
                        )
            return await asyncio.gather(*sends)
        finally:
            await stopped(a, b)

    outcomes = asyncio.run(go())
    assert {outcome for _job, outcome, _cb in outcomes} == {"accepted"}
    rows = PgRows(pg_url)
    changes = Counter((r["job_id"], r["to_status"]) for r in rows("SELECT * FROM transitions"))
    assert set(changes.values()) == {1}, [k for k, n in changes.items() if n > 1]
    for job_id in jobs:
        # queued, then completed; processing in between unless the success came first.
        assert changes[job_id, "queued"] == changes[job_id, "completed"] == 1
        chain = rows(
            "SELECT from_status, to_status FROM transitions WHERE job_id = ? ORDER BY id", job_id
        )
        assert all(x[1] == y[0] for x, y in itertools.pairwise(chain)), chain
    assert rows("SELECT count(*) FROM callbacks")[0][0] == len(outcomes)
    # One delivery per transition announced, none twice.
    (announced,) = rows("SELECT count(*) FROM transitions WHERE to_status <> 'queued'")[0]
    assert rows("SELECT count(*) FROM deliveries")[0][0] == announced


def test_a_replayed_nonce_at_two_replicas_at_once_is_stored_once(pg_url):
    a, b = replicas(pg_url)

    async def go():
        await started(a, b)
        try:
            await a.insert_job(new_job("job_1"))
            cb = admitted("same-nonce", "processing")
            return await asyncio.gather(
                *(s.record_token_callback("vidu", "tok-job_1", lambda t: cb) for s in (a, b, a, b))
            )
        finally:
            await stopped(a, b)

    outcomes = sorted(outcome for _job, outcome, _cb in asyncio.run(go()))
    assert outcomes == ["accepted", "duplicate", "duplicate", "duplicate"]
    assert PgRows(pg_url)("SELECT count(*) FROM callbacks")[0][0] == 1


def test_due_polls_are_claimed_by_one_replica_and_taken_over_when_its_lease_runs_out(pg_url):
    clock = Clock()
    a, b = replicas(pg_url, clock=clock)

    async def go():
        await started(a, b)
        try:
            for i in range(30):
                await a.insert_job(new_job(f"job_{i:02d}"))
            # As if each had been submitted (which ends the first attempt's claim) and its
            # first poll had fallen due.
            await a.write(
                lambda db: db.run(
                    "UPDATE jobs SET next_poll_at = ?, claimed_by = NULL, claimed_until = NULL",
                    (clock.now - 1,),
                )
            )
            now = clock.now
            # Both at once, round after round (each leaving out what it has in flight, as
            # the poller does): no job is handed to both.
            held: dict[Store, list[str]] = {a: [], b: []}
            for _ in range(3):
                taken = await asyncio.gather(
                    *(s.take(due_polls, "vidu", now, 7, sorted(held[s])) for s in (a, b))
                )
                for store, rows in zip((a, b), taken, strict=True):
                    held[store] += [row["id"] for row in rows]
            assert set(held[a]).isdisjoint(held[b])
            first = held[a] + held[b]
            # Nothing is free until the leases run out; then another replica takes them.
            again = await b.take(due_polls, "vidu", now, 100, sorted(held[b]))
            clock.now += claims.LEASE + 1
            later = await b.take(due_polls, "vidu", clock.now, 100, [])
            return first, again, later
        finally:
            await stopped(a, b)

    first, again, later = asyncio.run(go())
    assert len(first) == len(set(first)) == 30
    assert again == []  # a's are a's, b's are b's, until their leases run out
    assert sorted(row["id"] for row in later) == sorted(first)
    holders = Counter(r[0] for r in PgRows(pg_url)("SELECT claimed_by FROM jobs"))
    assert holders == {"replica-1": 30}


def test_a_channel_is_sent_to_by_one_replica_at_a_time(pg_url):
    a, b = replicas(pg_url)

    async def go():
        await started(a, b)
        try:
            for i in range(5):
                await a.insert_job(new_job(f"job_{i}"))
                await a.apply(f"job_{i}", Observation(Status.FAILED, "failed"), "poll")
            first = await a.due_deliveries_with_sources("team", 2)
            # b may not take the rest while a sends the channel's first two.
            meanwhile = await b.due_deliveries_with_sources("team", 10)
            due_at_b = await b.next_delivery_due()
            for delivery in first:
                await a.record_attempt(
                    delivery["id"], outcome="delivered", status="delivered",
                    next_attempt_at=None, error=None, status_code=None, duration_ms=1.0,
                )  # fmt: skip
            after = await b.due_deliveries_with_sources("team", 10)
            return first, meanwhile, due_at_b, after
        finally:
            await stopped(a, b)

    first, meanwhile, due_at_b, after = asyncio.run(go())
    assert [d["job_id"] for d in first] == ["job_0", "job_1"]
    assert meanwhile == [] and due_at_b == {}
    assert [d["job_id"] for d in after] == ["job_2", "job_3", "job_4"]


def test_a_commit_at_one_replica_wakes_the_other(pg_url):
    a, b = replicas(pg_url)
    heard: list[frozenset[str]] = []

    async def go():
        await started(a, b)
        b.listeners.append(heard.append)
        try:
            await asyncio.sleep(0.2)  # b listens
            heard.clear()
            await a.insert_job(new_job("job_1"))
            await a.apply("job_1", Observation(Status.FAILED, "failed"), "poll")
            deadline = time.monotonic() + 5
            while not any("deliveries:team" in told for told in heard):
                assert time.monotonic() < deadline, heard
                await asyncio.sleep(0.02)
        finally:
            await stopped(a, b)

    asyncio.run(go())
    assert frozenset({"deliveries", "deliveries:team", "events"}) in heard


def test_a_shared_budget_keeps_two_replicas_to_the_providers_rate(pg_url):
    a, b = replicas(pg_url)
    rate = 20.0
    sent: list[float] = []

    async def go():
        await started(a, b)
        try:
            gates = [Gate(rate, 10), Gate(rate, 10)]
            gates[0].share(a.budget("vidu"))
            gates[1].share(b.budget("vidu"))

            async def request(gate):
                async with gate.slot():
                    sent.append(time.monotonic())

            await asyncio.gather(*(request(gates[i % 2]) for i in range(30)))
        finally:
            await stopped(a, b)

    asyncio.run(go())
    sent.sort()
    # No window of one second holds more than the rate allows.
    for i, start in enumerate(sent):
        within = [t for t in sent[i:] if t - start < 1.0]
        assert len(within) <= rate, (len(within), rate)
    assert sent[-1] - sent[0] >= (len(sent) - 1) / rate

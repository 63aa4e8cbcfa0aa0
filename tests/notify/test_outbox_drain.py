"""The outbox's drain in process: a real store on disk, a real HTTP endpoint on loopback.

What the end-to-end tests of test_outbox.py cannot show from outside: that only commits
that queued deliveries concern the outbox, and start their channel's drain without a
scan; that a message is sent while the record of the one before is committing (but
never two records at once, and never out of order); that stopping waits for that
record; and that sends across channels are bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable, Set
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from receiver.config import ChannelConfig, NotifyConfig
from receiver.notify import outbox as outbox_module
from receiver.notify.base import Channel
from receiver.notify.outbox import Outbox
from receiver.notify.webhook import WebhookChannel
from receiver.providers.base import Observation
from receiver.sandbox.server import ServerThread
from receiver.states import Status
from receiver.store import NewJob, Store


def route(status, notify):
    """A completed job is announced on the channels it names; nothing else is."""
    return list(notify or []) if status is Status.COMPLETED else []


class Endpoint:
    """A user's app: notes each event's arrival per channel, and how many are in flight."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.arrivals: list[tuple[str, str]] = []  # (channel, event id), in arrival order
        self.in_flight = 0
        self.peak = 0
        self.hold = 0.0  # seconds each answer is held back
        self.probe: Callable[[], object] | None = None  # called at each arrival, lock held
        self.probed: list[object] = []
        self.app = Starlette(routes=[Route("/hook/{name}", self.receive, methods=["POST"])])

    async def receive(self, request: Request) -> Response:
        event = json.loads(await request.body())
        with self.lock:
            self.arrivals.append((request.path_params["name"], event["id"]))
            if self.probe is not None:
                self.probed.append(self.probe())
            self.in_flight += 1
            self.peak = max(self.peak, self.in_flight)
        try:
            if self.hold:
                await asyncio.sleep(self.hold)
        finally:
            with self.lock:
                self.in_flight -= 1
        return Response(status_code=204)

    def count(self) -> int:
        with self.lock:
            return len(self.arrivals)


class CountingOutbox(Outbox):
    """Counts its rounds, its drains, its reads (the scans for due deliveries and the
    batches a drain reads) and the delivered attempts it handed to the writer."""

    def __init__(self, store: Store, *args, **kwargs) -> None:
        super().__init__(store, *args, **kwargs)
        self.rounds = self.drains = self.scans = self.batches = self.records = 0
        scan, batch = store.next_delivery_due, store.due_deliveries_with_sources
        queue_attempt = store.queue_attempt

        def counted_record(*args, **kwargs):
            self.records += 1
            return queue_attempt(*args, **kwargs)

        store.queue_attempt = counted_record

        async def counted_scan():
            self.scans += 1
            return await scan()

        async def counted_batch(*args):
            self.batches += 1
            return await batch(*args)

        store.next_delivery_due = counted_scan
        store.due_deliveries_with_sources = counted_batch

    async def round(self) -> float:
        self.rounds += 1
        return await super().round()

    async def _drain(self, name: str) -> None:
        self.drains += 1
        await super()._drain(name)


@pytest.fixture
def endpoint():
    sink = Endpoint()
    with ServerThread(sink.app) as server:
        sink.url = server.url
        yield sink


@pytest.fixture(autouse=True)
def no_idle_rounds(monkeypatch):
    # Rounds happen only when something wakes the outbox, never because time passed.
    monkeypatch.setattr(outbox_module, "IDLE_WAIT", 3600.0)


def webhook(endpoint: Endpoint, name: str, client: httpx.AsyncClient) -> Channel:
    options = {"url": f"{endpoint.url}/hook/{name}"}
    return WebhookChannel(ChannelConfig(name, "webhook", frozenset(), options, {}), client)


@contextlib.asynccontextmanager
async def opened(
    db_path, endpoint: Endpoint, kind: type[Outbox], names=("team",), **options
) -> AsyncIterator[tuple[Store, Any]]:
    """A store on ``db_path`` and an outbox of ``kind`` with a webhook channel to
    ``endpoint`` for each name (not started); stopped and closed on the way out."""
    store = Store(db_path, route=route).open()
    client = httpx.AsyncClient()
    channels = {name: webhook(endpoint, name, client) for name in names}
    outbox = kind(store, NotifyConfig(), channels, **options)
    try:
        yield store, outbox
    finally:
        await outbox.stop()
        await client.aclose()
        store.close()


def new_job(job_id: str, channel: str) -> NewJob:
    return NewJob(id=job_id, provider="vidu", model=None, prompt=f"prompt of {job_id}",
                  request={}, callback_token=None, callback_url=None, key_fingerprint=None,
                  notify=[channel])  # fmt: skip


async def announce(store: Store, job_id: str, channel: str) -> None:
    """A job that completes: one delivery to ``channel``."""
    await store.insert_job(new_job(job_id, channel))
    await store.apply(job_id, Observation(Status.COMPLETED), "poll")


async def until(predicate: Callable[[], object], what: str, timeout: float = 15.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.01)


def rows(db_path, sql, *params):
    conn = sqlite3.connect(db_path)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def delivered(db_path) -> int:
    return rows(db_path, "SELECT count(*) FROM deliveries WHERE status = 'delivered'")[0][0]


def test_only_commits_that_queue_deliveries_concern_the_outbox(endpoint, db_path):
    async def run() -> None:
        async with opened(db_path, endpoint, CountingOutbox) as (store, outbox):
            outbox.start()
            # Told of each commit after the outbox's own listener, so once this has heard
            # of a commit, whatever the outbox made of it is already on the loop.
            heard: asyncio.Queue[Set[str]] = asyncio.Queue()
            loop = asyncio.get_running_loop()
            store.writer.listeners.append(
                lambda touched: loop.call_soon_threadsafe(heard.put_nowait, touched)
            )
            await until(lambda: outbox.scans == 1, "the first round's scan")
            before = (outbox.rounds, outbox.scans, outbox.batches, outbox.drains)

            # Its queued transition makes an event for the live stream and no delivery.
            await store.insert_job(new_job("job_quiet", "team"))
            for _ in range(10):
                await store.ping()
                await store.purge_nonces()
            quiet = [await heard.get() for _ in range(21)]
            assert quiet == [frozenset({"events"})] + [frozenset()] * 20
            await asyncio.sleep(0.1)  # time for a round, had anything asked for one
            assert (outbox.rounds, outbox.scans, outbox.batches, outbox.drains) == before

            # A commit that queues one starts the channel's drain at once: no round and no
            # scan before the message goes (the endpoint notes the count as it arrives),
            # one read for it, and the scan after the drain, for retries left for later.
            endpoint.probe = lambda: (outbox.rounds, outbox.scans)
            await announce(store, "job_news", "team")
            await until(lambda: delivered(db_path) == 1, "the message, recorded")
            await until(lambda: outbox.scans == before[1] + 1, "the scan after the drain")
            assert endpoint.probed == [before[:2]]
            assert (outbox.batches, outbox.drains) == (before[2] + 1, before[3] + 1)

    asyncio.run(run())
    assert endpoint.count() == 1


def test_a_delivery_queued_while_its_channel_drains_is_sent_by_that_drain(endpoint, db_path):
    endpoint.hold = 1.0

    async def run() -> None:
        async with opened(db_path, endpoint, CountingOutbox) as (store, outbox):
            outbox.start()
            await until(lambda: outbox.scans == 1, "the first round's scan")
            await announce(store, "job_first", "team")
            await until(lambda: endpoint.count() == 1, "the first message")
            await announce(store, "job_second", "team")  # while the first one is held
            await until(lambda: delivered(db_path) == 2, "both messages, recorded")
            assert (outbox.drains, outbox.batches) == (1, 2)

    asyncio.run(run())
    assert [job for (job,) in rows(db_path, "SELECT job_id FROM deliveries ORDER BY id")] == [
        "job_first",
        "job_second",
    ]


def test_a_message_is_sent_while_the_last_ones_record_commits_in_order(endpoint, db_path):
    async def run() -> list[str]:
        gate = threading.Event()
        async with opened(db_path, endpoint, Outbox) as (store, outbox):
            try:
                for i in range(6):
                    await announce(store, f"job_{i}", "team")
                # The writer held up: no record can commit until the gate opens.
                held = store.writer.submit(lambda conn: gate.wait(30))
                outbox.start()
                # The second message goes out while the first one's record waits...
                await until(lambda: endpoint.count() == 2, "the second message")
                # ...but the third waits for that record: one record in flight per channel.
                await asyncio.sleep(0.3)
                assert endpoint.count() == 2
                assert delivered(db_path) == 0
                gate.set()
                await asyncio.wrap_future(held)
                await until(lambda: delivered(db_path) == 6, "every delivery recorded")
                ids = rows(db_path, "SELECT event_id FROM deliveries ORDER BY id")
                return [event_id for (event_id,) in ids]
            finally:
                gate.set()

    in_order = asyncio.run(run())
    assert endpoint.arrivals == [("team", event_id) for event_id in in_order]
    outcomes = rows(db_path, "SELECT delivery_id, outcome FROM delivery_attempts ORDER BY id")
    assert outcomes == [(i, "delivered") for i in range(1, 7)]


def test_the_next_batch_is_read_only_once_the_last_record_committed(endpoint, db_path):
    total = outbox_module.BATCH + 3
    gate = threading.Event()

    async def run() -> list[str]:
        async with opened(db_path, endpoint, Outbox) as (store, outbox):

            def hold_the_writer() -> None:
                # On the batch's last message (the endpoint's lock is held: no count()), its
                # record queues up behind this.
                if len(endpoint.arrivals) == outbox_module.BATCH:
                    store.writer.submit(lambda conn: gate.wait(30))

            try:
                for i in range(total):
                    await announce(store, f"job_{i:02d}", "team")
                endpoint.probe = hold_the_writer
                outbox.start()
                await until(lambda: endpoint.count() == outbox_module.BATCH, "the first batch")
                await asyncio.sleep(0.3)  # time to read again, were the drain not waiting
                assert endpoint.count() == outbox_module.BATCH
                gate.set()
                await until(lambda: delivered(db_path) == total, "every delivery recorded")
                ids = rows(db_path, "SELECT event_id FROM deliveries ORDER BY id")
                return [event_id for (event_id,) in ids]
            finally:
                gate.set()

    in_order = asyncio.run(run())
    assert endpoint.arrivals == [("team", event_id) for event_id in in_order]


def test_stopping_waits_for_the_record_in_flight(endpoint, db_path):
    async def run() -> None:
        gate = threading.Event()
        async with opened(db_path, endpoint, CountingOutbox) as (store, outbox):
            try:
                await announce(store, "job_last", "team")
                held = store.writer.submit(lambda conn: gate.wait(30))
                outbox.start()
                # Sent, answered, and its record queued behind the held writer.
                await until(lambda: outbox.records == 1, "the message's record")
                stopping = asyncio.create_task(outbox.stop())
                await asyncio.sleep(0.3)
                assert not stopping.done()  # still waiting for the record
                gate.set()
                await asyncio.wrap_future(held)
                await stopping
            finally:
                gate.set()

    asyncio.run(run())
    assert delivered(db_path) == 1


def test_sends_in_flight_across_channels_are_bounded(endpoint, db_path):
    names = [f"ch{i}" for i in range(6)]
    endpoint.hold = 0.2

    async def run() -> None:
        async with opened(db_path, endpoint, Outbox, names=names, send_limit=2) as (store, outbox):
            for name in names:
                for i in range(2):
                    await announce(store, f"job_{name}_{i}", name)
            outbox.start()
            await until(lambda: delivered(db_path) == 12, "every delivery recorded")

    asyncio.run(run())
    assert endpoint.count() == 12
    assert endpoint.peak == 2  # six channels at once, never more than two sends


def test_a_delivery_whose_job_or_transition_is_gone_is_dead_and_the_rest_go(endpoint, db_path):
    async def run() -> None:
        async with opened(db_path, endpoint, Outbox) as (store, outbox):
            for i in range(4):
                await announce(store, f"job_{i}", "team")
            # No code path deletes either; a hand-edited database might.
            conn = sqlite3.connect(db_path)  # foreign keys off, as sqlite3 has them
            with conn:
                conn.execute("DELETE FROM jobs WHERE id = 'job_1'")
                conn.execute("DELETE FROM transitions WHERE job_id = 'job_2'")
            conn.close()
            outbox.start()
            await until(lambda: delivered(db_path) == 2, "the two intact deliveries")
            await until(
                lambda: (
                    rows(db_path, "SELECT count(*) FROM deliveries WHERE status = 'dead'") == [(2,)]
                ),
                "the two others dead",
            )

    asyncio.run(run())
    found = rows(db_path, "SELECT job_id, status, last_error FROM deliveries ORDER BY id")
    gone = "its job or transition no longer exists"
    assert found == [
        ("job_0", "delivered", None),
        ("job_1", "dead", gone),
        ("job_2", "dead", gone),
        ("job_3", "delivered", None),
    ]
    assert [event_id for _, event_id in endpoint.arrivals] == [
        event_id
        for (event_id,) in rows(
            db_path, "SELECT event_id FROM deliveries WHERE status = 'delivered' ORDER BY id"
        )
    ]

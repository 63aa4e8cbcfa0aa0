"""GET /api/events: the live stream, through a running service and the fake providers.

Events are read with the tests' own client (tests/sse.py) on raw sockets; what a stream
should have carried is read from the database's events log.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any
from urllib.parse import urlsplit

import pytest

from receiver import events as events_module
from receiver.events import EventHub
from receiver.providers.base import Observation
from receiver.states import Status
from receiver.store import NewJob, Store
from receiver.store import events as event_rows
from receiver.store import jobs as job_rows
from receiver.store.db import run_sync
from receiver.store.writer import SqliteDb
from tests.conftest import (
    ADMIN_TOKEN,
    running_service,
    settings_restored,
    start_service,
    wait_for,
)
from tests.media.helpers import Clock, archive_extra, service_with_clock, wait_media
from tests.sse import Parser, Stream, request_bytes
from tests.store.test_store import new_job, route_all
from tests.test_restart import ServiceProcess


def runtime_of(service: Any) -> Any:
    return service.server.app.state.runtime


def logged(service: Any, after: int = 0) -> list[tuple[int, str, int | None]]:
    """(id, job_id, transition_id) of the events in the log after ``after``."""
    return [
        tuple(row)
        for row in service.rows(
            "SELECT id, job_id, transition_id FROM events WHERE id > ? ORDER BY id", after
        )
    ]


def write(service: Any, fn: Any) -> Any:
    """A write (a store operation ``fn(db)``) through the service's own writer, from the
    test's thread."""
    writer = runtime_of(service).store.writer
    return writer.submit(lambda conn: run_sync(fn(SqliteDb(conn)))).result(timeout=10)


def add_job(service: Any, job_id: str, prompt: str = "a still lake", provider: str = "vidu"):
    """A job inserted straight through the store: one queued transition, one event."""
    job = NewJob(job_id, provider, None, prompt, {}, None, None, None, None)
    route = runtime_of(service).config.channels_for
    write(service, lambda conn: job_rows.insert_job(conn, job, now=time.time(), route=route))


def media_changed(service: Any, job_id: str, times: int = 1) -> None:
    async def record(db: Any) -> None:
        for _ in range(times):
            await event_rows.record(db, job_id, None, time.time())

    write(service, record)


def without_links(job: dict[str, Any]) -> dict[str, Any]:
    """A job's JSON with its signed media links left out: they are signed when rendered."""
    media = dict(job["media"])
    for kind in ("video", "cover"):
        if media[kind] is not None:
            media[kind] = {**media[kind], "url": None}
    return {**job, "media": media}


def caught_up(service: Any) -> None:
    """Wait until the service's reader has passed every logged event: a stream opened now
    starts after them."""
    hub = runtime_of(service).events
    newest = max([row[0] for row in logged(service)], default=0)
    wait_for(lambda: hub.position == newest, what="the reader to catch up")


def quiet(service: Any, stream: Stream, timeout: float = 20.0) -> None:
    """Wait until the stream has carried the newest logged event."""

    def carried() -> bool:
        newest = logged(service)[-1:]
        return bool(newest) and stream.ids()[-1:] == [newest[0][0]]

    wait_for(carried, timeout=timeout, what="the stream to carry the newest event")


# -- what a stream carries --


def test_every_transition_and_media_change_is_one_job_event_with_the_job_as_get_shows_it(
    service,
):
    with Stream(service.url) as stream:
        stream.subscribed()
        assert stream.headers["content-type"].startswith("text/event-stream")
        assert stream.headers["cache-control"] == "no-cache"
        assert stream.retry == 2000
        job = service.submit("A kite over the dunes")
        done = wait_media(service, job["id"])
        quiet(service, stream)
        received = stream.job_events()
    log = logged(service)
    # One event per transition, one for the kept copy, in the log's order, nothing twice.
    transitions = [row[0] for row in service.rows("SELECT id FROM transitions ORDER BY id")]
    assert [row[2] for row in log if row[2] is not None] == transitions
    assert [row[2] for row in log].count(None) == 1
    assert [e.id for e in received] == [row[0] for row in log]
    assert all(e.job["id"] == job["id"] for e in received)
    assert [e.job["status"] for e in received][-2:] == ["completed", "completed"]
    assert received[-1].job["media"]["status"] == "kept"
    assert without_links(received[-1].job) == without_links(service.job(job["id"]))
    assert without_links(received[-1].job) == without_links(done)
    assert received[-1].job["media"]["video"]["url"].startswith(f"{service.url}/media/")


def test_transitions_from_every_source_make_events(sandbox, db_path):
    overrides = {"kvid": {"deadline": 1.0}}
    with running_service(sandbox.url, db_path, overrides) as service, Stream(service.url) as s:
        s.subscribed()
        finished = service.submit("A lighthouse at dusk")  # api, callback, poll
        service.wait_status(finished["id"], "completed")
        endless = service.submit("An endless corridor [never]", provider="kvid")
        with settings_restored(sandbox.settings) as settings:
            settings.queue_delay = 30
            canceled = service.submit("A paper crane unfolds")
            wait_for(lambda: service.job(canceled["id"])["provider_job_id"], what="task id")
            assert service.api.post(f"/api/jobs/{canceled['id']}/cancel").status_code == 200
        service.wait_status(endless["id"], "failed", timeout=10)
        quiet(service, s)
        received = {e.id: e for e in s.job_events()}
        rows = service.rows(
            "SELECT e.id, t.job_id, t.to_status, t.source FROM events e"
            " JOIN transitions t ON t.id = e.transition_id ORDER BY e.id"
        )
    sources = {source for _id, _job, _status, source in rows}
    assert {"api", "callback", "poll", "deadline", "cancel"} <= sources
    for event_id, job_id, to_status, source in rows:
        event = received[event_id]
        assert event.job["id"] == job_id
        # The job as it was read: at this transition or later.
        assert to_status in [t["to_status"] for t in event.job["transitions"]], source
    last = {e.job["id"]: e.job["status"] for e in received.values()}
    assert last[endless["id"]] == "failed" and last[canceled["id"]] == "canceled"


def test_changes_of_the_kept_copy_make_events(sandbox, db_path):
    clock = Clock()
    extra = archive_extra(keep_days=1)
    with (
        service_with_clock(sandbox.url, db_path, clock, extra) as service,
        Stream(service.url) as stream,
    ):
        stream.subscribed()
        job_id = wait_media(service, service.submit("A red balloon")["id"])["id"]
        assert service.api.post(f"/api/jobs/{job_id}/archive").status_code == 202
        wait_media(service, job_id)
        quiet(service, stream)
        media = [row[0] for row in logged(service) if row[2] is None]
        clock.offset = 2 * 86400.0
        assert service.api.post("/api/archive/prune").json() == {"pruned": 2}
        quiet(service, stream)
        received = stream.job_events()
    by_id = {e.id: e.job["media"]["status"] for e in received}
    # Kept, asked for again (pending until kept again), kept again; then pruned.
    assert len(media) == 3
    assert [by_id[media[0]], by_id[media[2]]] == ["kept", "kept"]
    assert by_id[media[1]] in ("pending", "kept")
    assert received[-1].id > media[-1] and received[-1].job["media"]["status"] == "pruned"


def test_a_download_that_fails_makes_an_event(sandbox, db_path):
    extra = archive_extra(max_bytes=10_000)
    with running_service(sandbox.url, db_path, extra=extra) as service, Stream(service.url) as s:
        s.subscribed()
        job = wait_media(service, service.submit("Too big to keep")["id"], "failed")
        quiet(service, s)
        last = s.job_events()[-1]
    assert last.job["id"] == job["id"]
    assert last.job["media"]["status"] == "failed" and "max_bytes" in last.job["media"]["error"]


def test_filters_keep_one_job_a_status_or_a_provider(service):
    add_job(service, "job_a")
    add_job(service, "job_b", provider="kvid")
    caught_up(service)
    one = Stream(service.url, "/api/events?job=job_a").subscribed()
    completed = Stream(service.url, "/api/events?status=completed").subscribed()
    kvid = Stream(service.url, "/api/events?provider=kvid").subscribed()
    everything = Stream(service.url).subscribed()
    try:
        route = runtime_of(service).config.channels_for
        for job_id in ("job_a", "job_b"):
            done = Observation(Status.COMPLETED, result_url="https://cdn.example/v.mp4")
            write(
                service,
                lambda c, j=job_id, o=done: job_rows.apply(
                    c, j, o, "poll", now=time.time(), route=route
                ),
            )
        media_changed(service, "job_b")
        everything.wait(lambda p: len(p.job_events()) == 3)
        for stream, count in ((one, 1), (completed, 3), (kvid, 2)):
            stream.wait(lambda p, n=count: len(p.job_events()) == n)
        ids = everything.ids()
    finally:
        for stream in (one, completed, kvid, everything):
            stream.close()
    assert [e.job["id"] for e in one.job_events()] == ["job_a"]
    assert [e.job["status"] for e in completed.job_events()] == ["completed"] * 3
    assert [e.job["id"] for e in kvid.job_events()] == ["job_b", "job_b"]
    assert kvid.ids() == ids[1:]


# -- resuming --


@pytest.mark.parametrize("kept", ["in memory", "in the log only"])
@pytest.mark.parametrize("how", ["header", "query"])
def test_a_client_that_reconnects_gets_exactly_the_events_it_missed(
    service, monkeypatch, kept, how
):
    if kept == "in the log only":
        monkeypatch.setattr(events_module, "RECENT", 1)
    # Another client stays: the reader goes on reading, and keeps recent events in memory.
    witness = Stream(service.url).subscribed()
    with Stream(service.url) as first:
        first.subscribed()
        job = service.submit("A fox in the snow")
        first.wait(lambda p: p.job_events(), what="the first event")
        seen = first.ids()
    last = seen[-1]
    # While it is away: the job goes on, and another one runs.
    other = service.submit("A train in the rain")
    for job_id in (job["id"], other["id"]):
        wait_media(service, job_id)
    missed = [row[0] for row in logged(service, last)]
    assert len(missed) >= 6
    if how == "header":
        again = Stream(service.url, Last_Event_ID=str(last))
    else:
        again = Stream(service.url, f"/api/events?last_event_id={last}")
    with again, witness:
        again.subscribed()
        again.wait(lambda p: len(p.job_events()) >= len(missed), what="the missed events")
        add_job(service, "job_after")
        live = again.wait(lambda p: [e for e in p.job_events() if e.job["id"] == "job_after"])
        assert again.ids() == [*missed, live[0].id]
        assert witness.ids()[: len(seen) + len(missed)] == [*seen, *missed]
    assert not set(seen) & set(missed)


def test_a_header_id_wins_over_the_query_one_as_a_browser_reconnects(service):
    for n in (1, 2, 3):
        add_job(service, f"job_{n}")
    caught_up(service)
    with Stream(service.url, "/api/events?last_event_id=1", Last_Event_ID="2") as stream:
        stream.wait(lambda p: p.job_events())
        stream.wait(lambda p: p.last_id == 3)
        assert stream.ids() == [3]


def test_a_fresh_stream_gives_the_newest_id_so_that_a_quiet_stream_can_resume(service):
    add_job(service, "job_1")
    caught_up(service)
    with Stream(service.url) as stream:
        stream.subscribed()
        stream.wait(lambda p: p.last_id == 1, what="the id of the newest event")
        assert stream.job_events() == []


def test_resuming_from_pruned_events_too_many_or_an_unknown_id_says_reset(service, monkeypatch):
    for n in range(5):
        add_job(service, f"job_{n}")
    caught_up(service)
    monkeypatch.setattr(events_module, "MAX_BACKFILL", 3)
    resets = {}
    for last in ("1", "999"):
        with Stream(service.url, Last_Event_ID=last) as stream:
            stream.wait(lambda p: [e for e in p.events if e.type == "reset"])
            resets[last] = stream.events
    write(service, lambda conn: event_rows.prune(conn, time.time() + 1, 3))
    with Stream(service.url, Last_Event_ID="2") as stream:
        stream.wait(lambda p: [e for e in p.events if e.type == "reset"])
        resets["pruned"] = stream.events
    with Stream(service.url, Last_Event_ID="3") as stream:
        stream.wait(lambda p: p.last_id == 5)
        assert stream.ids() == [4, 5]  # from the edge of what was pruned: nothing lost
    for name, got in resets.items():
        (reset,) = got
        assert (reset.type, reset.id) == ("reset", 5), name
        assert reset.job["last_event_id"] == 5
    assert "more than 3 events" in resets["1"][0].job["reason"]
    assert "no event 999" in resets["999"][0].job["reason"]
    assert "no longer kept" in resets["pruned"][0].job["reason"]


def test_a_stream_that_comes_while_the_reader_passes_events_over_gets_them(tmp_path):
    """With no stream open the reader moves past new events without reading them; one
    that opens during that look must still get every event after where it started."""

    async def run() -> list[int]:
        store = Store(tmp_path / "vidhook.db", route=route_all).open()
        hub = EventHub(store, lambda job: {"id": job["id"]}, max_streams=10)
        try:
            await hub.open()
            looking, go_on = asyncio.Event(), asyncio.Event()
            newest = store.event_position

            async def held_position() -> int:
                looking.set()
                await go_on.wait()
                return await newest()

            store.event_position = held_position  # type: ignore[method-assign]
            await store.insert_job(new_job("job_1"))
            await looking.wait()
            stream = hub.subscribe(events_module.Filter(), None)
            go_on.set()
            async with asyncio.timeout(10):
                while not stream.queue:
                    await asyncio.sleep(0.01)
            return [event.id for event in stream.queue]
        finally:
            await hub.stop()
            store.close()

    assert asyncio.run(run()) == [1]


# -- access and bad requests --


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {ADMIN_TOKEN}"}],
    ids=["none", "wrong", "not bearer"],
)
def test_a_stream_needs_the_admin_token_and_shows_nothing_without_it(service, headers):
    add_job(service, "job_secret", prompt="the secret prompt")
    response = service.http.get(f"/api/events?token={ADMIN_TOKEN}&last_event_id=0", headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == 'Bearer realm="vidhook"'
    assert response.json()["error"]["code"] == "unauthorized"
    assert "job_secret" not in response.text and "secret prompt" not in response.text
    assert runtime_of(service).events.streams == set()


@pytest.mark.parametrize(
    ("path", "headers", "status", "field"),
    [
        ("/api/events?status=bogus", {}, 422, "status"),
        ("/api/events?last_event_id=seven", {}, 422, "last_event_id"),
        ("/api/events", {"Last-Event-ID": "-1"}, 422, "last_event_id"),
        ("/api/events", {"Last-Event-ID": "1e3"}, 422, "last_event_id"),
        ("/api/events?job=job_nobody", {}, 404, None),
    ],
)
def test_bad_requests_are_refused_and_change_nothing(service, path, headers, status, field):
    add_job(service, "job_1")
    before = service.counts()
    response = service.api.get(path, headers=headers)
    assert response.status_code == status, response.text
    if field is not None:
        assert field in response.json()["error"]["fields"]
    assert service.counts() == before
    assert runtime_of(service).events.streams == set()


def test_a_head_request_says_what_the_stream_is_and_opens_none(service):
    response = service.api.head("/api/events")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert runtime_of(service).events.streams == set()
    assert service.http.head("/api/events").status_code == 401


def test_streams_past_the_limit_are_refused_with_retry_after(service):
    runtime_of(service).events.max_streams = 1
    with Stream(service.url).subscribed():
        response = service.api.get("/api/events")
    assert response.status_code == 503
    assert response.headers["retry-after"] == "30"
    assert "max_connections" in response.json()["error"]["message"]


# -- keeping streams alive, and ending them --


def test_a_quiet_stream_gets_keep_alive_comments(service, monkeypatch):
    monkeypatch.setattr(events_module, "KEEPALIVE", 0.1)
    with Stream(service.url) as stream:
        stream.wait(lambda p: len(p.comments) >= 3, what="keep-alive comments")
        assert set(stream.comments) == {"keep-alive"}


def test_a_client_that_leaves_is_forgotten(service):
    hub = runtime_of(service).events
    with Stream(service.url).subscribed():
        assert len(hub.streams) == 1
    wait_for(lambda: not hub.streams, what="the stream to be forgotten")


def test_shutting_down_ends_open_streams_at_once(sandbox, db_path):
    service = start_service(sandbox.url, db_path)
    streams = [Stream(service.url).subscribed() for _ in range(3)]
    started = time.monotonic()
    try:
        service.close()
        service.server.stop()
        assert time.monotonic() - started < 3  # not the server's graceful timeout
        for stream in streams:
            stream.wait(lambda p: p.ended, what="the stream's last chunk")
    finally:
        for stream in streams:
            stream.close()


@pytest.mark.parametrize("comes_back", [True, False], ids=["reads again", "never reads"])
def test_a_slow_client_is_dropped_and_the_others_get_everything(service, monkeypatch, comes_back):
    monkeypatch.setattr(events_module, "DROP_GRACE", 5.0 if comes_back else 0.2)
    hub = runtime_of(service).events
    hub.max_queued_bytes = 2 * 1024 * 1024
    add_job(service, "job_big", prompt="x" * 30_000)  # each event carries 30 kB
    caught_up(service)
    stuck = Stream(service.url, read=False, receive_buffer=4096)
    reader = Stream(service.url)
    try:
        reader.subscribed()
        wait_for(lambda: len(hub.streams) == 2, what="both streams")
        for _ in range(60):
            media_changed(service, "job_big", times=5)
        # 300 events of 30 kB to fill the stuck one's buffers: slow on a busy machine.
        wait_for(lambda: hub.dropped == 1, timeout=30, what="the stuck client to be dropped")
        assert len(hub.streams) == 1
        reader.wait(lambda p: len(p.job_events()) == 300, timeout=20)
        assert reader.ids() == [row[0] for row in logged(service, 1)]
        if not comes_back:
            time.sleep(1.0)  # past DROP_GRACE: the connection is cut
        stuck.start_reading()
        if comes_back:
            # Reading again, it takes what was on its way, then the stream's end.
            stuck.wait(lambda p: p.ended, timeout=15, what="the stream's end")
        else:
            wait_for(lambda: stuck.closed, timeout=15, what="the connection to close")
            assert not stuck.ended
        assert 0 < len(stuck.job_events()) < 300
        assert stuck.ids() == reader.ids()[: len(stuck.ids())]
    finally:
        stuck.close()
        reader.close()


def test_two_hundred_streams_get_one_event_from_one_read(service):
    hub = runtime_of(service).events
    add_job(service, "job_1")
    caught_up(service)
    host, port = urlsplit(service.url).hostname, urlsplit(service.url).port

    async def run() -> tuple[list[Parser], int]:
        connections = [await asyncio.open_connection(host, port) for _ in range(200)]
        parsers = [Parser() for _ in connections]

        async def read(reader: asyncio.StreamReader, parser: Parser, want: Any) -> None:
            while not want(parser):
                data = await reader.read(65536)
                assert data, "the stream ended"
                parser.feed(data)

        for _, writer in connections:
            writer.write(request_bytes(service.url, "/api/events"))
        subscribed = [
            read(r, p, lambda p: p.retry is not None)
            for (r, _), p in zip(connections, parsers, strict=True)
        ]
        await asyncio.wait_for(asyncio.gather(*subscribed), 20)
        reads = hub.reads
        await asyncio.to_thread(add_job, service, "job_2")
        arrived = [
            read(r, p, Parser.job_events) for (r, _), p in zip(connections, parsers, strict=True)
        ]
        await asyncio.wait_for(asyncio.gather(*arrived), 20)
        for _, writer in connections:
            writer.close()
        return parsers, hub.reads - reads

    parsers, reads = asyncio.run(run())
    blocks = {tuple((e.id, e.data) for e in p.job_events()) for p in parsers}
    (only,) = blocks
    assert [event_id for event_id, _ in only] == [2]
    assert reads == 1  # one read of the log for every stream, not one per stream


# -- a real service, stopped and started again --


@pytest.mark.slow
def test_after_a_restart_a_client_resumes_from_the_log(sandbox, tmp_path):
    keep = "\n[archive]\nallow_private_hosts = true\n"  # the sandbox is on loopback
    service = ServiceProcess(tmp_path, sandbox.url, extra_config=keep)
    try:
        service.start()
        with Stream(service.url) as first:
            first.subscribed()
            job = service.submit("A moth around a lamp")
            first.wait(lambda p: p.job_events(), what="the first event")
            last = first.ids()[-1]
        # Away while the job ends and its copy is kept.
        kept = "SELECT 1 FROM downloads WHERE job_id = ? AND status = 'kept'"
        wait_for(lambda: service.rows(kept, job["id"]), timeout=20, what="the kept copy")
        watching = Stream(service.url).subscribed()
        started = time.monotonic()
        assert service.stop() == 0
        assert time.monotonic() - started < 5  # the open stream did not hold the stop up
        watching.wait(lambda p: p.ended, what="the open stream's end")
        watching.close()
        missed = [row[0] for row in service.rows("SELECT id FROM events WHERE id > ?", last)]
        assert len(missed) >= 3

        service.start()
        with Stream(service.url, Last_Event_ID=str(last)) as again:
            again.wait(lambda p: len(p.job_events()) >= len(missed), what="the missed events")
            other = service.submit("A second moth")
            again.wait(lambda p: [e for e in p.job_events() if e.job["id"] == other["id"]])
            logged_ids = [row[0] for row in service.rows("SELECT id FROM events ORDER BY id")]
            assert again.ids() == logged_ids[logged_ids.index(last) + 1 :][: len(again.ids())]
            assert again.ids()[: len(missed)] == missed
            assert all(e.job["id"] == job["id"] for e in again.job_events()[: len(missed)])
            assert again.job_events()[len(missed) - 1].job["media"]["status"] == "kept"
    finally:
        service.close()

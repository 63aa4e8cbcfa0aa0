"""The live stream, ``GET /api/events``: server-sent events, one ``job`` event per change.

Every transition and every change of a job's kept copy writes a row to the events log in
its own transaction (``receiver.store.events``); an event's id is that row's id and its
data the job as ``GET /api/jobs/{id}`` shows it. One reader, the ``EventHub``, follows the
log: woken by the writer's commits that wrote events (and every few seconds, for writes it
was not told of), it reads the new events once, renders each job once and hands the same
bytes to every stream that asked for them. A client that reconnects with
``Last-Event-ID`` is given what it missed from the recent events in memory, or from the
log, and then the live events, with no gap and nothing twice.

A stream that cannot keep up is dropped rather than buffered without bound: its client
reconnects with Last-Event-ID and resumes from the log.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Iterable, Set
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from receiver import access
from receiver.responses import dumps, error
from receiver.states import Status
from receiver.worker import Worker

if TYPE_CHECKING:
    from receiver.runtime import Runtime
    from receiver.store import EventRows, Store

log = logging.getLogger("vidhook.events")

RETRY_MS = 2000  # how long a client waits before it reconnects
KEEPALIVE = 15.0  # seconds of silence before a comment keeps proxies from closing the stream
IDLE_READ = 2.0  # a look at the log when no commit said so: another process may write it
READ_BATCH = 500  # events read, rendered and handed out at a time
RECENT = 2048  # events kept in memory, for clients that reconnect
MAX_BACKFILL = 5000  # missed more than this: the client is told to start over
MAX_QUEUED = 2 * READ_BATCH  # events waiting for one slow client before it is dropped ...
MAX_QUEUED_BYTES = 8 * 1024 * 1024  # ... or this many bytes of them
DROP_GRACE = 5.0  # seconds a dropped client has to take its last bytes before it is cut off
KEEP_EVENTS = 86400.0  # the log keeps a day of events for reconnecting clients
PRUNE_EVERY = 600.0
PRUNE_BATCH = 10_000
HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    # Proxies that buffer responses (nginx) pass this one through as it comes.
    (b"x-accel-buffering", b"no"),
]


@dataclass(frozen=True, slots=True)
class Event:
    id: int
    job_id: str
    status: str
    provider: str
    block: bytes  # the event as sent: id, type and data lines, and the blank line


@dataclass(frozen=True, slots=True)
class Filter:
    job: str | None = None
    status: str | None = None
    provider: str | None = None

    def matches(self, event: Event) -> bool:
        return (
            (self.job is None or event.job_id == self.job)
            and (self.status is None or event.status == self.status)
            and (self.provider is None or event.provider == self.provider)
        )


def encode(found: EventRows, render: Callable[[dict[str, Any]], dict[str, Any]]) -> list[Event]:
    """The events read, each with its job rendered (once per job)."""
    payloads = {job_id: dumps(render(job)) for job_id, job in found.jobs.items()}
    events = []
    for event_id, job_id in found.rows:
        job = found.jobs.get(job_id)
        if job is not None:
            block = b"id: %d\nevent: job\ndata: %s\n\n" % (event_id, payloads[job_id])
            events.append(Event(event_id, job_id, job["status"], job["provider"], block))
    return events


@dataclass(frozen=True, slots=True)
class Batch:
    events: list[Event]
    last_id: int | None  # the last event read (its job may be gone: then no Event)
    full: bool  # as many as asked for: there may be more


def batch(found: EventRows, render: Callable[[dict[str, Any]], dict[str, Any]]) -> Batch:
    last_id = found.rows[-1][0] if found.rows else None
    return Batch(encode(found, render), last_id, len(found.rows) >= READ_BATCH)


def reset(position: int, reason: str) -> bytes:
    """Tells a client that events it asked for cannot be given: it should reload what it
    shows, and goes on from ``position``."""
    data = dumps({"reason": reason, "last_event_id": position})
    return b"id: %d\nevent: reset\ndata: %s\n\n" % (position, data)


class Subscription:
    """One open stream: the events waiting for its client, within bounds."""

    def __init__(self, hub: EventHub, wanted: Filter, last_id: int | None, position: int) -> None:
        self.hub = hub
        self.wanted = wanted
        self.last_id = last_id  # what the client said it has seen, if anything
        self.position = position  # the hub's when subscribed: later events come live
        self.backlog: list[Event] | None = None  # missed events found in memory
        self.queue: deque[Event] = deque()
        self.queued_bytes = 0
        self.wakeup = asyncio.Event()
        # Loop time of the last bytes handed to the connection.
        self.sent_at = asyncio.get_running_loop().time()
        self.ping = False  # silent too long: a keep-alive comment is due
        self.ended = False  # dropped, or the service is shutting down
        self.task: asyncio.Task[None] | None = None
        self._cutoff: asyncio.TimerHandle | None = None

    def offer(self, events: Iterable[Event]) -> None:
        if self.ended:
            return
        for event in events:
            if self.wanted.matches(event):
                self.queue.append(event)
                self.queued_bytes += len(event.block)
        if len(self.queue) > self.hub.max_queued or self.queued_bytes > self.hub.max_queued_bytes:
            self.drop()
        elif self.queue:
            self.wakeup.set()

    def keep_alive(self) -> None:
        self.ping = True
        self.wakeup.set()

    def take(self) -> list[Event]:
        events = list(self.queue)
        self.queue.clear()
        self.queued_bytes = 0
        return events

    def drop(self) -> None:
        """Too far behind: end the stream, and cut the connection if the client does not
        take what is already on its way within DROP_GRACE."""
        log.info(
            "an event stream fell %d events behind and was dropped; its client resumes "
            "from its last event when it reconnects",
            len(self.queue),
        )
        self.hub.dropped += 1
        self.queue.clear()
        self.queued_bytes = 0
        self.end()
        if self.task is not None:
            self._cutoff = asyncio.get_running_loop().call_later(DROP_GRACE, self.task.cancel)

    def end(self) -> None:
        self.ended = True
        self.hub.streams.discard(self)
        self.wakeup.set()

    def close(self) -> None:
        self.end()
        if self._cutoff is not None:
            self._cutoff.cancel()


class EventHub(Worker):
    """The one reader of the events log, and every open stream."""

    name = "events"

    def __init__(
        self,
        store: Store,
        render: Callable[[dict[str, Any]], dict[str, Any]],
        *,
        max_streams: int,
    ) -> None:
        super().__init__()
        self.store = store
        self.render = render
        self.max_streams = max_streams
        self.max_queued = MAX_QUEUED
        self.max_queued_bytes = MAX_QUEUED_BYTES
        self.streams: set[Subscription] = set()
        self.position = 0  # the newest event handed out (or passed over with no streams)
        self.recent: deque[Event] = deque()
        self.recent_after = 0  # ``recent`` holds every event after this id
        self.closing = False
        self.dropped = 0  # streams dropped for falling behind, since start
        self.reads = 0  # reads that found events: one per batch, however many streams
        self._next_prune = 0.0
        self._next_keep_alive = 0.0
        self._listener: Callable[[Set[str]], None] | None = None

    async def open(self) -> None:
        """Start at the newest event, and follow the log from there."""
        self.position = self.recent_after = await self.store.event_position()
        loop = asyncio.get_running_loop()

        def committed(touched: Set[str]) -> None:
            if "events" in touched:
                loop.call_soon_threadsafe(self.wake)

        self._listener = committed
        self.store.listeners.append(committed)
        self.start()

    async def stop(self) -> None:
        self.close()
        if self._listener in self.store.listeners:
            self.store.listeners.remove(self._listener)
        await super().stop()

    def close(self) -> None:
        """End every stream: the service is shutting down. Clients reconnect elsewhere, or
        here once it is back, from their last event."""
        self.closing = True
        for stream in list(self.streams):
            stream.end()

    def subscribe(self, wanted: Filter, last_id: int | None) -> Subscription:
        stream = Subscription(self, wanted, last_id, self.position)
        if last_id is not None and self.recent_after <= last_id <= self.position:
            stream.backlog = [e for e in self.recent if e.id > last_id and wanted.matches(e)]
        self.streams.add(stream)
        return stream

    async def round(self) -> float:
        now = self.store.clock()
        if now >= self._next_prune:
            self._next_prune = now + PRUNE_EVERY
            await self._prune(now - KEEP_EVENTS)
        self._keep_alive()
        if not self.streams:
            # Nobody to tell: keep up with the log without reading the jobs.
            newest = await self.store.event_position()
            if self.streams:
                return 0.0  # one came meanwhile, from the old position: read for it
            self.position = self.recent_after = newest
            self.recent.clear()
            return self.idle_wait
        read = await self.store.read_events(
            self.position, READ_BATCH, partial(batch, render=self.render)
        )
        if read.last_id is None:
            return self.idle_wait
        self.reads += 1
        self.recent.extend(read.events)
        while len(self.recent) > RECENT:
            self.recent_after = self.recent.popleft().id
        self.position = read.last_id
        for stream in list(self.streams):
            stream.offer(read.events)
        return 0.0 if read.full else self.idle_wait

    @property
    def idle_wait(self) -> float:
        return min(IDLE_READ, KEEPALIVE / 2)

    def _keep_alive(self) -> None:
        """A comment for each stream silent for KEEPALIVE seconds, from here rather than
        from a timer per stream: one timer fewer to set and cancel for every event sent."""
        now = asyncio.get_running_loop().time()
        if now < self._next_keep_alive:
            return
        self._next_keep_alive = now + min(1.0, KEEPALIVE / 2)
        quiet_since = now - KEEPALIVE
        for stream in self.streams:
            if stream.sent_at <= quiet_since and not stream.queue:
                stream.keep_alive()

    async def _prune(self, before: float) -> None:
        while await self.store.prune_events(before, PRUNE_BATCH) >= PRUNE_BATCH:
            pass

    async def missed(self, stream: Subscription) -> tuple[bytes, int]:
        """What a resuming client missed up to the stream's start, as bytes to send first,
        and the id it has seen once they are sent."""
        last_id, position = stream.last_id, stream.position
        if last_id is None:
            return b"", position
        if stream.backlog is not None:
            return b"".join(e.block for e in stream.backlog), position
        if last_id > position:
            # Ahead of this reader: ids given out by a reader that has read further, or by
            # another database (restored from a backup).
            newest = await self.store.event_position()
            if last_id <= newest:
                return b"", last_id
            return reset(position, f"no event {last_id} here; the newest is {newest}"), position
        count = await self.store.count_events(last_id, position, MAX_BACKFILL + 1)
        if count > MAX_BACKFILL:
            return reset(position, f"more than {MAX_BACKFILL} events were missed"), position

        def shape(found: EventRows) -> tuple[list[Event], int]:
            return encode(found, self.render), found.pruned_through

        events, pruned_through = await self.store.read_events(
            last_id, MAX_BACKFILL, shape, until=position, job=stream.wanted.job
        )
        if last_id < pruned_through:
            return reset(position, f"the events after {last_id} are no longer kept"), position
        return b"".join(e.block for e in events if stream.wanted.matches(e)), position


class EventStream(Response):
    """The response of one stream: missed events first, then live ones, until the client
    leaves, falls too far behind, or the service shuts down."""

    def __init__(self, hub: EventHub, stream: Subscription) -> None:
        # Response's own __init__ would add a Content-Length to a body that never ends.
        self.status_code = 200
        self.background = None
        self.raw_headers = list(HEADERS)
        self.hub = hub
        self.stream = stream

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        stream = self.stream
        try:
            start = {"type": "http.response.start", "status": 200, "headers": self.raw_headers}
            await send(start)
            pump = asyncio.create_task(self._pump(send))
            stream.task = pump
            left = asyncio.create_task(_disconnected(receive))
            try:
                await asyncio.wait({pump, left}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (pump, left):
                    task.cancel()
                await asyncio.gather(pump, left, return_exceptions=True)
            if not pump.cancelled() and (failure := pump.exception()) is not None:
                raise failure
        finally:
            stream.close()

    async def _pump(self, send: Send) -> None:
        stream = self.stream
        loop = asyncio.get_running_loop()
        missed, seen = await self.hub.missed(stream)
        # The id alone, without data, moves the client's Last-Event-ID without an event: it
        # resumes from here even if no event comes before it reconnects.
        await _body(send, b"retry: %d\n\n%bid: %d\n\n" % (RETRY_MS, missed, seen))
        while True:
            if stream.queue:
                await _body(send, b"".join([e.block for e in stream.take() if e.id > seen]))
            elif stream.ended:
                break
            elif stream.ping:
                stream.ping = False
                await _body(send, b": keep-alive\n\n")
            else:
                stream.sent_at = loop.time()
                stream.wakeup.clear()
                await stream.wakeup.wait()
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _body(send: Send, chunk: bytes) -> None:
    if chunk:
        await send({"type": "http.response.body", "body": chunk, "more_body": True})


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


STATUSES = tuple(s.value for s in Status)


async def stream(request: Request) -> Response:
    """``GET /api/events``: server-sent events, from after ``Last-Event-ID`` when given."""
    if not access.is_admin(request):
        return access.unauthorized()
    runtime: Runtime = request.app.state.runtime
    hub = runtime.events
    params = request.query_params
    problems: dict[str, str] = {}
    given = request.headers.get("last-event-id") or params.get("last_event_id")
    last_id = _event_id(given)
    if given is not None and last_id is None:
        problems["last_event_id"] = "the id of an event this stream sent (a whole number)"
    status = params.get("status")
    if status is not None and status not in STATUSES:
        problems["status"] = f"one of {', '.join(STATUSES)}"
    job, provider = params.get("job"), params.get("provider")
    if problems:
        return error(422, "invalid_fields", "some query parameters are invalid", fields=problems)
    if job is not None and await runtime.store.get_job(job) is None:
        return error(404, "unknown_job", "no job has this id")
    if hub.closing or not hub.running:
        return _busy("the service is shutting down; connect again in a moment", 2)
    if len(hub.streams) >= hub.max_streams:
        return _busy(
            f"{hub.max_streams} event streams are open, as many as this service takes"
            " (half of [server] max_connections); connect again later",
            30,
        )
    if request.method == "HEAD":
        return Response(headers={k.decode(): v.decode() for k, v in HEADERS})
    return EventStream(hub, hub.subscribe(Filter(job, status, provider), last_id))


def _event_id(text: str | None) -> int | None:
    text = None if text is None else text.strip()
    if not text or not text.isascii() or not text.isdigit() or len(text) > 18:
        return None
    return int(text)


def _busy(message: str, retry_after: int) -> Response:
    response = error(503, "unavailable", message)
    response.headers["Retry-After"] = str(retry_after)
    return response

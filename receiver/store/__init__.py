"""The only part of vidhook that speaks SQL.

``Store`` is what the rest of vidhook uses: every operation a verb (``apply``,
``record_token_callback``, ``due_deliveries_with_sources``, ...), written once in the
modules beside it (``jobs``, ``outbox``, ``media``, ``queries``, ...) over ``db.Db``, and
run by one of two engines, chosen by the configuration:

- ``sqlite`` (the default): one file, one service; one writer thread commits concurrent
  requests together; the event loop never waits on SQLite directly; an open store holds
  the file's lock (``lock``): one file, one service.
- ``postgres`` (``database_url_env``): any number of replicas on one server; each write
  one transaction from psycopg's async pool; commits heard across replicas.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from receiver.providers.base import Observation, Submission
from receiver.store import (
    budgets,
    claims,
    detail,
    events,
    heartbeat,
    jobs,
    media,
    outbox,
    queries,
    submissions,
)
from receiver.store.db import Db
from receiver.store.engine import Engine, Listener, Operation
from receiver.store.errors import (
    DatabaseInUse,
    DatabaseUnavailable,
    DatabaseUnusable,
    StoreError,
)
from receiver.store.jobs import (
    AdmittedCallback,
    Applied,
    CallbackOutcome,
    CallbackTarget,
    JobNotFound,
    NewJob,
    Route,
    UnknownTask,
    UnknownToken,
)
from receiver.store.sqlite import SqliteEngine
from receiver.store.writer import Writer

__all__ = [
    "AdmittedCallback",
    "Applied",
    "CallbackOutcome",
    "CallbackTarget",
    "DatabaseInUse",
    "DatabaseUnavailable",
    "DatabaseUnusable",
    "EventRows",
    "JobNotFound",
    "NewJob",
    "Store",
    "StoreError",
    "UnknownTask",
    "UnknownToken",
]

log = logging.getLogger("vidhook.store")
T = TypeVar("T")


@dataclass(frozen=True)
class EventRows:
    """(id, job_id) of events, oldest first, each job in full, and how far events have
    been pruned (a reader resuming from before that has missed some)."""

    rows: list[tuple[int, str]]
    jobs: dict[str, dict[str, Any]]
    pruned_through: int


# How long a worker waits for a heartbeat to learn whether an outage is over.
PROBE_WAIT = 1.0


def replica_name() -> str:
    """This replica's name: VIDHOOK_INSTANCE, else its host, pid and a random part (two
    services in one process are two replicas)."""
    return os.environ.get("VIDHOOK_INSTANCE") or (
        f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(2)}"
    )


def migrate(path: Path) -> None:
    """An SQLite file created or brought up to the current schema (tests, benchmarks)."""
    from sqlite_utils import Database

    from receiver.store.schema import migrations
    from receiver.store.writer import connect

    path.parent.mkdir(parents=True, exist_ok=True)
    conn = connect(path)
    try:
        migrations.apply(Database(conn))
    finally:
        conn.close()


class Store:
    def __init__(
        self,
        path: Path,
        *,
        route: Route,
        database_url: str | None = None,
        instance: str | None = None,
        synchronous: str = "FULL",
        readers: int = 4,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = path
        self.route = route
        self.clock = clock
        self.engine: Engine
        # Whether other replicas may share the database: work is then claimed with leases.
        self.shared = database_url is not None
        # This replica's name: on the work it claims, and in its metrics.
        self.instance = instance or replica_name()
        if database_url is not None:
            from receiver.store.postgres import PostgresEngine

            self.engine = PostgresEngine(database_url, owner=self.instance)
        else:
            self.engine = SqliteEngine(path, synchronous=synchronous, readers=readers)
        self._beat: asyncio.Future[None] | None = None
        self._open = False
        # The work this replica has claimed and is doing: (table, key column) -> keys.
        self._held: dict[tuple[str, str], set[Any]] = {}
        self._renewing: asyncio.Task[None] | None = None

    @property
    def writer(self) -> Writer:
        """The SQLite engine's writer thread (for what only SQLite has)."""
        if not isinstance(self.engine, SqliteEngine):
            raise TypeError("only the SQLite engine has a writer thread")
        return self.engine.writer

    @property
    def listeners(self) -> list[Listener]:
        """Told what each commit marked (``db.Db.mark``), on this replica or another."""
        return self.engine.listeners

    @property
    def running(self) -> bool:
        return self.engine.running

    def open(self) -> Store:
        """Check, upgrade and prove writable the database, then start the SQLite writer.

        Raises DatabaseUnusable (DatabaseInUse when another process holds an SQLite
        file) with one line that says what to do. Opening an open store does nothing.
        """
        if not self._open:
            self.engine.open(self.clock())
            self._open = True
        return self

    async def start(self) -> None:
        """Open, then start what needs the event loop (PostgreSQL's pool and wake-ups)."""
        if not self._open:
            await asyncio.to_thread(self.open)
        await self.engine.start()
        if self.shared and self._renewing is None:
            self._renewing = asyncio.create_task(self._renew(), name="vidhook-leases")

    async def stop(self) -> None:
        if self._renewing is not None:
            self._renewing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewing
            self._renewing = None
        await self.engine.stop()
        await asyncio.to_thread(self.close)

    def close(self) -> None:
        self.engine.close()
        self._open = False

    # -- plumbing --

    async def read(self, fn: Callable[..., Coroutine[Any, Any, T]], *args: Any, **kwargs: Any) -> T:
        """Run the read operation ``fn(db, *args, **kwargs)``, in one transaction."""
        return await self.engine.read(lambda db: fn(db, *args, **kwargs))

    async def take(self, fn: Callable[..., Coroutine[Any, Any, T]], *args: Any, **kwargs: Any) -> T:
        """Run ``fn(db, *args, **kwargs)``, an operation that claims work (``claims``): a
        read with SQLite, where the one service keeps its work in flight in memory; a
        write with PostgreSQL, where the claims are rows that other replicas see."""
        if self.shared:
            return await self.engine.write(lambda db: fn(db, *args, **kwargs))
        return await self.read(fn, *args, **kwargs)

    def hold(self, table: str, key: str, keys: Iterable[Any]) -> None:
        """This replica works on ``keys`` of ``table``: their leases are renewed until
        ``let_go``."""
        if self.shared:
            self._held.setdefault((table, key), set()).update(keys)

    def let_go(self, table: str, key: str, keys: Iterable[Any]) -> None:
        held = self._held.get((table, key))
        if held is not None:
            held.difference_update(keys)

    async def _renew(self) -> None:
        while True:
            await asyncio.sleep(claims.RENEW_EVERY)
            for (table, key), held in list(self._held.items()):
                keys = sorted(held)
                if not keys:
                    continue
                now = self.clock()
                try:
                    await self.write(
                        partial(claims.renew, table=table, key=key, held=keys, now=now)
                    )
                except Exception as exc:  # an outage is logged by the engine; try again
                    log.warning("renewing %d leases on %s failed: %s", len(keys), table, exc)

    def budget(self, provider: str) -> ProviderBudget:
        """``provider``'s request budget, shared with the other replicas (PostgreSQL)."""
        return ProviderBudget(self, provider)

    async def write(self, op: Operation[T]) -> T:
        """Run the write operation ``op(db)`` in a transaction; returns once committed."""
        return await self.engine.write(op)

    def _op(
        self, fn: Callable[..., Coroutine[Any, Any, T]], *args: Any, **kwargs: Any
    ) -> asyncio.Future[T]:
        """``fn(db, *args, now=..., route=..., **kwargs)``, on its way to the engine now."""
        return self.engine.write(
            lambda db: fn(db, *args, now=self.clock(), route=self.route, **kwargs)
        )

    # -- writes --

    async def insert_job(self, job: NewJob) -> None:
        await self._op(jobs.insert_job, job)

    async def apply(
        self,
        job_id: str,
        obs: Observation,
        source: str,
        detail: Mapping[str, Any] | None = None,
    ) -> Applied:
        return await self._op(jobs.apply, job_id, obs, source, detail=detail)

    async def record_submission(
        self, job_id: str, submission: Submission, *, next_poll_at: float | None
    ) -> Applied:
        return await self._op(jobs.record_submission, job_id, submission, next_poll_at=next_poll_at)

    async def record_token_callback(
        self, provider: str, token: str, admit: Callable[[CallbackTarget], AdmittedCallback]
    ) -> tuple[str, CallbackOutcome, AdmittedCallback]:
        """The callback's job looked up, ``admit`` run and the callback stored, in one write.

        ``admit`` runs on the writer thread, inside the transaction; what it raises (and
        UnknownToken) reaches the caller, with nothing written.
        """
        return await self._op(
            jobs.record_token_callback, provider=provider, token=token, admit=admit
        )

    async def record_task_callback(
        self, provider: str, task_id: str, admit: Callable[[CallbackTarget], AdmittedCallback]
    ) -> tuple[str, CallbackOutcome, AdmittedCallback]:
        """As record_token_callback, the job found by its provider task (an account-level
        webhook); UnknownTask when no job has it."""
        return await self._op(
            jobs.record_task_callback, provider=provider, task_id=task_id, admit=admit
        )

    async def record_poll(self, job_id: str, obs: Observation, *, next_poll_at: float) -> Applied:
        return await self._op(jobs.record_poll, job_id, obs, next_poll_at=next_poll_at)

    async def record_poll_failure(self, job_id: str, *, next_poll_at: float) -> int:
        return await self.write(
            lambda db: jobs.record_poll_failure(db, job_id, next_poll_at=next_poll_at)
        )

    async def schedule_poll(self, job_id: str, at: float) -> bool:
        return await self.write(lambda db: jobs.schedule_poll(db, job_id, at))

    async def defer_provider(self, provider: str, until: float) -> int:
        return await self.write(lambda db: jobs.defer_provider(db, provider, until))

    async def spread_overdue(self, provider: str, window: float, min_step: float) -> int:
        now = self.clock()
        return await self.write(lambda db: jobs.spread_overdue(db, provider, now, window, min_step))

    # -- submissions the provider has not taken yet --

    async def start_submission(self, job_id: str) -> int | None:
        now = self.clock()
        return await self.write(lambda db: submissions.start(db, job_id, now))

    async def schedule_submission(self, job_id: str, at: float, error: str) -> bool:
        now = self.clock()
        return await self.write(lambda db: submissions.schedule(db, job_id, at, error, now))

    async def fail_submission(self, job_id: str, error: str, detail: Mapping[str, Any]) -> Applied:
        return await self._op(submissions.fail, job_id, error, detail)

    async def due_submissions(
        self, room: Mapping[str, int], skip: list[str]
    ) -> tuple[dict[str, list[dict[str, Any]]], float | None]:
        return await self.read(submissions.due, self.clock(), room, skip)

    async def interrupted_submissions(self, before: float) -> list[dict[str, Any]]:
        return await self.read(submissions.interrupted, before, self.clock())

    async def resume_submission(self, job_id: str, submitting_at: float) -> bool:
        now = self.clock()
        return await self.write(lambda db: submissions.resume(db, job_id, submitting_at, now))

    async def purge_nonces(self) -> int:
        now = self.clock()
        return await self.write(lambda db: jobs.purge_nonces(db, now))

    async def ping(self) -> None:
        """An empty commit: once it returns, every earlier write of this replica is in."""
        await self.write(lambda db: db.one("SELECT 1"))

    async def writable(self) -> bool:
        """False while the database refuses writes: after a refusal, until a heartbeat passes."""
        return self.engine.outage is None or await self.heartbeat(PROBE_WAIT) is None

    async def heartbeat(self, timeout: float) -> str | None:
        """Prove the database takes writes: None once a write committed, else what is wrong.

        Never waits longer than ``timeout``. Callers at the same moment share one write (and
        that write shares its commit with whatever else is queued), so a flood of probes
        keeps at most one heartbeat in the writer's queue.
        """
        engine = self.engine
        if not engine.running:
            return "the store is closed"
        if self._beat is None or self._beat.done():
            now = self.clock()
            self._beat = engine.write(lambda db: heartbeat.beat(db, now))
            # Retrieved here, so that a beat every caller gave up on is not reported unseen.
            self._beat.add_done_callback(lambda f: f.cancelled() or f.exception())
        try:
            async with asyncio.timeout(timeout):
                await asyncio.shield(self._beat)
        except TimeoutError:
            outage = engine.outage
            why = f" ({outage.reason})" if outage is not None else ""
            return f"a write waited more than {timeout:g} s{why}"
        except DatabaseUnavailable as exc:
            return exc.reason
        return None

    # -- the outbox --

    async def due_deliveries_with_sources(self, channel: str, limit: int) -> list[dict[str, Any]]:
        """Each due delivery with its ``job`` and ``transition``, claimed, in one trip."""
        return await self.take(outbox.due_with_sources, channel, self.clock(), limit)

    async def next_delivery_due(self) -> dict[str, float]:
        return await self.read(outbox.next_due, self.clock())

    async def delivery_source(self, delivery_id: int) -> dict[str, Any] | None:
        return await self.read(outbox.event_source, delivery_id)

    async def record_attempt(self, delivery_id: int, **fields: Any) -> None:
        await self.queue_attempt(delivery_id, **fields)

    def queue_attempt(self, delivery_id: int, **fields: Any) -> asyncio.Future[None]:
        """``record_attempt`` handed to the writer at once; the future resolves when committed."""
        now = self.clock()
        return self.engine.write(
            lambda db: outbox.record_attempt(db, delivery_id, now=now, **fields)
        )

    async def disable_channel(
        self, delivery_id: int, reason: str, fingerprint: str, **attempt: Any
    ) -> int:
        """The delivery's attempt found its destination gone: recorded, the delivery held,
        and its channel disabled with its other pending deliveries held, in one write."""
        now = self.clock()

        async def run(db: Db) -> int:
            channel = await outbox.record_held_attempt(db, delivery_id, reason, now=now, **attempt)
            return await outbox.disable_channel(db, channel, reason, fingerprint, now)

        return await self.write(run)

    async def hold_deliveries(self, channel: str) -> int:
        now = self.clock()
        return await self.write(lambda db: outbox.hold_if_disabled(db, channel, now))

    async def settle_channels(self, configured: Mapping[str, str]) -> outbox.ChannelsAtStart:
        """Disabled channels and held deliveries brought in line with the configured
        channels (name -> configuration fingerprint); written only if something changes."""
        found = await self.read(outbox.settled_channels, configured)
        if found is not None:
            return found
        now = self.clock()
        return await self.write(lambda db: outbox.settle_channels(db, configured, now))

    async def requeue_deliveries(self, channels: list[str]) -> outbox.Requeued:
        now = self.clock()
        return await self.write(lambda db: outbox.requeue_all(db, channels, now))

    async def requeue_delivery(self, delivery_id: int) -> dict[str, Any] | None:
        now = self.clock()
        return await self.write(lambda db: outbox.requeue(db, delivery_id, now))

    async def list_deliveries(
        self, *, status: str | None, before: int | None, limit: int
    ) -> list[dict[str, Any]]:
        return await self.read(outbox.list_deliveries, status=status, before=before, limit=limit)

    async def delivery_attempts(self, delivery_id: int) -> list[dict[str, Any]]:
        return await self.read(outbox.attempts, delivery_id)

    # -- the archive --

    async def due_downloads(self, limit: int, skip: list[str]) -> list[dict[str, Any]]:
        return await self.take(media.due, self.clock(), limit, skip)

    async def next_download_due(self, skip: list[str]) -> float | None:
        return await self.read(media.next_due, skip, self.clock())

    async def record_file(self, job_id: str, kind: str, **fields: Any) -> None:
        now = self.clock()
        await self.write(lambda db: media.record_file(db, job_id, kind, now=now, **fields))

    async def retry_download(self, job_id: str, error: str, next_attempt_at: float) -> None:
        now = self.clock()
        await self.write(
            lambda db: media.retry(
                db, job_id, error=error, next_attempt_at=next_attempt_at, now=now
            )
        )

    async def finish_download(self, job_id: str, status: str, error: str | None) -> None:
        now = self.clock()
        await self.write(lambda db: media.finish(db, job_id, status=status, error=error, now=now))

    async def requeue_download(self, job_id: str) -> None:
        now = self.clock()
        await self.write(lambda db: media.requeue(db, job_id, now))

    async def switch_off_downloads(self) -> int:
        now = self.clock()
        return await self.write(lambda db: media.switch_off(db, now))

    async def backfill_downloads(self, lifetimes: Mapping[str, float | None]) -> int:
        now = self.clock()
        return await self.write(lambda db: media.backfill(db, now, lifetimes))

    async def prunable_files(self, before: float, limit: int) -> list[dict[str, Any]]:
        return await self.read(media.prunable, before, limit)

    async def mark_pruned(self, pruned: list[tuple[str, str]], keep_days: float) -> None:
        now = self.clock()
        await self.write(lambda db: media.mark_pruned(db, pruned, keep_days, now))

    async def kept_file(self, job_id: str, kind: str) -> dict[str, Any] | None:
        return await self.read(media.file, job_id, kind)

    async def archive_summary(self) -> dict[str, Any]:
        return await self.read(media.summary)

    async def download_status(self, job_id: str) -> dict[str, Any] | None:
        return await self.read(media.status, job_id)

    async def defer_delivery(self, delivery_id: int, until: float) -> bool:
        now = self.clock()
        return await self.write(lambda db: media.defer_delivery(db, delivery_id, until, now))

    # -- reads --

    async def has_callback_token(self, provider: str, token: str) -> bool:
        """Whether a job of ``provider`` has ``token``; cheap, for before a body is read."""
        return await self.engine.has_token(provider, token)

    async def get_job(self, job_id: str) -> dict[str, Any] | None:
        return await self.read(queries.get_job, job_id)

    async def list_jobs(self, **filters: Any) -> list[dict[str, Any]]:
        async def page(db: Db) -> list[dict[str, Any]]:
            rows = await queries.list_jobs(db, **filters)
            await media.attach(db, rows)
            return rows

        return await self.read(page)

    async def job_detail(self, job_id: str) -> dict[str, Any] | None:
        return await self.read(lambda db: _one_detail(db, job_id))

    # -- the events log --

    async def event_position(self) -> int:
        return await self.read(events.position)

    async def read_events(
        self,
        after: int,
        limit: int,
        shape: Callable[[EventRows], T],
        *,
        until: int | None = None,
        job: str | None = None,
    ) -> T:
        """The events after ``after`` (up to ``until``, at most ``limit``, of ``job`` only
        when given) with their jobs in full, read in one snapshot (a read is one
        transaction) and handed to ``shape`` (on the reader thread, with SQLite)."""

        async def read(db: Db) -> T:
            rows = await events.after(db, after, limit, until, job)
            found = EventRows(
                rows=rows,
                jobs=await detail.details(db, (job_id for _id, job_id in rows)),
                pruned_through=await events.pruned_through(db),
            )
            return shape(found)

        return await self.read(read)

    async def count_events(self, after: int, until: int, at_most: int) -> int:
        """How many events there are after ``after`` up to ``until``, counting no further
        than ``at_most``."""

        async def count(db: Db) -> int:
            return len(await events.after(db, after, at_most, until))

        return await self.read(count)

    async def prune_events(self, before: float, limit: int) -> int:
        return await self.write(lambda db: events.prune(db, before, limit))


async def _one_detail(db: Db, job_id: str) -> dict[str, Any] | None:
    return (await detail.details(db, [job_id])).get(job_id)


class ProviderBudget:
    """A provider's rate and pauses kept in the database (``budgets``), for its Gate."""

    def __init__(self, store: Store, provider: str) -> None:
        self.store = store
        self.provider = provider

    async def take(self, spacing: float) -> tuple[bool, float, float]:
        taken, until_turn, until_open, answered = await self.store.write(
            partial(budgets.take, provider=self.provider, spacing=spacing)
        )
        spent = time.monotonic() - answered  # the commit, and the way back here
        return taken, until_turn - spent, until_open - spent

    async def block(self, seconds: float) -> None:
        await self.store.write(partial(budgets.block, provider=self.provider, seconds=seconds))

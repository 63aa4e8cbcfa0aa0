"""The only part of vidhook that speaks SQL.

Writes go through one writer thread (group commit, see ``writer``); reads run on a small
pool of reader connections. The event loop never waits on SQLite directly. An open store
holds its database's lock (``lock``): one file, one service.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from sqlite_utils import Database

from receiver.providers.base import Observation, Submission
from receiver.store import detail, events, health, jobs, lock, media, outbox, queries, submissions
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
from receiver.store.probe import TokenProbe
from receiver.store.schema import migrations
from receiver.store.writer import Writer, connect

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
    "migrate",
]

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


def migrate(path: Path) -> None:
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
        synchronous: str = "FULL",
        readers: int = 4,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = path
        self.route = route
        self.clock = clock
        self.writer = Writer(path, synchronous)
        self.probe = TokenProbe(path)
        self._readers = ThreadPoolExecutor(readers, thread_name_prefix="vidhook-reader")
        self._local = threading.local()
        self._reader_conns: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._database_lock: lock.DatabaseLock | None = None
        self._beat: asyncio.Future[None] | None = None

    def open(self) -> Store:
        """Lock, check, upgrade and prove writable the database, then start the writer.

        Raises DatabaseUnusable (DatabaseInUse when another process holds the file) with
        one line that says what to do. Opening an open store does nothing.
        """
        if self._database_lock is not None:
            return self
        health.make_folder(self.path)
        held = lock.hold(self.path)
        try:
            health.prepare(self.path, self.clock())
            self.writer.start()
            self.probe.start()
        except BaseException:
            held.release()
            raise
        self._database_lock = held
        return self

    def close(self) -> None:
        self.probe.stop()
        self.writer.stop()
        self._readers.shutdown(wait=True)
        with self._lock:
            for conn in self._reader_conns:
                conn.close()
            self._reader_conns.clear()
        if self._database_lock is not None:
            self._database_lock.release()
            self._database_lock = None

    # -- plumbing --

    def _reader(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = connect(self.path)
            self._local.conn = conn
            with self._lock:
                self._reader_conns.append(conn)
        return conn

    def _read_sync(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return fn(self._reader(), *args, **kwargs)

    async def read(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._readers, partial(self._read_sync, fn, *args, **kwargs)
        )

    async def write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return await self.writer.run(fn)

    async def _op(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        def run(conn: sqlite3.Connection) -> T:
            return fn(conn, *args, now=self.clock(), route=self.route, **kwargs)

        return await self.writer.run(run)

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
            lambda conn: jobs.record_poll_failure(conn, job_id, next_poll_at=next_poll_at)
        )

    async def schedule_poll(self, job_id: str, at: float) -> bool:
        return await self.write(lambda conn: jobs.schedule_poll(conn, job_id, at))

    async def defer_provider(self, provider: str, until: float) -> int:
        return await self.write(lambda conn: jobs.defer_provider(conn, provider, until))

    async def spread_overdue(self, provider: str, window: float, min_step: float) -> int:
        now = self.clock()
        return await self.write(
            lambda conn: jobs.spread_overdue(conn, provider, now, window, min_step)
        )

    # -- submissions the provider has not taken yet --

    async def start_submission(self, job_id: str) -> int | None:
        now = self.clock()
        return await self.write(lambda conn: submissions.start(conn, job_id, now))

    async def schedule_submission(self, job_id: str, at: float, error: str) -> bool:
        now = self.clock()
        return await self.write(lambda conn: submissions.schedule(conn, job_id, at, error, now))

    async def fail_submission(self, job_id: str, error: str, detail: Mapping[str, Any]) -> Applied:
        return await self._op(submissions.fail, job_id, error, detail)

    async def due_submissions(
        self, room: Mapping[str, int], skip: list[str]
    ) -> tuple[dict[str, list[dict[str, Any]]], float | None]:
        return await self.read(submissions.due, self.clock(), room, skip)

    async def interrupted_submissions(self, before: float) -> list[dict[str, Any]]:
        return await self.read(submissions.interrupted, before)

    async def resume_submission(self, job_id: str) -> bool:
        now = self.clock()
        return await self.write(lambda conn: submissions.resume(conn, job_id, now))

    async def purge_nonces(self) -> int:
        now = self.clock()
        return await self.write(lambda conn: jobs.purge_nonces(conn, now))

    async def ping(self) -> None:
        """An empty commit through the writer: once it returns, every earlier write is in."""
        await self.write(lambda conn: conn.execute("SELECT 1").fetchone())

    async def writable(self) -> bool:
        """False while the database refuses writes: after a refusal, until a heartbeat passes."""
        return self.writer.outage is None or await self.heartbeat(PROBE_WAIT) is None

    async def heartbeat(self, timeout: float) -> str | None:
        """Prove the database takes writes: None once a write committed, else what is wrong.

        Never waits longer than ``timeout``. Callers at the same moment share one write (and
        that write shares its commit with whatever else is queued), so a flood of probes
        keeps at most one heartbeat in the writer's queue.
        """
        writer = self.writer
        if not writer.running:
            return "the store is closed"
        if self._beat is None or self._beat.done():
            now = self.clock()
            self._beat = writer.enqueue(lambda conn: health.beat(conn, now))
            # Retrieved here, so that a beat every caller gave up on is not reported unseen.
            self._beat.add_done_callback(lambda f: f.cancelled() or f.exception())
        try:
            async with asyncio.timeout(timeout):
                await asyncio.shield(self._beat)
        except TimeoutError:
            outage = writer.outage
            why = f" ({outage.reason})" if outage is not None else ""
            return f"a write waited more than {timeout:g} s{why}"
        except DatabaseUnavailable as exc:
            return exc.reason
        return None

    # -- the outbox --

    async def due_deliveries_with_sources(self, channel: str, limit: int) -> list[dict[str, Any]]:
        """Each due delivery with its ``job`` and ``transition``, in one read."""
        return await self.read(outbox.due_with_sources, channel, self.clock(), limit)

    async def next_delivery_due(self) -> dict[str, float]:
        return await self.read(outbox.next_due)

    async def delivery_source(self, delivery_id: int) -> dict[str, Any] | None:
        return await self.read(outbox.event_source, delivery_id)

    async def record_attempt(self, delivery_id: int, **fields: Any) -> None:
        await self.queue_attempt(delivery_id, **fields)

    def queue_attempt(self, delivery_id: int, **fields: Any) -> asyncio.Future[None]:
        """``record_attempt`` handed to the writer at once; the future resolves when committed."""
        now = self.clock()
        return self.writer.enqueue(
            lambda conn: outbox.record_attempt(conn, delivery_id, now=now, **fields)
        )

    async def disable_channel(
        self, delivery_id: int, reason: str, fingerprint: str, **attempt: Any
    ) -> int:
        """The delivery's attempt found its destination gone: recorded, the delivery held,
        and its channel disabled with its other pending deliveries held, in one write."""
        now = self.clock()

        def run(conn: sqlite3.Connection) -> int:
            channel = outbox.record_held_attempt(conn, delivery_id, reason, now=now, **attempt)
            return outbox.disable_channel(conn, channel, reason, fingerprint, now)

        return await self.write(run)

    async def hold_deliveries(self, channel: str) -> int:
        now = self.clock()
        return await self.write(lambda conn: outbox.hold_if_disabled(conn, channel, now))

    async def settle_channels(self, configured: Mapping[str, str]) -> outbox.ChannelsAtStart:
        """Disabled channels and held deliveries brought in line with the configured
        channels (name -> configuration fingerprint); written only if something changes."""
        found = await self.read(outbox.settled_channels, configured)
        if found is not None:
            return found
        now = self.clock()
        return await self.write(lambda conn: outbox.settle_channels(conn, configured, now))

    async def requeue_deliveries(self, channels: list[str]) -> outbox.Requeued:
        now = self.clock()
        return await self.write(lambda conn: outbox.requeue_all(conn, channels, now))

    async def requeue_delivery(self, delivery_id: int) -> dict[str, Any] | None:
        now = self.clock()
        return await self.write(lambda conn: outbox.requeue(conn, delivery_id, now))

    async def list_deliveries(
        self, *, status: str | None, before: int | None, limit: int
    ) -> list[dict[str, Any]]:
        return await self.read(outbox.list_deliveries, status=status, before=before, limit=limit)

    async def delivery_attempts(self, delivery_id: int) -> list[dict[str, Any]]:
        return await self.read(outbox.attempts, delivery_id)

    # -- the archive --

    async def due_downloads(self, limit: int, skip: list[str]) -> list[dict[str, Any]]:
        return await self.read(media.due, self.clock(), limit, skip)

    async def next_download_due(self, skip: list[str]) -> float | None:
        return await self.read(media.next_due, skip)

    async def record_file(self, job_id: str, kind: str, **fields: Any) -> None:
        now = self.clock()
        await self.write(lambda conn: media.record_file(conn, job_id, kind, now=now, **fields))

    async def retry_download(self, job_id: str, error: str, next_attempt_at: float) -> None:
        now = self.clock()
        await self.write(
            lambda conn: media.retry(
                conn, job_id, error=error, next_attempt_at=next_attempt_at, now=now
            )
        )

    async def finish_download(self, job_id: str, status: str, error: str | None) -> None:
        now = self.clock()
        await self.write(
            lambda conn: media.finish(conn, job_id, status=status, error=error, now=now)
        )

    async def requeue_download(self, job_id: str) -> None:
        now = self.clock()
        await self.write(lambda conn: media.requeue(conn, job_id, now))

    async def switch_off_downloads(self) -> int:
        now = self.clock()
        return await self.write(lambda conn: media.switch_off(conn, now))

    async def backfill_downloads(self, lifetimes: Mapping[str, float | None]) -> int:
        now = self.clock()
        return await self.write(lambda conn: media.backfill(conn, now, lifetimes))

    async def prunable_files(self, before: float, limit: int) -> list[dict[str, Any]]:
        return await self.read(media.prunable, before, limit)

    async def mark_pruned(self, pruned: list[tuple[str, str]], keep_days: float) -> None:
        now = self.clock()
        await self.write(lambda conn: media.mark_pruned(conn, pruned, keep_days, now))

    async def kept_file(self, job_id: str, kind: str) -> dict[str, Any] | None:
        return await self.read(media.file, job_id, kind)

    async def archive_summary(self) -> dict[str, Any]:
        return await self.read(media.summary)

    async def download_status(self, job_id: str) -> dict[str, Any] | None:
        return await self.read(media.status, job_id)

    async def defer_delivery(self, delivery_id: int, until: float) -> bool:
        now = self.clock()
        return await self.write(lambda conn: media.defer_delivery(conn, delivery_id, until, now))

    # -- reads --

    async def has_callback_token(self, provider: str, token: str) -> bool:
        """Whether a job of ``provider`` has ``token``; cheap, for before a body is read."""
        return await self.probe.has_token(provider, token)

    async def get_job(self, job_id: str) -> dict[str, Any] | None:
        return await self.read(queries.get_job, job_id)

    async def list_jobs(self, **filters: Any) -> list[dict[str, Any]]:
        def page(conn: sqlite3.Connection) -> list[dict[str, Any]]:
            rows = queries.list_jobs(conn, **filters)
            media.attach(conn, rows)
            return rows

        return await self.read(page)

    async def job_detail(self, job_id: str) -> dict[str, Any] | None:
        return await self.read(lambda conn: detail.details(conn, [job_id]).get(job_id))

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
        when given) with their jobs in full, read in one snapshot and handed to ``shape``
        on the reader thread."""

        def read(conn: sqlite3.Connection) -> T:
            conn.execute("BEGIN")
            try:
                rows = events.after(conn, after, limit, until, job)
                found = EventRows(
                    rows=rows,
                    jobs=detail.details(conn, (job_id for _id, job_id in rows)),
                    pruned_through=events.pruned_through(conn),
                )
            finally:
                conn.execute("COMMIT")
            return shape(found)

        return await self.read(read)

    async def count_events(self, after: int, until: int, at_most: int) -> int:
        """How many events there are after ``after`` up to ``until``, counting no further
        than ``at_most``."""
        return await self.read(lambda conn: len(events.after(conn, after, at_most, until)))

    async def prune_events(self, before: float, limit: int) -> int:
        return await self.write(lambda conn: events.prune(conn, before, limit))

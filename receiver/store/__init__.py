"""The only part of vidhook that speaks SQL.

Writes go through one writer thread (group commit, see ``writer``); reads run on a small
pool of reader connections. The event loop never waits on SQLite directly.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from sqlite_utils import Database

from receiver.providers.base import Observation, Submission
from receiver.store import jobs, media, outbox, queries
from receiver.store.jobs import (
    AdmittedCallback,
    Applied,
    CallbackOutcome,
    CallbackTarget,
    JobNotFound,
    NewJob,
    Route,
    UnknownToken,
)
from receiver.store.schema import migrations
from receiver.store.writer import Writer, connect

__all__ = [
    "AdmittedCallback",
    "Applied",
    "CallbackOutcome",
    "CallbackTarget",
    "JobNotFound",
    "NewJob",
    "Store",
    "UnknownToken",
    "migrate",
]

T = TypeVar("T")


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
        self._readers = ThreadPoolExecutor(readers, thread_name_prefix="vidhook-reader")
        self._local = threading.local()
        self._reader_conns: list[sqlite3.Connection] = []
        self._lock = threading.Lock()

    def open(self) -> Store:
        migrate(self.path)
        self.writer.start()
        return self

    def close(self) -> None:
        self.writer.stop()
        self._readers.shutdown(wait=True)
        with self._lock:
            for conn in self._reader_conns:
                conn.close()
            self._reader_conns.clear()

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

    async def purge_nonces(self) -> int:
        now = self.clock()
        return await self.write(lambda conn: jobs.purge_nonces(conn, now))

    async def ping(self) -> None:
        """Prove the database takes writes: an empty transaction through the writer."""
        await self.write(lambda conn: conn.execute("SELECT 1").fetchone())

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

    async def disable_channel(self, name: str, reason: str, fingerprint: str) -> None:
        now = self.clock()
        await self.write(lambda conn: outbox.disable_channel(conn, name, reason, fingerprint, now))

    async def enable_channel(self, name: str) -> bool:
        return await self.write(lambda conn: outbox.enable_channel(conn, name))

    async def channel_states(self) -> list[dict[str, Any]]:
        return await self.read(outbox.channel_states)

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

    async def get_job(self, job_id: str) -> dict[str, Any] | None:
        return await self.read(queries.get_job, job_id)

    async def list_jobs(self, **filters: Any) -> list[dict[str, Any]]:
        def page(conn: sqlite3.Connection) -> list[dict[str, Any]]:
            rows = queries.list_jobs(conn, **filters)
            media.attach(conn, rows)
            return rows

        return await self.read(page)

    async def job_detail(self, job_id: str) -> dict[str, Any] | None:
        def detail(conn: sqlite3.Connection) -> dict[str, Any] | None:
            job = queries.get_job(conn, job_id)
            if job is not None:
                job["transitions"] = queries.transitions(conn, job_id)
                job["deliveries"] = queries.deliveries(conn, job_id)
                job["callbacks"] = queries.callbacks(conn, job_id)
                media.attach(conn, [job])
            return job

        return await self.read(detail)

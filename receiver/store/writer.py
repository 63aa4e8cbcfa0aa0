"""One thread owns the write connection and commits concurrent requests together.

Requests queue up while a commit is on its way to disk; the next round takes all of them
into one transaction, each inside its own savepoint, so one request that fails is rolled
back alone and the others still commit. A request's future resolves only after COMMIT
returned, which with synchronous=FULL means the data is on disk.

Requests from the event loop (``run``) are answered in one callback per batch: the loop
is woken once per commit rather than once per request, which under a burst of callbacks
saved a wake-up (a write to the loop's self-pipe, and a turn of the GIL) per request.

After each commit the listeners are told which tables the batch's requests marked
(``mark``), so that one waiting for, say, new deliveries can ignore the other commits,
and, where a request said so, which part ("deliveries:team": deliveries for "team").
A request that marked a table and was then rolled back still counts: a listener may be
told of a change that did not happen, never left untold of one that did.

When the database itself refuses a batch (locked by another program past the busy
timeout, read-only, full, failing), nothing of the batch is stored and every request in
it, and every request that queued while it waited, fails with DatabaseUnavailable: the
HTTP layer answers 503 with Retry-After, and the provider sends the callback again. The
log says so once when it begins and once when a commit succeeds again.

What must happen only for what was really stored (a log line saying a job finished) is
handed to ``on_commit``: it runs after the COMMIT, and is dropped with its request if
that request is rolled back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Set
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

from receiver.store.db import Params, Row
from receiver.store.engine import Outage
from receiver.store.errors import DatabaseUnavailable, is_busy, is_database_failure

log = logging.getLogger("vidhook.store")

T = TypeVar("T")
MAX_BATCH = 512
# How long a statement waits for another connection's write lock. Only a program other
# than this service ever holds it (the service writes through this one connection; its
# readers take no write lock in WAL mode), briefly for a checkpoint or a short
# transaction. Past that, it is stuck, and a callback is better answered 503 at once
# than after the provider's own timeout (often 10 to 30 s): a 503 says "send it again",
# a timeout leaves the provider unsure. Requests then wait at most this long.
BUSY_TIMEOUT = 5.0
# Retry-After of a refused write: a lock may be gone soon; a full or read-only disk is not.
RETRY_BUSY = 5
RETRY_FAILING = 60
_STOP = object()
# Whoever waits for a request: a thread (submit) or an event loop (run).
Waiter = Future[Any] | asyncio.Future[Any]


class Connection(sqlite3.Connection):
    """A connection that notes which tables the current batch marked as written, and
    what its requests asked to run once it is committed."""

    touched: set[str]
    committed: list[Callable[[], None]]


def mark(conn: sqlite3.Connection, table: str, key: str | None = None) -> None:
    """Note that this request wrote ``table`` (and, if given, which part of it: ``key``,
    told as "table:key"); the commit's listeners are told so."""
    if isinstance(conn, Connection):
        conn.touched.add(table)
        if key is not None:
            conn.touched.add(f"{table}:{key}")


def on_commit(conn: sqlite3.Connection, fn: Callable[[], None]) -> None:
    """Run ``fn`` on the writer thread once this request's writes are committed; never if
    they are rolled back. Keep it quick: the next batch waits for it."""
    if isinstance(conn, Connection):
        conn.committed.append(fn)


class SqliteDb:
    """``db.Db`` on an SQLite connection: each verb answers at once (see ``db.run_sync``)."""

    engine = "sqlite"
    owner: str | None = None
    # One writer at a time holds the whole database: nothing to lock row by row.
    for_update = ""
    skip_locked = ""
    __slots__ = ("conn",)

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    async def run(self, sql: str, params: Params = ()) -> int:
        return self.conn.execute(sql, params).rowcount

    async def run_many(self, sql: str, rows: Iterable[Params]) -> None:
        self.conn.executemany(sql, rows)

    async def insert(self, sql: str, params: Params = ()) -> int:
        rowid = self.conn.execute(sql, params).lastrowid
        assert rowid is not None
        return rowid

    async def one(self, sql: str, params: Params = ()) -> Row | None:
        row: Row | None = self.conn.execute(sql, params).fetchone()
        return row

    async def all(self, sql: str, params: Params = ()) -> list[Row]:
        return self.conn.execute(sql, params).fetchall()

    async def serialize(self, key: str) -> None:
        pass  # the writer's transaction already excludes every other

    def mark(self, table: str, key: str | None = None) -> None:
        mark(self.conn, table, key)

    def on_commit(self, fn: Callable[[], None]) -> None:
        on_commit(self.conn, fn)


def connect(
    path: Path, synchronous: str = "FULL", busy_timeout: float = BUSY_TIMEOUT
) -> Connection:
    # isolation_level=None: transactions are begun and ended explicitly, never implicitly.
    conn = Connection(
        str(path), isolation_level=None, check_same_thread=False, timeout=busy_timeout
    )
    conn.touched = set()
    conn.committed = []
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={synchronous}")
    conn.execute("PRAGMA foreign_keys=ON")
    return conn


class Writer:
    def __init__(
        self, path: Path, synchronous: str = "FULL", busy_timeout: float = BUSY_TIMEOUT
    ) -> None:
        self.path = path
        self.synchronous = synchronous
        self.busy_timeout = busy_timeout
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        # Taken to queue a request and to queue the stop: nothing is queued after the stop,
        # where no one would ever answer it.
        self._gate = threading.Lock()
        self._closing = False
        self.batches = 0
        self.requests = 0
        # Called on the writer thread after every commit with the tables its requests
        # marked (often none): keep them quick and thread-safe.
        self.listeners: list[Callable[[Set[str]], None]] = []
        # Set while the database refuses writes.
        self.outage: Outage | None = None

    def start(self) -> None:
        conn = connect(self.path, self.synchronous, self.busy_timeout)
        self._closing = False
        self._thread = threading.Thread(
            target=self._run, args=(conn,), name="vidhook-writer", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        with self._gate:
            if self._thread is None or self._closing:
                return
            self._closing = True
            self._queue.put(_STOP)
        self._thread.join(timeout=30)
        self._thread = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def submit(self, fn: Callable[[sqlite3.Connection], T]) -> Future[T]:
        future: Future[T] = Future()
        with self._gate:
            if self.running and not self._closing:
                self._queue.put((fn, future))
                return future
        future.set_exception(RuntimeError("the store is closed"))
        return future

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return await self.enqueue(fn)

    def enqueue(self, fn: Callable[[sqlite3.Connection], T]) -> asyncio.Future[T]:
        """Queue a request from the event loop now; the future resolves once it committed.

        ``run`` without the coroutine: the request is on its way before anything awaits
        it. Cancelling the future before the writer reaches the request withdraws it.
        """
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        with self._gate:
            if self.running and not self._closing:
                self._queue.put((fn, future))
                return future
        raise RuntimeError("the store is closed")

    def _run(self, conn: Connection) -> None:
        try:
            while True:
                first = self._queue.get()
                if first is _STOP:
                    return
                batch = [first]
                stop = False
                while len(batch) < MAX_BATCH:
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if item is _STOP:
                        stop = True
                        break
                    batch.append(item)
                failure = self._commit(conn, batch)
                if failure is not None:
                    # Those that queued meanwhile waited through the attempt that failed.
                    stop = self._refuse_queued(failure) or stop
                if stop:
                    return
        finally:
            conn.close()

    def _refuse_queued(self, failure: DatabaseUnavailable) -> bool:
        """Fail every request in the queue with ``failure``; True if a stop was queued."""
        refused: list[tuple[Waiter, bool, Any]] = []
        stop = False
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is _STOP:
                stop = True
                break
            refused.append((item[1], False, failure))
        if self.outage is not None:
            self.outage.refused += len(refused)
        _settle(refused)
        return stop

    def _commit(
        self, conn: Connection, batch: list[tuple[Any, Waiter]]
    ) -> DatabaseUnavailable | None:
        """Run and commit the batch; if the database refused it, the failure handed out."""
        outcomes: list[tuple[Waiter, bool, Any]] = []
        conn.touched.clear()
        conn.committed.clear()
        try:
            conn.execute("BEGIN IMMEDIATE")
            for fn, future in batch:
                if not _claim(future):
                    continue  # its caller gave up before it ran
                conn.execute("SAVEPOINT request")
                asked = len(conn.committed)
                try:
                    result = fn(conn)
                except BaseException as exc:  # handed to the caller, whatever it is
                    if is_database_failure(exc):
                        raise  # the whole batch's, not this request's
                    conn.execute("ROLLBACK TO request")
                    conn.execute("RELEASE request")
                    del conn.committed[asked:]
                    outcomes.append((future, False, exc))
                else:
                    conn.execute("RELEASE request")
                    outcomes.append((future, True, result))
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                # SQLite may have rolled back already after a full disk or an I/O error.
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            failure = DatabaseUnavailable(str(exc), RETRY_BUSY if is_busy(exc) else RETRY_FAILING)
            self._refused(failure, len(batch))
            _settle([(future, False, failure) for _fn, future in batch])
            return failure
        self.batches += 1
        self.requests += len(outcomes)
        if self.outage is not None:
            self._recovered(self.outage)
        touched = frozenset(conn.touched)
        _settle(outcomes)
        for fn in conn.committed:
            try:
                fn()
            except Exception:
                log.exception("an after-commit action failed")
        conn.committed.clear()
        for listener in self.listeners:
            try:
                listener(touched)
            except Exception:
                log.exception("a commit listener failed")
        return None

    def _refused(self, failure: DatabaseUnavailable, requests: int) -> None:
        if self.outage is None or self.outage.reason != failure.reason:
            self.outage = Outage(failure.reason)
            log.error(
                "database %s cannot take writes (%s): writes are refused, and answered 503 "
                "with Retry-After, until it can",
                self.path,
                failure.reason,
            )
        self.outage.refused += requests

    def _recovered(self, outage: Outage) -> None:
        self.outage = None
        log.warning(
            "database %s takes writes again after %.1f s (%d refused meanwhile)",
            self.path,
            time.monotonic() - outage.since,
            outage.refused,
        )


def _claim(future: Waiter) -> bool:
    """False if the request was cancelled before it ran; it must not run then."""
    if isinstance(future, Future):
        return future.set_running_or_notify_cancel()
    # Read from this thread: a cancel that lands just after is met in _resolve instead.
    return not future.cancelled()


def _settle(outcomes: list[tuple[Waiter, bool, Any]]) -> None:
    """Hand each outcome to its waiter: threads at once, each event loop in one callback."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[Waiter, bool, Any]]] = {}
    for outcome in outcomes:
        future = outcome[0]
        if isinstance(future, Future):
            _resolve([outcome])
        else:
            by_loop.setdefault(future.get_loop(), []).append(outcome)
    for loop, items in by_loop.items():
        # A closed loop raises RuntimeError: nobody is waiting there any more.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(_resolve, items)


def _resolve(outcomes: list[tuple[Waiter, bool, Any]]) -> None:
    for future, ok, value in outcomes:
        if future.done():  # cancelled meanwhile, or already failed
            continue
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)

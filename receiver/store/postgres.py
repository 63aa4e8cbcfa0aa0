"""The PostgreSQL engine: any number of replicas sharing one database server.

Each write is one transaction on a connection from psycopg's async pool, on the event
loop: the same operations as SQLite's (``db``), their ``?`` turned into psycopg's
placeholders. Rows one transaction is about to change are locked (``for_update``), so
two replicas applying to one job take turns and the second decides from what the first
stored; a transaction that lost a deadlock or a serialization check is run again.

What a commit marked (``Db.mark``) is sent with it as a NOTIFY on ``CHANNEL``: PostgreSQL
delivers a notification only once its transaction commits, to every replica listening,
this one included. Each replica keeps one connection listening and hands what it hears
to the store's listeners; after it lost that connection it tells them to look for
everything, as it may have missed something. The workers' idle wait is the backstop.

When the server cannot be reached or refuses writes, a write fails with
DatabaseUnavailable (503 with Retry-After), as with SQLite. The connection URL holds a
password: no message here quotes it (``where`` names the host and the database only).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Callable, Iterable
from functools import lru_cache
from typing import Any, TypeVar
from urllib.parse import urlsplit

import psycopg
from psycopg import errors
from psycopg.rows import RowMaker
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from receiver.store import pgschema
from receiver.store.db import Params, Row, run_sync
from receiver.store.engine import Listener, Operation, Outage
from receiver.store.errors import DatabaseUnavailable, DatabaseUnusable
from receiver.store.heartbeat import beat
from receiver.store.queries import has_callback_token

log = logging.getLogger("vidhook.store")

T = TypeVar("T")
CHANNEL = "vidhook"
# Told to the listeners when notifications may have been missed: look at everything.
EVERYTHING = frozenset({"deliveries", "downloads", "jobs"})
CONNECT_TIMEOUT = 10.0
POOL_SIZE = 10
# How long a write waits for a connection of the pool before it is refused (503).
POOL_WAIT = 5.0
RETRIES = 5  # runs of a transaction that lost a deadlock or a serialization check
RETRY_UNREACHABLE = 5
RETRY_FAILING = 30
# How long a statement waits for a lock another transaction holds, as SQLite's busy
# timeout (receiver.store.writer.BUSY_TIMEOUT): past it the write is refused (503) rather
# than left waiting for whatever holds it. Replicas hold a job's row for milliseconds.
LOCK_TIMEOUT_MS = 5000
LISTEN_BACKOFF = (0.5, 30.0)
REMEMBERED = 4096  # callback tokens known to exist, as the SQLite probe remembers them
MIN_VERSION = 13


class PgRow(tuple[Any, ...]):
    """A row by position and by column name, as sqlite3.Row reads."""

    __slots__ = ()
    _index: dict[str, int] = {}  # noqa: RUF012 (each subclass sets its own, once)
    _names: list[str] = []  # noqa: RUF012

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            return tuple.__getitem__(self, self._index[key])
        return tuple.__getitem__(self, key)

    def keys(self) -> list[str]:
        return self._names


_ROW_TYPES: dict[tuple[str, ...], type[PgRow]] = {}


def pg_row(cursor: Any) -> RowMaker[Any]:
    """psycopg's row factory for PgRow: one class per set of column names, made once."""
    description = cursor.description
    if description is None:
        return tuple
    names = tuple(column.name for column in description)
    kind = _ROW_TYPES.get(names)
    if kind is None:
        attrs = {"__slots__": (), "_index": {n: i for i, n in enumerate(names)}}
        kind = type("Row", (PgRow,), attrs | {"_names": list(names)})
        _ROW_TYPES[names] = kind
    return kind


@lru_cache(maxsize=4096)
def translate(sql: str) -> bytes:
    """SQLite's ``?`` placeholders as psycopg's ``%s`` (a literal ``%`` doubled)."""
    return sql.replace("%", "%%").replace("?", "%s").encode()


class _Marks:
    engine = "postgres"
    for_update = " FOR NO KEY UPDATE"
    skip_locked = " FOR UPDATE SKIP LOCKED"

    def __init__(self, owner: str | None) -> None:
        self.owner = owner
        self.touched: set[str] = set()
        self.committed: list[Callable[[], None]] = []

    def mark(self, table: str, key: str | None = None) -> None:
        self.touched.add(table)
        if key is not None:
            self.touched.add(f"{table}:{key}")

    def on_commit(self, fn: Callable[[], None]) -> None:
        self.committed.append(fn)


class PgDb(_Marks):
    """``db.Db`` on an async psycopg connection, inside its transaction."""

    def __init__(self, conn: psycopg.AsyncConnection[Any], owner: str | None) -> None:
        super().__init__(owner)
        self.conn = conn

    async def run(self, sql: str, params: Params = ()) -> int:
        cur = await self.conn.execute(translate(sql), params)
        return cur.rowcount

    async def run_many(self, sql: str, rows: Iterable[Params]) -> None:
        async with self.conn.cursor() as cur:
            await cur.executemany(translate(sql), list(rows))

    async def insert(self, sql: str, params: Params = ()) -> int:
        cur = await self.conn.execute(translate(sql + " RETURNING id"), params)
        row = await cur.fetchone()
        assert row is not None
        return int(row[0])

    async def one(self, sql: str, params: Params = ()) -> Row | None:
        cur = await self.conn.execute(translate(sql), params)
        row: Row | None = await cur.fetchone()
        return row

    async def all(self, sql: str, params: Params = ()) -> list[Row]:
        cur = await self.conn.execute(translate(sql), params)
        return await cur.fetchall()

    async def serialize(self, key: str) -> None:
        await self.conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (key,))


class PgSyncDb(_Marks):
    """The same on a plain connection, for the start (migrations, the first heartbeat)
    and the command line: run with ``db.run_sync``, as each call answers at once."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        super().__init__(None)
        self.conn = conn

    async def run(self, sql: str, params: Params = ()) -> int:
        return self.conn.execute(translate(sql), params).rowcount

    async def run_many(self, sql: str, rows: Iterable[Params]) -> None:
        with self.conn.cursor() as cur:
            cur.executemany(translate(sql), list(rows))

    async def insert(self, sql: str, params: Params = ()) -> int:
        row = self.conn.execute(translate(sql + " RETURNING id"), params).fetchone()
        assert row is not None
        return int(row[0])

    async def one(self, sql: str, params: Params = ()) -> Row | None:
        row: Row | None = self.conn.execute(translate(sql), params).fetchone()
        return row

    async def all(self, sql: str, params: Params = ()) -> list[Row]:
        return self.conn.execute(translate(sql), params).fetchall()

    async def serialize(self, key: str) -> None:
        self.conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (key,))


def described(url: str) -> str:
    """The database as messages name it: host, port and name, never the user or password."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or "localhost"
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "the PostgreSQL database"
    name = parts.path.lstrip("/") or "(default)"
    return f"PostgreSQL database {name} at {host}{port}"


def unavailable(exc: BaseException) -> DatabaseUnavailable:
    """A failure of the server, or of the way to it, in words that hold no secret."""
    if isinstance(exc, PoolTimeout):
        return DatabaseUnavailable("no connection to PostgreSQL could be had", RETRY_UNREACHABLE)
    sqlstate = getattr(exc, "sqlstate", None)
    if isinstance(exc, errors.ReadOnlySqlTransaction):
        return DatabaseUnavailable("PostgreSQL is read-only (a standby?)", RETRY_FAILING)
    if isinstance(exc, errors.DiskFull):
        return DatabaseUnavailable("PostgreSQL's disk is full", RETRY_FAILING)
    if isinstance(exc, errors.LockNotAvailable):
        return DatabaseUnavailable("a lock is held by another program", RETRY_UNREACHABLE)
    if sqlstate is None:
        return DatabaseUnavailable("the connection to PostgreSQL failed", RETRY_UNREACHABLE)
    return DatabaseUnavailable(
        f"PostgreSQL refused the write ({exc.__class__.__name__}, SQLSTATE {sqlstate})",
        RETRY_FAILING,
    )


def is_unavailable(exc: BaseException) -> bool:
    if isinstance(exc, errors.SerializationFailure | errors.DeadlockDetected):
        return False
    return isinstance(
        exc,
        PoolTimeout
        | psycopg.OperationalError
        | psycopg.InterfaceError
        | errors.ReadOnlySqlTransaction,
    )


def connect(url: str) -> psycopg.Connection[Any]:
    """A plain connection for the start and the command line; DatabaseUnusable if none."""
    try:
        return psycopg.connect(
            url, autocommit=True, row_factory=pg_row, connect_timeout=int(CONNECT_TIMEOUT)
        )
    except psycopg.Error as exc:
        raise DatabaseUnusable(
            f"cannot connect to {described(url)}: {_reason(exc)}; check that the server runs, "
            "that this machine may reach it, and the user, password and database name in the "
            "URL (database_url_env)"
        ) from None


def _reason(exc: psycopg.Error) -> str:
    # libpq's message names the host and port, never the password; its first line says why.
    text = str(exc).strip().splitlines()
    return " ".join(text[-1].split())[:200] if text else exc.__class__.__name__


def server_version(conn: psycopg.Connection[Any]) -> str:
    row = conn.execute("SHOW server_version").fetchone()
    return str(row[0]) if row else "unknown"


class PostgresEngine:
    name = "postgres"

    def __init__(self, url: str, *, owner: str, pool_size: int = POOL_SIZE) -> None:
        self._url = url
        # This replica's name on the work it claims (``claims``).
        self.owner = owner
        self.pool_size = pool_size
        self.listeners: list[Listener] = []
        self._outage: Outage | None = None
        self._pool: AsyncConnectionPool[Any] | None = None
        self._listening: asyncio.Task[None] | None = None
        self._known: dict[tuple[str, str], None] = {}
        self.version: str | None = None

    @property
    def where(self) -> str:
        return described(self._url)

    @property
    def running(self) -> bool:
        return self._pool is not None and not self._pool.closed

    @property
    def outage(self) -> Outage | None:
        return self._outage

    def open(self, now: float) -> None:
        with connect(self._url) as conn:
            try:
                number = conn.info.server_version // 10000
                if number < MIN_VERSION:
                    raise DatabaseUnusable(
                        f"{self.where} runs PostgreSQL {server_version(conn)}; vidhook needs "
                        f"{MIN_VERSION} or later"
                    )
                self.version = server_version(conn)
                applied = pgschema.migrate(conn)
                with conn.transaction():
                    run_sync(beat(PgSyncDb(conn), now))
            except psycopg.Error as exc:
                raise DatabaseUnusable(
                    f"{self.where} cannot be used: {_reason(exc)}; the user in the URL must "
                    "be able to create tables in the database and write to them"
                ) from None
        if applied:
            log.info("%s: applied %s", self.where, ", ".join(applied))

    async def start(self) -> None:
        if self._pool is not None:
            return
        pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
            self._url,
            min_size=min(2, self.pool_size),
            max_size=self.pool_size,
            kwargs={
                "autocommit": True,
                "row_factory": pg_row,
                "options": f"-c lock_timeout={LOCK_TIMEOUT_MS}",
            },
            timeout=POOL_WAIT,
            name="vidhook",
            open=False,
        )
        await pool.open(wait=True, timeout=CONNECT_TIMEOUT)
        self._pool = pool
        self._listening = asyncio.create_task(self._listen(), name="vidhook-listen")

    async def stop(self) -> None:
        if self._listening is not None:
            self._listening.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listening
            self._listening = None
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    def close(self) -> None:
        pass  # everything is the event loop's, closed by stop()

    def write(self, op: Operation[T]) -> asyncio.Future[T]:
        return asyncio.ensure_future(self._write(op))

    async def _write(self, op: Operation[T]) -> T:
        pool = self._pool
        if pool is None:
            raise RuntimeError("the store is closed")
        for attempt in itertools.count(1):
            db: PgDb | None = None
            try:
                async with pool.connection() as conn, conn.transaction():
                    db = PgDb(conn, self.owner)
                    result = await op(db)
                    if db.touched:
                        payload = ",".join(sorted(db.touched))
                        await conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, payload))
            except (errors.SerializationFailure, errors.DeadlockDetected):
                if attempt >= RETRIES:
                    raise
                await asyncio.sleep(0.01 * attempt)
                continue
            except Exception as exc:
                if not is_unavailable(exc):
                    raise
                if db is None and attempt < RETRIES and not isinstance(exc, PoolTimeout):
                    # A pooled connection the server had closed (a restart, a failover):
                    # nothing was sent. Its idle siblings are likely gone too.
                    await pool.check()
                    continue
                raise self._refused(unavailable(exc)) from None
            self._recovered()
            for fn in db.committed:
                try:
                    fn()
                except Exception:
                    log.exception("an after-commit action failed")
            return result
        raise AssertionError("unreachable")

    async def read(self, op: Operation[T]) -> T:
        pool = self._pool
        if pool is None:
            raise RuntimeError("the store is closed")
        for attempt in itertools.count(1):
            started = False
            try:
                async with pool.connection() as conn, conn.transaction():
                    started = True
                    return await op(PgDb(conn, self.owner))
            except Exception as exc:
                if not is_unavailable(exc):
                    raise
                if not started and attempt < RETRIES and not isinstance(exc, PoolTimeout):
                    await pool.check()  # a pooled connection the server had closed
                    continue
                raise unavailable(exc) from None
        raise AssertionError("unreachable")

    async def has_token(self, provider: str, token: str) -> bool:
        key = (provider, token)
        if key in self._known:
            return True
        found = await self.read(lambda db: has_callback_token(db, provider, token))
        if found:
            if len(self._known) >= REMEMBERED:
                del self._known[next(iter(self._known))]
            self._known[key] = None
        return found

    def _refused(self, failure: DatabaseUnavailable) -> DatabaseUnavailable:
        if self._outage is None or self._outage.reason != failure.reason:
            self._outage = Outage(failure.reason)
            log.error(
                "%s cannot take writes (%s): writes are refused, and answered 503 with "
                "Retry-After, until it can",
                self.where,
                failure.reason,
            )
        self._outage.refused += 1
        return failure

    def _recovered(self) -> None:
        outage = self._outage
        if outage is None:
            return
        self._outage = None
        log.warning(
            "%s takes writes again after %.1f s (%d refused meanwhile)",
            self.where,
            time.monotonic() - outage.since,
            outage.refused,
        )

    def _tell(self, touched: frozenset[str]) -> None:
        for listener in self.listeners:
            try:
                listener(touched)
            except Exception:
                log.exception("a commit listener failed")

    async def _listen(self) -> None:
        delay, longest = LISTEN_BACKOFF
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self._url, autocommit=True, connect_timeout=int(CONNECT_TIMEOUT)
                ) as conn:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    # Whatever was committed while nobody here listened is looked for.
                    self._tell(EVERYTHING)
                    delay = LISTEN_BACKOFF[0]
                    async for note in conn.notifies():
                        self._tell(frozenset(note.payload.split(",")))
            except psycopg.Error as exc:
                log.warning(
                    "not hearing other replicas' commits (%s): listening again in %.1f s; "
                    "until then, workers look every few seconds",
                    _reason(exc),
                    delay,
                )
            await asyncio.sleep(delay)
            delay = min(longest, delay * 2)

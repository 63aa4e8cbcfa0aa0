"""The SQLite engine: one file, one service, as fast as a file on a local disk allows.

Writes go through one writer thread (group commit, see ``writer``); reads run on a small
pool of reader connections, each read in one transaction (a snapshot); callback tokens
are looked up by ``probe``. The event loop never waits on SQLite directly. An open
engine holds the file's lock (``lock``), and ``health`` checks the file before it is
served: both are SQLite's own (a server has neither a file to lock nor pages for
vidhook to check).
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from receiver.store import health, lock
from receiver.store.db import run_sync
from receiver.store.engine import Listener, Operation, Outage
from receiver.store.probe import TokenProbe
from receiver.store.writer import SqliteDb, Writer, connect

T = TypeVar("T")


class SqliteEngine:
    name = "sqlite"

    def __init__(self, path: Path, *, synchronous: str = "FULL", readers: int = 4) -> None:
        self.path = path
        self.writer = Writer(path, synchronous)
        self.probe = TokenProbe(path)
        self._readers = ThreadPoolExecutor(readers, thread_name_prefix="vidhook-reader")
        self._local = threading.local()
        self._reader_conns: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._database_lock: lock.DatabaseLock | None = None

    @property
    def where(self) -> str:
        return str(self.path)

    @property
    def listeners(self) -> list[Listener]:
        return self.writer.listeners

    @property
    def running(self) -> bool:
        return self.writer.running

    @property
    def outage(self) -> Outage | None:
        return self.writer.outage

    def open(self, now: float) -> None:
        if self._database_lock is not None:
            return
        health.make_folder(self.path)
        held = lock.hold(self.path)
        try:
            health.prepare(self.path, now)
            self.writer.start()
            self.probe.start()
        except BaseException:
            held.release()
            raise
        self._database_lock = held

    async def start(self) -> None:
        pass  # the writer and the probe are threads, started by open()

    async def stop(self) -> None:
        pass

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

    def write(self, op: Operation[T]) -> asyncio.Future[T]:
        return self.writer.enqueue(lambda conn: run_sync(op(SqliteDb(conn))))

    async def read(self, op: Operation[T]) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._readers, self._read_sync, op)

    def _read_sync(self, op: Operation[T]) -> T:
        conn = self._reader()
        conn.execute("BEGIN")
        try:
            return run_sync(op(SqliteDb(conn)))
        finally:
            conn.execute("COMMIT")

    def _reader(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = connect(self.path)
            self._local.conn = conn
            with self._lock:
                self._reader_conns.append(conn)
        return conn

    async def has_token(self, provider: str, token: str) -> bool:
        return await self.probe.has_token(provider, token)

    def raw(self, fn: Any) -> asyncio.Future[Any]:
        """``fn(conn)`` on the writer's own connection, for SQLite-only callers."""
        return self.writer.enqueue(fn)

"""Is this a callback token? Asked before a callback's body is read, so it must be cheap.

One thread of its own with one read connection answers the questions in batches, each
batch in one callback on the event loop, like the writer. Through the reader pool
(``Store.read``: an executor hop, its locks and a wake-up per answer) the question took
about an eighth of the event loop's time per callback under a burst.

A token found once is remembered (a job's token never changes, and the job is never
deleted while callbacks may come), so a job's later callbacks skip the read. Only the
write trip is authoritative: this answer decides whether the body is worth reading.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from pathlib import Path
from typing import Any

from receiver.store.db import run_sync
from receiver.store.queries import has_callback_token
from receiver.store.writer import SqliteDb, Waiter, _settle, connect

REMEMBERED = 4096  # tokens; a burst of callbacks comes for the jobs of the last minutes
MAX_BATCH = 256
_STOP = object()


class TokenProbe:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._known: dict[tuple[str, str], None] = {}

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="vidhook-probe", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._queue.put(_STOP)
            self._thread.join(timeout=30)
            self._thread = None

    async def has_token(self, provider: str, token: str) -> bool:
        key = (provider, token)
        if key in self._known:
            return True
        if self._thread is None:
            raise RuntimeError("the store is closed")
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._queue.put((provider, token, future))
        found = await future
        if found:
            if len(self._known) >= REMEMBERED:
                del self._known[next(iter(self._known))]  # the oldest
            self._known[key] = None
        return found

    def _run(self) -> None:
        conn = connect(self.path)
        try:
            while True:
                item = self._queue.get()
                batch = [item]
                while item is not _STOP and len(batch) < MAX_BATCH:
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    batch.append(item)
                outcomes: list[tuple[Waiter, bool, Any]] = []
                for asked in batch:
                    if asked is _STOP:
                        continue
                    provider, token, future = asked
                    try:
                        found = run_sync(has_callback_token(SqliteDb(conn), provider, token))
                        outcomes.append((future, True, found))
                    except Exception as exc:  # handed to the caller, whatever it is
                        outcomes.append((future, False, exc))
                _settle(outcomes)
                if batch[-1] is _STOP:
                    return
        finally:
            conn.close()

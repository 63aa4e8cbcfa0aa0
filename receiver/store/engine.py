"""What the store asks of an engine: SQLite (``sqlite``) or PostgreSQL (``postgres``).

An engine runs the store's operations (``db``) in transactions, tells the listeners what
each commit marked, and says whether the database takes writes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine, Set
from typing import Any, Protocol, TypeVar

from receiver.store.db import Db

T = TypeVar("T")
Operation = Callable[[Db], Coroutine[Any, Any, T]]
# Told, after each commit, which tables (and "table:key" parts) it marked. Called from
# whichever thread committed: keep it quick and thread-safe.
Listener = Callable[[Set[str]], None]


class Outage:
    """Writes refused since ``since`` (time.monotonic()) for ``reason``."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        self.since = time.monotonic()
        self.refused = 0


class Engine(Protocol):
    name: str  # "sqlite" | "postgres"

    @property
    def listeners(self) -> list[Listener]: ...

    @property
    def where(self) -> str:
        """The database, as a message names it (never with a password)."""
        ...

    @property
    def running(self) -> bool: ...

    @property
    def outage(self) -> Outage | None: ...

    def open(self, now: float) -> None:
        """Check, upgrade and prove writable the database; raise DatabaseUnusable."""
        ...

    async def start(self) -> None:
        """What needs the event loop: connections, the wake-ups of other replicas."""
        ...

    async def stop(self) -> None: ...

    def close(self) -> None: ...

    def write(self, op: Operation[T]) -> asyncio.Future[T]:
        """Run ``op`` in a transaction, on its way at once; resolves once committed."""
        ...

    async def read(self, op: Operation[T]) -> T: ...

    async def has_token(self, provider: str, token: str) -> bool: ...

"""What a store operation sees of its database: a few verbs, the same on both engines.

Every operation of the store (``jobs.apply``, ``outbox.record_attempt``, a page of jobs)
is an ``async def`` written once over ``Db``, with SQLite's ``?`` placeholders:

- the SQLite engine runs it on its writer thread (or a reader thread) by stepping the
  coroutine by hand (``run_sync``): SQLite answers at once, so the coroutine never
  suspends, and the group commit, the savepoint per request and the thread that keeps the
  event loop clear of SQLite stay as they were;
- the PostgreSQL engine awaits the same coroutine on the event loop, inside a psycopg
  transaction from its pool, its placeholders turned into psycopg's.

Async rather than generators that yield statements: an operation reads as plain code,
calls another with ``await`` (a callback's ``apply``), and mypy checks what each verb
returns. The price is one rule: an operation awaits only its ``Db``. ``run_sync`` says
so loudly if one ever waits on anything else.

Where the engines' SQL must differ, ``Db`` says how: ``for_update`` and ``skip_locked``
are row locks that PostgreSQL needs and SQLite (one writer at a time) has no words for.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Iterable, Iterator, Sequence
from typing import Any, Protocol, TypeVar

T = TypeVar("T")
Params = Sequence[Any]
Op = Callable[..., Coroutine[Any, Any, T]]


class Row(Protocol):
    """A result row: by position and by column name (sqlite3.Row, or the PostgreSQL one)."""

    def __getitem__(self, key: int | str, /) -> Any: ...

    def keys(self) -> list[str]: ...

    def __iter__(self) -> Iterator[Any]: ...

    def __len__(self) -> int: ...


class Db(Protocol):
    engine: str  # "sqlite" | "postgres"
    # This replica's name, under which it claims work (``claims``); None where no other
    # replica can exist (SQLite: the file's lock admits one service).
    owner: str | None
    # Appended to a SELECT whose rows the transaction is about to change.
    for_update: str
    # Appended to the SELECT that picks work to claim: rows another replica is claiming
    # are passed over rather than waited for.
    skip_locked: str

    async def run(self, sql: str, params: Params = ()) -> int:
        """Execute; the number of rows changed."""
        ...

    async def run_many(self, sql: str, rows: Iterable[Params]) -> None: ...

    async def insert(self, sql: str, params: Params = ()) -> int:
        """An INSERT into a table with an ``id`` column; the new row's id."""
        ...

    async def one(self, sql: str, params: Params = ()) -> Row | None: ...

    async def all(self, sql: str, params: Params = ()) -> list[Row]: ...

    async def serialize(self, key: str) -> None:
        """Hold ``key`` until the transaction ends: operations on one key take turns."""
        ...

    def mark(self, table: str, key: str | None = None) -> None:
        """This operation wrote ``table`` (and, if given, which part: "table:key"); once
        it is committed, the store's listeners are told, on every replica."""
        ...

    def on_commit(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` once this operation's writes are committed; never if rolled back."""
        ...


class SuspendedOperation(RuntimeError):
    """A store operation awaited something other than its database."""


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run an operation whose every await is answered at once (the SQLite engine's)."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    coro.close()
    raise SuspendedOperation(
        "a store operation awaited something other than its database; operations may only "
        "await their Db"
    )


def among(column: str, values: Sequence[Any], *, negate: bool = False) -> str:
    """``column IN (?,?)`` for ``values`` (passed as parameters by the caller), or
    ``column NOT IN (...)``. An empty list is spelled out, as PostgreSQL has no ``IN ()``."""
    if not values:
        return "1 = 1" if negate else "1 = 0"
    return f"{column} {'NOT IN' if negate else 'IN'} ({','.join('?' * len(values))})"

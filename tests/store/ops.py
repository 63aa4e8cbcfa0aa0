"""The store's operations called as the SQLite writer calls them: on one connection, the
coroutine stepped by hand (receiver.store.db.run_sync), so that a test reads the rows on
that connection right after. The same operations run on PostgreSQL through the Store in
tests/store/test_store.py and tests/store/test_replicas.py."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from receiver.store.db import run_sync
from receiver.store.writer import SqliteDb

T = TypeVar("T")


def run(
    op: Callable[..., Coroutine[Any, Any, T]], conn: sqlite3.Connection, *args: Any, **kw: Any
) -> T:
    return run_sync(op(SqliteDb(conn), *args, **kw))

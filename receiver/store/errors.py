"""What can be wrong with the database itself, as opposed to with a request.

    StoreError
    ├── DatabaseUnavailable   a write cannot be taken right now: 503 with Retry-After
    └── DatabaseUnusable      the database cannot be served at all: the start is refused
        └── DatabaseInUse     another process holds it

Each message is one line that names the file, says what is wrong and what to do.
"""

from __future__ import annotations

import sqlite3


class StoreError(Exception):
    pass


class DatabaseUnavailable(StoreError):
    """The database refused a write (locked, read-only, full, failing); nothing was stored.

    ``reason`` is SQLite's own words, which never hold a path or a value.
    """

    def __init__(self, reason: str, retry_after: int) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


class DatabaseUnusable(StoreError):
    """The database file cannot be served: damaged, empty, not vidhook's, not writable."""


class DatabaseInUse(DatabaseUnusable):
    """Another process has the database: a second service must not run on the same file."""


# SQLite's primary result codes that speak of the database, not of the statement.
BUSY_CODES = frozenset({sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED})
DATABASE_CODES = BUSY_CODES | {
    sqlite3.SQLITE_READONLY,
    sqlite3.SQLITE_IOERR,
    sqlite3.SQLITE_CORRUPT,
    sqlite3.SQLITE_FULL,
    sqlite3.SQLITE_CANTOPEN,
    sqlite3.SQLITE_PROTOCOL,
    sqlite3.SQLITE_NOTADB,
    sqlite3.SQLITE_PERM,
}


def primary_code(exc: BaseException) -> int | None:
    code = getattr(exc, "sqlite_errorcode", None)
    return code & 0xFF if isinstance(code, int) else None


def is_database_failure(exc: BaseException) -> bool:
    """True when the database itself failed the statement, whatever the statement was."""
    return isinstance(exc, sqlite3.Error) and primary_code(exc) in DATABASE_CODES


def is_busy(exc: BaseException) -> bool:
    return primary_code(exc) in BUSY_CODES

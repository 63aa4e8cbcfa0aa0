"""Whether the database file is one the service can keep its promises with.

Before the service starts, ``prepare`` makes sure of it, or raises DatabaseUnusable with
one line that says what to do:

- nothing at the path: a new database, built beside it under a temporary name and moved
  into place once migrated, so a crash during the first start leaves no empty or
  half-made file. A file at the path is thus always a whole database, and an empty one
  is somebody's mistake (a failed copy, a truncation): it is refused, never replaced by
  a fresh database that would answer 404 to every callback token;
- a file there: checked with PRAGMA quick_check (every page read: about 3 s per GiB from
  the page cache, bench/startup.py), which finds a truncated or damaged file before the
  service acknowledges anything; then migrated;
- either way, one heartbeat row is written, proving that the user vidhook runs as can
  write the file, not only read it.

While the service runs, /readyz writes the same row (``heartbeat.beat``) through the writer.

Everything here is SQLite's own: a file to check page by page, a folder to write beside
it, a file swapped into place. A PostgreSQL server checks its own pages and is reached,
checked and migrated by ``postgres``.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import tempfile
from pathlib import Path

from sqlite_utils import Database

from receiver.store.db import run_sync
from receiver.store.errors import DatabaseInUse, DatabaseUnusable, is_busy, primary_code
from receiver.store.heartbeat import beat
from receiver.store.lock import cannot_write_beside
from receiver.store.schema import migrations
from receiver.store.writer import SqliteDb, connect

RESTORE = (
    "restore the latest backup with `vidhook restore BACKUP` (it keeps the file now "
    "there beside it)"
)


def make_folder(database: Path) -> None:
    """The database's folder, made if missing; SQLite must be able to add files to it."""
    try:
        database.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DatabaseUnusable(
            f"cannot create the folder {database.parent} for {database.name} "
            f"({exc.strerror or exc}): create it, writable by the user vidhook runs as "
            f"(uid {os.geteuid()})"
        ) from None
    try:
        with tempfile.TemporaryFile(dir=database.parent, prefix=f".{database.name}."):
            pass
    except OSError as exc:
        raise DatabaseUnusable(cannot_write_beside(database, database.parent, exc)) from None


def prepare(database: Path, now: float) -> None:
    try:
        size = database.stat().st_size
    except FileNotFoundError:
        _create(database, now)
        return
    except OSError as exc:
        raise DatabaseUnusable(f"cannot read {database}: {exc.strerror or exc}") from None
    if size == 0:
        raise DatabaseUnusable(
            f"{database} is empty (0 bytes) where a vidhook database was expected; {RESTORE}, "
            "or remove the empty file to start with a new, empty database"
        )
    try:
        _check(database)
        conn = connect(database)
        try:
            migrations.apply(Database(conn))
            run_sync(beat(SqliteDb(conn), now))
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise unusable(database, exc) from None


def _check(database: Path) -> None:
    # Read-only: a file that turns out not to be vidhook's is left exactly as it was.
    conn = sqlite3.connect(database.resolve().as_uri() + "?mode=ro", uri=True)
    try:
        _check_with(database, conn)
    finally:
        conn.close()


def _check_with(database: Path, conn: sqlite3.Connection) -> None:
    problems = [str(row[0]) for row in conn.execute("PRAGMA quick_check(1)")]
    if problems != ["ok"]:
        said = problems[0].removeprefix("*** in database main ***")
        first = " ".join(said.split())[:200]  # one line, whatever SQLite said
        raise DatabaseUnusable(f"{database} is damaged ({first}); {RESTORE}")
    tables = [
        str(row[0])
        for row in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
        )
    ]
    if tables and not migrations.applied(Database(conn)):
        shown = ", ".join(sorted(tables)[:5]) + (", ..." if len(tables) > 5 else "")
        raise DatabaseUnusable(
            f"{database} is an SQLite database but not vidhook's (its tables: {shown}); "
            "set `database` in the config to vidhook's file, or to a new path"
        )


def _create(database: Path, now: float) -> None:
    try:
        fd, name = tempfile.mkstemp(dir=database.parent, prefix=f".{database.name}.", suffix=".new")
    except OSError as exc:
        raise DatabaseUnusable(cannot_write_beside(database, database, exc)) from None
    os.close(fd)
    new = Path(name)
    try:
        conn = connect(new)
        try:
            migrations.apply(Database(conn))
            run_sync(beat(SqliteDb(conn), now))
        finally:
            # The last connection to close folds the -wal into the file and removes it.
            conn.close()
        _fsync(new)
        os.replace(new, database)
        _fsync(database.parent)
    except sqlite3.Error as exc:
        raise unusable(database, exc) from None
    except OSError as exc:
        raise DatabaseUnusable(f"cannot create {database}: {exc.strerror or exc}") from None
    finally:
        for suffix in ("", "-wal", "-shm", "-journal"):
            with contextlib.suppress(OSError):
                os.unlink(f"{new}{suffix}")


def unusable(database: Path, exc: sqlite3.Error) -> DatabaseUnusable:
    """SQLite's complaint about the file, as one line that says what to do."""
    code = primary_code(exc)
    uid = os.geteuid()
    if is_busy(exc):
        return DatabaseInUse(
            f"{database} is locked by another program ({exc}): close whatever has it open "
            "for writing (a sqlite3 shell?), then start again"
        )
    if code == sqlite3.SQLITE_NOTADB:
        return DatabaseUnusable(f"{database} is not an SQLite database ({exc}); {RESTORE}")
    if code == sqlite3.SQLITE_CORRUPT:
        return DatabaseUnusable(f"{database} is damaged ({exc}); {RESTORE}")
    if code == sqlite3.SQLITE_READONLY:
        return DatabaseUnusable(
            f"{database} is read-only for the user vidhook runs as (uid {uid}): make it, and "
            "any -wal and -shm file beside it, writable by that user (chown, chmod), then "
            "start again"
        )
    if code in (sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_PERM):
        return DatabaseUnusable(
            f"cannot open {database} ({exc}): the file and its folder must be readable and "
            f"writable by the user vidhook runs as (uid {uid})"
        )
    if code == sqlite3.SQLITE_FULL:
        return DatabaseUnusable(f"{database}: the disk is full ({exc}); free some space")
    if code == sqlite3.SQLITE_IOERR:
        return DatabaseUnusable(
            f"{database}: the disk failed a read or a write ({exc}); check the disk, and if "
            f"the file is damaged, {RESTORE}"
        )
    return DatabaseUnusable(f"{database} cannot be used: {exc}")


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if path.is_dir() else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

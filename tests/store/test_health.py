"""Before the service starts: a database file it can serve, or one line saying what to do.

`vidhook serve` itself, with its exit codes, is in tests/test_serve_database.py.
"""

import os
import sqlite3
import stat

import pytest
from sqlite_utils import Database

from receiver.store import DatabaseUnusable, migrate
from receiver.store.health import make_folder, prepare
from receiver.store.schema import migrations

NOW = 1_750_000_000.0
RESTORE = "restore the latest backup with `vidhook restore BACKUP`"


def names(folder):
    return sorted(p.name for p in folder.iterdir())


def snapshot(folder):
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def rows(path, sql):
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def vidhook_db(path, jobs=200):
    migrate(path)
    conn = sqlite3.connect(path)
    with conn:
        conn.executemany(
            "INSERT INTO jobs (id, provider, status, prompt, created_at, updated_at)"
            " VALUES (?, 'vidu', 'queued', ?, 0, 0)",
            [(f"job_{i:04d}", "a long prompt " * 40) for i in range(jobs)],
        )
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return path


def refused(path):
    with pytest.raises(DatabaseUnusable) as caught:
        prepare(path, NOW)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(str(path)) or str(path) in message
    return message


def test_a_new_database_appears_whole_with_nothing_left_beside_it(tmp_path):
    database = tmp_path / "vidhook.db"
    prepare(database, NOW)
    assert names(tmp_path) == ["vidhook.db"]  # no temporary file, no -wal
    assert rows(database, "PRAGMA integrity_check") == [("ok",)]
    assert rows(database, "SELECT id, at FROM heartbeat") == [(1, NOW)]
    applied = {m.name for m in migrations.applied(Database(sqlite3.connect(database)))}
    assert "m005_heartbeat" in applied
    # It holds callback tokens: for the service's user alone.
    assert stat.S_IMODE(database.stat().st_mode) == 0o600


def test_a_missing_folder_is_made(tmp_path):
    database = tmp_path / "a" / "b" / "vidhook.db"
    make_folder(database)
    prepare(database, NOW)
    assert rows(database, "SELECT count(*) FROM jobs") == [(0,)]


def test_an_empty_file_is_refused_not_replaced(tmp_path):
    database = tmp_path / "vidhook.db"
    database.write_bytes(b"")
    message = refused(database)
    assert message == (
        f"{database} is empty (0 bytes) where a vidhook database was expected; {RESTORE} "
        "(it keeps the file now there beside it), or remove the empty file to start with a "
        "new, empty database"
    )
    assert snapshot(tmp_path) == {"vidhook.db": b""}


def test_a_file_that_is_not_sqlite_is_refused_untouched(tmp_path):
    database = tmp_path / "vidhook.db"
    database.write_bytes(b"these are notes, not a database\n" * 200)
    before = snapshot(tmp_path)
    message = refused(database)
    assert message.startswith(f"{database} is not an SQLite database (file is not a database)")
    assert RESTORE in message
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("damage", ["truncated", "torn page", "header page"])
def test_a_damaged_database_is_refused(tmp_path, damage):
    database = vidhook_db(tmp_path / "vidhook.db")
    size = database.stat().st_size
    with open(database, "r+b") as f:
        if damage == "truncated":
            f.truncate(size // 2)
        elif damage == "torn page":
            f.seek(size // 2)
            f.write(os.urandom(4096))
        else:
            f.seek(100)
            f.write(os.urandom(300))
    message = refused(database)
    assert message.startswith(f"{database} is damaged (")
    assert message.endswith(f"{RESTORE} (it keeps the file now there beside it)")


def test_another_programs_database_is_refused_and_left_as_it_was(tmp_path):
    database = tmp_path / "notes.db"
    conn = sqlite3.connect(database)
    conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT)")
    conn.execute("CREATE TABLE tags (note INTEGER, tag TEXT)")
    conn.commit()
    conn.close()
    before = snapshot(tmp_path)
    message = refused(database)
    assert message == (
        f"{database} is an SQLite database but not vidhook's (its tables: notes, tags); "
        "set `database` in the config to vidhook's file, or to a new path"
    )
    assert snapshot(tmp_path) == before


def test_an_older_vidhook_database_is_upgraded_and_written(tmp_path):
    database = tmp_path / "vidhook.db"
    conn = sqlite3.connect(database)
    migrations.apply(Database(conn), stop_before="m005_heartbeat")
    conn.close()
    assert "heartbeat" not in Database(database).table_names()
    prepare(database, NOW)
    assert rows(database, "SELECT id, at FROM heartbeat") == [(1, NOW)]
    prepare(database, NOW + 60)
    assert rows(database, "SELECT id, at FROM heartbeat") == [(1, NOW + 60)]


def test_a_healthy_database_keeps_its_jobs(tmp_path):
    database = vidhook_db(tmp_path / "vidhook.db")
    prepare(database, NOW)
    assert rows(database, "SELECT count(*) FROM jobs") == [(200,)]

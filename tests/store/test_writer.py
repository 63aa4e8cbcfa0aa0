"""The writer when the database refuses writes (another connection holding the write lock,
or a statement the database itself fails), when it stops, and what it runs after a commit.
Real SQLite files, a real second connection.

Its batches, savepoints and cancellations are in test_writer_batches.py."""

import asyncio
import logging
import re
import sqlite3
import threading
import time
from contextlib import contextmanager

import pytest

from receiver.store import DatabaseUnavailable, migrate
from receiver.store.writer import Writer, on_commit
from tests.conftest import wait_for


@pytest.fixture
def db_path(tmp_path):
    path = tmp_path / "vidhook.db"
    migrate(path)
    return path


QUICK = 0.3  # a short busy timeout, so that each refusal takes little of the test's time


@pytest.fixture
def writer(db_path):
    writer = Writer(db_path, busy_timeout=QUICK)
    writer.start()
    yield writer
    writer.stop()


@contextmanager
def write_locked(db_path):
    """Another program's connection in a write transaction, as a sqlite3 shell would hold it."""
    conn = sqlite3.connect(db_path, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    finally:
        conn.execute("ROLLBACK")
        conn.close()


def inserter(job_id):
    def insert(conn):
        conn.execute(
            "INSERT INTO jobs (id, provider, status, created_at, updated_at)"
            " VALUES (?, 'vidu', 'queued', 0, 0)",
            (job_id,),
        )
        return job_id

    return insert


def job_ids(db_path):
    conn = sqlite3.connect(db_path)
    try:
        return {row[0] for row in conn.execute("SELECT id FROM jobs")}
    finally:
        conn.close()


def hold_busy(writer):
    """Keep the writer in a request until the returned gate is set: the requests submitted
    meanwhile then make one batch of their own."""
    started, gate = threading.Event(), threading.Event()

    def block(conn):
        started.set()
        gate.wait(10)

    blocker = writer.submit(block)
    assert started.wait(10)
    return gate, blocker


def outage_lines(caplog):
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "vidhook.store" and "writes" in r.getMessage()
    ]


def test_a_write_behind_another_programs_lock_is_refused_after_the_busy_timeout(db_path):
    writer = Writer(db_path)  # the default busy timeout
    writer.start()
    busy_ms = writer.submit(lambda conn: conn.execute("PRAGMA busy_timeout").fetchone()[0])
    assert busy_ms.result(timeout=10) == 5000  # as the README tells operators
    with write_locked(db_path):
        began = time.monotonic()
        failure = writer.submit(inserter("job_1")).exception(timeout=15)
        waited = time.monotonic() - began
    assert isinstance(failure, DatabaseUnavailable)
    assert failure.reason == "database is locked"
    assert failure.retry_after == 5  # as the README tells operators and providers
    # It waited for the lock for the busy timeout (5 s, as the README says), not forever
    # (30 s before), nor not at all.
    assert 4.5 <= waited < 15
    assert job_ids(db_path) == set()
    assert writer.outage is not None and writer.outage.reason == "database is locked"
    writer.stop()


def test_an_outage_is_logged_once_when_it_begins_and_once_when_it_ends(writer, db_path, caplog):
    caplog.set_level(logging.INFO, logger="vidhook.store")
    began_at = time.monotonic()
    with write_locked(db_path):
        # Three rounds of refusals, several requests each: still one line.
        for round_ in range(3):
            futures = [writer.submit(inserter(f"job_{round_}_{i}")) for i in range(4)]
            for future in futures:
                assert isinstance(future.exception(timeout=10), DatabaseUnavailable)
    assert writer.submit(inserter("job_after")).result(timeout=10) == "job_after"
    assert writer.submit(inserter("job_after_2")).result(timeout=10) == "job_after_2"
    lasted = time.monotonic() - began_at

    lines = outage_lines(caplog)
    assert len(lines) == 2, lines
    began, ended = lines
    assert str(db_path) in began and "cannot take writes (database is locked)" in began
    assert "503" in began
    assert str(db_path) in ended and "takes writes again" in ended
    assert "(12 refused meanwhile)" in ended
    # From the first refusal: two more busy timeouts at least, and no longer than the test.
    told = float(re.search(r"after ([0-9.]+) s", ended)[1])  # type: ignore[index]
    assert QUICK <= told <= lasted
    assert writer.outage is None
    assert job_ids(db_path) == {"job_after", "job_after_2"}


def test_requests_queued_during_a_refused_attempt_are_refused_with_it(writer, db_path):
    with write_locked(db_path):
        first = writer.submit(inserter("job_first"))
        time.sleep(QUICK / 3)  # the writer now waits for the lock with job_first alone
        queued = [writer.submit(inserter(f"job_{i}")) for i in range(5)]
        first_failure = first.exception(timeout=10)
        failures = [f.exception(timeout=10) for f in queued]
    assert isinstance(first_failure, DatabaseUnavailable)
    # Answered with the attempt they waited through, not after an attempt of their own.
    assert all(f is first_failure for f in failures)
    assert job_ids(db_path) == set()


def test_a_statement_the_database_fails_fails_the_whole_batch(writer, db_path, caplog):
    """A request's statement refused by the database (here: read-only) is not the request's
    own error: its batch is rolled back whole, and each of its requests is told so."""
    caplog.set_level(logging.INFO, logger="vidhook.store")

    def readonly_insert(conn):
        conn.execute("PRAGMA query_only=ON")
        try:
            inserter("job_readonly")(conn)
        finally:
            conn.execute("PRAGMA query_only=OFF")

    gate, blocker = hold_busy(writer)
    batch = [
        writer.submit(inserter("job_before")),
        writer.submit(readonly_insert),
        writer.submit(inserter("job_after")),
    ]
    gate.set()
    blocker.result(timeout=10)
    failures = [f.exception(timeout=10) for f in batch]
    assert all(isinstance(f, DatabaseUnavailable) for f in failures)
    assert failures[0].reason == "attempt to write a readonly database"
    assert failures[0].retry_after == 60
    assert job_ids(db_path) == set()
    # The next batch is the database's to take again.
    assert writer.submit(inserter("job_next")).result(timeout=10) == "job_next"
    assert job_ids(db_path) == {"job_next"}
    assert len(outage_lines(caplog)) == 2


def test_a_requests_own_error_still_fails_it_alone(writer, db_path):
    gate, blocker = hold_busy(writer)
    good = writer.submit(inserter("job_1"))
    twice = writer.submit(inserter("job_1"))  # the primary key refuses it
    gate.set()
    blocker.result(timeout=10)
    assert good.result(timeout=10) == "job_1"
    assert isinstance(twice.exception(timeout=10), sqlite3.IntegrityError)
    assert writer.outage is None
    assert job_ids(db_path) == {"job_1"}


def test_each_new_reason_for_refusing_writes_is_logged(writer, db_path, caplog):
    caplog.set_level(logging.INFO, logger="vidhook.store")

    def readonly(conn):
        conn.execute("PRAGMA query_only=ON")
        try:
            inserter("job_readonly")(conn)
        finally:
            conn.execute("PRAGMA query_only=OFF")

    for attempt in ("locked", "readonly", "readonly", "locked"):
        if attempt == "locked":
            with write_locked(db_path):
                writer.submit(inserter("job_locked")).exception(timeout=10)
        else:
            writer.submit(readonly).exception(timeout=10)
    assert writer.submit(inserter("job_after")).result(timeout=10) == "job_after"

    reasons = ["database is locked", "attempt to write a readonly database", "database is locked"]
    lines = outage_lines(caplog)
    assert [line for line in lines if "cannot take writes" in line] == [
        f"database {db_path} cannot take writes ({reason}): writes are refused, and answered"
        " 503 with Retry-After, until it can"
        for reason in reasons
    ]
    # The last reason's outage, counted from when that reason began.
    assert "(1 refused meanwhile)" in lines[-1] and "takes writes again" in lines[-1]


# -- stopping ---------------------------------------------------------------------------------


def test_stopping_a_writer_that_never_started_is_nothing(db_path):
    writer = Writer(db_path)
    writer.stop()
    assert not writer.running
    writer.start()
    assert writer.submit(inserter("job_1")).result(timeout=10) == "job_1"
    writer.stop()
    assert not writer.running


def test_a_stop_queued_while_a_batch_is_refused_ends_the_writer(db_path):
    writer = Writer(db_path, busy_timeout=1.0)
    writer.start()
    with write_locked(db_path):
        refused = writer.submit(inserter("job_1"))
        time.sleep(0.2)  # the writer now waits for the lock with job_1 alone
        queued = writer.submit(inserter("job_2"))
        stopping = threading.Thread(target=writer.stop)
        stopping.start()
        wait_for(lambda: writer._closing, what="the stop to be queued")
        failure = refused.exception(timeout=10)
        stopping.join(10)
    assert not stopping.is_alive()  # the writer ended, rather than waiting for more
    assert not writer.running
    assert isinstance(failure, DatabaseUnavailable)
    assert queued.exception(timeout=0) is failure
    assert job_ids(db_path) == set()


# -- after the commit ---------------------------------------------------------------------------


def test_after_commit_actions_run_once_stored_in_order_and_a_failing_one_stops_none(
    writer, db_path, caplog
):
    ran: list[tuple[str, set[str]]] = []

    def action(name):
        return lambda: ran.append((name, job_ids(db_path)))  # what another reader sees then

    def broken():
        raise RuntimeError("action bug")

    def kept(conn):
        for step in (action("first"), broken, action("second")):
            on_commit(conn, step)
        return inserter("job_1")(conn)

    def rolled_back(conn):
        inserter("job_2")(conn)
        on_commit(conn, action("never"))
        raise ValueError("refused by the request itself")

    def also_kept(conn):
        inserter("job_3")(conn)
        on_commit(conn, action("third"))

    gate, blocker = hold_busy(writer)
    futures = [writer.submit(fn) for fn in (kept, rolled_back, also_kept)]
    gate.set()
    blocker.result(timeout=10)
    with caplog.at_level(logging.ERROR, logger="vidhook.store"):
        assert futures[0].result(timeout=10) == "job_1"
        assert isinstance(futures[1].exception(timeout=10), ValueError)
        # The actions run on the writer thread before its next batch.
        assert writer.submit(inserter("job_4")).result(timeout=10) == "job_4"
    stored = {"job_1", "job_3"}
    assert ran == [("first", stored), ("second", stored), ("third", stored)]
    assert caplog.text.count("an after-commit action failed") == 1
    assert writer.running


def test_an_answer_for_a_closed_event_loop_is_dropped_and_the_writer_goes_on(writer, db_path):
    gate, blocker = hold_busy(writer)

    async def queue_and_leave():
        writer.enqueue(inserter("job_1"))  # never awaited: the loop closes before the answer

    asyncio.run(queue_and_leave())
    gate.set()
    blocker.result(timeout=10)
    assert writer.submit(inserter("job_2")).result(timeout=10) == "job_2"
    assert job_ids(db_path) == {"job_1", "job_2"}
    assert writer.running

"""receiver.store.writer: one thread, group commits, a savepoint per request, on a real file.

The writer when the database refuses writes is in test_writer.py."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import subprocess
import sys
import threading

import pytest

from receiver.store import DatabaseUnavailable, migrate
from receiver.store.writer import MAX_BATCH, Writer, mark
from tests.conftest import wait_for


def insert(job_id: str):
    def run(conn: sqlite3.Connection) -> str:
        conn.execute(
            "INSERT INTO jobs (id, provider, status, created_at, updated_at)"
            " VALUES (?, 'vidu', 'queued', 0, 0)",
            (job_id,),
        )
        mark(conn, "jobs", job_id)
        return job_id

    return run


@pytest.fixture
def path(tmp_path):
    db = tmp_path / "vidhook.db"
    migrate(db)
    return db


@pytest.fixture
def writer(path):
    started = Writer(path)
    started.start()
    yield started
    started.stop()


def stored(path) -> set[str]:
    conn = sqlite3.connect(path)
    try:
        return {row[0] for row in conn.execute("SELECT id FROM jobs")}
    finally:
        conn.close()


def hold(writer: Writer) -> threading.Event:
    """Keep the writer busy until the event is set, so that what follows queues up."""
    gate, holding = threading.Event(), threading.Event()

    def wait(conn: sqlite3.Connection) -> None:
        holding.set()
        gate.wait(10)

    writer.submit(wait)
    assert holding.wait(10)  # its batch is under way: the next requests form another
    return gate


def test_a_request_to_a_stopped_writer_fails_at_once(path):
    writer = Writer(path)
    assert not writer.running
    assert isinstance(writer.submit(insert("job_1")).exception(0), RuntimeError)

    async def from_the_loop():
        writer.enqueue(insert("job_1"))

    with pytest.raises(RuntimeError, match="the store is closed"):
        asyncio.run(from_the_loop())
    writer.start()
    assert writer.running
    writer.stop()
    writer.stop()  # twice is fine
    assert not writer.running
    assert stored(path) == set()


def test_a_batch_holds_at_most_max_batch_requests(writer, path):
    gate = hold(writer)
    futures = [writer.submit(insert(f"job_{i}")) for i in range(MAX_BATCH + 1)]
    gate.set()
    assert [f.result(10) for f in futures] == [f"job_{i}" for i in range(MAX_BATCH + 1)]
    # The held request's batch, then MAX_BATCH requests, then the one left over.
    assert (writer.batches, writer.requests) == (3, MAX_BATCH + 2)
    assert MAX_BATCH == 512


def test_a_failing_request_is_rolled_back_alone_and_told_why(writer, path):
    def insert_then_fail(conn: sqlite3.Connection) -> None:
        insert("job_bad")(conn)
        raise KeyboardInterrupt  # not even an Exception: still the caller's, not the writer's

    gate = hold(writer)
    before = writer.submit(insert("job_1"))
    failing = writer.submit(insert_then_fail)
    after = writer.submit(insert("job_2"))
    gate.set()
    assert (before.result(10), after.result(10)) == ("job_1", "job_2")
    assert isinstance(failing.exception(10), KeyboardInterrupt)
    assert stored(path) == {"job_1", "job_2"}
    assert writer.running


def test_a_cancelled_request_does_not_keep_the_rest_of_a_failed_batch_waiting(writer, path):
    def breaks_the_transaction(conn: sqlite3.Connection) -> None:
        conn.execute("RELEASE request")

    async def run():
        gate = hold(writer)
        withdrawn = writer.enqueue(insert("job_gone"))
        failing = writer.enqueue(breaks_the_transaction)
        withdrawn.cancel()
        gate.set()
        with pytest.raises(DatabaseUnavailable):
            await asyncio.wait_for(failing, 10)

    asyncio.run(run())
    assert stored(path) == set()


def test_a_writer_never_stopped_does_not_keep_the_process_alive(path):
    code = (
        "import sys; from pathlib import Path; from receiver.store.writer import Writer;"
        f" Writer(Path({str(path)!r})).start(); sys.exit(0)"
    )
    finished = subprocess.run([sys.executable, "-c", code], timeout=30, check=False)
    assert finished.returncode == 0


def test_a_request_cancelled_before_it_ran_never_runs(writer, path):
    gate = hold(writer)
    withdrawn = writer.submit(insert("job_gone"))
    kept = writer.submit(insert("job_kept"))
    assert withdrawn.cancel()
    gate.set()
    assert kept.result(10) == "job_kept"
    assert stored(path) == {"job_kept"}


def test_a_loop_request_cancelled_before_it_ran_never_runs(writer, path):
    async def run():
        gate = hold(writer)
        withdrawn = writer.enqueue(insert("job_gone"))
        kept = writer.enqueue(insert("job_kept"))
        withdrawn.cancel()
        gate.set()
        return await kept

    assert asyncio.run(run()) == "job_kept"
    assert stored(path) == {"job_kept"}


def test_requests_from_the_loop_are_answered_after_their_commit(writer, path):
    async def run():
        results = await asyncio.gather(*(writer.run(insert(f"job_{i}")) for i in range(5)))
        return results, stored(path)

    results, seen = asyncio.run(run())
    assert results == [f"job_{i}" for i in range(5)]
    assert seen == set(results)


def test_a_failed_commit_fails_its_whole_batch_and_keeps_nothing(writer, path, caplog):
    def breaks_the_transaction(conn: sqlite3.Connection) -> None:
        conn.execute("RELEASE request")  # the writer's own savepoint, released early

    gate = hold(writer)
    good = writer.submit(insert("job_1"))
    bad = writer.submit(breaks_the_transaction)
    gate.set()
    with caplog.at_level(logging.ERROR, logger="vidhook.store"):
        assert isinstance(good.exception(10), DatabaseUnavailable)
        assert isinstance(bad.exception(10), DatabaseUnavailable)
    assert stored(path) == set()
    assert "cannot take writes" in caplog.text
    # The writer goes on: the next request commits.
    assert writer.submit(insert("job_2")).result(10) == "job_2"
    assert stored(path) == {"job_2"}


def test_listeners_hear_each_commits_marks_and_one_that_fails_stops_none(writer, caplog):
    heard: list[frozenset[str]] = []

    def broken(tables):
        raise RuntimeError("listener bug")

    writer.listeners += [broken, heard.append]
    with caplog.at_level(logging.ERROR, logger="vidhook.store"):
        writer.submit(insert("job_1")).result(10)
        writer.submit(lambda conn: None).result(10)
    writer.stop()  # the listeners run after the waiters are answered: wait for them
    assert heard == [frozenset({"jobs", "jobs:job_1"}), frozenset()]
    assert caplog.text.count("a commit listener failed") == 2


def test_what_is_queued_before_a_stop_is_still_committed(path):
    writer = Writer(path)
    writer.start()
    gate = hold(writer)
    futures = [writer.submit(insert(f"job_{i}")) for i in range(3)]
    stopping = threading.Thread(target=writer.stop)
    stopping.start()
    gate.set()
    stopping.join(10)
    assert [f.result(0) for f in futures] == ["job_0", "job_1", "job_2"]
    assert not writer.running


def test_the_synchronous_level_is_the_one_asked_for(path):
    writer = Writer(path, "NORMAL")
    writer.start()
    try:
        assert writer.submit(lambda c: c.execute("PRAGMA synchronous").fetchone()[0]).result(5) == 1
    finally:
        writer.stop()


def test_a_request_made_while_the_writer_stops_is_answered_not_lost(writer, path):
    gate = hold(writer)
    before = writer.submit(insert("job_before"))
    stopping = threading.Thread(target=writer.stop)
    stopping.start()
    # The stop is queued behind the held batch and the request before it.
    wait_for(lambda: writer._closing, what="the stop to be queued")
    after = writer.submit(insert("job_after"))
    assert isinstance(after.exception(1), RuntimeError)  # at once, not never
    gate.set()
    stopping.join(10)
    assert before.result(10) == "job_before"
    assert stored(path) == {"job_before"}

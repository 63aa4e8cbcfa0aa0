import asyncio
import queue
import sqlite3
import threading
import time

import pytest
from sqlite_utils import Database

from receiver.providers.base import Observation, Submission
from receiver.states import Status
from receiver.store import AdmittedCallback, JobNotFound, NewJob, Store, migrate, outbox
from receiver.store.schema import migrations
from receiver.store.writer import Writer


def route_all(status, notify):
    names = ["team"] if notify is None else notify
    return [n for n in names if status in (Status.COMPLETED, Status.FAILED)]


@pytest.fixture
def db_path(tmp_path):
    return tmp_path / "vidhook.db"


@pytest.fixture
def fresh_store(db_path):
    store = Store(db_path, route=route_all).open()
    yield store
    store.close()


@pytest.fixture
def store(database):
    """A store on each engine in turn."""
    store = database.store(route_all).open()
    yield store
    store.close()


def new_job(job_id="job_1", notify=None):
    return NewJob(
        id=job_id,
        provider="vidu",
        model="viduq2",
        prompt="a cat",
        request={"images": []},
        callback_token=f"tok-{job_id}",
        callback_url=f"https://hooks.example.com/callbacks/vidu/tok-{job_id}",
        key_fingerprint="sha256:0123456789abcdef",
        notify=notify,
    )


def rows(db_path, sql, *params):
    conn = sqlite3.connect(db_path)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def test_schema_is_wal_and_migrations_are_idempotent(db_path):
    migrate(db_path)
    migrate(db_path)
    assert rows(db_path, "PRAGMA journal_mode")[0][0] == "wal"
    names = {r[0] for r in rows(db_path, "SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"jobs", "transitions", "callbacks", "nonces", "deliveries"} <= names
    applied = [r[0] for r in rows(db_path, "SELECT name FROM _sqlite_migrations ORDER BY id")]
    assert applied == [m.name for m in migrations.pending(Database(":memory:"))]
    assert len(applied) >= 2


def test_writer_uses_synchronous_full(db_path):
    migrate(db_path)
    writer = Writer(db_path)
    writer.start()
    try:
        level = writer.submit(lambda conn: conn.execute("PRAGMA synchronous").fetchone()[0])
        assert level.result(5) == 2  # FULL
    finally:
        writer.stop()


def test_apply_records_transition_and_enqueues_deliveries(store, database):
    async def run():
        await store.insert_job(new_job())
        await store.apply("job_1", Observation(Status.PROCESSING, "processing"), "callback")
        done = Observation(Status.COMPLETED, "success", result_url="https://cdn/x.mp4")
        return await store.apply("job_1", done, "poll")

    applied = database.run(store, run())
    assert applied.status is Status.COMPLETED and applied.transition_id is not None
    steps = database.rows("SELECT from_status, to_status, source FROM transitions ORDER BY id")
    assert steps == [
        (None, "queued", "api"),
        ("queued", "processing", "callback"),
        ("processing", "completed", "poll"),
    ]
    job = database.rows("SELECT status, result_url, finished_at IS NOT NULL FROM jobs")[0]
    assert job == ("completed", "https://cdn/x.mp4", True)
    deliveries = database.rows("SELECT channel, event, status, transition_id FROM deliveries")
    assert deliveries == [("team", "completed", "pending", applied.transition_id)]


def test_a_due_batch_is_read_with_its_jobs_and_transitions(store, database):
    async def run():
        for i in range(3):
            await store.insert_job(new_job(f"job_{i}"))
            done = Observation(Status.COMPLETED, "success", result_url=f"https://cdn/{i}.mp4")
            await store.apply(f"job_{i}", done, "poll")
        batch = await store.due_deliveries_with_sources("team", 2)
        one_by_one = [await store.delivery_source(d["id"]) for d in batch]
        return batch, one_by_one, await store.due_deliveries_with_sources("other", 5)

    batch, one_by_one, other = database.run(store, run())
    assert other == []
    assert [d["job_id"] for d in batch] == ["job_0", "job_1"]
    # The same as reading each delivery's job and transition apart, as the outbox did.
    assert batch == one_by_one
    for delivery in batch:
        assert delivery["job"]["id"] == delivery["job_id"]
        assert delivery["job"]["request"] == {"images": []}  # JSON columns decoded
        assert delivery["transition"]["id"] == delivery["transition_id"]
        assert delivery["transition"]["to_status"] == "completed"


def test_commit_listeners_hear_which_tables_were_marked(fresh_store):
    # SQLite's writer tells every commit, marked or not; PostgreSQL's replicas hear only
    # commits that marked something (test_replicas.py).
    heard: queue.Queue = queue.Queue()
    fresh_store.writer.listeners.append(heard.put)

    async def run():
        await fresh_store.insert_job(new_job())  # its queued transition: an event, no delivery
        await fresh_store.ping()
        await fresh_store.apply("job_1", Observation(Status.FAILED, "failed"), "poll")
        (delivery,) = await fresh_store.list_deliveries(status=None, before=None, limit=5)
        await fresh_store.requeue_delivery(delivery["id"])  # still pending: nothing to do
        await fresh_store.record_attempt(
            delivery["id"], outcome="dead", status="dead", next_attempt_at=None,
            error="refused", status_code=400, duration_ms=1.0,
        )  # fmt: skip
        await fresh_store.requeue_delivery(delivery["id"])  # dead, pending again

    asyncio.run(run())
    # Listeners run after the commit's waiters are answered: wait for each in turn.
    told = [heard.get(timeout=5) for _ in range(6)]
    marked = frozenset({"deliveries", "deliveries:team"})  # the table, and for whom
    event = frozenset({"events"})
    nothing = frozenset()
    assert told == [event, nothing, marked | event, nothing, nothing, marked]


def test_backwards_and_cross_terminal_observations_are_anomalies(store, database):
    async def run():
        await store.insert_job(new_job())
        await store.apply("job_1", Observation(Status.COMPLETED, "success"), "poll")
        processing = Observation(Status.PROCESSING, "processing")
        late = await store.apply("job_1", processing, "callback")
        other = await store.apply("job_1", Observation(Status.FAILED, "failed"), "callback")
        return late, other

    late, other = database.run(store, run())
    assert late.transition_id is None and late.anomaly
    assert other.transition_id is None and other.anomaly
    assert database.rows("SELECT status FROM jobs")[0][0] == "completed"
    assert database.rows("SELECT count(*) FROM transitions")[0][0] == 2
    anomalies = database.rows("SELECT anomalies FROM jobs")[0][0]
    assert '"observed":"processing"' in anomalies and '"observed":"failed"' in anomalies


def test_unknown_provider_status_is_kept_raw_without_anomaly(store, database):
    async def run():
        await store.insert_job(new_job())
        obs = Observation(Status.QUEUED, "scheduled", known=False)
        return await store.apply("job_1", obs, "poll")

    applied = database.run(store, run())
    assert applied.anomaly is None
    assert database.rows("SELECT status, provider_status, anomalies FROM jobs")[0] == (
        "queued",
        "scheduled",
        "[]",
    )


def test_apply_to_missing_job_raises_and_writes_nothing(store, database):
    with pytest.raises(JobNotFound):
        database.run(store, store.apply("nope", Observation(Status.COMPLETED), "poll"))
    assert database.rows("SELECT count(*) FROM transitions")[0][0] == 0


def test_group_commit_isolates_a_failing_request(db_path):
    """Requests batched into one transaction: one that fails is rolled back alone."""
    migrate(db_path)
    writer = Writer(db_path)
    gate = threading.Event()
    writer.start()
    try:
        # Hold the writer busy so that the following requests queue up into one batch.
        blocker = writer.submit(lambda conn: gate.wait(5))
        futures = []
        for i in range(20):
            if i == 7:
                futures.append(writer.submit(_insert_then_fail))
            else:
                futures.append(writer.submit(_inserter(f"job_{i}")))
        gate.set()
        blocker.result(5)
        results = [f.exception(5) for f in futures]
    finally:
        writer.stop()
    assert isinstance(results[7], RuntimeError)
    assert all(r is None for i, r in enumerate(results) if i != 7)
    ids = {r[0] for r in rows(db_path, "SELECT id FROM jobs")}
    assert ids == {f"job_{i}" for i in range(20) if i != 7}
    assert writer.batches <= 3  # the 19 good requests did not each take a commit


def _inserter(job_id):
    def insert(conn):
        conn.execute(
            "INSERT INTO jobs (id, provider, status, created_at, updated_at)"
            " VALUES (?, 'vidu', 'queued', 0, 0)",
            (job_id,),
        )

    return insert


def _insert_then_fail(conn):
    _inserter("job_bad")(conn)
    raise RuntimeError("boom")


def test_nonce_purge_removes_only_expired(store, database):
    async def run():
        await store.write(
            lambda db: db.run_many(
                "INSERT INTO nonces (provider, nonce, digest, expires_at) VALUES ('vidu',?,'d',?)",
                [("old", 1.0), ("new", store.clock() + 600)],
            )
        )
        return await store.purge_nonces()

    assert database.run(store, run()) == 1
    assert database.rows("SELECT nonce FROM nonces") == [("new",)]


# -- the Store's own methods, each through the writer or a reader ----------------------------

NOW = 1_767_000_000.0


@pytest.fixture
def clocked_store(db_path):
    store = Store(db_path, route=route_all, clock=lambda: NOW, readers=2).open()
    yield store
    store.close()


def test_job_detail_gathers_the_history_and_none_for_an_unknown_id(clocked_store):
    store = clocked_store

    def admit(target):
        return AdmittedCallback(
            nonce="n", digest="d", nonce_expires_at=NOW + 60, headers={}, body="{}",
            obs=Observation(Status.COMPLETED, "success"), confirm=True,
        )  # fmt: skip

    async def run():
        await store.insert_job(new_job())
        sub = Submission("task-1", Observation(Status.PROCESSING, "processing"), "sha256:k")
        submitted = await store.record_submission("job_1", sub, next_poll_at=NOW + 5)
        taken = await store.record_token_callback("vidu", "tok-job_1", admit)
        polled = await store.record_poll("job_1", Observation(Status.COMPLETED), next_poll_at=NOW)
        return (
            submitted,
            taken,
            polled,
            await store.job_detail("job_1"),
            await store.job_detail("x"),
        )

    submitted, taken, polled, detail, missing = asyncio.run(run())
    assert submitted.status is Status.PROCESSING and polled.status is Status.COMPLETED
    assert taken[:2] == ("job_1", "accepted")
    assert missing is None
    assert detail["provider_job_id"] == "task-1" and detail["status"] == "completed"
    assert [t["source"] for t in detail["transitions"]] == ["api", "submit", "poll"]
    assert [d["event"] for d in detail["deliveries"]] == ["completed"]
    assert [c["outcome"] for c in detail["callbacks"]] == ["confirming"]
    assert (detail["created_at"], detail["finished_at"], detail["last_callback_at"]) == (
        NOW, NOW, NOW,
    )  # fmt: skip


def test_schedules_through_the_store_use_its_clock(clocked_store, db_path):
    store = clocked_store

    async def run():
        for job_id in ("job_a", "job_b", "job_c"):
            await store.insert_job(new_job(job_id))
        scheduled = await store.schedule_poll("job_a", NOW - 10)
        await store.schedule_poll("job_b", NOW - 20)
        failures = await store.record_poll_failure("job_c", next_poll_at=NOW + 100)
        spread = await store.spread_overdue("vidu", 10, 1)
        deferred = await store.defer_provider("vidu", NOW + 50)
        listed = [j["id"] for j in await store.list_jobs(status="queued", limit=2)]
        one = await store.get_job("job_a")
        return scheduled, failures, spread, deferred, listed, one

    scheduled, failures, spread, deferred, listed, one = asyncio.run(run())
    assert (scheduled, failures, spread, deferred) == (True, 1, 2, 2)
    assert listed == ["job_c", "job_b"]
    assert one is not None and one["next_poll_at"] == NOW + 50
    polls = dict(rows(db_path, "SELECT id, next_poll_at FROM jobs"))
    assert polls == {"job_a": NOW + 50, "job_b": NOW + 50, "job_c": NOW + 100}


def test_the_outbox_through_the_store(clocked_store):
    store = clocked_store

    async def run():
        await store.insert_job(new_job())
        await store.apply("job_1", Observation(Status.FAILED), "poll")
        due = await store.next_delivery_due()
        (delivery,) = await store.due_deliveries_with_sources("team", 5)
        await store.disable_channel(
            delivery["id"], "HTTP 410", "fp", status_code=410, duration_ms=2.0
        )
        disabled = await store.read(outbox.channel_states)
        tried = await store.delivery_attempts(delivery["id"])
        held = await store.list_deliveries(status="held", before=None, limit=5)
        back = await store.requeue_delivery(delivery["id"])
        return due, disabled, tried, held, back, await store.read(outbox.channel_states)

    due, disabled, tried, held, back, after = asyncio.run(run())
    assert due == {"team": NOW}
    assert [(s["name"], s["disabled_at"]) for s in disabled] == [("team", NOW)]
    assert [(a["at"], a["outcome"]) for a in tried] == [(NOW, "disabled")]
    assert [d["status"] for d in held] == ["held"]
    assert back["status"] == "pending"
    assert after == []


def test_closing_closes_every_reader_connection(db_path):
    store = Store(db_path, route=route_all).open()
    asyncio.run(store.list_jobs())
    readers = list(store.engine._reader_conns)
    assert readers
    store.close()
    assert store.engine._reader_conns == []
    for conn in readers:
        with pytest.raises(sqlite3.ProgrammingError):
            conn.execute("SELECT 1")
    assert not store.writer.running


# -- the schema ----------------------------------------------------------------------------------


def test_the_schema_keeps_tokens_and_deliveries_unique_and_counts_from_zero(tmp_path):
    path = tmp_path / "not" / "yet" / "there" / "vidhook.db"
    migrate(path)  # the folders are made
    conn = sqlite3.connect(path)
    try:
        conn.execute(
            "INSERT INTO jobs (id, provider, status, callback_token, created_at, updated_at)"
            " VALUES ('job_1', 'vidu', 'queued', 'tok', 0, 0)"
        )
        with pytest.raises(sqlite3.IntegrityError):
            conn.execute(
                "INSERT INTO jobs (id, provider, status, callback_token, created_at, updated_at)"
                " VALUES ('job_2', 'vidu', 'queued', 'tok', 0, 0)"
            )
        conn.execute(
            "INSERT INTO transitions (id, job_id, to_status, source, at)"
            " VALUES (1, 'job_1', 'queued', 'api', 0)"
        )
        add = (
            "INSERT INTO deliveries (job_id, transition_id, channel, event, status, created_at)"
            " VALUES ('job_1', 1, 'team', 'queued', 'pending', 0)"
        )
        conn.execute(add)
        with pytest.raises(sqlite3.IntegrityError):
            conn.execute(add)
        assert conn.execute("SELECT polls, poll_failures, anomalies FROM jobs").fetchone() == (
            0, 0, "[]",
        )  # fmt: skip
        assert conn.execute("SELECT attempts FROM deliveries").fetchone() == (0,)
    finally:
        conn.close()


def test_reads_share_four_reader_connections_and_a_close_waits_for_them(db_path):
    store = Store(db_path, route=route_all).open()

    async def slow(db) -> int:
        time.sleep(0.2)  # long enough for every read to be under way at once
        return int((await db.one("SELECT count(*) FROM jobs"))[0])

    async def run():
        return await asyncio.gather(*(store.read(slow) for _ in range(8)))

    try:
        assert asyncio.run(run()) == [0] * 8
        assert len(store.engine._reader_conns) == 4
    finally:
        store.close()

    store = Store(db_path, route=route_all).open()

    async def close_during_a_read():
        reading = asyncio.ensure_future(store.read(slow))
        await asyncio.sleep(0.05)
        await asyncio.to_thread(store.close)
        return await reading

    assert asyncio.run(close_during_a_read()) == 0

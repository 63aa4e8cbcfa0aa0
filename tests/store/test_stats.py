"""receiver.store.stats: the numbers /metrics reads, from a real file, incrementally."""

from __future__ import annotations

from receiver.providers.base import Observation
from receiver.states import Status
from receiver.store import outbox
from receiver.store.stats import Snapshot, read_snapshot
from tests.store.ops import run
from tests.store.test_jobs import NOW, apply, insert, new_job, set_columns


def test_a_snapshot_counts_jobs_polls_and_deliveries(conn, route):
    insert(conn, route, new_job("job_a", notify=["app"]))
    insert(conn, route, new_job("job_b", notify=["app"]))
    insert(conn, route, new_job("job_c", provider="kvid", notify=["team"]))
    insert(conn, route, new_job("job_d", notify=[]))
    apply(conn, route, Observation(Status.PROCESSING), job_id="job_b")
    apply(conn, route, Observation(Status.COMPLETED), job_id="job_d")
    set_columns(conn, "job_a", next_poll_at=NOW - 1)
    set_columns(conn, "job_b", next_poll_at=NOW)
    set_columns(conn, "job_c", next_poll_at=NOW + 1)
    set_columns(conn, "job_d", next_poll_at=NOW - 5)  # finished: not counted
    (dead,) = conn.execute("SELECT id FROM deliveries WHERE job_id = 'job_c'").fetchone()
    run(outbox.record_attempt,
        conn, dead, outcome="dead", status="dead", next_attempt_at=None, error="gone",
        status_code=410, duration_ms=1.0, now=NOW,
    )  # fmt: skip
    run(outbox.disable_channel, conn, "team", "HTTP 410", "fp", NOW)

    snap = run(read_snapshot, conn, NOW + 30, Snapshot())

    assert snap.transitions == {"queued": 4, "processing": 1, "completed": 1}
    assert snap.last_transition == 6
    assert snap.active_jobs == {("vidu", "queued"): 1, ("vidu", "processing"): 1,
                                ("kvid", "queued"): 1}  # fmt: skip
    assert snap.polls_scheduled == {"vidu": 2, "kvid": 1}
    assert snap.polls_due == {"vidu": 2, "kvid": 1}
    assert snap.pending == {"app": 3}
    assert snap.oldest_pending_age == {"app": 30.0}
    assert snap.dead == {"team": 1}
    assert snap.disabled == {"team"}


def test_polls_not_yet_due_count_as_scheduled_only(conn, route):
    insert(conn, route)
    set_columns(conn, next_poll_at=NOW + 10)
    snap = run(read_snapshot, conn, NOW, Snapshot())
    assert (snap.polls_scheduled, snap.polls_due) == ({"vidu": 1}, {"vidu": 0})
    assert run(read_snapshot, conn, NOW + 10, Snapshot()).polls_due == {"vidu": 1}


def test_the_next_snapshot_reads_only_the_new_transitions(conn, route):
    insert(conn, route, new_job("job_a"))
    first = run(read_snapshot, conn, NOW, Snapshot())
    assert (first.transitions, first.last_transition) == ({"queued": 1}, 1)
    insert(conn, route, new_job("job_b"))
    apply(conn, route, Observation(Status.FAILED), job_id="job_a")

    second = run(read_snapshot, conn, NOW, first)

    assert (second.transitions, second.last_transition) == ({"queued": 2, "failed": 1}, 3)
    assert first.transitions == {"queued": 1}  # the previous snapshot is left as it was
    assert run(read_snapshot, conn, NOW, second).transitions == second.transitions


def test_an_age_is_never_negative_and_counts_from_a_requeue(conn, route):
    insert(conn, route, new_job(notify=["app"]))
    (delivery,) = conn.execute("SELECT id FROM deliveries").fetchone()
    assert run(read_snapshot, conn, NOW - 10, Snapshot()).oldest_pending_age == {"app": 0.0}
    run(outbox.record_attempt,
        conn, delivery, outcome="dead", status="dead", next_attempt_at=None, error="x",
        status_code=400, duration_ms=1.0, now=NOW,
    )  # fmt: skip
    run(outbox.requeue, conn, delivery, NOW + 50)
    assert run(read_snapshot, conn, NOW + 60, Snapshot()).oldest_pending_age == {"app": 10.0}


def test_an_empty_database_reads_as_nothing(conn):
    snap = run(read_snapshot, conn, NOW, Snapshot())
    assert snap == Snapshot()
    assert not conn.in_transaction

"""receiver.store.queries: the reads, on a real SQLite file written the way the service does."""

from __future__ import annotations

from receiver.providers.base import Observation
from receiver.states import Status
from receiver.store import jobs, queries
from tests.store.ops import run
from tests.store.test_jobs import NOW, apply, insert, new_job, set_columns


def test_a_job_reads_with_its_json_columns_decoded(conn, route):
    insert(conn, route, new_job(notify=["app"]))
    job = run(queries.get_job, conn, "job_1")
    assert job is not None
    assert job["request"] == {"images": [], "options": {"seed": 1}}
    assert (job["notify"], job["anomalies"]) == (["app"], [])
    assert run(queries.get_job, conn, "job_404") is None


def test_jobs_list_newest_first_below_a_cursor_and_filtered(conn, route):
    for i, provider in enumerate(["vidu", "kvid", "vidu", "vidu"]):
        insert(conn, route, new_job(f"job_{i}", provider=provider))
    apply(conn, route, Observation(Status.FAILED), job_id="job_2")

    def ids(**filters):
        return [j["id"] for j in run(queries.list_jobs, conn, **filters)]

    assert ids() == ["job_3", "job_2", "job_1", "job_0"]
    assert ids(limit=2) == ["job_3", "job_2"]
    assert ids(before="job_2") == ["job_1", "job_0"]
    assert ids(provider="vidu") == ["job_3", "job_2", "job_0"]
    assert ids(status="failed") == ["job_2"]
    assert ids(status="queued", provider="vidu", before="job_3") == ["job_0"]
    assert ids(provider="vidu", limit=1, before="job_2") == ["job_0"]


def test_a_jobs_history_reads_in_order(conn, route):
    insert(conn, route)
    apply(conn, route, Observation(Status.PROCESSING))
    apply(conn, route, Observation(Status.COMPLETED), now=NOW + 20)
    for nonce in ("a", "b"):
        run(jobs.record_callback,
            conn, job_id="job_1", provider="vidu", nonce=nonce, digest="d",
            nonce_expires_at=NOW, headers={"h": nonce}, body="{}",
            obs=Observation(Status.COMPLETED, "success"), confirm=True, now=NOW, route=route,
        )  # fmt: skip

    steps = run(queries.transitions, conn, "job_1")
    assert [t["to_status"] for t in steps] == ["queued", "processing", "completed"]
    assert steps[1]["detail"] == {}  # JSON decoded
    assert [d["event"] for d in run(queries.deliveries,conn, "job_1")] == [
        "queued", "processing", "completed",
    ]  # fmt: skip
    assert [c["headers"] for c in run(queries.callbacks, conn, "job_1")] == [{"h": "a"}, {"h": "b"}]
    assert run(queries.transitions, conn, "job_404") == []


def test_due_polls_are_the_providers_oldest_running_ones_not_in_flight(conn, route):
    schedule = {"job_a": NOW - 1, "job_b": NOW - 9, "job_c": NOW, "job_d": NOW + 1}
    for job_id, at in schedule.items():
        insert(conn, route, new_job(job_id))
        set_columns(conn, job_id, next_poll_at=at, provider_job_id=f"t-{job_id}")
    insert(conn, route, new_job("job_k", provider="kvid"))
    set_columns(conn, "job_k", next_poll_at=NOW - 50)
    insert(conn, route, new_job("job_f"))
    apply(conn, route, Observation(Status.FAILED), job_id="job_f")
    set_columns(conn, "job_f", next_poll_at=NOW - 60)

    def due(limit=10, skip=()):
        return [r["id"] for r in run(queries.due_polls, conn, "vidu", NOW, limit, list(skip))]

    assert due() == ["job_b", "job_a", "job_c"]
    assert due(limit=2) == ["job_b", "job_a"]
    assert due(skip=["job_a"]) == ["job_b", "job_c"]
    (first,) = run(queries.due_polls, conn, "vidu", NOW, 1, [])
    assert set(first) == {
        "id", "provider", "provider_job_id", "key_fingerprint", "callback_url",
        "confirm_callback_id", "poll_failures", "polls", "next_poll_at",
    }  # fmt: skip
    assert first["provider_job_id"] == "t-job_b"


def test_overdue_deadlines_are_unfinished_jobs_past_theirs_oldest_first(conn, route):
    for job_id, deadline in (
        ("job_a", NOW - 1),
        ("job_b", NOW - 5),
        ("job_c", NOW),
        ("job_d", NOW + 1),
    ):
        insert(conn, route, new_job(job_id, deadline_at=deadline))
    insert(conn, route, new_job("job_e", deadline_at=NOW - 9))
    apply(conn, route, Observation(Status.COMPLETED), job_id="job_e")

    assert run(queries.overdue_deadlines, conn, NOW, 10) == ["job_b", "job_a", "job_c"]
    assert run(queries.overdue_deadlines, conn, NOW, 1) == ["job_b"]


def test_the_next_wake_is_the_earliest_poll_or_deadline(conn, route):
    assert run(queries.next_wake, conn, ["vidu"], [], NOW) is None
    insert(conn, route, new_job("job_a"))
    set_columns(conn, "job_a", next_poll_at=NOW + 30)
    insert(conn, route, new_job("job_b", provider="kvid", deadline_at=NOW + 50))
    set_columns(conn, "job_b", next_poll_at=NOW + 10)
    insert(conn, route, new_job("job_c", deadline_at=NOW + 5))
    apply(conn, route, Observation(Status.FAILED), job_id="job_c")
    set_columns(conn, "job_c", next_poll_at=NOW + 1)

    assert run(queries.next_wake, conn, ["vidu"], [], NOW) == NOW + 30
    assert run(queries.next_wake, conn, ["vidu", "kvid"], [], NOW) == NOW + 10
    assert run(queries.next_wake, conn, ["vidu", "kvid"], ["job_b"], NOW) == NOW + 30
    assert run(queries.next_wake, conn, ["vidu"], ["job_a"], NOW) == NOW + 50
    assert run(queries.next_wake, conn, [], [], NOW) == NOW + 50


def test_a_page_of_jobs_is_fifty_unless_told(conn, route):
    for i in range(51):
        insert(conn, route, new_job(f"job_{i:02}"))
    assert len(run(queries.list_jobs, conn)) == 50
    assert len(run(queries.list_jobs, conn, limit=51)) == 51

"""receiver.store.jobs, called as the writer calls it: on a real SQLite file (``conn``),
with a fixed clock and a router that records what it was asked (``route``)."""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import sqlite3
from typing import Any

import pytest

from receiver.providers.base import Observation, Progress, Submission
from receiver.states import Status
from receiver.store import jobs
from receiver.store.jobs import (
    AdmittedCallback,
    CallbackTarget,
    JobNotFound,
    NewJob,
    UnknownTask,
    UnknownToken,
)
from tests.store.ops import run

NOW = 1_767_000_000.0
EVENT_ID = re.compile(r"evt_[0-9a-f]{24}")


def new_job(job_id="job_1", notify=None, provider="vidu", **fields: Any) -> NewJob:
    return NewJob(
        id=job_id,
        provider=provider,
        model="viduq2",
        prompt="a cat",
        request={"images": [], "options": {"seed": 1}},
        callback_token=f"tok-{job_id}",
        callback_url=f"https://me.example/callbacks/{provider}/tok-{job_id}",
        key_fingerprint="sha256:0123456789abcdef",
        notify=notify,
        **fields,
    )


def job_row(conn, job_id="job_1") -> dict[str, Any]:
    return dict(conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone())


def table(conn, name: str, job_id="job_1") -> list[dict[str, Any]]:
    query = f"SELECT * FROM {name} WHERE job_id = ? ORDER BY id"
    return [dict(r) for r in conn.execute(query, (job_id,))]


def insert(conn, route, job: NewJob | None = None, now: float = NOW) -> NewJob:
    job = job or new_job()
    run(jobs.insert_job, conn, job, now=now, route=route)
    return job


def apply(conn, route, obs: Observation, source="poll", now=NOW + 10, job_id="job_1", **kw):
    return run(jobs.apply, conn, job_id, obs, source, now=now, route=route, **kw)


def admitted(nonce="n-1", *, obs=None, confirm=False, digest="d-1") -> AdmittedCallback:
    return AdmittedCallback(
        nonce=nonce,
        digest=digest,
        nonce_expires_at=NOW + 660,
        headers={"date": "Tue, 06 May 2025 12:09:42 GMT", "x-request-nonce": nonce},
        body='{"state":"processing"}',
        obs=obs or Observation(Status.PROCESSING, "processing"),
        confirm=confirm,
        received_url="https://me.example/callbacks/vidu/***",
    )


def record(conn, route, callback: AdmittedCallback, now=NOW + 5, job_id="job_1") -> str:
    return run(jobs.record_callback,
        conn, job_id=job_id, provider="vidu", nonce=callback.nonce, digest=callback.digest,
        nonce_expires_at=callback.nonce_expires_at, headers=callback.headers,
        body=callback.body, obs=callback.obs, confirm=callback.confirm, now=now, route=route,
        received_url=callback.received_url,
    )  # fmt: skip


def set_columns(conn, job_id="job_1", **values: Any) -> None:
    assignments = ", ".join(f"{column} = ?" for column in values)
    conn.execute(f"UPDATE jobs SET {assignments} WHERE id = ?", (*values.values(), job_id))


# -- insert_job -------------------------------------------------------------------------------


def test_insert_job_stores_the_job_queued_with_its_first_transition_and_deliveries(conn, route):
    insert(conn, route, new_job(notify=["app", "team"], deadline_at=NOW + 3600))

    row = job_row(conn)
    assert {k: row[k] for k in ("status", "provider", "model", "prompt", "key_fingerprint")} == {
        "status": "queued", "provider": "vidu", "model": "viduq2", "prompt": "a cat",
        "key_fingerprint": "sha256:0123456789abcdef",
    }  # fmt: skip
    assert json.loads(row["request"]) == {"images": [], "options": {"seed": 1}}
    assert json.loads(row["notify"]) == ["app", "team"]
    assert (row["created_at"], row["updated_at"], row["deadline_at"]) == (NOW, NOW, NOW + 3600)
    assert (row["callback_token"], row["anomalies"], row["polls"]) == ("tok-job_1", "[]", 0)
    ((transition),) = table(conn, "transitions")
    assert (transition["from_status"], transition["to_status"], transition["source"]) == (
        None, "queued", "api",
    )  # fmt: skip
    assert (transition["at"], transition["detail"]) == (NOW, None)
    assert route.calls == [(Status.QUEUED, ["app", "team"])]
    deliveries = table(conn, "deliveries")
    assert [(d["channel"], d["event"], d["status"]) for d in deliveries] == [
        ("app", "queued", "pending"), ("team", "queued", "pending"),
    ]  # fmt: skip
    for delivery in deliveries:
        assert delivery["transition_id"] == transition["id"]
        assert delivery["next_attempt_at"] == delivery["created_at"] == NOW
        assert delivery["updated_at"] == NOW and delivery["attempts"] == 0
        assert EVENT_ID.fullmatch(delivery["event_id"])
    assert deliveries[0]["event_id"] != deliveries[1]["event_id"]


def test_a_job_without_a_notify_list_stores_null_and_routes_to_the_defaults(conn, route):
    insert(conn, route)
    assert job_row(conn)["notify"] is None
    assert route.calls == [(Status.QUEUED, None)]
    assert [d["channel"] for d in table(conn, "deliveries")] == ["team"]


# -- apply ------------------------------------------------------------------------------------


def test_apply_keeps_the_jobs_notify_list_for_every_later_transition(conn, route):
    insert(conn, route, new_job(notify=["app"]))
    apply(conn, route, Observation(Status.PROCESSING, "processing"))
    apply(conn, route, Observation(Status.COMPLETED, "success"), now=NOW + 20)

    assert route.calls == [
        (Status.QUEUED, ["app"]), (Status.PROCESSING, ["app"]), (Status.COMPLETED, ["app"]),
    ]  # fmt: skip
    assert [(d["channel"], d["event"]) for d in table(conn, "deliveries")] == [
        ("app", "queued"), ("app", "processing"), ("app", "completed"),
    ]  # fmt: skip


def test_apply_moves_the_job_and_keeps_what_a_later_observation_leaves_out(conn, route):
    insert(conn, route)
    set_columns(conn, next_poll_at=NOW + 30, confirm_callback_id=7)
    first = Observation(
        Status.PROCESSING, "processing", result_url="https://cdn/r.mp4",
        cover_url="https://cdn/c.jpg", credits=4.0,
    )  # fmt: skip
    moved = apply(conn, route, first, source="callback", detail={"callback_id": 3, "x": None})

    row = job_row(conn)
    assert moved == jobs.Applied("job_1", Status.PROCESSING, moved.transition_id)
    assert moved.transition_id is not None and moved.anomaly is None
    assert (row["status"], row["updated_at"], row["finished_at"]) == ("processing", NOW + 10, None)
    # Not terminal: the poll schedule and a pending confirmation stay.
    assert (row["next_poll_at"], row["confirm_callback_id"]) == (NOW + 30, 7)
    last = table(conn, "transitions")[-1]
    assert (last["from_status"], last["to_status"], last["source"], last["at"]) == (
        "queued", "processing", "callback", NOW + 10,
    )  # fmt: skip
    assert json.loads(last["detail"]) == {"provider_status": "processing", "callback_id": 3}

    done = apply(conn, route, Observation(Status.COMPLETED), now=NOW + 20)
    row = job_row(conn)
    assert done.status is Status.COMPLETED
    assert (row["status"], row["provider_status"]) == ("completed", "processing")
    assert (row["result_url"], row["cover_url"], row["credits"], row["error"]) == (
        "https://cdn/r.mp4", "https://cdn/c.jpg", 4.0, None,
    )  # fmt: skip
    assert (row["finished_at"], row["next_poll_at"], row["confirm_callback_id"]) == (
        NOW + 20, None, None,
    )  # fmt: skip
    assert table(conn, "transitions")[-1]["detail"] == "{}"  # no word, no detail


def test_a_failure_stores_its_error_and_credits(conn, route):
    insert(conn, route)
    apply(conn, route, Observation(Status.FAILED, "failed", error="AuditSubmitIllegal", credits=0))
    row = job_row(conn)
    assert (row["status"], row["error"], row["credits"], row["finished_at"]) == (
        "failed", "AuditSubmitIllegal", 0.0, NOW + 10,
    )  # fmt: skip


def test_the_same_status_again_updates_only_the_providers_word(conn, route):
    insert(conn, route)
    apply(conn, route, Observation(Status.PROCESSING, "processing"))
    before = job_row(conn)

    same = apply(conn, route, Observation(Status.PROCESSING, "rendering"), now=NOW + 30)

    assert same == jobs.Applied("job_1", Status.PROCESSING, None, None)
    assert job_row(conn) == {**before, "provider_status": "rendering", "updated_at": NOW + 30}
    assert len(table(conn, "transitions")) == 2
    apply(conn, route, Observation(Status.PROCESSING), now=NOW + 40)  # no word: nothing
    assert job_row(conn)["updated_at"] == NOW + 30


def test_a_finished_job_is_not_touched_by_its_own_status_again(conn, route):
    insert(conn, route)
    apply(conn, route, Observation(Status.COMPLETED, "success"))
    before = job_row(conn)
    again = apply(conn, route, Observation(Status.COMPLETED, "success-again"), now=NOW + 50)
    assert again == jobs.Applied("job_1", Status.COMPLETED, None, None)
    assert job_row(conn) == before


def test_an_anomaly_is_recorded_with_where_it_came_from(conn, route):
    insert(conn, route)
    apply(conn, route, Observation(Status.COMPLETED, "success"))
    late = apply(conn, route, Observation(Status.PROCESSING, "processing"), "callback", NOW + 60)

    assert late.transition_id is None and late.status is Status.COMPLETED
    assert late.anomaly == "job is completed; ignored observed processing"
    row = job_row(conn)
    assert json.loads(row["anomalies"]) == [
        {"at": NOW + 60, "source": "callback", "observed": "processing",
         "provider_status": "processing", "note": late.anomaly},
    ]  # fmt: skip
    assert row["updated_at"] == NOW + 60 and row["status"] == "completed"


def test_an_unknown_word_is_no_anomaly(conn, route):
    insert(conn, route)
    apply(conn, route, Observation(Status.PROCESSING, "processing"))
    odd = apply(conn, route, Observation(Status.QUEUED, "paused", known=False), now=NOW + 30)
    assert odd.anomaly is None
    row = job_row(conn)
    assert (row["anomalies"], row["provider_status"], row["status"]) == (
        "[]", "paused", "processing",
    )  # fmt: skip


def test_anomalies_keep_the_latest_fifty(conn, route):
    assert jobs.MAX_ANOMALIES == 50
    insert(conn, route)
    apply(conn, route, Observation(Status.FAILED, "failed"))
    for i in range(60):
        apply(conn, route, Observation(Status.PROCESSING, f"p{i}"), now=NOW + 100 + i)

    kept = json.loads(job_row(conn)["anomalies"])
    assert len(kept) == 50
    assert [a["provider_status"] for a in kept] == [f"p{i}" for i in range(10, 60)]


def test_apply_to_a_missing_job_raises_and_writes_nothing(conn, route):
    with pytest.raises(JobNotFound):
        apply(conn, route, Observation(Status.COMPLETED), job_id="job_404")
    assert conn.execute("SELECT count(*) FROM transitions").fetchone()[0] == 0
    assert route.calls == []


# -- what a job's end leaves for after the commit ---------------------------------------------


def downloads(conn) -> list[tuple[Any, ...]]:
    query = "SELECT job_id, status, next_attempt_at, queued_at, updated_at FROM downloads"
    return [tuple(r) for r in conn.execute(query)]


def finished_lines(conn, caplog) -> list[str]:
    """What the actions handed to the commit log, run as the writer runs them after it."""
    caplog.set_level(logging.INFO, logger="vidhook.jobs")
    for action in conn.committed:
        action()
    return [r.getMessage() for r in caplog.records if r.name == "vidhook.jobs"]


def test_only_a_completion_queues_the_download_of_its_result(conn, route):
    for job_id, end in (("job_f", Status.FAILED), ("job_x", Status.CANCELED)):
        insert(conn, route, new_job(job_id))
        apply(conn, route, Observation(Status.PROCESSING), job_id=job_id)
        apply(conn, route, Observation(end), now=NOW + 20, job_id=job_id)
    insert(conn, route)
    apply(conn, route, Observation(Status.PROCESSING))
    assert downloads(conn) == []

    apply(conn, route, Observation(Status.COMPLETED, result_url="https://cdn/r.mp4"), now=NOW + 20)

    assert downloads(conn) == [("job_1", "pending", NOW + 20, NOW + 20, NOW + 20)]


def test_an_end_logs_one_line_after_the_commit_with_what_the_job_knows(conn, route, caplog):
    insert(conn, route)
    signed = "https://cdn.example/r.mp4?Expires=1767000600&Signature=c2VjcmV0"
    apply(conn, route, Observation(Status.PROCESSING, result_url=signed), "callback")
    assert conn.committed == []  # a job still running logs nothing

    apply(conn, route, Observation(Status.COMPLETED), now=NOW + 72.5)

    # The link of an earlier observation, without its query: that is a credential to the file.
    assert finished_lines(conn, caplog) == [
        "job job_1 completed after 72.5s (provider vidu, via poll):"
        " result https://cdn.example/r.mp4?…"
    ]


@pytest.mark.parametrize(
    ("earlier", "error", "ending"),
    [
        (None, "AuditSubmitIllegal", ": AuditSubmitIllegal"),
        ("quota exceeded", None, ": quota exceeded"),
        ("quota exceeded", "AuditSubmitIllegal", ": AuditSubmitIllegal"),
        (None, None, ""),
    ],
)
def test_a_failure_logs_the_latest_error_it_knows(conn, route, caplog, earlier, error, ending):
    insert(conn, route)
    set_columns(conn, error=earlier)

    apply(conn, route, Observation(Status.FAILED, error=error), "deadline", now=NOW + 3)

    assert finished_lines(conn, caplog) == [
        f"job job_1 failed after 3.0s (provider vidu, via deadline){ending}"
    ]


def test_a_cancel_logs_no_result_and_no_error(conn, route, caplog):
    insert(conn, route)
    apply(conn, route, Observation(Status.CANCELED, "canceled"), "api", now=NOW + 3)
    assert finished_lines(conn, caplog) == [
        "job job_1 canceled after 3.0s (provider vidu, via api)"
    ]


@pytest.mark.parametrize(
    ("url", "told"),
    [
        ("https://cdn.example/r.mp4", "https://cdn.example/r.mp4"),
        ("https://cdn.example/r.mp4?", "https://cdn.example/r.mp4?…"),
        ("https://cdn.example/r.mp4?a=1?b=2", "https://cdn.example/r.mp4?…"),
    ],
)
def test_a_result_link_is_told_without_its_query(url, told):
    finished = jobs.Finished("job_1", "vidu", Status.COMPLETED, "poll", url, None, 1.0)
    assert (
        str(finished) == f"job job_1 completed after 1.0s (provider vidu, via poll): result {told}"
    )


# -- record_submission ------------------------------------------------------------------------


def test_a_submission_stores_the_task_id_key_and_schedule_then_applies(conn, route):
    insert(conn, route)
    submission = Submission("task-9", Observation(Status.PROCESSING, "processing"), "sha256:new")
    applied = run(
        jobs.record_submission,
        conn,
        "job_1",
        submission,
        next_poll_at=NOW + 5,
        now=NOW + 1,
        route=route,
    )
    row = job_row(conn)
    assert (row["provider_job_id"], row["key_fingerprint"], row["next_poll_at"]) == (
        "task-9", "sha256:new", NOW + 5,
    )  # fmt: skip
    assert applied.status is Status.PROCESSING
    assert table(conn, "transitions")[-1]["source"] == "submit"


# -- record_callback --------------------------------------------------------------------------


def test_a_new_callback_is_accepted_stored_and_applied(conn, route):
    insert(conn, route)
    callback = admitted()

    assert record(conn, route, callback) == "accepted"

    ((stored),) = table(conn, "callbacks")
    assert {k: stored[k] for k in ("provider", "received_at", "nonce", "provider_status")} == {
        "provider": "vidu", "received_at": NOW + 5, "nonce": "n-1",
        "provider_status": "processing",
    }  # fmt: skip
    assert json.loads(stored["headers"]) == callback.headers
    assert (stored["body"], stored["outcome"], stored["received_url"]) == (
        callback.body, "applied", callback.received_url,
    )  # fmt: skip
    nonces = conn.execute("SELECT provider, nonce, digest, expires_at FROM nonces")
    assert [tuple(n) for n in nonces] == [("vidu", "n-1", "d-1", NOW + 660)]
    row = job_row(conn)
    assert (row["status"], row["last_callback_at"]) == ("processing", NOW + 5)
    last = table(conn, "transitions")[-1]
    assert last["source"] == "callback"
    assert json.loads(last["detail"])["callback_id"] == stored["id"]


def test_the_same_nonce_is_a_duplicate_with_the_same_digest_else_a_replay(conn, route):
    insert(conn, route)
    assert record(conn, route, admitted()) == "accepted"
    counts = [conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in ("callbacks",)]
    before = job_row(conn)

    assert record(conn, route, admitted(), now=NOW + 9) == "duplicate"
    assert record(conn, route, admitted(digest="d-2"), now=NOW + 9) == "replayed"
    assert record(conn, route, admitted(digest="d-0"), now=NOW + 9) == "replayed"

    assert [conn.execute("SELECT count(*) FROM callbacks").fetchone()[0]] == counts
    assert job_row(conn) == before
    assert [tuple(n) for n in conn.execute("SELECT digest FROM nonces")] == [("d-1",)]


def test_a_nonce_that_cannot_be_stored_is_an_error_not_a_duplicate(conn, route):
    insert(conn, route)
    broken = AdmittedCallback(**{**admitted().__dict__, "digest": None})  # type: ignore[arg-type]
    with pytest.raises(sqlite3.IntegrityError, match=r"NOT NULL constraint failed: nonces\.digest"):
        record(conn, route, broken)
    assert table(conn, "callbacks") == []


def test_a_callback_that_needs_confirming_schedules_a_poll_now(conn, route):
    insert(conn, route)
    set_columns(conn, next_poll_at=NOW + 600, poll_failures=3)
    obs = Observation(Status.COMPLETED, "success", provider_job_id="task-from-body")

    assert record(conn, route, admitted(obs=obs, confirm=True)) == "accepted"

    ((stored),) = table(conn, "callbacks")
    assert stored["outcome"] == "confirming"
    row = job_row(conn)
    assert (row["status"], row["last_callback_at"], row["provider_job_id"]) == (
        "queued", NOW + 5, "task-from-body",
    )  # fmt: skip
    assert (row["confirm_callback_id"], row["next_poll_at"], row["poll_failures"]) == (
        stored["id"], NOW + 5, 0,
    )  # fmt: skip
    assert len(table(conn, "transitions")) == 1


def test_a_confirming_callback_for_a_finished_job_leaves_its_schedule(conn, route):
    insert(conn, route)
    apply(conn, route, Observation(Status.FAILED, "failed"))
    set_columns(conn, provider_job_id="task-1", poll_failures=2, confirm_callback_id=None)
    obs = Observation(Status.COMPLETED, "success", provider_job_id="other")

    record(conn, route, admitted(obs=obs, confirm=True))

    row = job_row(conn)
    assert (row["confirm_callback_id"], row["next_poll_at"], row["poll_failures"]) == (
        None, None, 2,
    )  # fmt: skip
    assert (row["provider_job_id"], row["last_callback_at"]) == ("task-1", NOW + 5)


def test_a_task_id_is_taken_from_a_callback_only_while_none_is_known(conn, route):
    insert(conn, route)
    obs = Observation(Status.PROCESSING, "processing", provider_job_id="task-1")
    record(conn, route, admitted("n-1", obs=obs))
    assert job_row(conn)["provider_job_id"] == "task-1"
    obs = Observation(Status.PROCESSING, "processing", provider_job_id="task-2")
    record(conn, route, admitted("n-2", obs=obs))
    assert job_row(conn)["provider_job_id"] == "task-1"


# -- record_token_callback ----------------------------------------------------------------------


def test_a_token_callback_finds_its_job_admits_and_stores_it(conn, route):
    insert(conn, route, new_job(provider="vidu"))
    set_columns(conn, provider_job_id="task-1")
    seen: list[CallbackTarget] = []

    def admit(target: CallbackTarget) -> AdmittedCallback:
        seen.append(target)
        return admitted()

    job_id, outcome, kept = run(
        jobs.record_token_callback,
        conn,
        provider="vidu",
        token="tok-job_1",
        admit=admit,
        now=NOW + 5,
        route=route,
    )

    assert (job_id, outcome, kept) == ("job_1", "accepted", admitted())
    assert seen == [
        CallbackTarget(
            "job_1", "task-1", "sha256:0123456789abcdef",
            "https://me.example/callbacks/vidu/tok-job_1",
        )
    ]  # fmt: skip
    assert len(table(conn, "callbacks")) == 1


@pytest.mark.parametrize(("provider", "token"), [("vidu", "tok-nope"), ("apimodels", "tok-job_1")])
def test_a_token_of_no_job_of_that_provider_is_unknown(conn, route, provider, token):
    insert(conn, route)
    with pytest.raises(UnknownToken) as caught:
        run(jobs.record_token_callback,
            conn, provider=provider, token=token, admit=lambda t: admitted(), now=NOW,
            route=route,
        )  # fmt: skip
    assert token not in str(caught.value)
    assert table(conn, "callbacks") == []


def test_a_refusal_by_admit_writes_nothing(conn, route):
    insert(conn, route)

    def refuse(target: CallbackTarget) -> AdmittedCallback:
        raise ValueError("bad signature")

    with pytest.raises(ValueError, match="bad signature"):
        run(
            jobs.record_token_callback,
            conn,
            provider="vidu",
            token="tok-job_1",
            admit=refuse,
            now=NOW,
            route=route,
        )
    assert table(conn, "callbacks") == []
    assert conn.execute("SELECT count(*) FROM nonces").fetchone()[0] == 0


# -- record_task_callback -----------------------------------------------------------------------


def test_a_task_callback_goes_to_the_latest_job_of_that_provider_with_the_task(conn, route):
    for job_id, provider, created in (
        ("job_old", "vidu", NOW), ("job_new", "vidu", NOW + 1), ("job_other", "kvid", NOW + 2),
    ):  # fmt: skip
        insert(conn, route, new_job(job_id, provider=provider), now=created)
        set_columns(conn, job_id, provider_job_id="task-1")
    seen: list[CallbackTarget] = []

    def admit(target: CallbackTarget) -> AdmittedCallback:
        seen.append(target)
        return admitted()

    job_id, outcome, kept = run(
        jobs.record_task_callback,
        conn,
        provider="vidu",
        task_id="task-1",
        admit=admit,
        now=NOW + 5,
        route=route,
    )

    assert (job_id, outcome, kept) == ("job_new", "accepted", admitted())
    assert seen == [
        CallbackTarget(
            "job_new", "task-1", "sha256:0123456789abcdef",
            "https://me.example/callbacks/vidu/tok-job_new",
        )
    ]  # fmt: skip
    assert len(table(conn, "callbacks", "job_new")) == 1
    assert job_row(conn, "job_new")["status"] == "processing"


@pytest.mark.parametrize(("provider", "task_id"), [("vidu", "task-2"), ("kvid", "task-1")])
def test_a_task_of_no_job_of_that_provider_is_unknown(conn, route, provider, task_id):
    insert(conn, route)
    set_columns(conn, provider_job_id="task-1")
    admitting: list[CallbackTarget] = []
    with pytest.raises(UnknownTask, match=f"no {provider} job has this task"):
        run(
            jobs.record_task_callback, conn, provider=provider, task_id=task_id,
            admit=admitting.append, now=NOW,
            route=route,
        )  # fmt: skip
    assert admitting == []
    assert table(conn, "callbacks") == []
    assert conn.execute("SELECT count(*) FROM nonces").fetchone()[0] == 0


# -- polls --------------------------------------------------------------------------------------


def test_a_poll_applies_counts_and_reschedules(conn, route):
    insert(conn, route)
    set_columns(conn, poll_failures=4, confirm_callback_id=12)

    applied = run(jobs.record_poll,
        conn, "job_1", Observation(Status.PROCESSING), next_poll_at=NOW + 40, now=NOW + 30,
        route=route,
    )  # fmt: skip

    assert applied.status is Status.PROCESSING
    row = job_row(conn)
    assert (row["polls"], row["poll_failures"], row["next_poll_at"]) == (1, 0, NOW + 40)
    last = table(conn, "transitions")[-1]
    assert (last["source"], json.loads(last["detail"])["confirms_callback_id"]) == ("poll", 12)

    run(jobs.record_poll,
        conn, "job_1", Observation(Status.COMPLETED), next_poll_at=NOW + 80, now=NOW + 70,
        route=route,
    )  # fmt: skip
    row = job_row(conn)
    assert (row["polls"], row["next_poll_at"], row["status"]) == (2, None, "completed")


def test_a_poll_that_only_sees_new_progress_keeps_it_without_a_transition(conn, route):
    insert(conn, route)

    def poll(progress: Progress | None, at: float, status=Status.PROCESSING):
        seen = Observation(status, "RUNNING", progress=progress)
        return run(jobs.record_poll, conn, "job_1", seen, next_poll_at=at + 5, now=at, route=route)

    poll(Progress(percent=10), NOW + 10)
    transitions, events = len(table(conn, "transitions")), len(table(conn, "events"))
    assert job_row(conn)["progress"] == '{"percent":10}'

    applied = poll(Progress(percent=42.5), NOW + 20)
    assert applied.transition_id is None
    assert job_row(conn)["progress"] == '{"percent":42.5}'
    assert len(table(conn, "transitions")) == transitions
    # Those who follow the job live are told; a poll that sees the same figure tells no one.
    news = table(conn, "events")[events:]
    assert [(e["transition_id"], e["at"]) for e in news] == [(None, NOW + 20)]
    poll(Progress(percent=42.5), NOW + 30)
    assert len(table(conn, "events")) == events + 1
    # A provider that stops giving a figure (fal, once a request leaves its queue) clears it.
    poll(None, NOW + 40)
    assert job_row(conn)["progress"] is None
    assert len(table(conn, "events")) == events + 2


def test_the_submit_answers_progress_is_kept(conn, route):
    insert(conn, route)
    seen = Observation(Status.QUEUED, "IN_QUEUE", progress=Progress(queue_position=3))
    run(jobs.record_submission,
        conn, "job_1", Submission("req-1", seen, "sha256:0123456789abcdef"),
        next_poll_at=NOW + 5, now=NOW + 1, route=route,
    )  # fmt: skip
    assert job_row(conn)["progress"] == '{"queue_position":3}'


def test_a_poll_of_a_missing_job_raises(conn, route):
    with pytest.raises(JobNotFound):
        run(jobs.record_poll,
            conn, "job_404", Observation(Status.PROCESSING), next_poll_at=NOW, now=NOW,
            route=route,
        )  # fmt: skip


def test_poll_failures_are_counted_and_rescheduled(conn, route):
    insert(conn, route)
    assert run(jobs.record_poll_failure, conn, "job_1", next_poll_at=NOW + 7) == 1
    assert run(jobs.record_poll_failure, conn, "job_1", next_poll_at=NOW + 9) == 2
    row = job_row(conn)
    assert (row["poll_failures"], row["next_poll_at"]) == (2, NOW + 9)
    assert run(jobs.record_poll_failure, conn, "job_404", next_poll_at=NOW) == 0


def test_only_a_running_job_can_be_scheduled(conn, route):
    insert(conn, route)
    assert run(jobs.schedule_poll, conn, "job_1", NOW + 3) is True
    assert job_row(conn)["next_poll_at"] == NOW + 3
    apply(conn, route, Observation(Status.CANCELED))
    assert run(jobs.schedule_poll, conn, "job_1", NOW + 9) is False
    assert job_row(conn)["next_poll_at"] is None
    assert run(jobs.schedule_poll, conn, "job_404", NOW) is False


def test_a_pause_moves_only_that_providers_earlier_polls_of_running_jobs(conn, route):
    for job_id, provider, at in (
        ("job_a", "vidu", NOW + 1), ("job_b", "vidu", NOW + 50), ("job_c", "vidu", NOW + 100),
        ("job_d", "kvid", NOW + 1), ("job_e", "vidu", NOW + 2),
    ):  # fmt: skip
        insert(conn, route, new_job(job_id, provider=provider))
        set_columns(conn, job_id, next_poll_at=at)
    apply(conn, route, Observation(Status.FAILED), job_id="job_e")
    set_columns(conn, "job_e", next_poll_at=NOW + 2)

    assert run(jobs.defer_provider, conn, "vidu", NOW + 50) == 1

    polls = dict(conn.execute("SELECT id, next_poll_at FROM jobs").fetchall())
    assert polls == {
        "job_a": NOW + 50, "job_b": NOW + 50, "job_c": NOW + 100, "job_d": NOW + 1,
        "job_e": NOW + 2,
    }  # fmt: skip


@pytest.mark.parametrize(("window", "min_step", "step"), [(30, 1, 10), (3, 2, 2), (10, 1, 10 / 3)])
def test_overdue_polls_are_spread_in_their_order(conn, route, window, min_step, step):
    for job_id, at in (("job_a", NOW - 5), ("job_b", NOW - 50), ("job_c", NOW - 1)):
        insert(conn, route, new_job(job_id))
        set_columns(conn, job_id, next_poll_at=at)
    for job_id, provider, at in (("job_d", "vidu", NOW + 5), ("job_e", "kvid", NOW - 9)):
        insert(conn, route, new_job(job_id, provider=provider))
        set_columns(conn, job_id, next_poll_at=at)
    insert(conn, route, new_job("job_f"))
    apply(conn, route, Observation(Status.COMPLETED), job_id="job_f")
    set_columns(conn, "job_f", next_poll_at=NOW - 70)

    assert run(jobs.spread_overdue, conn, "vidu", NOW, window, min_step) == 3

    polls = dict(conn.execute("SELECT id, next_poll_at FROM jobs").fetchall())
    assert polls == {
        "job_b": NOW, "job_a": pytest.approx(NOW + step, abs=1e-6),
        "job_c": pytest.approx(NOW + 2 * step, abs=1e-6),
        "job_d": NOW + 5, "job_e": NOW - 9, "job_f": NOW - 70,
    }  # fmt: skip


def test_nothing_overdue_is_nothing_spread(conn, route):
    insert(conn, route)
    set_columns(conn, next_poll_at=NOW)
    assert run(jobs.spread_overdue, conn, "vidu", NOW, 30, 1) == 0
    assert job_row(conn)["next_poll_at"] == NOW


def test_expired_nonces_are_purged_and_the_rest_kept(conn):
    conn.executemany(
        "INSERT INTO nonces (provider, nonce, digest, expires_at) VALUES ('vidu', ?, 'd', ?)",
        [("old", NOW - 1), ("edge", NOW), ("new", NOW + 1)],
    )
    assert run(jobs.purge_nonces, conn, NOW) == 1
    assert {r[0] for r in conn.execute("SELECT nonce FROM nonces")} == {"edge", "new"}


def test_text_is_stored_as_itself_not_as_escapes(conn, route):
    job = new_job()
    insert(conn, route, NewJob(**{**job.__dict__, "request": {"prompt": "café ☕"}}))
    assert job_row(conn)["request"] == '{"prompt":"café ☕"}'


def test_values_handed_between_threads_cannot_be_changed(conn, route):
    insert(conn, route)
    applied = apply(conn, route, Observation(Status.PROCESSING))
    target = CallbackTarget("job_1", None, None, None)
    for value, field in (
        (applied, "status"), (new_job(), "id"), (admitted(), "nonce"), (target, "id"),
    ):  # fmt: skip
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(value, field, None)

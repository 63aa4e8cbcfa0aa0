"""receiver.store.outbox: deliveries, their attempts and disabled channels, on a real file."""

from __future__ import annotations

from receiver.providers.base import Observation
from receiver.states import Status
from receiver.store import outbox
from receiver.store.writer import Connection
from tests.store.ops import run
from tests.store.test_jobs import NOW, apply, insert, new_job


def deliveries_of(conn, route, job_id: str, notify: list[str]) -> list[int]:
    insert(conn, route, new_job(job_id, notify=notify))
    return [r[0] for r in conn.execute("SELECT id FROM deliveries WHERE job_id = ?", (job_id,))]


def attempt(conn, delivery_id: int, now: float, **fields) -> None:
    values = {"outcome": "retry", "status": "pending", "next_attempt_at": now + 60,
              "error": "HTTP 503", "status_code": 503, "duration_ms": 12.5, **fields}  # fmt: skip
    run(outbox.record_attempt, conn, delivery_id, now=now, **values)


def test_due_deliveries_are_a_channels_pending_ones_oldest_first(conn, route):
    (a,) = deliveries_of(conn, route, "job_a", ["app"])
    (b,) = deliveries_of(conn, route, "job_b", ["app"])
    (c,) = deliveries_of(conn, route, "job_c", ["app"])
    (other,) = deliveries_of(conn, route, "job_d", ["team"])
    attempt(conn, a, NOW, next_attempt_at=NOW + 5)  # retried later
    attempt(conn, c, NOW, outcome="delivered", status="delivered", next_attempt_at=None)

    def due(now, limit=10):
        return [d["id"] for d in run(outbox.due, conn, "app", now, limit)]

    assert due(NOW) == [b]
    assert due(NOW + 5) == [b, a]
    assert due(NOW + 5, limit=1) == [b]
    assert [d["id"] for d in run(outbox.due, conn, "team", NOW, 10)] == [other]


def test_a_due_batch_carries_its_jobs_and_transitions(conn, route):
    first = deliveries_of(conn, route, "job_a", ["app"])
    second = deliveries_of(conn, route, "job_b", ["app"])
    batch = run(outbox.due_with_sources, conn, "app", NOW, 10)
    assert [d["id"] for d in batch] == first + second
    for delivery in batch:
        assert delivery["job"]["id"] == delivery["job_id"]
        assert delivery["job"]["request"] == {"images": [], "options": {"seed": 1}}
        assert delivery["transition"]["id"] == delivery["transition_id"]
        assert delivery == run(outbox.event_source, conn, delivery["id"])
    assert run(outbox.due_with_sources, conn, "nobody", NOW, 10) == []
    assert run(outbox.event_source, conn, 9999) is None


def test_each_channel_is_due_at_its_earliest_pending_delivery(conn, route):
    assert run(outbox.next_due, conn, NOW) == {}
    (a,) = deliveries_of(conn, route, "job_a", ["app"])
    (b,) = deliveries_of(conn, route, "job_b", ["app"])
    (t,) = deliveries_of(conn, route, "job_c", ["team"])
    attempt(conn, a, NOW + 1, next_attempt_at=NOW + 90)
    attempt(conn, t, NOW + 1, outcome="dead", status="dead", next_attempt_at=None)
    assert run(outbox.next_due, conn, NOW) == {"app": NOW}
    attempt(conn, b, NOW + 2, next_attempt_at=NOW + 30)
    assert run(outbox.next_due, conn, NOW) == {"app": NOW + 30}


def test_an_attempt_is_recorded_and_moves_its_delivery(conn, route):
    (d,) = deliveries_of(conn, route, "job_a", ["app"])
    attempt(conn, d, NOW + 1)
    attempt(conn, d, NOW + 61, outcome="delivered", status="delivered", next_attempt_at=None,
            error=None, status_code=204, duration_ms=3.0)  # fmt: skip

    (row,) = conn.execute("SELECT * FROM deliveries WHERE id = ?", (d,))
    assert (row["status"], row["attempts"], row["next_attempt_at"]) == ("delivered", 2, None)
    assert (row["last_error"], row["updated_at"], row["delivered_at"]) == (None, NOW + 61, NOW + 61)
    fields = ("at", "outcome", "status_code", "error", "duration_ms")
    tried = [tuple(a[k] for k in fields) for a in run(outbox.attempts, conn, d)]
    assert tried == [
        (NOW + 1, "retry", 503, "HTTP 503", 12.5), (NOW + 61, "delivered", 204, None, 3.0),
    ]  # fmt: skip


def test_a_failed_attempt_leaves_no_delivery_time(conn, route):
    (d,) = deliveries_of(conn, route, "job_a", ["app"])
    attempt(conn, d, NOW + 1, outcome="dead", status="dead", next_attempt_at=None)
    (row,) = conn.execute("SELECT status, delivered_at, last_error FROM deliveries")
    assert tuple(row) == ("dead", None, "HTTP 503")


def test_a_channel_is_disabled_once_and_enabled_again(conn):
    run(outbox.disable_channel, conn, "app", "HTTP 410", "fp-1", NOW)
    run(outbox.disable_channel, conn, "app", "HTTP 404", "fp-2", NOW + 5)
    run(outbox.disable_channel, conn, "mail", "gone", "fp-3", NOW + 1)
    assert run(outbox.channel_states, conn) == [
        {"name": "app", "disabled_at": NOW + 5, "reason": "HTTP 404", "config_fingerprint": "fp-2"},
        {"name": "mail", "disabled_at": NOW + 1, "reason": "gone", "config_fingerprint": "fp-3"},
    ]
    run(outbox.enable_channel, conn, "app", NOW + 6)
    assert [s["name"] for s in run(outbox.channel_states, conn)] == ["mail"]


def test_a_dead_delivery_is_requeued_and_its_channel_enabled(conn, route):
    (d,) = deliveries_of(conn, route, "job_a", ["app"])
    attempt(conn, d, NOW + 1, outcome="dead", status="dead", next_attempt_at=None)
    run(outbox.disable_channel, conn, "app", "HTTP 410", "fp", NOW + 1)
    conn.touched.clear()

    requeued = run(outbox.requeue, conn, d, NOW + 100)

    assert requeued is not None
    # Due at its creation time: a requeued delivery goes out before newer ones.
    created = conn.execute("SELECT created_at FROM deliveries WHERE id = ?", (d,)).fetchone()[0]
    assert (requeued["status"], requeued["attempts"], requeued["next_attempt_at"]) == (
        "pending", 0, created,
    )  # fmt: skip
    assert (requeued["requeued_at"], requeued["updated_at"]) == (NOW + 100, NOW + 100)
    assert run(outbox.channel_states, conn) == []
    assert conn.touched == {"deliveries", "deliveries:app"}


def test_only_a_dead_or_held_delivery_is_requeued(conn, route):
    (d,) = deliveries_of(conn, route, "job_a", ["app"])
    attempt(conn, d, NOW + 1, outcome="delivered", status="delivered", next_attempt_at=None)
    run(outbox.disable_channel, conn, "app", "HTTP 410", "fp", NOW)
    conn.touched.clear()
    before = run(outbox.event_source, conn, d)

    again = run(outbox.requeue, conn, d, NOW + 100)

    assert again is not None and before is not None
    assert again == {k: v for k, v in before.items() if k not in ("job", "transition")}
    assert [s["name"] for s in run(outbox.channel_states, conn)] == ["app"]
    assert conn.touched == set()
    assert run(outbox.requeue, conn, 9999, NOW) is None


def test_deliveries_list_newest_first_by_status_below_a_cursor(conn, route):
    ids = deliveries_of(conn, route, "job_a", ["app", "team", "mail"])
    attempt(conn, ids[1], NOW + 1, outcome="dead", status="dead", next_attempt_at=None)

    def listed(status=None, before=None, limit=10):
        rows = run(outbox.list_deliveries, conn, status=status, before=before, limit=limit)
        return [r["id"] for r in rows]

    assert listed() == ids[::-1]
    assert listed(limit=2) == [ids[2], ids[1]]
    assert listed(before=ids[2]) == [ids[1], ids[0]]
    assert listed(status="dead") == [ids[1]]
    assert listed(status="pending", before=ids[2]) == [ids[0]]


def test_a_terminal_transition_marks_the_channels_it_wakes(conn, route):
    insert(conn, route, new_job(notify=["app"]))
    assert isinstance(conn, Connection)
    conn.touched.clear()
    apply(conn, route, Observation(Status.COMPLETED))
    # The archive's queue and the events log are marked too: their readers wake on them.
    assert conn.touched == {"deliveries", "deliveries:app", "downloads", "events"}

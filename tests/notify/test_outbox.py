"""The outbox end to end: real jobs, a real Slack sink, the service's own retry rules."""

import pytest

from receiver.config import NotifyConfig
from receiver.notify.outbox import retry_delay
from receiver.sandbox import ServerThread
from receiver.sandbox.slack import SlackAnswer, SlackSinkSettings, create_slack_sink
from tests.conftest import running_service, wait_for

QUICK_RETRIES = {"retry_base": 0.1, "retry_max": 1.0, "max_attempts": 6}


@pytest.fixture
def slack():
    app = create_slack_sink(SlackSinkSettings())
    with ServerThread(app) as server:
        app.state.slack.url = f"{server.url}/services/T000/B000/XXXX"
        yield app.state.slack


def slack_config(slack, **channel):
    return {
        "env": {"SLACK_URL": slack.url},
        "default_channels": ["team"],
        "channels": {
            "team": {"type": "slack", "webhook_url_env": "SLACK_URL", **channel},
            "audit": {"type": "console", "events": ["queued", "processing", "completed"]},
        },
        "notify": QUICK_RETRIES,
    }


@pytest.fixture
def service(sandbox, slack, db_path):
    with running_service(sandbox.url, db_path, extra=slack_config(slack)) as svc:
        yield svc


def deliveries(service, job_id):
    return service.job(job_id)["deliveries"]


def attempts(service, delivery_id):
    return service.rows(
        "SELECT outcome, status_code FROM delivery_attempts WHERE delivery_id = ? ORDER BY id",
        delivery_id,
    )


def settled(service, job_id):
    found = deliveries(service, job_id)
    return found and all(d["status"] != "pending" for d in found)


def test_a_completed_job_is_announced_once_in_slack(service, slack):
    job = service.submit("A red fox in the snow")
    service.wait_status(job["id"], "completed")
    wait_for(lambda: settled(service, job["id"]), what="the delivery")
    (delivery,) = deliveries(service, job["id"])
    assert (delivery["channel"], delivery["event"], delivery["status"]) == (
        "team",
        "completed",
        "delivered",
    )
    assert attempts(service, delivery["id"]) == [("delivered", None)]
    (message,) = slack.messages
    assert "A red fox in the snow" in str(message["blocks"])
    assert job["id"] in str(message["blocks"])


def test_retry_after_is_honoured(service, slack):
    slack.answer(SlackAnswer(status=429, retry_after=2))
    job = service.submit("Harbour at dawn")
    wait_for(lambda: settled(service, job["id"]), timeout=15, what="the delivery")
    first, second = slack.requests
    assert first.status_code == 429 and second.status_code == 200
    assert second.time - first.time >= 2.0
    (delivery,) = deliveries(service, job["id"])
    assert [a[0] for a in attempts(service, delivery["id"])] == ["retry", "delivered"]


def test_three_500s_then_200_end_in_exactly_one_message(service, slack):
    slack.answer(*(SlackAnswer(status=500) for _ in range(3)))
    job = service.submit("A glass of water on a table")
    wait_for(lambda: settled(service, job["id"]), timeout=15, what="the delivery")
    assert [r.status_code for r in slack.requests] == [500, 500, 500, 200]
    assert len(slack.messages) == 1
    (delivery,) = deliveries(service, job["id"])
    assert delivery["status"] == "delivered" and delivery["attempts"] == 4
    outcomes = attempts(service, delivery["id"])
    assert outcomes == [("retry", 500)] * 3 + [("delivered", None)]


def test_410_ends_dead_with_the_channel_disabled_until_a_retry(service, slack):
    slack.answer(SlackAnswer(status=410, error="channel_is_archived"))
    first = service.submit("Falling leaves")
    wait_for(lambda: settled(service, first["id"]), what="the first delivery")
    (dead,) = deliveries(service, first["id"])
    assert dead["status"] == "dead" and "410" in dead["last_error"]
    assert service.rows("SELECT name FROM channel_states") == [("team",)]

    second = service.submit("Falling snow")
    wait_for(lambda: settled(service, second["id"]), what="the second delivery")
    (skipped,) = deliveries(service, second["id"])
    assert skipped["status"] == "dead" and skipped["last_error"].startswith("channel disabled")
    assert len(slack.requests) == 1  # nothing more was sent to a destination that is gone

    listed = service.api.get("/api/deliveries", params={"status": "dead"}).json()
    assert {d["id"] for d in listed["deliveries"]} == {dead["id"], skipped["id"]}
    retried = service.api.post(f"/api/deliveries/{dead['id']}/retry")
    assert retried.status_code == 200 and retried.json()["status"] == "pending"
    wait_for(lambda: len(slack.messages) == 1, what="the retried delivery")
    assert service.rows("SELECT name FROM channel_states") == []
    again = service.api.post(f"/api/deliveries/{dead['id']}/retry")
    assert again.status_code == 409


def test_routing_follows_events_filters_and_the_jobs_own_list(service, slack):
    default = service.submit("Bees over lavender")
    chosen = service.submit("A tram at night", notify=["audit"])
    service.wait_status(default["id"], "completed")
    service.wait_status(chosen["id"], "completed")
    wait_for(lambda: settled(service, default["id"]) and settled(service, chosen["id"]))
    to_default = {(d["channel"], d["event"]) for d in deliveries(service, default["id"])}
    to_chosen = {(d["channel"], d["event"]) for d in deliveries(service, chosen["id"])}
    assert to_default == {("team", "completed")}
    assert to_chosen == {("audit", "queued"), ("audit", "processing"), ("audit", "completed")}


def test_unknown_and_malformed_retries_are_refused(service):
    assert service.api.post("/api/deliveries/999999/retry").status_code == 404
    assert service.api.post("/api/deliveries/abc/retry").status_code == 404
    bad = service.api.get("/api/deliveries", params={"status": "lost"})
    assert bad.status_code == 422 and "status" in bad.json()["error"]["fields"]


def test_backoff_grows_and_never_undercuts_retry_after():
    config = NotifyConfig(retry_base=1.0, retry_max=8.0)
    top = lambda: 1.0  # noqa: E731
    assert [retry_delay(config, n, None, rng=top) for n in range(1, 6)] == [1, 2, 4, 8, 8]
    assert retry_delay(config, 1, 30.0, rng=top) == 30.0

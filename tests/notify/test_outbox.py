"""The outbox end to end: real jobs, a real Slack sink, the service's own retry rules."""

import sqlite3

import pytest
from aiosmtpd.controller import Controller

from receiver.config import NotifyConfig
from receiver.notify.outbox import retry_delay
from receiver.sandbox.slack import SlackAnswer
from tests.conftest import free_port, running_service, wait_for
from tests.notify.test_email import Mailbox
from tests.test_restart import ServiceProcess

QUICK_RETRIES = {"retry_base": 0.1, "retry_max": 1.0, "max_attempts": 6}


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
def service(sandbox, slack, database):
    """On both engines: the outbox's rows are the store's."""
    with running_service(
        sandbox.url, database.path, extra=slack_config(slack), database_url=database.url
    ) as svc:
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


def test_a_removed_webhook_disables_the_channel(service, slack):
    slack.settings.removed_webhooks.append("T000/B000/XXXX")
    job = service.submit("Paper boats")
    wait_for(lambda: settled(service, job["id"]), what="the delivery")
    (held,) = deliveries(service, job["id"])
    assert held["status"] == "held" and held["last_error"].endswith("no_service_id")
    assert attempts(service, held["id"]) == [("disabled", 400)]
    assert service.rows("SELECT name FROM channel_states") == [("team",)]


def test_a_spent_message_allowance_waits_and_is_delivered_later(sandbox, slack, db_path):
    slack.settings.message_limit = 0
    channel = {"type": "slack", "bot_token_env": "SLACK_TOKEN", "channel": "#videos",
               "api_url": slack.url.split("/services/")[0] + "/api", "min_interval": 0}  # fmt: skip
    extra = {"env": {"SLACK_TOKEN": "xoxb-test-token"}, "default_channels": ["team"],
             "channels": {"team": channel}, "notify": QUICK_RETRIES}  # fmt: skip
    with running_service(sandbox.url, db_path, extra=extra) as service:
        job = service.submit("A lighthouse in fog")

        def refused():
            found = deliveries(service, job["id"])
            return found and found[0]["attempts"] >= 1

        wait_for(refused, what="the refused attempt")
        slack.settings.message_limit = None
        wait_for(lambda: settled(service, job["id"]), what="the delivery")
        (delivery,) = deliveries(service, job["id"])
        outcomes = attempts(service, delivery["id"])
    assert delivery["status"] == "delivered"
    assert outcomes[-1] == ("delivered", None) and set(outcomes[:-1]) == {("retry", 200)}
    assert "message_limit_exceeded" in [r.error for r in slack.requests]
    assert len(slack.messages) == 1


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


def test_an_smtp_server_that_is_down_and_comes_back_gets_the_mail(sandbox, db_path):
    port = free_port()
    mail = {"type": "email", "host": "127.0.0.1", "port": port, "security": "none",
            "from": "vidhook@example.com", "to": ["team@example.com"]}  # fmt: skip
    extra = {"default_channels": ["mail"], "channels": {"mail": mail}, "notify": QUICK_RETRIES}
    with running_service(sandbox.url, db_path, extra=extra) as service:
        job = service.submit("Kites on a beach")
        service.wait_status(job["id"], "completed")

        def retried():
            found = deliveries(service, job["id"])
            return found and found[0]["attempts"] >= 1 and found[0]["status"] == "pending"

        wait_for(retried, what="a failed attempt while the server is down")
        mailbox = Mailbox()
        controller = Controller(mailbox, hostname="127.0.0.1", port=port)
        controller.start()
        try:
            wait_for(lambda: mailbox.messages, timeout=10, what="the mail")
            wait_for(lambda: settled(service, job["id"]), what="the delivery to be recorded")
        finally:
            controller.stop()
        (delivery,) = deliveries(service, job["id"])
        outcomes = [a[0] for a in attempts(service, delivery["id"])]
    assert delivery["status"] == "delivered"
    assert outcomes[-1] == "delivered" and set(outcomes[:-1]) == {"retry"}
    (received,) = mailbox.messages
    assert job["id"].encode() in received.content


def test_deliveries_pending_at_a_sigkill_are_all_sent_once_after_restart(sandbox, slack, tmp_path):
    extra = (
        '\ndefault_channels = ["team"]\n'
        '[channels.team]\ntype = "slack"\nwebhook_url_env = "SLACK_URL"\n'
        "[notify]\nretry_base = 0.2\nretry_max = 0.5\nmax_attempts = 1000\n"
    )
    service = ServiceProcess(tmp_path, sandbox.url, top_config=extra)
    service.env["SLACK_URL"] = slack.url
    slack.answer(*(SlackAnswer(status=503) for _ in range(10_000)))
    try:
        service.start()
        ids = [service.api.post("/api/jobs", json={"provider": "vidu", "prompt": f"Fog {i}"})
               .json()["id"] for i in range(5)]  # fmt: skip
        pending = "SELECT count(*) FROM deliveries WHERE status = 'pending' AND attempts > 0"
        wait_for(lambda: sqlite_count(service, pending) == len(ids), timeout=15, what="retries")
        service.kill()
        slack.settings.answers.clear()
        service.start()
        wait_for(lambda: len(slack.messages) >= len(ids), timeout=15, what="every message")
        done = "SELECT count(*) FROM deliveries WHERE status = 'delivered'"
        wait_for(lambda: sqlite_count(service, done) == len(ids), what="deliveries recorded")
    finally:
        service.close()
    announced = [job_id for job_id in ids for m in slack.messages if job_id in str(m["blocks"])]
    assert sorted(announced) == sorted(ids)  # each job once, none twice


def sqlite_count(service, sql):
    conn = sqlite3.connect(service.db_path)
    try:
        return conn.execute(sql).fetchone()[0]
    finally:
        conn.close()

"""Held deliveries: a disabled or removed channel's messages wait, and go out in order once
the channel is back (a retry, a changed configuration); bulk retry of dead deliveries."""

from __future__ import annotations

import json
import re
import time

import pytest

from receiver.cli import main
from receiver.sandbox.slack import SlackAnswer
from tests.conftest import ADMIN_TOKEN, VIDU_KEY, free_port, running_service, wait_for
from tests.test_metrics import key, scrape

QUICK_RETRIES = {"retry_base": 0.1, "retry_max": 1.0, "max_attempts": 6}
ARCHIVED = SlackAnswer(status=410, error="channel_is_archived")
INVALID = SlackAnswer(status=400, error="invalid_payload")
JOB_ID = re.compile(r"job_[0-9A-Z]{26}")


def slack_config(url, **channel):
    return {
        "env": {"SLACK_URL": url},
        "default_channels": ["team"],
        "channels": {
            # min_interval 0: the order of arrival is the order of sending.
            "team": {"type": "slack", "webhook_url_env": "SLACK_URL", "min_interval": 0,
                     **channel},
            "audit": {"type": "console", "events": ["failed"]},
        },
        "notify": QUICK_RETRIES,
    }  # fmt: skip


def delivery_of(service, job_id):
    ((delivery,),) = [service.job(job_id)["deliveries"]]
    return delivery


def settled_as(service, job_id, status):
    return wait_for(
        lambda: (d := delivery_of(service, job_id))["status"] == status and d,
        what=f"the delivery of {job_id} to be {status}",
    )


def completed_job(service, prompt):
    job = service.submit(prompt)
    service.wait_status(job["id"], "completed")
    return job["id"]


def announced(slack):
    """The job ids of the messages Slack accepted, in the order they arrived."""
    return [JOB_ID.findall(json.dumps(m["blocks"]))[0] for m in slack.messages]


def test_a_gone_channel_holds_its_deliveries_until_a_retry_sends_them_in_order(
    sandbox, slack, db_path
):
    slack.answer(ARCHIVED)
    with running_service(sandbox.url, db_path, extra=slack_config(slack.url)) as service:
        first = completed_job(service, "Falling leaves")
        held = settled_as(service, first, "held")
        assert held["last_error"].startswith("channel disabled: ")
        assert "410" in held["last_error"]
        assert service.rows("SELECT name FROM channel_states") == [("team",)]
        attempts = service.rows(
            "SELECT outcome, status_code FROM delivery_attempts WHERE delivery_id = ?", held["id"]
        )
        assert attempts == [("disabled", 410)]

        later = [completed_job(service, f"Falling snow {i}") for i in range(2)]
        for job_id in later:
            waiting = settled_as(service, job_id, "held")
            assert waiting["attempts"] == 0 and waiting["last_error"] == held["last_error"]
        assert len(slack.requests) == 1  # nothing more went to a destination that is gone

        listed = service.api.get("/api/deliveries", params={"status": "held"}).json()
        ids = [delivery_of(service, job_id)["id"] for job_id in (first, *later)]
        assert sorted(d["id"] for d in listed["deliveries"]) == ids
        assert service.api.get("/api/deliveries", params={"status": "dead"}).json() == {
            "deliveries": [], "next_cursor": None,
        }  # fmt: skip
        metrics = scrape(service)
        assert metrics[key("vidhook_outbox_held", channel="team")] == 3
        assert metrics[key("vidhook_channel_disabled", channel="team")] == 1

        # Retrying one (the newest) enables the channel: all three go, oldest first.
        retried = service.api.post(f"/api/deliveries/{ids[-1]}/retry")
        assert retried.status_code == 200, retried.text
        wait_for(lambda: len(slack.messages) == 3, what="the held messages")
        for job_id in (first, *later):
            settled_as(service, job_id, "delivered")
        assert service.rows("SELECT name FROM channel_states") == []
        assert service.api.post(f"/api/deliveries/{ids[0]}/retry").status_code == 409
        assert scrape(service)[key("vidhook_outbox_held", channel="team")] == 0
    assert announced(slack) == [first, *later]


def test_held_deliveries_stay_held_until_the_channel_configuration_changes(sandbox, slack, db_path):
    slack.answer(ARCHIVED)
    with running_service(sandbox.url, db_path, extra=slack_config(slack.url)) as service:
        jobs = [completed_job(service, f"Tide {i}") for i in range(3)]
        for job_id in jobs:
            settled_as(service, job_id, "held")

    # Started again as it was: the channel is still disabled, nothing is sent.
    with running_service(sandbox.url, db_path, extra=slack_config(slack.url)) as service:
        wait_for(lambda: service.http.get("/readyz").status_code == 200, what="readiness")
        time.sleep(0.5)
        assert {delivery_of(service, job_id)["status"] for job_id in jobs} == {"held"}
    assert len(slack.requests) == 1

    # Pointed at a new webhook: enabled again, and the held messages go in order.
    moved = slack.url.replace("XXXX", "YYYY")
    with running_service(sandbox.url, db_path, extra=slack_config(moved)) as service:
        for job_id in jobs:
            settled_as(service, job_id, "delivered")
        assert service.rows("SELECT name FROM channel_states") == []
    assert announced(slack) == jobs
    assert {r.path for r in slack.requests[1:]} == {"/services/T000/B000/YYYY"}


def test_bulk_retry_queues_every_dead_and_held_delivery_of_a_channel_in_order(
    sandbox, slack, db_path, monkeypatch, capsys
):
    # A refused message is sent once more without its cover image: two answers each.
    slack.answer(INVALID, INVALID, INVALID, INVALID, ARCHIVED)
    with running_service(sandbox.url, db_path, extra=slack_config(slack.url)) as service:
        jobs = []
        for i, status in enumerate(("dead", "dead", "held", "held")):
            jobs.append(completed_job(service, f"Lantern {i}"))
            settled_as(service, jobs[-1], status)
        metrics = scrape(service)
        assert metrics[key("vidhook_outbox_dead", channel="team")] == 2
        assert metrics[key("vidhook_outbox_held", channel="team")] == 2

        before = service.rows("SELECT * FROM deliveries ORDER BY id")
        unknown = service.api.post("/api/deliveries/retry", params={"channel": "nope"})
        assert unknown.status_code == 422, unknown.text
        assert "not a configured channel" in unknown.json()["error"]["fields"]["channel"]
        assert service.rows("SELECT * FROM deliveries ORDER BY id") == before

        monkeypatch.setenv("VIDHOOK_ADMIN_TOKEN", ADMIN_TOKEN)
        argv = ["deliveries", "retry", "--all", "--channel", "team", "--url", service.url]
        assert main(argv) == 0
        assert capsys.readouterr().out == "4 deliveries to team queued again (2 dead, 2 held)\n"
        for job_id in jobs:
            settled_as(service, job_id, "delivered")

        again = service.api.post("/api/deliveries/retry")
        assert again.status_code == 200
        assert again.json() == {"queued": 0, "dead": 0, "held": 0}
    # The two refused at first, then the two held: each once, in the order of their jobs.
    assert announced(slack) == jobs


def test_deliveries_retry_needs_an_id_or_all(monkeypatch, capsys):
    monkeypatch.setenv("VIDHOOK_ADMIN_TOKEN", ADMIN_TOKEN)
    for argv in (["deliveries", "retry"], ["deliveries", "retry", "7", "--all"],
                 ["deliveries", "retry", "7", "--channel", "team"]):  # fmt: skip
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == "vidhook: give a delivery id, or --all [--channel C]"


def test_a_channel_removed_from_the_config_holds_its_deliveries_until_it_is_back(
    sandbox, slack, db_path, tmp_path, monkeypatch, capsys
):
    nowhere = {"type": "webhook", "url": f"http://127.0.0.1:{free_port()}/hooks"}
    first = {"default_channels": ["team"], "channels": {"team": nowhere},
             "notify": {"retry_base": 60}}  # fmt: skip
    with running_service(sandbox.url, db_path, extra=first) as service:
        job_id = completed_job(service, "A red kite")
        wait_for(lambda: delivery_of(service, job_id)["attempts"] == 1, what="an attempt")

    without = {"channels": {"audit": {"type": "console"}}}
    with running_service(sandbox.url, db_path, extra=without) as service:
        held = settled_as(service, job_id, "held")
        assert held["last_error"] == (
            "channel team is not in the configuration; add it back to send this"
        )
        refused = service.api.post(f"/api/deliveries/{held['id']}/retry")
        assert refused.status_code == 409
        assert refused.json()["error"]["code"] == "channel_not_configured"
        unknown = service.api.post("/api/deliveries/retry", params={"channel": "team"})
        assert unknown.status_code == 422
        assert delivery_of(service, job_id)["status"] == "held"

    config = tmp_path / "vidhook.toml"
    config.write_text(
        'public_url = "https://hooks.example.com"\n'
        f"database = {json.dumps(str(db_path))}\n"
        '[providers.vidu]\napi_key_env = "VIDU_API_KEY"\n'
        '[channels.audit]\ntype = "console"\n'
    )
    monkeypatch.setenv("VIDU_API_KEY", VIDU_KEY)
    monkeypatch.setenv("VIDHOOK_ADMIN_TOKEN", ADMIN_TOKEN)
    for name in ("VIDHOOK_PUBLIC_URL", "VIDHOOK_DATABASE"):
        monkeypatch.delenv(name, raising=False)
    assert main(["check", "--config", str(config)]) == 0
    out = capsys.readouterr().out.splitlines()
    at = out.index(
        "deliveries held for channels not in the configuration (add one back to send them):"
    )
    assert out[at + 1].split() == ["team", "1"]

    with running_service(sandbox.url, db_path, extra=slack_config(slack.url)) as service:
        settled_as(service, job_id, "delivered")
    assert announced(slack) == [job_id]


def test_check_shows_a_disabled_channel_with_its_held_deliveries(
    sandbox, slack, db_path, tmp_path, monkeypatch, capsys
):
    slack.answer(ARCHIVED)
    with running_service(sandbox.url, db_path, extra=slack_config(slack.url)) as service:
        for i in range(2):
            settled_as(service, completed_job(service, f"Heron {i}"), "held")

    def check(url):
        config = tmp_path / "vidhook.toml"
        config.write_text(
            'public_url = "https://hooks.example.com"\n'
            f"database = {json.dumps(str(db_path))}\n"
            '[providers.vidu]\napi_key_env = "VIDU_API_KEY"\n'
            '[channels.team]\ntype = "slack"\nwebhook_url_env = "SLACK_URL"\nmin_interval = 0\n'
        )
        monkeypatch.setenv("SLACK_URL", url)
        rc = main(["check", "--config", str(config)])
        (line,) = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("  team ")]
        return rc, line

    monkeypatch.setenv("VIDU_API_KEY", VIDU_KEY)
    monkeypatch.setenv("VIDHOOK_ADMIN_TOKEN", ADMIN_TOKEN)
    for name in ("VIDHOOK_PUBLIC_URL", "VIDHOOK_DATABASE"):
        monkeypatch.delenv(name, raising=False)
    rc, line = check(slack.url)
    assert rc == 1
    assert line.split(None, 2)[2] == (
        "DISABLED: Slack channel 'team' answered HTTP 410: channel_is_archived; 2 deliveries held"
    )
    rc, line = check(slack.url.replace("XXXX", "YYYY"))
    assert rc == 0
    assert line.split(None, 2)[2] == (
        "disabled, but its configuration changed: enabled again at the next start;"
        " 2 deliveries held"
    )

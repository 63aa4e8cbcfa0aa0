"""/ui/jobs/{id}: what the page tells about a job, and its buttons, sent as the page holds
them: each changes what it should, and a forged one changes nothing."""

from __future__ import annotations

import html
import json
import re
from dataclasses import dataclass

import pytest

from receiver.sandbox.slack import SlackAnswer
from tests.conftest import (
    VIDU_KEY,
    running_service,
    settings_restored,
    wait_for,
)
from tests.vidu_signer import vidu_headers
from tests.web.conftest import Browser
from tests.web.forms import form_with_button

# Vidu polled only when asked to: a poll that happens is the one a button asked for.
NO_POLLS = {"vidu": {"initial_delay": 600, "poll_interval": 600, "poll_max_interval": 600,
                     "timeout": 900, "reconcile_after": 600}}  # fmt: skip
SLACK = {
    "default_channels": ["team"],
    "channels": {"team": {"type": "slack", "webhook_url_env": "SLACK_URL", "min_interval": 0}},
    "notify": {"retry_base": 0.1, "retry_max": 0.2, "max_attempts": 1},
}
ATTEMPT_ROW = re.compile(r"<tr><td>(\d+)</td><td>.*?</td><td>([a-z_]+)</td><td>(.*?)</td>", re.S)


def words(page) -> str:
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", page.text)).split())


def attempts_shown(page, delivery_id) -> list[tuple[str, str, str]]:
    start = page.text.index(f'data-delivery-id="{delivery_id}"')
    table = page.text[start : page.text.index("</table>", start)]
    return [
        (n, outcome, " ".join(html.unescape(answer).split()))
        for n, outcome, answer in ATTEMPT_ROW.findall(table)
    ]


def deliveries_of(service, job_id):
    return [d["status"] for d in service.job(job_id)["deliveries"]]


def late_callback(service, job_id, state):
    """A genuinely signed callback saying ``state``, whatever the job is now."""
    ((url, task),) = service.rows(
        "SELECT callback_url, provider_job_id FROM jobs WHERE id = ?", job_id
    )
    body = json.dumps({"id": task, "state": state}).encode()
    response = service.http.post(url, content=body, headers=vidu_headers(VIDU_KEY, url))
    assert response.status_code == 200, response.text


def test_the_page_shows_credits_polls_ignored_observations_and_every_delivery_attempt(
    slack_service, slack
):
    service = slack_service
    browser = Browser(service.url)
    browser.login()
    slack.answer(SlackAnswer(status=500))
    job = service.submit("A still pond at dawn")
    service.wait(job["id"], lambda j: [d["status"] for d in j["deliveries"]] == ["dead"])
    late_callback(service, job["id"], "processing")
    ((polls, credits, anomalies),) = service.rows(
        "SELECT polls, credits, anomalies FROM jobs WHERE id = ?", job["id"]
    )
    assert polls >= 1 and credits
    anomaly = json.loads(anomalies)[-1]
    assert anomaly["note"] == "job is completed; ignored observed processing"
    path = f"/ui/jobs/{job['id']}"
    page = browser.get(path)
    said = words(page)
    assert f"Credits {credits}" in said
    assert f"{polls} {'poll' if polls == 1 else 'polls'} answered" in said
    assert "This provider sends callbacks; polls reconcile lost ones." in said
    assert "Ignored observations" in said
    assert f"{anomaly['note']} (from callback, the provider said “processing”)" in said
    (delivery,) = service.job(job["id"])["deliveries"]
    assert attempts_shown(page, delivery["id"]) == [
        ("1", "dead", "HTTP 500 Slack channel 'team' answered HTTP 500: rollup_error")
    ]

    # The Retry button of the dead delivery, on the job's own page.
    sent = len(slack.messages)
    retried = browser.press(path, "Retry", f"/deliveries/{delivery['id']}/retry")
    assert retried.status_code == 303
    assert retried.headers["location"] == f"{path}?done=retried"
    assert "The delivery is queued again." in browser.get(retried.headers["location"]).text
    wait_for(lambda: deliveries_of(service, job["id"]) == ["delivered"], what="the delivery")
    assert len(slack.messages) == sent + 1 and job["id"] in json.dumps(slack.messages[-1])
    after = browser.get(path)
    shown = attempts_shown(after, delivery["id"])
    assert [(n, outcome) for n, outcome, _ in shown] == [("1", "dead"), ("2", "delivered")]
    assert 'data-delivery-status="delivered"' in after.text
    assert f"/deliveries/{delivery['id']}/retry" not in after.text  # nothing left to retry
    browser.close()


@dataclass
class Scene:
    """A service with a job still running (polled only when asked) and a completed one
    whose result is kept and whose Slack delivery is dead."""

    service: object
    browser: Browser
    running: str
    done: str
    delivery: int


@pytest.fixture
def scene(sandbox, slack, db_path):
    slack.answer(SlackAnswer(status=500))
    extra = {**SLACK, "env": {"SLACK_URL": slack.url}}
    with running_service(sandbox.url, db_path, overrides=NO_POLLS, extra=extra) as service:
        done = service.submit("Rain on a tin roof")
        service.wait(
            done["id"],
            lambda j: (
                j["media"]["status"] == "kept"
                and [d["status"] for d in j["deliveries"]] == ["dead"]
            ),
        )
        with settings_restored(sandbox.settings) as settings:
            settings.queue_delay = 120
            running = service.submit("A paper crane unfolds")
            wait_for(lambda: service.job(running["id"])["provider_job_id"], what="the task id")
            browser = Browser(service.url)
            browser.login()
            (delivery,) = service.job(done["id"])["deliveries"]
            yield Scene(service, browser, running["id"], done["id"], delivery["id"])
            browser.close()


def job_row(scene, job_id, columns):
    (row,) = scene.service.rows(f"SELECT {columns} FROM jobs WHERE id = ?", job_id)
    return row


def test_refresh_now_polls_the_provider_once(scene):
    path = f"/ui/jobs/{scene.running}"
    assert job_row(scene, scene.running, "polls") == (0,)
    response = scene.browser.press(path, "Refresh now")
    assert response.headers["location"] == f"{path}?done=refreshed"
    assert job_row(scene, scene.running, "polls") == (1,)
    assert "1 poll answered" in words(scene.browser.get(path))


def test_cancel_cancels_the_job_at_the_provider(scene):
    path = f"/ui/jobs/{scene.running}"
    response = scene.browser.press(path, "Cancel")
    assert response.headers["location"] == f"{path}?done=canceled"
    job = scene.service.job(scene.running)
    assert job["status"] == "canceled"
    assert job["transitions"][-1]["to_status"] == "canceled"
    page = scene.browser.get(path)
    assert f'data-job-id="{scene.running}" data-status="canceled"' in page.text
    assert "Cancel" not in re.findall(r"<button[^>]*>([^<]+)</button>", page.text)


def test_download_again_keeps_the_result_anew(scene):
    path = f"/ui/jobs/{scene.done}"
    ((queued, first_stored),) = scene.service.rows(
        "SELECT d.queued_at, m.stored_at FROM downloads d JOIN media m ON m.job_id = d.job_id"
        " WHERE d.job_id = ? AND m.kind = 'video'",
        scene.done,
    )
    response = scene.browser.press(path, "Download again")
    assert response.headers["location"] == f"{path}?done=keeping"
    ((requeued,),) = scene.service.rows(
        "SELECT queued_at FROM downloads WHERE job_id = ?", scene.done
    )
    assert requeued > queued
    wait_for(
        lambda: scene.service.rows(
            "SELECT 1 FROM media m JOIN downloads d ON d.job_id = m.job_id WHERE m.job_id = ?"
            " AND m.kind = 'video' AND m.stored_at > ? AND d.status = 'kept'",
            scene.done,
            first_stored,
        ),
        what="the result kept again",
    )


def every_row(service) -> dict[str, list[tuple]]:
    """Every row of every table a request could change (the heartbeat is the service's own)."""
    names = [
        name
        for (name,) in service.rows("SELECT name FROM sqlite_master WHERE type = 'table'")
        if name not in ("heartbeat", "sqlite_sequence")
    ]
    return {name: service.rows(f'SELECT * FROM "{name}" ORDER BY rowid') for name in names}


# (page, button, part of its form's action): every form a job's page and the deliveries
# page hold, and signing out.
BUTTONS = {
    "refresh": ("running", "Refresh now", "/refresh"),
    "cancel": ("running", "Cancel", "/cancel"),
    "download again": ("done", "Download again", "/archive"),
    "submit again": ("done", "Submit again", "/again"),
    "retry a delivery": ("done", "Retry", "/retry"),
    "retry a channel": ("deliveries", "Retry all of team", "/deliveries/retry"),
    "sign out": ("deliveries", "Sign out", "/ui/logout"),
}


def forgeries(scene, form):
    """The form as a forger could send it, with the headers a browser would add: without
    the CSRF field, with another session's, and whole but from another site."""
    other = Browser(scene.service.url)
    other.login()
    theirs = other.csrf("/ui/")
    other.close()
    without = {k: v for k, v in form.fields.items() if k != "csrf"}
    own = {"Origin": scene.service.url, "Sec-Fetch-Site": "same-origin"}
    evil = {"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"}
    return {
        "no csrf": (without, own),
        "another session's csrf": ({**without, "csrf": theirs}, own),
        "cross-site": (form.fields, evil),
        "a sibling site": (form.fields, {"Sec-Fetch-Site": "same-site"}),
    }


@pytest.mark.parametrize("button", BUTTONS)
def test_a_forged_form_is_refused_and_writes_nothing_where_the_real_one_writes(scene, button):
    where, label, action_part = BUTTONS[button]
    path = "/ui/deliveries" if where == "deliveries" else f"/ui/jobs/{getattr(scene, where)}"
    form = form_with_button(scene.browser.get(path).text, label, action_part)
    before = every_row(scene.service)
    for forgery, (data, headers) in forgeries(scene, form).items():
        response = scene.browser.http.post(form.action, data=data, headers=headers)
        assert response.status_code == 403, (forgery, response.status_code, response.text)
        assert "refused" in response.text.lower(), forgery
        assert "set-cookie" not in response.headers, forgery
        assert every_row(scene.service) == before, forgery
    assert scene.browser.get("/ui/").status_code == 200  # still signed in
    # The same form, sent as the page holds it, does what it says.
    sent = scene.browser.post_form(form.action, form.fields)
    assert sent.status_code == 303, sent.text
    if button == "sign out":
        assert scene.browser.get("/ui/").status_code == 303
    else:
        wait_for(lambda: every_row(scene.service) != before, what=f"{button} to write")

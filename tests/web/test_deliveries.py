"""/ui/deliveries: the channels' health strip, and held deliveries sent again from it."""

from __future__ import annotations

import html
import re

from receiver.sandbox.slack import SlackAnswer
from tests.conftest import wait_for
from tests.web.conftest import Browser

ARCHIVED = SlackAnswer(status=410, error="channel_is_archived")
CHANNEL = re.compile(r'<li class="channel ([a-z]+)">(.*?)</li>', re.S)


def channel_cards(page) -> dict[str, tuple[str, str]]:
    """Each channel of the strip: its name, its class and its text as read."""
    cards = {}
    for kind, inner in CHANNEL.findall(page.text):
        words = " ".join(html.unescape(re.sub(r"<[^>]+>", " ", inner)).split())
        cards[words.split()[0]] = (kind, words)
    return cards


def held_of(service, job_id):
    wait_for(
        lambda: [d["status"] for d in service.job(job_id)["deliveries"]] == ["held"],
        what=f"the delivery of {job_id} to be held",
    )
    return service.job(job_id)["deliveries"][0]


def test_the_strip_shows_a_disabled_channel_why_and_its_held_deliveries(slack_service, slack):
    service = slack_service
    browser = Browser(service.url)
    browser.login()
    healthy = channel_cards(browser.get("/ui/deliveries"))
    assert healthy["team"][0] == "healthy"
    assert "working" in healthy["team"][1]

    slack.answer(ARCHIVED)
    jobs = [service.submit(f"Swallows over a barn {n}") for n in range(2)]
    held = [held_of(service, job["id"]) for job in jobs]
    ((reason,),) = service.rows("SELECT reason FROM channel_states WHERE name = 'team'")
    page = browser.get("/ui/deliveries")
    kind, words = channel_cards(page)["team"]
    assert kind == "disabled"
    assert "disabled" in words and "working" not in words
    assert reason in words and "channel_is_archived" in words
    assert "0 pending · 0 dead · 2 held" in words
    shown = re.findall(r'<tr data-delivery-id="(\d+)" data-delivery-status="held"', page.text)
    assert sorted(int(i) for i in shown) == sorted(d["id"] for d in held)
    # The disabled time is shown relative, its exact moment in the title.
    assert re.search(r'channel-state">.*?<time datetime="[^"]+" title="[^"]+ UTC"', page.text)

    sent = len(slack.messages)
    again = browser.press("/ui/deliveries", "Retry all of team")
    assert again.headers["location"] == "/ui/deliveries?done=retried-all"
    wait_for(lambda: len(slack.messages) == sent + 2, what="the held messages")
    after = browser.get("/ui/deliveries")
    assert channel_cards(after)["team"][0] == "healthy"
    assert "Nothing is dead or held" in after.text
    assert service.rows("SELECT name FROM channel_states") == []
    browser.close()

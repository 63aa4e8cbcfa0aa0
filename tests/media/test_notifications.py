"""Slack, email and webhook messages link to vidhook's copy, and the link opens."""

from __future__ import annotations

import email
import email.policy
import html
import json
import re

import pytest
from standardwebhooks import Webhook
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from receiver.sandbox import ServerThread
from receiver.sandbox.media import FileSettings, sample_video
from receiver.sandbox.slack import SlackSinkSettings, create_slack_sink
from tests.conftest import running_service, settings_restored, wait_for
from tests.media.helpers import archive_extra, get, sha256, wait_media
from tests.notify.test_email import Mailbox, smtp_server

HOOK_PATH = "T0MEDIA/B0MEDIA/Media7Link3Opens9"
WEBHOOK_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SLACK_LINK = re.compile(r"<(https?://[^|>]+)\|Open the video>")


class Hooks:
    """A webhook receiver that keeps each request it verified with the reference library."""

    def __init__(self) -> None:
        self.events: list[dict] = []
        verifier = Webhook(WEBHOOK_SECRET)

        async def receive(request: Request) -> Response:
            body = await request.body()
            self.events.append(verifier.verify(body, dict(request.headers)))
            return Response(status_code=204)

        self.app = Starlette(routes=[Route("/hooks", receive, methods=["POST"])])


@pytest.fixture
def channels():
    slack_app = create_slack_sink(SlackSinkSettings(webhook_paths=[HOOK_PATH]))
    hooks, mailbox = Hooks(), Mailbox()
    with (
        ServerThread(slack_app) as slack_server,
        ServerThread(hooks.app) as hook_server,
        smtp_server(mailbox) as smtp,
    ):
        extra = {
            "default_channels": ["team", "mail", "app"],
            "channels": {
                "team": {"type": "slack", "webhook_url_env": "MEDIA_SLACK_URL",
                         "min_interval": 0, "events": ["completed"]},
                "mail": {"type": "email", "host": "127.0.0.1", "port": smtp.port,
                         "security": "none", "from": "vidhook@example.com",
                         "to": ["team@example.com"], "events": ["completed"]},
                "app": {"type": "webhook", "url": f"{hook_server.url}/hooks",
                        "secret_env": "MEDIA_HOOK_SECRET", "events": ["completed"]},
            },
            "env": {"MEDIA_SLACK_URL": f"{slack_server.url}/services/{HOOK_PATH}",
                    "MEDIA_HOOK_SECRET": WEBHOOK_SECRET},
        }  # fmt: skip
        yield extra, slack_app.state.slack, mailbox, hooks


def slack_link(message):
    text = message["blocks"][0]["text"]["text"]
    found = SLACK_LINK.search(text)
    assert found, text
    return html.unescape(found.group(1)), text


def mail_link(mailbox):
    (received,) = mailbox.messages
    message = email.message_from_bytes(received.content, policy=email.policy.default)
    text = message.get_body(("plain",)).get_content()
    found = re.search(r"^Result:\s+(\S+)", text, re.M)
    assert found, text
    return found.group(1), text


def test_every_channel_links_to_the_kept_copy_which_opens(sandbox, db_path, channels, kept_in):
    extra, slack, mailbox, hooks = channels
    with running_service(sandbox.url, db_path, extra=kept_in.config(extra)) as service:
        job = service.submit("A red fox trotting through fresh snow")
        job = wait_media(service, job["id"])
        wait_for(lambda: slack.messages and mailbox.messages and hooks.events, what="messages")
        prefix = f"{service.url}/media/{job['id']}/video?"
        expected = sha256(sample_video())

        link, text = slack_link(slack.messages[0])
        assert link.startswith(prefix) and "_vidhook" not in text
        assert sha256(get(link, follow_redirects=True).content) == expected
        cover = slack.messages[0]["blocks"][0]["accessory"]["image_url"]
        assert cover.startswith(f"{service.url}/media/{job['id']}/cover?")

        link, text = mail_link(mailbox)
        assert link.startswith(prefix) and "Size:" in text
        assert sha256(get(link, follow_redirects=True).content) == expected

        (event,) = hooks.events
        media = event["data"]["media"]
        assert media["status"] == "kept" and media["video"]["sha256"] == expected
        assert media["video"]["url"].startswith(prefix)
        assert sha256(get(media["video"]["url"], follow_redirects=True).content) == expected


def test_a_slow_copy_past_notify_wait_is_announced_with_the_providers_link(
    sandbox, db_path, channels
):
    extra, slack, mailbox, hooks = channels
    with settings_restored(sandbox.settings) as settings:
        settings.files = FileSettings(video_bytes=600_000, rate=150_000)  # about 4 s
        with running_service(
            sandbox.url, db_path, extra=archive_extra(extra, notify_wait=0.5)
        ) as service:
            job = service.submit("Paper boats on a rainy street")
            wait_for(lambda: slack.messages and mailbox.messages and hooks.events, timeout=15)
            job = service.job(job["id"])
            assert job["media"]["status"] == "pending"
            link, text = slack_link(slack.messages[0])
            assert link == job["result_url"]
            assert "still saving its copy" in text
            link, text = mail_link(mailbox)
            assert link == job["result_url"] and "still saving its copy" in text
            assert hooks.events[0]["data"]["media"]["status"] == "pending"
            # Once kept, the job's JSON has vidhook's link.
            assert wait_media(service, job["id"], timeout=20)["media"]["video"]["url"]
    assert len(slack.messages) == 1  # announced once


def test_a_completed_notification_waits_for_the_copy_then_links_to_it(sandbox, db_path, channels):
    extra, slack, _mailbox, _hooks = channels
    with settings_restored(sandbox.settings) as settings:
        settings.files = FileSettings(video_bytes=300_000, rate=150_000)  # about 2 s
        with running_service(sandbox.url, db_path, extra=archive_extra(extra)) as service:
            job = service.submit("A hummingbird at a feeder")
            service.wait_status(job["id"], "completed")
            wait_for(lambda: slack.messages, timeout=15)
            job = service.job(job["id"])
            (finished,) = service.rows("SELECT finished_at FROM downloads")[0]
            # The attempt is recorded once Slack has answered: a moment after the message.
            sent = wait_for(
                lambda: service.rows(
                    "SELECT min(a.at) FROM delivery_attempts a JOIN deliveries d"
                    " ON d.id = a.delivery_id WHERE d.channel = 'team'"
                )[0][0],
                what="the attempt's record",
            )
    assert job["media"]["status"] == "kept"
    link, _text = slack_link(slack.messages[0])
    assert link.startswith(f"{service.url}/media/")
    assert sent >= finished  # sent only after the copy was kept, without a failed attempt
    assert json.dumps(slack.messages[0]).count("still saving") == 0

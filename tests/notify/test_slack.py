"""The Slack channel: the message it renders, and what it does with each of Slack's answers.

Rendering is tested as pure functions; delivery against the fake Slack on loopback, which
refuses any message outside Block Kit's limits the way Slack does.
"""

from __future__ import annotations

import asyncio
import html
import json
import time

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from receiver.config import ChannelConfig, Secret, parse_config
from receiver.notify.base import DeliveryError, Event
from receiver.notify.slack import (
    SlackChannel,
    error_kind,
    escape,
    excerpt,
    format_elapsed,
    render,
    slack_len,
)
from receiver.sandbox.server import ServerThread
from receiver.sandbox.slack import (
    SlackAnswer,
    SlackSinkSettings,
    block_kit_problems,
    create_slack_sink,
)
from tests.conftest import free_port

TOKEN = "xoxb-1111-2222-SeCrEtToKeN"
HOOK_PATH = "T0001/B0002/HookSecretXYZ"
CALLBACK_TOKEN = "cbtoken-very-secret-0123"
COVER = "https://cdn.example/covers/1.jpg"
COVER_ALT = "Cover frame of the generated video"


def job(**overrides):
    base = {
        "id": "job_01HZX",
        "provider": "vidu",
        "provider_job_id": "vt-778",
        "status": "completed",
        "provider_status": "success",
        "model": "viduq2",
        "prompt": "A red fox runs through fresh snow at dawn",
        "request": {"prompt": "A red fox runs through fresh snow at dawn", "duration": 5},
        "result_url": "https://cdn.example/videos/1.mp4?sig=abc&exp=99",
        "cover_url": COVER,
        "error": None,
        "credits": 12.5,
        "notify": ["team"],
        "anomalies": [],
        "key_fingerprint": "sha256:0123456789abcdef",
        "created_at": "2025-01-01T10:00:00.000Z",
        "updated_at": "2025-01-01T10:02:05.000Z",
        "finished_at": "2025-01-01T10:02:05.000Z",
        "callback_url": f"https://hooks.example/callbacks/vidu/{CALLBACK_TOKEN}",
    }
    return {**base, **overrides}


def event(kind="completed", **overrides):
    return Event("dlv_0001", f"job.{kind}", 1735725725.0, job(status=kind, **overrides))


def section(payload):
    (block,) = payload["blocks"]
    assert block["type"] == "section"
    return block


# -- rendering --


def test_completed_message_has_status_link_fields_and_cover():
    payload = render(event())
    block = section(payload)
    text = block["text"]["text"]
    assert block["text"]["type"] == "mrkdwn"
    assert text.startswith(":white_check_mark: *Video ready*")
    assert "<https://cdn.example/videos/1.mp4?sig=abc&amp;exp=99|Open the video>" in text
    assert text.endswith("*Prompt:* A red fox runs through fresh snow at dawn")
    assert [f["text"] for f in block["fields"]] == [
        "*Provider*\nvidu",
        "*Model*\nviduq2",
        "*Elapsed*\n2m 05s",
        "*Credits*\n12.5",
        "*Job*\njob_01HZX",
    ]
    assert block["accessory"] == {"type": "image", "image_url": COVER, "alt_text": COVER_ALT}
    assert payload["text"] == "Video ready (vidu): A red fox runs through fresh snow at dawn"
    assert block_kit_problems(payload) == []


def test_failed_message_shows_the_error_and_no_link():
    payload = render(event("failed", error="Blocked by the <safety> filter", result_url=None))
    text = section(payload)["text"]["text"]
    assert text.startswith(":x: *Video failed*\n*Error:* Blocked by the &lt;safety&gt; filter")
    assert "Open the video" not in text
    assert payload["text"].startswith("Video failed (vidu): Blocked by the &lt;safety&gt; filter")


def test_failed_without_error_says_so():
    text = section(render(event("failed", error=None)))["text"]["text"]
    assert "*Error:* no reason was given" in text


@pytest.mark.parametrize(
    ("kind", "line"),
    [
        ("completed", ":white_check_mark: *Video ready*"),
        ("failed", ":x: *Video failed*"),
        ("processing", ":hourglass_flowing_sand: *Video in progress*"),
        ("queued", ":inbox_tray: *Video queued*"),
        ("canceled", ":no_entry_sign: *Video canceled*"),
    ],
)
def test_status_line(kind, line):
    text = section(render(event(kind)))["text"]["text"]
    assert text.splitlines()[0] == line
    assert ("Open the video" in text) == (kind == "completed")


def test_running_job_elapsed_counts_to_last_update():
    payload = render(event("processing", finished_at=None, updated_at="2025-01-01T10:00:45.000Z"))
    assert "*Elapsed*\n45s" in [f["text"] for f in section(payload)["fields"]]


def test_missing_values_leave_their_field_out():
    payload = render(event(model=None, credits=None, created_at=None))
    labels = [f["text"].split("\n")[0] for f in section(payload)["fields"]]
    assert labels == ["*Provider*", "*Job*"]


def test_no_cover_no_accessory():
    assert "accessory" not in section(render(event(cover_url=None)))
    assert "accessory" not in section(render(event(cover_url="ftp://cdn.example/c.jpg")))
    assert "accessory" not in section(render(event(), cover=False))


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [(0, "0s"), (45, "45s"), (59.6, "1m 00s"), (125, "2m 05s"), (3725, "1h 02m 05s")],
)
def test_format_elapsed(seconds, shown):
    assert format_elapsed(seconds) == shown


def test_credits_shown_without_float_noise():
    fields = section(render(event(credits=12.0)))["fields"]
    assert "*Credits*\n12" in [f["text"] for f in fields]


def test_special_characters_are_escaped_everywhere():
    nasty = "<!channel> & <https://evil.example|click here> > done"
    payload = render(event(prompt=nasty, provider="<b>&", model="m<1>"))
    dumped = json.dumps(payload)
    assert "<!channel>" not in dumped
    assert "<https://evil.example" not in dumped
    text = section(payload)["text"]["text"]
    assert "&lt;!channel&gt; &amp; &lt;https://evil.example|click here&gt; &gt; done" in text
    fields = [f["text"] for f in section(payload)["fields"]]
    assert "*Provider*\n&lt;b&gt;&amp;" in fields
    assert "*Model*\nm&lt;1&gt;" in fields
    assert "&lt;!channel&gt;" in payload["text"]


def test_link_cannot_be_broken_by_the_url():
    url = "https://cdn.example/v.mp4?a=1|b>2 c"
    text = section(render(event(result_url=url)))["text"]["text"]
    assert "<https://cdn.example/v.mp4?a=1%7Cb%3E2%20c|Open the video>" in text


def test_a_10000_character_prompt_is_truncated_within_the_section_limit():
    prompt = "".join(f"word{i} " for i in range(2000))[:10_000]
    payload = render(event(prompt=prompt))
    text = section(payload)["text"]["text"]
    assert slack_len(text) <= 3000
    assert slack_len(text) > 2900  # the room is used, not thrown away
    assert text.endswith("…")
    assert "*Prompt:* word0 word1 word2" in text
    assert "Open the video" in text  # the link survives the cut
    assert len(payload["blocks"]) <= 50
    assert slack_len(payload["text"]) < 300
    assert block_kit_problems(payload) == []


@pytest.mark.parametrize("unit", ["<&>", "🎬", "é"])
def test_truncation_counts_what_escaping_and_emoji_add(unit):
    payload = render(event("failed", prompt=unit * 10_000, error="x" * 5000))
    text = section(payload)["text"]["text"]
    assert slack_len(text) <= 3000
    assert "*Error:* " + "x" * 100 in text  # the error is cut too, and comes first
    assert block_kit_problems(payload) == []


@given(st.text(max_size=300), st.integers(min_value=2, max_value=400))
def test_excerpt_is_an_escaped_prefix_within_the_limit(text, limit):
    cut = excerpt(text, limit)
    assert slack_len(cut) <= limit
    if cut == escape(text):
        return
    assert cut.endswith("…")
    # Never a broken entity: unescaping gives back a prefix of the original.
    assert text.startswith(html.unescape(cut[:-1]))


def test_no_secret_or_internal_field_in_the_message():
    dumped = json.dumps(render(event()))
    for secret in (CALLBACK_TOKEN, "sha256:0123456789abcdef", "hooks.example", "vt-778"):
        assert secret not in dumped


KINDS = {
    "transient": ["ratelimited", "internal_error", "fatal_error", "service_unavailable",
                  "request_timeout"],
    "permanent": ["invalid_blocks", "msg_too_long", "invalid_arguments", "invalid_payload"],
    "gone": ["channel_not_found", "channel_is_archived", "is_archived", "not_in_channel",
             "no_service", "no_service_id", "invalid_auth", "token_revoked",
             "account_inactive"],
    None: ["some_future_code"],
}  # fmt: skip


@pytest.mark.parametrize(("code", "kind"), [(c, k) for k, codes in KINDS.items() for c in codes])
def test_error_kind(code, kind):
    assert error_kind(code) == kind


# -- the sink's own checks: they are what proves the limits above --


def test_sink_finds_what_breaks_block_kit():
    ok = {"type": "section", "text": {"type": "mrkdwn", "text": "hi"}}
    assert block_kit_problems({"blocks": [ok] * 50}) == []
    assert block_kit_problems({"blocks": [ok] * 51})
    long = {"type": "section", "text": {"type": "mrkdwn", "text": "x" * 3001}}
    assert block_kit_problems({"blocks": [long]})
    emoji = {"type": "section", "text": {"type": "mrkdwn", "text": "🎬" * 1501}}
    assert block_kit_problems({"blocks": [emoji]})
    fields = {**ok, "fields": [{"type": "mrkdwn", "text": "f"}] * 11}
    assert block_kit_problems({"blocks": [fields]})
    no_alt = {**ok, "accessory": {"type": "image", "image_url": COVER}}
    assert block_kit_problems({"blocks": [no_alt]})
    assert block_kit_problems({"blocks": [{"type": "banner"}]})


# -- delivery against the fake Slack --


@pytest.fixture(scope="module")
def slack_server():
    app = create_slack_sink()
    with ServerThread(app) as server:
        yield server, app.state.slack


@pytest.fixture
def slack(slack_server):
    server, sink = slack_server
    sink.reset(SlackSinkSettings(bot_tokens=[TOKEN], webhook_paths=[HOOK_PATH]))
    sink.url = server.url
    return sink


def webhook_config(url, **options):
    return ChannelConfig("team", "slack", frozenset(), options, {"webhook_url": Secret(url)})


def bot_config(api_url, token=TOKEN, **options):
    options = {"channel": "#video", "api_url": f"{api_url}/api", **options}
    return ChannelConfig("team", "slack", frozenset(), options, {"bot_token": Secret(token)})


def configs(sink):
    return {
        "webhook": webhook_config(f"{sink.url}/services/{HOOK_PATH}"),
        "bot": bot_config(sink.url),
    }


def send(config, *events, min_interval=0.0):
    """Send each event on one channel; the DeliveryError of the last, or None."""

    async def run():
        async with httpx.AsyncClient() as client:
            channel = SlackChannel(config, client)
            channel.min_interval = min_interval
            error = None
            for item in events:
                try:
                    await channel.send(item)
                    error = None
                except DeliveryError as exc:
                    error = exc
            return error

    return asyncio.run(run())


def assert_no_secret(error):
    for text in (str(error), error.message, repr(error)):
        for secret in (TOKEN, "HookSecretXYZ", HOOK_PATH):
            assert secret not in text


@pytest.mark.parametrize("mode", ["webhook", "bot"])
def test_both_modes_deliver(slack, mode):
    assert send(configs(slack)[mode], event()) is None
    (request,) = slack.accepted
    assert request.body["blocks"] == render(event())["blocks"]
    assert request.headers["content-type"].startswith("application/json")
    assert "authorization" not in request.headers
    if mode == "bot":
        assert request.path == "/api/chat.postMessage"
        assert request.body["channel"] == "#video"
    else:
        assert request.path == f"/services/{HOOK_PATH}"
        assert "channel" not in request.body


@pytest.mark.parametrize("mode", ["webhook", "bot"])
def test_long_prompt_is_delivered_truncated(slack, mode):
    assert send(configs(slack)[mode], event(prompt="p" * 10_000)) is None
    (message,) = slack.messages
    assert len(message["blocks"]) <= 50
    text = message["blocks"][0]["text"]["text"]
    assert len(text) <= 3000
    assert text.endswith("p…")
    assert message["blocks"][0]["accessory"]["image_url"] == COVER


def test_special_characters_arrive_escaped(slack):
    assert send(configs(slack)["bot"], event(prompt="<!here> Tom & Jerry")) is None
    (message,) = slack.messages
    assert "&lt;!here&gt; Tom &amp; Jerry" in message["blocks"][0]["text"]["text"]
    assert "<!here>" not in json.dumps(message)


def test_text_that_is_not_valid_unicode_is_still_delivered(slack):
    assert send(configs(slack)["bot"], event(prompt="fox \ud800 snow", model="m\udfff")) is None
    (message,) = slack.messages
    assert "*Prompt:* fox ? snow" in message["blocks"][0]["text"]["text"]


def test_failure_arrives_with_its_error(slack):
    assert send(configs(slack)["webhook"], event("failed", error="GPU out of memory")) is None
    (message,) = slack.messages
    assert "*Error:* GPU out of memory" in message["blocks"][0]["text"]["text"]


WEBHOOK_FAILURES = [
    (SlackAnswer(500), "transient", None),
    (SlackAnswer(503, "service_unavailable"), "transient", None),
    (SlackAnswer(429, retry_after=2), "transient", 2.0),
    (SlackAnswer(410, "channel_is_archived"), "gone", None),
    (SlackAnswer(404, "channel_not_found"), "gone", None),
    (SlackAnswer(404, "no_service"), "gone", None),
    (SlackAnswer(403, "action_prohibited"), "gone", None),
    (SlackAnswer(403), "gone", None),
    (SlackAnswer(400, "invalid_payload"), "permanent", None),
    (SlackAnswer(400, "invalid_blocks"), "permanent", None),
    (SlackAnswer(400, "channel_not_found"), "gone", None),
    (SlackAnswer(400, "no_service_id"), "gone", None),
    (SlackAnswer(429, "message_limit_exceeded"), "transient", None),
]
BOT_FAILURES = [
    (SlackAnswer(500), "transient", None),
    (SlackAnswer(429, retry_after=2), "transient", 2.0),
    (SlackAnswer(200, "ratelimited", retry_after=3), "transient", 3.0),
    (SlackAnswer(200, "internal_error"), "transient", None),
    (SlackAnswer(200, "channel_not_found"), "gone", None),
    (SlackAnswer(200, "is_archived"), "gone", None),
    (SlackAnswer(200, "not_in_channel"), "gone", None),
    (SlackAnswer(200, "token_revoked"), "gone", None),
    (SlackAnswer(200, "invalid_blocks"), "permanent", None),
    (SlackAnswer(200, "msg_too_long"), "permanent", None),
    (SlackAnswer(200, "message_limit_exceeded"), "transient", None),
    (SlackAnswer(200, "message_limit_exceeded", retry_after=60), "transient", 60.0),
    (SlackAnswer(410), "gone", None),
    (SlackAnswer(200, body=b"<html>Sign in to the hotel wifi</html>"), "transient", None),
]


@pytest.mark.parametrize(
    ("mode", "answer", "kind", "retry_after"),
    [("webhook", *case) for case in WEBHOOK_FAILURES] + [("bot", *case) for case in BOT_FAILURES],
)
def test_each_answer_maps_to_its_kind(slack, mode, answer, kind, retry_after):
    slack.answer(answer)
    error = send(configs(slack)[mode], event(cover_url=None))
    assert isinstance(error, DeliveryError)
    assert (error.kind, error.retry_after) == (kind, retry_after)
    assert error.status_code == answer.status
    assert "'team'" in error.message
    if answer.error:
        assert error.message.endswith(answer.error)
    assert_no_secret(error)
    assert len(slack.requests) == 1


def test_real_refusals_from_the_sink(slack):
    # Not injected: the sink's own checks, as Slack would make them.
    wrong_token = bot_config(slack.url, token="xoxb-9999-revoked-TOKEN")
    error = send(wrong_token, event())
    assert (error.kind, error.message) == ("gone", "Slack channel 'team' refused the message: "
                                           "invalid_auth")  # fmt: skip
    assert "xoxb-9999-revoked-TOKEN" not in str(error)
    slack.settings.archived.append("#old")
    error = send(bot_config(slack.url, channel="#old"), event())
    assert (error.kind, error.message.rsplit(" ", 1)[-1]) == ("gone", "is_archived")
    error = send(webhook_config(f"{slack.url}/services/T0001/B0002/Deleted"), event())
    assert (error.kind, error.status_code) == ("gone", 404)
    assert "Deleted" not in str(error)
    assert slack.accepted == []


def test_a_removed_webhook_is_gone(slack):
    slack.settings.removed_webhooks.append("T0001/B0002/Removed")
    error = send(webhook_config(f"{slack.url}/services/T0001/B0002/Removed"), event())
    assert (error.kind, error.status_code) == ("gone", 400)
    assert error.message.endswith(": no_service_id")
    assert "Removed" not in str(error)


def test_a_spent_message_allowance_is_retried_later_not_dead(slack):
    slack.settings.message_limit = 1
    config = bot_config(slack.url)
    assert send(config, event()) is None
    error = send(config, event())
    assert (error.kind, error.message.rsplit(" ", 1)[-1]) == ("transient", "message_limit_exceeded")
    slack.settings.message_limit = 2
    assert send(config, event()) is None
    assert len(slack.accepted) == 2


@pytest.mark.parametrize("mode", ["webhook", "bot"])
def test_cover_slack_cannot_fetch_is_dropped_not_the_message(slack, mode):
    slack.answer(SlackAnswer(400 if mode == "webhook" else 200, "invalid_blocks"))
    assert send(configs(slack)[mode], event()) is None
    first, second = slack.requests
    assert "accessory" in first.body["blocks"][0]
    assert "accessory" not in second.body["blocks"][0]
    assert slack.messages == [second.body]


def test_refused_twice_is_permanent(slack):
    slack.answer(SlackAnswer(200, "invalid_blocks"), SlackAnswer(200, "invalid_blocks"))
    error = send(configs(slack)["bot"], event())
    assert error.kind == "permanent"
    assert len(slack.requests) == 2


def test_an_answer_that_echoes_the_secret_is_not_repeated(slack):
    # A code-shaped body that is part of the webhook URL, as a proxy echoing it might send.
    leaky = "t0001/b0002/leaky_hook_secret"
    slack.answer(SlackAnswer(400, "leaky_hook_secret"))
    error = send(webhook_config(f"{slack.url}/services/{leaky}"), event(cover_url=None))
    assert error.message == "Slack channel 'team' answered HTTP 400"
    assert error.kind == "permanent"


@pytest.mark.parametrize("mode", ["webhook", "bot"])
def test_connection_refused_is_transient(mode):
    url = f"http://127.0.0.1:{free_port()}"
    config = webhook_config(f"{url}/services/{HOOK_PATH}") if mode == "webhook" else bot_config(url)
    error = send(config, event())
    assert error.kind == "transient"
    assert error.message == "could not reach Slack channel 'team' (ConnectError)"
    assert_no_secret(error)


def test_timeout_is_transient(slack):
    slack.answer(SlackAnswer(delay=2.0))
    started = time.monotonic()
    error = send(bot_config(slack.url, timeout=0.2), event())
    assert time.monotonic() - started < 1.5
    assert (error.kind, error.message) == ("transient", "Slack channel 'team' timed out")


@pytest.mark.parametrize(
    ("options", "secrets", "problem"),
    [
        ({}, {}, "webhook_url_env: missing; name the variable"),
        ({}, {"bot_token": Secret(TOKEN)}, "channel: missing"),
        ({"channel": ""}, {"bot_token": Secret(TOKEN)}, "channel: must be a channel name"),
        ({}, {"webhook_url": Secret(f"ftp://x/{HOOK_PATH}")}, "webhook_url_env: the variable"),
        ({}, {"webhook_url": Secret(f"http://[::1/{HOOK_PATH}")}, "webhook_url_env: the var"),
        ({"channel": "#v"}, {"bot_token": Secret(TOKEN + " é")}, "bot_token_env: the token"),
        ({"channel": "#v", "api_url": "http://[::1/api"}, {"bot_token": Secret(TOKEN)}, "api_url"),
        ({"timeout": "soon"}, {"webhook_url": Secret("https://x/y")}, "timeout: must be a number"),
        ({"timeout": 0}, {"webhook_url": Secret("https://x/y")}, "timeout: must be more than 0"),
        (
            {"min_interval": -1},
            {"webhook_url": Secret("https://x/y")},
            "min_interval: must be 0 or",
        ),
        ({"min_interval": float("nan")}, {"webhook_url": Secret("https://x/y")}, "min_interval"),
        ({"min_interval": "1s"}, {"webhook_url": Secret("https://x/y")}, "min_interval: must be a"),
        ({"min_interval": True}, {"webhook_url": Secret("https://x/y")}, "min_interval: must be a"),
    ],
)
def test_options_that_cannot_work_stop_startup(options, secrets, problem):
    config = ChannelConfig("team", "slack", frozenset(), options, secrets)
    client = httpx.AsyncClient()
    try:
        with pytest.raises(ValueError, match=r"^channels\.team\.") as caught:
            SlackChannel(config, client)
    finally:
        asyncio.run(client.aclose())
    assert problem in str(caught.value)
    for secret in (TOKEN, HOOK_PATH):
        assert secret not in str(caught.value)


def test_a_bot_token_with_a_channel_wins_over_a_webhook(slack):
    secrets = {"bot_token": Secret(TOKEN), "webhook_url": Secret(f"{slack.url}/services/x")}
    options = {"channel": "#video", "api_url": f"{slack.url}/api"}
    assert send(ChannelConfig("team", "slack", frozenset(), options, secrets), event()) is None
    assert [r.path for r in slack.requests] == ["/api/chat.postMessage"]


def test_one_message_a_second(slack):
    # The sink refuses a second message within 0.9 s, stricter than Slack, which
    # tolerates short bursts; without the channel's spacing the second one is refused.
    slack.settings.min_interval = 0.9
    assert send(configs(slack)["bot"], event(), event("failed"), min_interval=1.0) is None
    first, second = slack.requests
    assert second.time - first.time >= 0.9
    assert len(slack.accepted) == 2
    burst = bot_config(slack.url, channel="#burst")
    error = send(burst, event(), event("failed"), min_interval=0.0)
    assert (error.kind, error.retry_after) == ("transient", 1.0)
    assert [r.body["channel"] for r in slack.accepted] == ["#video", "#video", "#burst"]


def send_as_configured(config, *events):
    """Like send(), but with the channel's min_interval as its options make it."""

    async def run():
        async with httpx.AsyncClient() as client:
            channel = SlackChannel(config, client)
            error = None
            for item in events:
                try:
                    await channel.send(item)
                    error = None
                except DeliveryError as exc:
                    error = exc
            return channel.min_interval, error

    return asyncio.run(run())


def test_min_interval_0_sends_back_to_back(slack):
    config = webhook_config(f"{slack.url}/services/{HOOK_PATH}", min_interval=0)
    # A Slack-compatible server without Slack's pacing takes both...
    assert send_as_configured(config, event(), event("failed")) == (0.0, None)
    assert len(slack.accepted) == 2
    # ...and a fake that refuses a message within 0.9 s of the last shows the channel did
    # not wait between them.
    slack.reset(SlackSinkSettings(webhook_paths=[HOOK_PATH], min_interval=0.9))
    _, error = send_as_configured(config, event(), event("failed"))
    assert (error.kind, error.status_code) == ("transient", 429)
    assert len(slack.accepted) == 1


def test_min_interval_defaults_to_slacks_one_second(slack):
    slack.settings.min_interval = 0.9  # refuses a message within 0.9 s of the last
    config = webhook_config(f"{slack.url}/services/{HOOK_PATH}")
    assert send_as_configured(config, event(), event("failed")) == (1.0, None)
    first, second = slack.requests
    assert len(slack.accepted) == 2 and second.time - first.time >= 0.9


def test_min_interval_from_the_config_file():
    def parsed(**options):
        section = {"type": "slack", "webhook_url_env": "HOOK", **options}
        return parse_config(
            {"public_url": "https://vidhook.example", "database": "unused.db",
             "providers": {"vidu": {"api_key_env": "VIDU_KEY"}}, "channels": {"team": section}},
            {"HOOK": "https://hooks.slack.com/services/T0/B0/x", "VIDU_KEY": "k",
             "VIDHOOK_ADMIN_TOKEN": "t"},
        ).channels["team"]  # fmt: skip

    async def built(config):
        async with httpx.AsyncClient() as client:
            return SlackChannel(config, client).min_interval

    assert asyncio.run(built(parsed(min_interval=0.25))) == 0.25
    assert asyncio.run(built(parsed())) == 1.0

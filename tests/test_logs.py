"""Logs: readable text by default, one JSON object a line with --log-format json, and no
secret in either, whichever logger wrote the record and whatever exception it carried."""

from __future__ import annotations

import io
import json
import logging
import re
import signal
import warnings
from urllib.parse import quote

import httpx
import pytest

from receiver import logs
from receiver.config import parse_config
from receiver.logs import REDACTED, Redactor
from receiver.sandbox.server import ServerThread
from receiver.sandbox.slack import SlackAnswer, SlackSinkSettings, create_slack_sink
from tests.conftest import ADMIN_TOKEN, ENV, OLD_VIDU_KEY, VIDU_KEY, wait_for
from tests.notify.test_email import PASSWORD, USER, Mailbox, smtp_server
from tests.test_restart import ServiceProcess
from tests.test_secrets import encodings
from tests.vidu_signer import vidu_headers

ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
HOOK_PATH = "T0VIDHOOK/B0VIDHOOK/q8Rk2vXbN7pLmW4sYt1Zc9Ha"
SLACK_URL = f"https://hooks.slack.com/services/{HOOK_PATH}"
WHSEC = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


@pytest.fixture
def isolated_logging():
    """configure() rewires the root logger: put pytest's own handlers back afterwards."""
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    uvicorn = {n: logging.getLogger(n) for n in ("uvicorn", "uvicorn.error", "uvicorn.asgi")}
    saved_uvicorn = {n: (list(lg.handlers), lg.propagate, lg.level) for n, lg in uvicorn.items()}
    httpx_level = logging.getLogger("httpx").level
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in saved[0]:
        root.addHandler(handler)
    root.setLevel(saved[1])
    for name, (handlers, propagate, level) in saved_uvicorn.items():
        uvicorn[name].handlers[:] = handlers
        uvicorn[name].propagate = propagate
        uvicorn[name].setLevel(level)
    logging.getLogger("httpx").setLevel(httpx_level)
    logging.captureWarnings(False)


# -- the redactor --


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("POST /callbacks/vidu/AbC_123-xyz 200", f"POST /callbacks/vidu/{REDACTED} 200"),
        (
            "https://hooks.example.com/vh/callbacks/apimodels/tok3n?x=1",
            f"https://hooks.example.com/vh/callbacks/apimodels/{REDACTED}?x=1",
        ),
        (f"posting to {SLACK_URL}.", f"posting to https://hooks.slack.com/services/{REDACTED}"),
        (f"secret={WHSEC} ok", f"secret={REDACTED} ok"),
        ("whsk_AAAAC3NzaC1lZDI1NTE5AAAAIGL/x+y= end", f"{REDACTED} end"),
        ("Authorization: Bearer eyJhbGciOi.J9x-_~+/=", f"Authorization: Bearer {REDACTED}"),
        ("{'authorization': 'Token sk-live-123'}", f"{{'authorization': 'Token {REDACTED}'}}"),
        ('{"X-API-Key": "k-9f8e7d"}', f'{{"X-API-Key": "{REDACTED}"}}'),
        ("sent with bearer abc.def", f"sent with bearer {REDACTED}"),
        ("token xoxb-1234-5678-abcdEFGH", f"token {REDACTED}"),
        ("smtp://mailer:p%40ss!word@mail.example.com:587", f"smtp://mailer:{REDACTED}@mail.example.com:587"),
        ("https://:hunter22@proxy.example.com/", f"https://:{REDACTED}@proxy.example.com/"),
    ],
)  # fmt: skip
def test_secret_shapes_are_redacted_without_being_known(text, expected):
    assert Redactor()(text) == expected


def test_known_secrets_are_redacted_as_they_are_url_encoded_and_by_their_url_path():
    password = "p@ss w/rd+1"
    webhook = "http://127.0.0.1:8123/services/T1/B2/c3d4e5f6"
    redact = Redactor([VIDU_KEY, password, webhook, "abc"])
    assert redact(f"key {VIDU_KEY}!") == f"key {REDACTED}!"
    assert (
        redact(f"login {password} / {quote(password, safe='')}") == f"login {REDACTED} / {REDACTED}"
    )
    assert redact(f"POST {webhook} failed") == f"POST {REDACTED} failed"
    # A request line or a proxy's error can quote the webhook's path alone.
    assert redact("POST /services/T1/B2/c3d4e5f6 HTTP/1.1") == f"POST {REDACTED} HTTP/1.1"
    # Too short to be told apart from words: left alone rather than garbling every line.
    assert redact("abc def") == "abc def"
    # A secret that contains another is redacted whole, not as "***" plus a tail.
    nested = Redactor(["secret-value", "secret-value-longer"])
    assert nested("x secret-value-longer y") == f"x {REDACTED} y"


def test_ordinary_text_is_left_as_it_is():
    text = "job job_01HX completed in 2.5 s (poll of vidu, 3 callbacks); 200 OK"
    assert Redactor([VIDU_KEY])(text) == text
    assert Redactor()("GET /healthz 200 0.4ms") == "GET /healthz 200 0.4ms"


def test_config_secrets_holds_every_secret_of_the_config():
    env = {
        **ENV, "SLACK_URL": SLACK_URL, "SMTP_PASSWORD": PASSWORD, "HOOK_SECRET": WHSEC,
        "BOT_TOKEN": "xoxb-1-2-abc",
    }  # fmt: skip
    config = parse_config(
        {
            "public_url": "https://hooks.example.com",
            "providers": {
                "vidu": {"api_key_env": "VIDU_API_KEY", "previous_api_key_envs": ["OLD_VIDU_KEY"]}
            },
            "channels": {
                "team": {"type": "slack", "webhook_url_env": "SLACK_URL"},
                "bot": {"type": "slack", "bot_token_env": "BOT_TOKEN", "channel": "#v"},
                "mail": {
                    "type": "email",
                    "host": "smtp.example.com",
                    "username": USER,
                    "password_env": "SMTP_PASSWORD",
                    "from": "a@example.com",
                    "to": ["b@example.com"],
                },
                "app": {
                    "type": "webhook",
                    "url": "https://app.example.com/h",
                    "secret_env": "HOOK_SECRET",
                },
            },
        },
        env,
    )
    assert sorted(logs.config_secrets(config)) == sorted(
        [ADMIN_TOKEN, VIDU_KEY, OLD_VIDU_KEY, SLACK_URL, "xoxb-1-2-abc", PASSWORD, WHSEC]
    )


# -- the handler: every logger, both formats --


def emit_samples(secret: str) -> None:
    logging.getLogger("vidhook.test").info("calling with key %s", secret)
    try:
        raise RuntimeError(f"upstream refused key {secret} at /callbacks/vidu/tok-abc-123")
    except RuntimeError:
        logging.getLogger("vidhook.test").exception("poll failed for %s", "job_1")
    logging.getLogger("uvicorn.error").info("Application startup complete.")
    # Arguments that do not fit the message: logging's own report would print them raw.
    logging.getLogger("vidhook.test").warning("two %s %s", secret)


def test_json_format_is_one_object_a_line_with_secrets_redacted(isolated_logging):
    stream = io.StringIO()
    logs.configure("debug", "json", [VIDU_KEY], stream=stream)
    emit_samples(VIDU_KEY)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn(f"deprecated use of {VIDU_KEY}", DeprecationWarning, stacklevel=1)
    output = stream.getvalue()
    assert VIDU_KEY not in output and "tok-abc-123" not in output
    entries = [json.loads(line) for line in output.splitlines()]
    assert len(entries) == 5
    for entry in entries:
        assert set(entry) - {"exc_info"} == {"time", "level", "logger", "message"}
        assert ISO_UTC.match(entry["time"]), entry["time"]
    info, failure, uvicorn, unformattable, warning = entries
    assert (info["level"], info["logger"]) == ("INFO", "vidhook.test")
    assert info["message"] == f"calling with key {REDACTED}" and "exc_info" not in info
    assert failure["level"] == "ERROR" and failure["message"] == "poll failed for job_1"
    assert failure["exc_info"].startswith("Traceback (most recent call last):")
    assert failure["exc_info"].endswith(
        f"RuntimeError: upstream refused key {REDACTED} at /callbacks/vidu/{REDACTED}"
    )
    assert uvicorn["logger"] == "uvicorn.error"
    assert unformattable["level"] == "WARNING" and "unformattable" in unformattable["message"]
    assert warning["logger"] == "py.warnings" and "deprecated use of ***" in warning["message"]


def test_text_format_is_readable_and_redacted_too(isolated_logging):
    stream = io.StringIO()
    logs.configure("info", "text", [VIDU_KEY], stream=stream)
    emit_samples(VIDU_KEY)
    logging.getLogger("vidhook.test").debug("not shown at info")
    output = stream.getvalue()
    assert VIDU_KEY not in output and "tok-abc-123" not in output
    lines = output.splitlines()
    assert re.fullmatch(r"\S+Z INFO vidhook\.test: calling with key \*\*\*", lines[0])
    assert ISO_UTC.match(lines[0].split()[0])
    assert lines[1].endswith("ERROR vidhook.test: poll failed for job_1")
    assert lines[2] == "  Traceback (most recent call last):"
    assert f"RuntimeError: upstream refused key {REDACTED}" in output
    assert "INFO uvicorn.error: Application startup complete." in output
    assert "not shown" not in output


def test_configure_takes_over_the_root_logger_and_uvicorns(isolated_logging):
    stray = logging.StreamHandler(io.StringIO())
    logging.getLogger("uvicorn.error").addHandler(stray)
    logging.getLogger("uvicorn.error").propagate = False
    logging.getLogger("uvicorn.error").setLevel(logging.ERROR)
    handler = logs.configure("warning", "json", [])
    assert logging.getLogger().handlers == [handler]
    assert logging.getLogger().level == logging.WARNING
    assert logging.getLogger("uvicorn.error").handlers == []
    assert logging.getLogger("uvicorn.error").propagate
    assert logging.getLogger("uvicorn.error").level == logging.NOTSET
    assert logging.getLogger("httpx").level == logging.WARNING
    with pytest.raises(ValueError, match="text, json"):
        logs.configure("info", "xml", [])


# -- a full job run in the real process, with JSON logs --


CHANNELS = """
[channels.team]
type = "slack"
webhook_url_env = "SLACK_WEBHOOK_URL"

[channels.mail]
type = "email"
host = "127.0.0.1"
port = {port}
security = "none"
username = "{user}"
password_env = "SMTP_PASSWORD"
from = "vidhook <alerts@example.com>"
to = ["team@example.com"]
"""


@pytest.mark.slow
def test_a_full_job_run_with_json_logs_leaks_no_secret(sandbox, tmp_path):
    mailbox = Mailbox()
    sink_app = create_slack_sink(SlackSinkSettings(webhook_paths=[HOOK_PATH]))
    sink = sink_app.state.slack
    # One refusal first, so that a failed delivery is logged and retried.
    sink.answer(SlackAnswer(status=500))
    smtp_options = {"auth_require_tls": False, "authenticator": mailbox.authenticate}
    with ServerThread(sink_app) as slack, smtp_server(mailbox, **smtp_options) as smtp:
        webhook_url = f"{slack.url}/services/{HOOK_PATH}"
        svc = ServiceProcess(
            tmp_path,
            sandbox.url,
            log_level="debug",
            log_format="json",
            top_config='default_channels = ["team", "mail"]\n[notify]\nretry_base = 0.2\n',
            extra_config=CHANNELS.format(port=smtp.port, user=USER),
        )
        svc.env.update({"SLACK_WEBHOOK_URL": webhook_url, "SMTP_PASSWORD": PASSWORD})
        try:
            svc.start()
            done = svc.submit("A kite over the dunes")
            wait_for(lambda: svc.job(done["id"])["status"] == "completed", what="completion")

            def delivered():
                rows = svc.rows("SELECT channel, status FROM deliveries")
                return len(rows) == 2 and all(r["status"] == "delivered" for r in rows)

            wait_for(delivered, what="both deliveries")
            callback_url = svc.job(done["id"])["callback_url"]
            body = json.dumps({"id": done["provider_job_id"], "state": "failed"}).encode()
            forged = httpx.post(
                callback_url,
                content=body,
                headers=vidu_headers("not-the-vidu-key", callback_url),
            )
            assert forged.status_code == 401, forged.text
            # Secrets pasted into paths: the access log must not repeat them.
            for secret in (VIDU_KEY, ADMIN_TOKEN, PASSWORD):
                assert httpx.get(f"{svc.url}/{secret}").status_code == 404
            assert svc.stop() in (0, -signal.SIGTERM)
        finally:
            svc.close()

    # The run really used both secrets of the channels.
    assert len(sink.messages) == 1 and "Video ready" in sink.messages[0]["text"]
    assert mailbox.logins == [(USER, PASSWORD)] and len(mailbox.messages) == 1
    raw = svc.log_path.read_bytes()
    entries = [json.loads(line) for line in raw.decode().splitlines() if line.strip()]
    for entry in entries:
        assert {"time", "level", "logger", "message"} <= set(entry), entry
        assert ISO_UTC.match(entry["time"])
    messages = [e["message"] for e in entries]
    # The log is real and covers what happened, uvicorn's lines included.
    assert any(e["level"] == "DEBUG" for e in entries)
    assert any(e["logger"].startswith("uvicorn") for e in entries)
    assert any(m.startswith("vidhook ready") for m in messages)
    # An accepted callback is one line: its access line says what became of it.
    accepted = [m for m in messages if done["id"] in m and "(accepted)" in m]
    assert accepted, messages
    line = re.compile(r"POST /callbacks/vidu/\*\*\* 200 [\d.]+ms job_\w+: (processing|success) ")
    assert all(line.match(m) for m in accepted), accepted
    assert any("refused: bad_signature" in m for m in messages)
    assert any("to team will be retried" in m for m in messages)
    assert any(m.startswith("POST /callbacks/vidu/*** 401") for m in messages)
    assert sum(m.startswith(f"GET /{REDACTED} 404") for m in messages) == 3

    tokens = [r["callback_token"] for r in svc.rows("SELECT callback_token FROM jobs")]
    assert len(tokens) == 1 and len(tokens[0]) >= 32
    secrets = {VIDU_KEY, ADMIN_TOKEN, PASSWORD, webhook_url, f"/services/{HOOK_PATH}", *tokens}
    for secret in secrets:
        for form in encodings(secret):
            assert form not in raw, f"{form!r} (a form of a secret) is in the log"

"""`vidhook check`: missing variables by name, and `--send-test` through every channel."""

from __future__ import annotations

import email
import email.policy
import os
import subprocess
import sys

import pytest

from receiver.cli import main
from receiver.sandbox.server import ServerThread
from receiver.sandbox.slack import SlackAnswer, SlackSinkSettings, create_slack_sink
from tests.conftest import ADMIN_TOKEN, VIDU_KEY, free_port
from tests.notify.test_email import PASSWORD, USER, Mailbox, smtp_server
from tests.test_restart import REPO

HOOK_PATH = "T0CHECK/B0CHECK/Zq4Lw8Nc2Vt6Rb1Xs9Kd3Mf7"
BASE = """
public_url = "https://hooks.example.com/vh"
database = "check.db"
[providers.vidu]
api_key_env = "VIDU_API_KEY"
"""
SLACK = """
[channels.team]
type = "slack"
webhook_url_env = "CHECK_SLACK_URL"
"""
WEBHOOK = """
[channels.app]
type = "webhook"
url = "http://127.0.0.1:{port}/hooks"
secret_env = "CHECK_WEBHOOK_SECRET"
"""
CONSOLE = """
[channels.log]
type = "console"
"""
EMAIL = """
[channels.mail]
type = "email"
host = "127.0.0.1"
port = {port}
security = "none"
username = "{user}"
password_env = "CHECK_SMTP_PASSWORD"
from = "vidhook <alerts@example.com>"
to = ["team@example.com"]
"""
WEBHOOK_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


@pytest.fixture
def slack():
    app = create_slack_sink(SlackSinkSettings(webhook_paths=[HOOK_PATH]))
    with ServerThread(app) as server:
        yield server, app.state.slack


@pytest.fixture
def env(monkeypatch, slack):
    server, _sink = slack
    values = {
        "VIDU_API_KEY": VIDU_KEY,
        "VIDHOOK_ADMIN_TOKEN": ADMIN_TOKEN,
        "CHECK_SLACK_URL": f"{server.url}/services/{HOOK_PATH}",
        "CHECK_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "CHECK_SMTP_PASSWORD": PASSWORD,
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    for name in ("VIDHOOK_PUBLIC_URL", "VIDHOOK_DATABASE"):
        monkeypatch.delenv(name, raising=False)
    return values


def write(tmp_path, *tables: str):
    path = tmp_path / "vidhook.toml"
    path.write_text(BASE + "".join(tables))
    return path


def assert_no_secret(env, *texts: str) -> None:
    for text in texts:
        for name, value in env.items():
            assert value not in text, f"{name} is in the output"
        assert HOOK_PATH not in text


def test_send_test_reports_each_channel_and_fails_when_one_fails(tmp_path, env, slack, capsys):
    _server, sink = slack
    closed = free_port()
    path = write(tmp_path, SLACK, WEBHOOK.format(port=closed), CONSOLE)
    assert main(["check", "--config", str(path), "--send-test"]) == 1
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert "team: ok" in lines
    assert "log: ok" in lines
    assert "app: FAILED could not reach webhook 'app' (ConnectError)" in lines
    # The message is there, and says it is a test.
    [message] = sink.messages
    assert "Test message from `vidhook check --send-test`" in message["text"]
    assert "No video was generated" in message["text"]
    # The console channel printed its line, before the results.
    printed = [line for line in lines if line.startswith("[vidhook] ")]
    assert len(printed) == 1 and "vidhook-test" in printed[0]
    assert_no_secret(env, out, err)
    # A test sends nothing through the outbox: no database was made for it.
    assert not (tmp_path / "check.db").exists()


def test_send_test_exits_0_when_every_channel_works(tmp_path, env, slack, capsys):
    path = write(tmp_path, SLACK)
    assert main(["check", "--config", str(path), "--send-test"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[-1] == "team: ok"
    assert len(slack[1].messages) == 1
    # Without --send-test, nothing is sent.
    assert main(["check", "--config", str(path)]) == 0
    assert "team: ok" not in capsys.readouterr().out
    assert len(slack[1].messages) == 1


def test_send_test_reports_slacks_refusal(tmp_path, env, slack, capsys):
    slack[1].answer(SlackAnswer(status=404, error="no_service"))
    path = write(tmp_path, SLACK)
    assert main(["check", "--config", str(path), "--send-test"]) == 1
    out = capsys.readouterr().out
    assert "team: FAILED Slack channel 'team' answered HTTP 404: no_service" in out.splitlines()
    assert_no_secret(env, out)


def test_send_test_through_email_logs_in_and_says_it_is_a_test(tmp_path, env, capsys, monkeypatch):
    mailbox = Mailbox()
    options = {"auth_require_tls": False, "authenticator": mailbox.authenticate}
    with smtp_server(mailbox, **options) as smtp:
        path = write(tmp_path, EMAIL.format(port=smtp.port, user=USER))
        assert main(["check", "--config", str(path), "--send-test"]) == 0
        assert "mail: ok" in capsys.readouterr().out.splitlines()
        monkeypatch.setenv("CHECK_SMTP_PASSWORD", "not-the-password")
        assert main(["check", "--config", str(path), "--send-test"]) == 1
        out = capsys.readouterr().out
    # aiosmtplib tries each AUTH mechanism the server offers before it gives up.
    assert mailbox.logins[0] == (USER, PASSWORD)
    assert set(mailbox.logins[1:]) == {(USER, "not-the-password")}
    [received] = mailbox.messages
    parsed = email.message_from_bytes(received.content, policy=email.policy.default)
    assert parsed["Subject"].startswith("[vidhook] completed: Test message from")
    failed = [line for line in out.splitlines() if line.startswith("mail: FAILED ")]
    assert failed == [
        f"mail: FAILED SMTP server 127.0.0.1:{smtp.port} answered 535 to the login of user "
        f"'{USER}': 5.7.8 Authentication credentials invalid"
    ]
    assert_no_secret(env, out)
    assert "not-the-password" not in out


@pytest.mark.slow
def test_check_names_a_missing_variable_and_exits_non_zero(tmp_path, env, slack):
    """As a real process, with --send-test: the variable is named, nothing is sent."""
    path = write(tmp_path, SLACK, EMAIL.format(port=free_port(), user=USER))
    child_env = {k: v for k, v in os.environ.items() if k != "CHECK_SMTP_PASSWORD"}
    result = subprocess.run(
        [sys.executable, "-m", "receiver", "check", "--config", str(path), "--send-test"],
        cwd=REPO,
        env=child_env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result
    assert (
        "channels.mail.password_env: environment variable CHECK_SMTP_PASSWORD is not set"
        in result.stderr
    )
    assert result.stdout == ""
    assert slack[1].requests == []
    assert_no_secret(env, result.stdout, result.stderr)


def test_check_prints_each_provider_s_callback_url(tmp_path, env, monkeypatch, capsys):
    """A token per job for most; PixVerse's one URL, to set in its console; none for Veo."""
    monkeypatch.setenv("PIXVERSE_SECRET", "pixverse-check-secret")
    path = write(
        tmp_path,
        '[providers.pixverse]\napi_key_env = "VIDU_API_KEY"\n'
        'webhook_secret_env = "PIXVERSE_SECRET"\n'
        '[providers.veo]\napi_key_env = "VIDU_API_KEY"\n',
    )
    assert main(["check", "--config", str(path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    urls = {line.split()[0]: line.split(maxsplit=1)[1] for line in lines if line.startswith("  ")}
    assert urls["vidu"] == "https://hooks.example.com/vh/callbacks/vidu/<token>"
    assert urls["pixverse"] == (
        "https://hooks.example.com/vh/callbacks/pixverse (set it in the provider's console)"
    )
    assert urls["veo"] == "none: polled"
    assert_no_secret(env, "\n".join(lines))
    assert "pixverse-check-secret" not in "\n".join(lines)

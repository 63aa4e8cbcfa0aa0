"""The `vidhook` command line: the demo as a real process, and the client commands."""

from __future__ import annotations

import re
import sqlite3
import subprocess
import sys

import httpx
import pytest

from receiver.cli import main
from receiver.config import load_config
from receiver.demo import SAMPLES
from receiver.notify.outbox import channel_fingerprint
from receiver.providers import ADAPTERS
from receiver.store import migrate
from tests.conftest import ADMIN_TOKEN, free_port
from tests.test_restart import REPO

TIMELINE_LINE = re.compile(r"^  \+\s*\d+\.\d\ds  (\w+)\s+via (\w+)")


def timeline(lines):
    """(status, source) of each timeline line, in order."""
    return [m.groups() for line in lines if (m := TIMELINE_LINE.match(line))]


def expected_timeline(job):
    return [(t["to_status"], t["source"]) for t in job["transitions"]]


# -- vidhook demo --


# Each demo sample's timeline, as (status, source) steps; a step marked optional is one
# the job may pass too quickly for a poll to see, or whose callback may come after the end.
OPTIONAL = "optional"
DEMO_TIMELINES = {
    "vidu": [("queued", "api"), ("processing", "callback"), ("completed", "poll")],
    "vidu-fail": [("queued", "api"), ("processing", "callback"), ("failed", "poll")],
    "vidu-duplicate": [("queued", "api"), ("processing", "callback", OPTIONAL),
                       ("completed", "poll")],
    "vidu-lost": [("queued", "api"), ("completed", "poll")],
    "apimodels": [("queued", "api"), ("completed", "poll")],
    "kvid": [("queued", "api"), ("processing", "poll", OPTIONAL), ("completed", "poll")],
    "revid-fail": [("queued", "api"), ("processing", "poll", OPTIONAL), ("failed", "poll")],
    "newapi": [("queued", "api"), ("processing", "poll", OPTIONAL), ("completed", "poll")],
    "luma": [("queued", "api"), ("processing", "callback"), ("completed", "poll")],
    "minimax": [("queued", "api"), ("processing", "callback"), ("completed", "poll")],
    "kling": [("queued", "api"), ("processing", "callback"), ("completed", "poll")],
    "runway": [("queued", "api"), ("processing", "poll", OPTIONAL), ("completed", "poll")],
    # Signed bodies are applied as they say: no confirming poll.
    "replicate": [("queued", "api"), ("processing", "callback"), ("completed", "callback")],
    "fal": [("queued", "api"), ("completed", "callback")],
    "pixverse": [("queued", "api"), ("completed", "callback")],
    "pixverse-lost": [("queued", "api"), ("completed", "poll")],
    "veo": [("queued", "api"), ("processing", "poll", OPTIONAL), ("completed", "poll")],
    "veo-filtered": [("queued", "api"), ("processing", "poll", OPTIONAL), ("failed", "poll")],
}  # fmt: skip


def sample_key(sample):
    """The sample's name in DEMO_TIMELINES: its provider, and what its prompt asks for."""
    payload = sample.payload
    marker = re.search(r"\[(fail|duplicate|lost|filtered)\]", payload["prompt"])
    return payload["provider"] + (f"-{marker[1]}" if marker else "")


def matches(steps, expected):
    """Whether the timeline is the expected one, with or without its optional steps."""
    wanted = [step[:2] for step in expected]
    optional = {step[:2] for step in expected if len(step) > 2}
    return steps == [step for step in wanted if step in steps or step not in optional]


def test_every_provider_has_a_demo_sample_with_its_timeline():
    assert {s.payload["provider"] for s in SAMPLES} == set(ADAPTERS)
    assert sorted(sample_key(s) for s in SAMPLES) == sorted(DEMO_TIMELINES)
    for sample in SAMPLES:
        assert DEMO_TIMELINES[sample_key(sample)][-1][0] == sample.expected


@pytest.mark.slow
def test_demo_runs_every_sample_to_its_expected_end():
    done = subprocess.run(
        [sys.executable, "-m", "receiver", "demo"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert out.rstrip().endswith("demo passed: every job reached its expected end")
    assert "FAILED" not in out and "EXPECTED" not in out
    for via in ("via api", "via callback", "via poll"):
        assert via in out

    sections = {s.splitlines()[0]: s.splitlines() for s in out.split("\n\n")}
    for sample in SAMPLES:
        lines = sections[sample.title]
        assert re.fullmatch(rf"  job_\w{{26}}: {sample.expected} \[ok\]", lines[1]), lines
        steps = timeline(lines)
        assert matches(steps, DEMO_TIMELINES[sample_key(sample)]), (sample.title, steps)
    assert "  error:  AuditSubmitIllegal" in sections[SAMPLES[1].title]
    # Each completed job's timeline ends with the link to vidhook's copy and its size.
    for sample in SAMPLES:
        lines = sections[sample.title]
        if sample.expected != "completed":
            assert not any(line.startswith("  kept:") for line in lines)
            continue
        job_id = lines[1].split(":")[0].strip()
        kept, size = lines[-2:]
        assert kept.startswith("  kept:   http://127.0.0.1:") and f"/media/{job_id}/video?" in kept
        assert re.fullmatch(r" {10}[\d.]+ kB video/mp4, sha256 [0-9a-f]{16}…", size), size
    # Each marker a sample's prompt carries is explained beside its job.
    assert "  [fail] in the prompt: the provider fails the job" in sections[SAMPLES[1].title]
    assert (
        "  [lost] in the prompt: no callback arrives: vidhook learns the end by polling"
        in sections[SAMPLES[3].title]
    )


# -- client commands against a running service --


def test_submit_wait_prints_the_timeline_and_the_result(service, cli_env, capsys):
    argv = ["submit", "vidu", "--prompt", "A red fox in the snow", "--wait", "--url", service.url]
    rc = main(argv)
    out = capsys.readouterr().out.splitlines()
    job_id, status = out[0].split(" ")
    assert status == "queued"
    job = service.job(job_id)
    assert rc == 0
    assert job["status"] == "completed"
    # Each transition printed once, in order, although the command polled several times.
    assert timeline(out) == expected_timeline(job)
    assert timeline(out) == [("queued", "api"), ("processing", "callback"), ("completed", "poll")]
    assert out[-1] == f"result: {job['result_url']}"
    assert len(out) == 1 + 3 + 1


def test_submit_wait_of_a_failing_job_returns_1_and_prints_the_error(
    service, sandbox, cli_env, capsys
):
    argv = ["submit", "vidu", "--prompt", "A storm at sea [fail]", "--wait", "--url", service.url]
    rc = main(argv)
    out = capsys.readouterr().out.splitlines()
    assert rc == 1
    job = service.job(out[0].split(" ")[0])
    assert job["status"] == "failed"
    assert timeline(out) == expected_timeline(job)
    assert timeline(out)[-1] == ("failed", "poll")
    assert out[-1] == f"failed: {sandbox.settings.fail_err_code}"


def test_submit_refused_for_now_says_when_it_is_sent_again_and_waits(
    service, sandbox, cli_env, capsys
):
    sandbox.settings.rate_limit_submits = 1
    argv = ["submit", "vidu", "--prompt", "Geese in a V", "--wait", "--url", service.url]
    rc = main(argv)
    out = capsys.readouterr().out.splitlines()
    job_id, status = out[0].split(" ")
    assert (rc, status) == (0, "queued")
    assert out[1].startswith("  vidu refused it for now (vidu HTTP 429 TooManyRequests: ")
    assert "vidhook sends it again at 20" in out[1]
    job = service.job(job_id)
    assert job["status"] == "completed" and job["submission"]["attempts"] == 2
    assert out[-1] == f"result: {job['result_url']}"


def test_submit_refused_by_the_provider_exits_with_its_reason(service, cli_env, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["submit", "vidu", "--prompt", "Forbidden [policy]", "--url", service.url])
    message = str(exc.value.code)
    assert message.startswith("vidhook: vidu refused the job: ")
    assert "prompt policy violation" in message
    assert capsys.readouterr().out == ""


def test_jobs_lists_by_status(service, cli_env, capsys):
    done = service.submit("A heron in the reeds")
    failed = service.submit("A storm at sea [fail]")
    service.wait_status(done["id"], "completed")
    service.wait_status(failed["id"], "failed")

    assert main(["jobs", "--status", "completed", "--url", service.url]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1
    assert out[0].split()[:3] == [done["id"], "vidu", "completed"]
    assert out[0].endswith("A heron in the reeds")

    assert main(["jobs", "--url", service.url]) == 0
    listed = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert listed == [failed["id"], done["id"]]  # newest first

    assert main(["jobs", "--status", "queued", "--url", service.url]) == 0
    assert capsys.readouterr().out == "no jobs\n"


def test_show_prints_the_job_and_its_timeline(service, cli_env, capsys):
    submitted = service.submit("Paper boats on a rainy street")
    job = service.wait_status(submitted["id"], "completed")

    assert main(["show", job["id"], "--url", service.url]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"{job['id']}  vidu  completed"
    assert "  prompt:   Paper boats on a rainy street" in out
    assert f"  task:     {job['provider_job_id']}" in out
    assert f"  result:   {job['result_url']}" in out
    start = out.index("  timeline:")
    assert timeline(out[start:]) == expected_timeline(job)
    assert len(out) == start + 1 + len(job["transitions"])

    with pytest.raises(SystemExit) as exc:
        main(["show", "job_nonexistent", "--url", service.url])
    assert exc.value.code == "vidhook: no job has this id"


def test_a_missing_admin_token_is_named(monkeypatch, capsys):
    monkeypatch.delenv("VIDHOOK_ADMIN_TOKEN", raising=False)
    # The URL is never contacted: the token is checked first.
    with pytest.raises(SystemExit) as exc:
        main(["jobs", "--url", "http://vidhook.invalid"])
    assert exc.value.code == "vidhook: set VIDHOOK_ADMIN_TOKEN to the service's admin token"
    with pytest.raises(SystemExit) as exc:
        main(["show", "job_x", "--url", "http://vidhook.invalid", "--token-env", "OTHER_TOKEN"])
    assert "OTHER_TOKEN" in str(exc.value.code)


def test_a_wrong_admin_token_is_said_refused_and_where_the_service_reads_it(service, monkeypatch):
    monkeypatch.setenv("VIDHOOK_ADMIN_TOKEN", "not-the-admin-token")
    with pytest.raises(SystemExit) as exc:
        main(["jobs", "--url", service.url])
    assert str(exc.value.code).splitlines() == [
        "vidhook: the admin token was refused; this service reads its token from the "
        "environment variable VIDHOOK_ADMIN_TOKEN (admin_token_env)",
        "  this command sent the value of VIDHOOK_ADMIN_TOKEN (--token-env names another variable)",
    ]
    assert "not-the-admin-token" not in str(exc.value.code)
    # Without any token, the request is told how to send one.
    response = httpx.get(f"{service.url}/api/jobs")
    assert response.status_code == 401
    assert response.json()["error"]["message"] == "send Authorization: Bearer <admin token>"


def test_an_empty_admin_token_variable_is_said_empty(monkeypatch):
    monkeypatch.setenv("VIDHOOK_ADMIN_TOKEN", "")
    with pytest.raises(SystemExit) as exc:
        main(["jobs", "--url", "http://vidhook.invalid"])
    assert exc.value.code == (
        "vidhook: VIDHOOK_ADMIN_TOKEN is set but empty; set it to the admin token"
    )


def test_a_url_that_is_not_vidhook_gives_a_message_not_a_traceback(sandbox, cli_env):
    # The sandbox answers /api/jobs with a plain-text 404.
    with pytest.raises(SystemExit) as exc:
        main(["jobs", "--url", sandbox.url])
    message = str(exc.value.code)
    assert f"{sandbox.url} answered HTTP 404 Not Found" in message
    assert "is --url (or VIDHOOK_URL) a vidhook service?" in message


def test_an_unreachable_service_is_reported(cli_env):
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there any more
    with pytest.raises(SystemExit) as exc:
        main(["jobs", "--url", url])
    message = str(exc.value.code)
    assert message.startswith(f"vidhook: cannot reach {url} (ConnectError)")
    assert "vidhook serve" in message


# -- vidhook serve: configuration problems --


def test_serve_with_a_missing_config_file_returns_2_and_names_it(tmp_path, cli_env, capsys):
    missing = tmp_path / "missing.toml"
    assert main(["serve", "--config", str(missing)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.splitlines() == [
        "vidhook: the configuration has problems:",
        f"  {missing}: file not found; copy vidhook.example.toml there or pass --config PATH",
    ]


def test_serve_without_the_api_key_variable_returns_2_and_names_it(
    tmp_path, cli_env, monkeypatch, capsys
):
    monkeypatch.delenv("VIDHOOK_TEST_ABSENT_KEY", raising=False)
    config = tmp_path / "vidhook.toml"
    config.write_text(
        'public_url = "https://hooks.example.com"\n'
        'database = "vidhook.db"\n'
        "[providers.vidu]\n"
        'api_key_env = "VIDHOOK_TEST_ABSENT_KEY"\n',
        encoding="utf-8",
    )
    assert main(["serve", "--config", str(config)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "vidhook: the configuration has problems:"
    assert (
        f"  {config}: providers.vidu.api_key_env: environment variable VIDHOOK_TEST_ABSENT_KEY"
        " is not set; export it before starting"
    ) in err[1:]
    # Nothing else is wrong with the file (the config reader currently also claims that no
    # provider is configured, because the one it has lacks its key).
    for line in err[1:]:
        assert "VIDHOOK_TEST_ABSENT_KEY" in line or "no provider configured" in line
    assert not (tmp_path / "vidhook.db").exists()  # nothing started


CHECK_CONFIG = """
public_url = "https://hooks.example.com/vh"
database = "check.db"
default_channels = ["team"]
[providers.vidu]
api_key_env = "VIDU_API_KEY"
[providers.kvid]
api_key_env = "VIDU_API_KEY"
[channels.team]
type = "slack"
webhook_url_env = "SLACK_URL"
"""


def test_check_prints_callback_urls_and_disabled_channels(tmp_path, monkeypatch, capsys):
    path = tmp_path / "vidhook.toml"
    path.write_text(CHECK_CONFIG)
    monkeypatch.setenv("VIDU_API_KEY", "k")
    monkeypatch.setenv("VIDHOOK_ADMIN_TOKEN", ADMIN_TOKEN)
    monkeypatch.setenv("SLACK_URL", "https://hooks.slack.com/services/T/B/secret")
    assert main(["check", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "https://hooks.example.com/vh/callbacks/vidu/<token>" in out
    assert re.search(r"kvid\s+none: polled", out)
    assert re.search(r"team\s+slack\s+enabled", out)
    assert "secret" not in out

    migrate(tmp_path / "check.db")
    # Disabled with the configuration it has now: it stays disabled at the next start.
    fingerprint = channel_fingerprint(load_config(path).channels["team"])
    conn = sqlite3.connect(tmp_path / "check.db")
    with conn:
        conn.execute(
            "INSERT INTO channel_states VALUES ('team', 0, 'Slack answered HTTP 410', ?)",
            (fingerprint,),
        )
    conn.close()
    assert main(["check", "--config", str(path)]) == 1
    assert re.search(r"team\s+slack\s+DISABLED: Slack answered HTTP 410", capsys.readouterr().out)


def test_check_reports_a_missing_variable_by_name_and_fails(tmp_path, monkeypatch, capsys):
    path = tmp_path / "vidhook.toml"
    path.write_text(CHECK_CONFIG)
    monkeypatch.setenv("VIDU_API_KEY", "k")
    monkeypatch.setenv("VIDHOOK_ADMIN_TOKEN", ADMIN_TOKEN)
    monkeypatch.delenv("SLACK_URL", raising=False)
    assert main(["check", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "channels.team.webhook_url_env: environment variable SLACK_URL is not set" in err

"""`jobs`, `show` and `deliveries`: pages that say what is left, JSON, and pipes."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys

import pytest

from receiver.cli import main
from tests.conftest import ADMIN_TOKEN
from tests.test_restart import REPO


def stored_jobs(db_path, count: int, provider: str = "vidu") -> list[str]:
    """``count`` finished jobs written straight into the database, oldest first."""
    ids = [f"job_01TEST{n:020d}" for n in range(count)]
    conn = sqlite3.connect(db_path, timeout=10)
    with conn:
        conn.executemany(
            "INSERT INTO jobs (id, provider, status, prompt, created_at, updated_at)"
            " VALUES (?, ?, 'completed', ?, ?, ?)",
            [
                (i, provider, f"Listed job {n} " + "x" * 80, 1e9 + n, 1e9 + n)
                for n, i in enumerate(ids)
            ],
        )
    conn.close()
    return ids


def listed(out: str) -> list[str]:
    return [line.split()[0] for line in out.splitlines()]


def test_jobs_shows_fifty_and_says_how_many_more(service, cli_env, capsys):
    ids = stored_jobs(service.db_path, 67)
    newest_first = ids[::-1]

    assert main(["jobs", "--url", service.url]) == 0
    captured = capsys.readouterr()
    assert listed(captured.out) == newest_first[:50]
    assert captured.err == "17 more: --all (or --limit N)\n"

    assert main(["jobs", "--limit", "60", "--url", service.url]) == 0
    captured = capsys.readouterr()
    assert listed(captured.out) == newest_first[:60]
    assert captured.err == "7 more: --all (or --limit N)\n"

    assert main(["jobs", "--all", "--url", service.url]) == 0
    captured = capsys.readouterr()
    assert listed(captured.out) == newest_first
    assert captured.err == ""


def test_jobs_all_walks_every_page_and_a_long_rest_is_counted_roughly(service, cli_env, capsys):
    ids = stored_jobs(service.db_path, 1234)
    assert main(["jobs", "--all", "--url", service.url]) == 0
    assert listed(capsys.readouterr().out) == ids[::-1]

    assert main(["jobs", "--limit", "3", "--url", service.url]) == 0
    assert capsys.readouterr().err == "over 100 more: --all (or --limit N)\n"


def test_limit_and_all_do_not_go_together_and_limit_is_positive(cli_env, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["jobs", "--limit", "5", "--all"])
    assert exc.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["jobs", "--limit", "0"])
    assert "must be a whole number from 1, got '0'" in capsys.readouterr().err


def test_jobs_json_is_the_api_page(service, cli_env, capsys):
    ids = stored_jobs(service.db_path, 3)
    assert main(["jobs", "--json", "--limit", "2", "--url", service.url]) == 0
    captured = capsys.readouterr()
    page = json.loads(captured.out)
    assert [j["id"] for j in page["jobs"]] == ids[:0:-1]
    assert page["next_cursor"] == ids[1]
    assert captured.err == "1 more: --all (or --limit N)\n"  # not in the JSON's way


def test_jobs_json_reads_with_json_tool(service):
    stored_jobs(service.db_path, 5)
    env = {**os.environ, "VIDHOOK_ADMIN_TOKEN": ADMIN_TOKEN}
    done = subprocess.run(
        [
            "bash",
            "-c",
            f"{sys.executable} -m receiver jobs --json --url {service.url}"
            f" | {sys.executable} -m json.tool",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert len(json.loads(done.stdout)["jobs"]) == 5


@pytest.mark.parametrize("extra", [[], ["--json"], ["--all"]])
def test_a_reader_that_leaves_early_gets_no_traceback(service, extra):
    stored_jobs(service.db_path, 1500)  # far more than a pipe holds
    env = {**os.environ, "VIDHOOK_ADMIN_TOKEN": ADMIN_TOKEN}
    # As `vidhook jobs | head -1`, with head gone before vidhook writes a line.
    reader, writer = os.pipe()
    proc = subprocess.Popen(
        [sys.executable, "-m", "receiver", "jobs", "--url", service.url, *extra],
        cwd=REPO,
        env=env,
        stdout=writer,
        stderr=subprocess.PIPE,
        text=True,
    )
    os.close(writer)
    os.close(reader)
    _, err = proc.communicate(timeout=60)
    assert "Traceback" not in err and "BrokenPipe" not in err, err
    assert proc.returncode == 141


def test_jobs_piped_into_head_prints_one_line_and_no_traceback(service):
    ids = stored_jobs(service.db_path, 1500)
    env = {**os.environ, "VIDHOOK_ADMIN_TOKEN": ADMIN_TOKEN}
    for extra in ("", "--all"):
        done = subprocess.run(
            [
                "bash",
                "-c",
                f"{sys.executable} -m receiver jobs {extra} --url {service.url} | head -1",
            ],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0
        assert listed(done.stdout) == [ids[-1]]
        assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr


def test_jobs_of_a_provider_that_does_not_exist_says_so(service, cli_env):
    with pytest.raises(SystemExit) as exc:
        main(["jobs", "--provider", "nosuch", "--url", service.url])
    configured = ", ".join(sorted(service.server.app.state.runtime.providers))
    assert str(exc.value.code).splitlines() == [
        "vidhook: no such provider",
        f"  provider: no provider is named nosuch; the configured providers are {configured}",
    ]


def test_jobs_of_a_provider_dropped_from_the_config_still_list(service, cli_env, capsys):
    ids = stored_jobs(service.db_path, 2, provider="retired")
    assert main(["jobs", "--provider", "retired", "--url", service.url]) == 0
    assert listed(capsys.readouterr().out) == ids[::-1]


def test_show_has_cover_credits_deliveries_and_the_kept_copy(service, cli_env, capsys):
    submitted = service.submit("Paper boats on a rainy street")
    job = service.wait_status(submitted["id"], "completed")
    conn = sqlite3.connect(service.db_path)
    with conn:
        conn.execute(
            "INSERT INTO deliveries (job_id, transition_id, channel, event, status, attempts,"
            " next_attempt_at, created_at, updated_at, last_error)"
            " VALUES (?, (SELECT max(id) FROM transitions), 'team', 'completed', 'dead', 12,"
            " 0, 0, 0, 'Slack answered HTTP 500')",
            (job["id"],),
        )
    conn.close()
    job = service.job(job["id"])
    assert job["cover_url"] and job["credits"] is not None

    assert main(["show", job["id"], "--url", service.url]) == 0
    out = capsys.readouterr().out.splitlines()
    assert f"  cover:    {job['cover_url']}" in out
    assert f"  credits:  {job['credits']:g}" in out
    assert out[out.index("  deliveries:") + 1].split() == [
        str(job["deliveries"][0]["id"]), "team", "completed", "dead", "attempts=12",
        "Slack", "answered", "HTTP", "500",
    ]  # fmt: skip


def test_show_prints_the_kept_copy_when_the_job_has_one(monkeypatch, capsys):
    from receiver.timeline import format_job

    job = {
        "id": "job_X", "provider": "vidu", "status": "completed", "prompt": "p",
        "created_at": "2025-01-01T00:00:00.000Z", "finished_at": "2025-01-01T00:00:09.500Z",
        "media": {
            "status": "kept", "error": None,
            "video": {"url": "https://hooks.example.com/media/job_X/video?sig=1",
                      "bytes": 2_500_000, "sha256": "ab", "content_type": "video/mp4"},
            "cover": None,
        },
        "transitions": [], "deliveries": [],
    }  # fmt: skip
    lines = format_job(job)
    assert "  finished: 2025-01-01T00:00:09.500Z (9.5s)" in lines
    assert "  kept:     kept" in lines
    assert (
        "    video:  https://hooks.example.com/media/job_X/video?sig=1 (2.5 MB, video/mp4)"
    ) in lines
    failed = {**job, "media": {"status": "failed", "error": "larger than max_bytes"}}
    assert "  kept:     failed: larger than max_bytes" in format_job(failed)
    assert not [line for line in format_job({**job, "media": None}) if "kept" in line]


def test_show_json_is_the_api_job(service, cli_env, capsys):
    job = service.submit("A heron")
    assert main(["show", job["id"], "--json", "--url", service.url]) == 0
    assert json.loads(capsys.readouterr().out)["id"] == job["id"]


def test_deliveries_json_and_limit(service, cli_env, capsys):
    assert main(["deliveries", "--json", "--url", service.url]) == 0
    assert json.loads(capsys.readouterr().out) == {"deliveries": [], "next_cursor": None}
    assert main(["deliveries", "--url", service.url]) == 0
    assert capsys.readouterr().out == "no deliveries\n"

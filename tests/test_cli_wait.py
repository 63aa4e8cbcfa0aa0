"""`vidhook wait` and `submit --wait`: live progress on a terminal, plain lines elsewhere,
Ctrl-C to detach, the event stream when the service has one and polling when not."""

from __future__ import annotations

import asyncio
import dataclasses
import fcntl
import json
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
from collections.abc import AsyncIterator

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from receiver.cli import main
from receiver.client import parse_events
from receiver.progress import duration, status_line
from receiver.sandbox import ServerThread, ViduSandboxSettings, create_sandbox_app
from tests.conftest import ADMIN_TOKEN, OLD_VIDU_KEY, VIDU_KEY, running_service, settings_restored
from tests.test_restart import REPO

ELAPSED = re.compile(rb"(\d+)s elapsed")
PERCENT_DONE = re.compile(rb"  . (\w+)  \d+s elapsed  (\d+(?:\.\d)?)% done  ")
VIDHOOK = [sys.executable, "-m", "receiver"]


def _take_the_terminal() -> None:
    # In the child, after setsid: the pty becomes its controlling terminal, so that a
    # ^C typed there is a SIGINT to it, as in a shell.
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class Terminal:
    """A command running in a pseudo-terminal of 120 columns."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
        self.proc = subprocess.Popen(
            argv,
            stdin=slave,
            stdout=slave,
            stderr=slave,
            cwd=REPO,
            env=env,
            start_new_session=True,
            preexec_fn=_take_the_terminal,
        )
        os.close(slave)
        self.screen = b""

    def read_until(self, pattern: re.Pattern[bytes], timeout: float = 20.0) -> re.Match[bytes]:
        """Read until ``pattern`` matches what arrived since the last call."""
        start = len(self.screen)
        deadline = time.monotonic() + timeout
        while True:
            match = pattern.search(self.screen, start)
            if match:
                return match
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{pattern.pattern!r} not seen; the screen:\n{self.screen!r}")
            ready, _, _ = select.select([self.master], [], [], left)
            if ready:
                try:
                    chunk = os.read(self.master, 4096)
                except OSError:  # the child is gone and the pty closed
                    chunk = b""
                if not chunk:
                    raise AssertionError(
                        f"{pattern.pattern!r} not seen before the end:\n{self.screen!r}"
                    )
                self.screen += chunk

    def type(self, keys: bytes) -> None:
        os.write(self.master, keys)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        os.close(self.master)


@pytest.fixture
def slow_service(tmp_path):
    """The service against a sandbox whose Vidu jobs take about nine seconds."""
    vidu = ViduSandboxSettings(
        api_keys=[VIDU_KEY, OLD_VIDU_KEY], queue_delay=0.5, start_delay=0.5, run_time=8.0
    )
    with (
        ServerThread(create_sandbox_app(vidu)) as sandbox,
        running_service(sandbox.url, tmp_path / "vidhook.db") as service,
    ):
        yield service


def process_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIDHOOK_")}
    return {**env, "VIDHOOK_ADMIN_TOKEN": ADMIN_TOKEN, "TERM": "xterm"}


@pytest.mark.slow
def test_submit_wait_on_a_terminal_shows_time_passing_then_ctrl_c_detaches(slow_service):
    command = [sys.executable, "-m", "receiver", "submit", "vidu", "--prompt", "A slow tide"]
    terminal = Terminal([*command, "--wait", "--url", slow_service.url], process_env())
    try:
        job_id = terminal.read_until(re.compile(rb"(job_\w{26}) queued")).group(1).decode()
        first = int(terminal.read_until(ELAPSED).group(1))
        time.sleep(1.5)
        terminal.read_until(ELAPSED)  # what had piled up meanwhile
        later = max(int(m) for m in ELAPSED.findall(terminal.screen))
        assert later > first, terminal.screen
        # The status line shows the job's status and when the service polls it next.
        assert re.search(
            rb"\r\x1b\[K  . (queued|processing)  \d+s elapsed  next poll in ", terminal.screen
        )

        terminal.type(b"\x03")  # Ctrl-C
        detached = terminal.read_until(re.compile(rb"detached: .*\n"))
        assert detached.group(0).decode().rstrip() == (
            f"detached: {job_id} keeps running; follow it with: vidhook wait {job_id}"
        )
        assert terminal.proc.wait(timeout=10) == 130
        assert b"Traceback" not in terminal.screen
    finally:
        terminal.close()
    assert slow_service.job(job_id)["status"] != "completed"  # detached, not waited out

    followed = subprocess.run(
        [sys.executable, "-m", "receiver", "wait", job_id, "--url", slow_service.url],
        cwd=REPO,
        env=process_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert followed.returncode == 0, followed.stdout + followed.stderr
    out = followed.stdout.splitlines()
    job = slow_service.job(job_id)
    assert job["status"] == "completed"
    assert out[0] == f"{job_id} vidu " + out[0].split()[-1]
    assert [line.split()[2] for line in out[1:-1]] == [t["to_status"] for t in job["transitions"]]
    assert out[-1] == f"result: {job['result_url']}"


@pytest.mark.slow
def test_wait_on_a_terminal_shows_the_providers_progress(service, sandbox):
    with settings_restored(sandbox.runway.settings) as runway:
        runway.timing = dataclasses.replace(runway.timing, run_time=4.0)
        job = service.submit("A paper boat in the rain", provider="runway")
        terminal = Terminal([*VIDHOOK, "wait", job["id"], "--url", service.url], process_env())
        try:
            shown = terminal.read_until(PERCENT_DONE)
            assert shown.group(1) == b"processing"
            first = float(shown.group(2))
            # Each poll's figure reaches the status line: it moves while the job runs.
            later = terminal.read_until(re.compile(rb"  (\d+(?:\.\d)?)% done  "), timeout=10)
            while float(later.group(1)) == first:
                later = terminal.read_until(re.compile(rb"  (\d+(?:\.\d)?)% done  "), timeout=10)
            assert float(later.group(1)) > first
            terminal.read_until(re.compile(rb"result: \S+"), timeout=20)
            assert terminal.proc.wait(timeout=10) == 0
        finally:
            terminal.close()


# -- the event stream, against a scripted service --


class ScriptedService:
    """An admin API that moves one job along a script, announced on /api/events.

    Each connection to the stream sends the events after its Last-Event-ID, one every
    ``gap`` seconds, and the first connection ends after ``cut_after`` events so that
    the client has to come back.
    """

    def __init__(self, steps: list[tuple[str, str | None]], gap: float = 0.3) -> None:
        self.job_id = "job_01SCRIPTED0000000000000000"
        self.steps = steps  # (status, error) after each event
        self.gap = gap
        self.cut_after = 1
        self.shown = 0  # how many steps the job has taken
        self.job_reads = 0
        self.last_event_ids: list[str | None] = []
        self.app = Starlette(
            routes=[
                Route("/api/events", self.events),
                Route("/api/jobs/{job_id}", self.job),
            ]
        )

    def snapshot(self) -> dict:
        statuses = ["queued", *(status for status, _ in self.steps[: self.shown])]
        error = self.steps[self.shown - 1][1] if self.shown else None
        transitions = [
            {"to_status": s, "source": "poll", "at": f"2025-01-01T00:00:0{i}.000Z", "detail": {}}
            for i, s in enumerate(statuses)
        ]
        return {
            "id": self.job_id, "provider": "vidu", "status": statuses[-1], "error": error,
            "result_url": "https://cdn.example.com/v.mp4" if statuses[-1] == "completed" else None,
            "created_at": "2025-01-01T00:00:00.000Z", "next_poll_at": None,
            "transitions": transitions,
        }  # fmt: skip

    async def job(self, request: Request) -> Response:
        assert request.headers["authorization"] == f"Bearer {ADMIN_TOKEN}"
        self.job_reads += 1
        return JSONResponse(self.snapshot())

    async def events(self, request: Request) -> Response:
        after = request.headers.get("last-event-id")
        self.last_event_ids.append(after)
        first = int(after) if after else 0
        cut = self.cut_after if len(self.last_event_ids) == 1 else len(self.steps)

        async def stream() -> AsyncIterator[str]:
            yield ": connected\n\n"
            for n in range(first + 1, min(first + cut, len(self.steps)) + 1):
                await asyncio.sleep(self.gap)
                self.shown = n
                other = {"id": "job_someone_else", "status": "completed"}
                yield f"event: job\nid: {n}\ndata: {json.dumps(other)}\n\n"
                yield f"event: job\nid: {n}\ndata: {json.dumps(self.snapshot())}\n\n"

        return StreamingResponse(stream(), media_type="text/event-stream")


def wait_on(scripted: ScriptedService, capsys, monkeypatch) -> tuple[int, list[str]]:
    monkeypatch.setenv("VIDHOOK_ADMIN_TOKEN", ADMIN_TOKEN)
    with ServerThread(scripted.app) as server:
        code = main(["wait", scripted.job_id, "--url", server.url])
    return code, capsys.readouterr().out.splitlines()


def test_wait_follows_the_event_stream_and_comes_back_after_a_cut(capsys, monkeypatch):
    scripted = ScriptedService([("processing", None), ("completed", None)])
    code, out = wait_on(scripted, capsys, monkeypatch)
    assert code == 0
    assert [line.split()[2] for line in out[1:-1]] == ["queued", "processing", "completed"]
    assert out[-1] == "result: https://cdn.example.com/v.mp4"
    # Cut after the first event, the stream was opened again after it, not from the start.
    assert scripted.last_event_ids == [None, "1"]
    # One read when it started, one per connection, one per event of this job: no polling.
    assert scripted.job_reads == 1 + 2 + 2


@pytest.mark.parametrize(
    ("status", "error", "last"),
    [
        ("failed", "AuditSubmitIllegal", "failed: AuditSubmitIllegal"),
        ("failed", None, "failed: no reason given"),
        ("canceled", None, "canceled"),
        ("canceled", "stopped by its owner", "canceled: stopped by its owner"),
    ],
)
def test_wait_exits_1_for_a_job_that_failed_or_was_canceled(
    status, error, last, capsys, monkeypatch
):
    scripted = ScriptedService([("processing", None), (status, error)])
    code, out = wait_on(scripted, capsys, monkeypatch)
    assert code == 1
    assert out[-1] == last


def test_wait_polls_a_service_without_an_event_stream(service, cli_env, capsys):
    job = service.submit("A heron in the reeds")
    assert main(["wait", job["id"], "--url", service.url]) == 0
    out = capsys.readouterr().out.splitlines()
    done = service.job(job["id"])
    assert [line.split()[2] for line in out[1:-1]] == ["queued", "processing", "completed"]
    assert out[-1] == f"result: {done['result_url']}"
    assert service.rows("SELECT count(*) FROM jobs")[0][0] == 1


def test_wait_for_an_unknown_job_says_so(service, cli_env):
    with pytest.raises(SystemExit) as exc:
        main(["wait", "job_nonexistent", "--url", service.url])
    assert exc.value.code == "vidhook: no job has this id"


def test_server_sent_events_are_parsed_as_the_standard_says():
    lines = [
        ": keep-alive",
        "event: job",
        "id: 7",
        'data: {"a":',
        "data: 1}",
        "",
        "data: plain",
        "",
        "",
    ]
    events = list(parse_events(iter(lines)))
    assert [(e.type, e.data, e.id) for e in events] == [
        ("job", '{"a":\n1}', "7"),
        ("message", "plain", "7"),  # the last id stays until another is given
    ]


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [(0, "0s"), (59.9, "59s"), (61, "1m 01s"), (3599, "59m 59s"), (3723, "1h 02m"), (-3, "0s")],
)
def test_durations_read_as_people_write_them(seconds, shown):
    assert duration(seconds) == shown


def test_the_status_line_has_elapsed_time_progress_and_the_next_poll():
    job = {
        "status": "processing",
        "created_at": "2025-01-01T00:00:00.000Z",
        "next_poll_at": "2025-01-01T00:01:30.000Z",
    }
    start = 1735689600.0  # 2025-01-01T00:00:00Z
    assert status_line(job, start + 75) == "processing  1m 15s elapsed  next poll in 15s"
    assert status_line({**job, "progress": {"percent": 30}}, start + 5).startswith(
        "processing  5s elapsed  30% done  next poll in"
    )
    assert "  42.5% done  " in status_line({**job, "progress": {"percent": 42.5}}, start)
    queued = {**job, "status": "queued", "progress": {"queue_position": 3}}
    assert "queued  0s elapsed  queue position 3  next poll" in status_line(queued, start)
    assert "done" not in status_line({**job, "progress": None}, start)
    assert status_line(job, start + 90.5).endswith("polling now")
    assert status_line({"status": "queued"}, start) == "queued"

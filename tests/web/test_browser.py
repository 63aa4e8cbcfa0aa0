"""The dashboard in a real browser: Debian's headless Chromium, driven by Playwright.

Playwright from PyPI drives /usr/bin/chromium through ``executable_path``; it never
downloads a browser of its own. One browser serves the module, a fresh context (its own
cookies) each test. Two services: ``vidhook demo --serve`` as a user starts it, for the
demo's jobs, and one in this process with a Slack channel pointed at the fake Slack.

``VIDHOOK_SCREENSHOTS=1`` also writes the README's screenshots to docs/screenshots/.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, BrowserContext, Page, sync_playwright
from starlette.applications import Starlette
from starlette.responses import HTMLResponse
from starlette.routing import Route

from receiver.demo import SAMPLES
from receiver.sandbox import ServerThread
from receiver.sandbox.slack import SlackAnswer, SlackSinkSettings, create_slack_sink
from tests.conftest import ADMIN_TOKEN, running_sandbox, running_service, wait_for
from tests.tools import missing

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
REPO = Path(__file__).resolve().parents[2]
SCREENSHOTS = REPO / "docs" / "screenshots"
WAIT_MS = 15_000


@pytest.fixture(scope="module")
def chromium() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        missing("Debian's chromium", "apt-get install chromium")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        yield browser
        browser.close()


@dataclass
class Demo:
    url: str
    token: str

    def jobs(self) -> list[dict]:
        headers = {"Authorization": f"Bearer {self.token}"}
        return httpx.get(f"{self.url}/api/jobs", headers=headers, timeout=10).json()["jobs"]


@pytest.fixture(scope="module")
def demo() -> Iterator[Demo]:
    """`vidhook demo --serve`, once its sample jobs have all ended."""
    process = subprocess.Popen(
        [sys.executable, "-m", "receiver", "demo", "--serve"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert process.stdout is not None
    seen: list[str] = []
    url = token = None
    deadline = time.monotonic() + 120
    while token is None and time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        seen.append(line)
        if match := re.match(r"dashboard:\s+(\S+)/ui/", line):
            url = match.group(1)
        if match := re.match(r"login token:\s+(\S+)", line):
            token = match.group(1)
    try:
        assert url and token, "the demo printed no dashboard URL and token:\n" + "".join(seen)
        assert "demo passed" in "".join(seen), "".join(seen)
        yield Demo(url, token)
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@dataclass
class Live:
    service: object
    slack: object
    url: str


@pytest.fixture(scope="module")
def live(tmp_path_factory) -> Iterator[Live]:
    """A service with a Slack channel whose deliveries die at the first failure."""
    sink = create_slack_sink(SlackSinkSettings())
    with running_sandbox() as sandbox, ServerThread(sink) as slack_server:
        slack = sink.state.slack
        extra = {
            "env": {"SLACK_URL": f"{slack_server.url}/services/T000/B000/XXXX"},
            "default_channels": ["team"],
            "channels": {
                "team": {"type": "slack", "webhook_url_env": "SLACK_URL", "min_interval": 0}
            },
            "notify": {"retry_base": 0.1, "retry_max": 0.2, "max_attempts": 1},
        }
        db_path = tmp_path_factory.mktemp("browser") / "vidhook.db"
        with running_service(sandbox.url, db_path, extra=extra) as service:
            yield Live(service, slack, service.url)


@pytest.fixture
def context(chromium) -> Iterator[BrowserContext]:
    context = chromium.new_context(viewport={"width": 1280, "height": 900})
    yield context
    context.close()


class Watch:
    """What a page asked for and what the console said about it."""

    def __init__(self, page: Page) -> None:
        self.requests: list[str] = []
        self.console: list[str] = []
        page.on("request", lambda request: self.requests.append(request.url))
        page.on("console", lambda message: self.console.append(message.text))

    def policy_violations(self) -> list[str]:
        return [m for m in self.console if "Content Security Policy" in m]


def sign_in(page: Page, base: str, token: str) -> None:
    page.goto(f"{base}/ui/")
    page.wait_for_url(re.compile(r"/ui/login\?next="))
    page.fill("input[name=token]", token)
    page.click("button[type=submit]")
    page.wait_for_url(f"{base}/ui/")


def test_sign_in_through_the_form_and_see_the_demos_jobs_with_their_statuses(context, demo):
    page = context.new_page()
    watch = Watch(page)
    page.goto(f"{demo.url}/ui/")
    page.wait_for_url(re.compile(r"/ui/login\?next=/ui/$"))  # no cookie yet
    page.fill("input[name=token]", demo.token[::-1])
    page.click("button[type=submit]")
    assert page.get_by_role("alert").inner_text() == "That is not the admin token."
    page.fill("input[name=token]", demo.token)
    page.click("button[type=submit]")
    page.wait_for_url(f"{demo.url}/ui/")
    shown = {
        row.get_attribute("data-job-id"): (
            row.get_attribute("data-status"),
            row.locator(".status").first.inner_text().strip(),
        )
        for row in page.locator("tr[data-job-id]").all()
    }
    expected = {job["id"]: (job["status"], job["status"]) for job in demo.jobs()}
    assert len(expected) == len(SAMPLES)
    assert shown == expected
    assert {status for status, _ in shown.values()} == {"completed", "failed"}
    page.click("text=Gallery")
    page.wait_for_url(re.compile(r"view=gallery"))
    assert page.locator("li[data-job-id]").count() == len(SAMPLES)
    assert all(url.startswith(demo.url) for url in watch.requests), watch.requests
    assert watch.policy_violations() == []


def test_a_job_page_plays_the_kept_copy(context, demo):
    job = next(j for j in demo.jobs() if j["status"] == "completed")
    page = context.new_page()
    watch = Watch(page)
    sign_in(page, demo.url, demo.token)
    page.goto(f"{demo.url}/ui/jobs/{job['id']}")
    video = page.locator("#player video")
    assert video.get_attribute("src") == f"/media/{job['id']}/video"
    page.evaluate(
        "async () => { const v = document.querySelector('#player video');"
        " v.muted = true; await v.play(); }"
    )
    page.wait_for_function(
        "() => document.querySelector('#player video').currentTime > 0.5", timeout=WAIT_MS
    )
    assert page.evaluate("() => document.querySelector('#player video').error") is None
    assert f"{demo.url}/media/{job['id']}/video" in watch.requests
    assert watch.policy_violations() == []


def test_screenshots_of_the_job_list_and_a_job_page(chromium, demo, tmp_path):
    """The README's pictures; written to docs/screenshots/ with VIDHOOK_SCREENSHOTS=1."""
    folder = SCREENSHOTS if os.environ.get("VIDHOOK_SCREENSHOTS") == "1" else tmp_path
    folder.mkdir(parents=True, exist_ok=True)
    context = chromium.new_context(viewport={"width": 1280, "height": 800}, color_scheme="light")
    page = context.new_page()
    sign_in(page, demo.url, demo.token)
    page.screenshot(path=folder / "jobs.png")
    job = next(j for j in demo.jobs() if j["status"] == "completed" and j["provider"] == "vidu")
    page.goto(f"{demo.url}/ui/jobs/{job['id']}")
    page.wait_for_function("() => document.querySelector('#player video').readyState >= 2")
    page.screenshot(path=folder / "job.png", full_page=True)
    context.close()
    for name in ("jobs.png", "job.png"):
        assert (folder / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_job_submitted_from_the_form_appears_and_completes_without_a_reload(context, live):
    listing = context.new_page()
    sign_in(listing, live.url, ADMIN_TOKEN)
    listing.evaluate("() => { window.stillTheSamePage = true; }")
    form = context.new_page()
    form.goto(f"{live.url}/ui/new")
    form.select_option("select[name=provider]", "vidu")
    form.fill("textarea[name=prompt]", "A heron lifts off the river [slow]")
    form.get_by_role("button", name="Submit the job").click()
    form.wait_for_url(re.compile(r"/ui/jobs/job_\w+\?done=submitted"))
    job_id = re.search(r"(job_\w+)", form.url).group(1)
    row = f'tr[data-job-id="{job_id}"]'
    listing.wait_for_selector(row, timeout=WAIT_MS)
    assert listing.get_attribute(row, "data-status") in ("queued", "processing")
    listing.wait_for_selector(f'{row}[data-status="completed"]', timeout=WAIT_MS)
    assert listing.evaluate("() => window.stillTheSamePage") is True
    # The job's own page follows too: the player arrives once the copy is kept.
    form.wait_for_selector('article[data-status="completed"]', timeout=WAIT_MS)
    form.wait_for_selector("#player video", timeout=WAIT_MS)


def test_a_dead_delivery_retried_from_the_page_is_delivered(context, live):
    live.slack.answer(SlackAnswer(status=500))
    job = live.service.submit("A lantern on the water")
    live.service.wait(job["id"], lambda j: [d["status"] for d in j["deliveries"]] == ["dead"])
    delivered = len(live.slack.messages)
    page = context.new_page()
    sign_in(page, live.url, ADMIN_TOKEN)
    page.goto(f"{live.url}/ui/deliveries")
    row = page.locator(f'tr[data-job-id="{job["id"]}"][data-delivery-status="dead"]')
    row.get_by_role("button", name="Retry").click()
    page.wait_for_url(re.compile(r"done=retried"))
    wait_for(lambda: len(live.slack.messages) == delivered + 1, what="the retried message")
    assert job["id"] in str(live.slack.messages[-1])


def test_a_cross_site_post_is_refused(context, live):
    """A page on another site posts a dashboard form: refused, nothing written."""
    target = f"{live.url}/ui/new"

    async def forged(request):
        return HTMLResponse(
            f'<form method="post" action="{target}"><input name="provider" value="vidu">'
            '<input name="prompt" value="forged"><button>Win a prize</button></form>'
        )

    evil = ServerThread(Starlette(routes=[Route("/", forged)]), host="127.0.0.2")
    with evil:
        page = context.new_page()
        sign_in(page, live.url, ADMIN_TOKEN)
        before = live.service.counts()
        page.goto(evil.url)
        with page.expect_navigation() as navigation:
            page.click("text=Win a prize")
        assert navigation.value.status == 403
        assert "refused" in page.content().lower()
    assert live.service.counts() == before

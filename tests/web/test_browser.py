"""The dashboard in a real browser: Debian's headless Chromium, driven by Playwright.

Playwright from PyPI drives /usr/bin/chromium through ``executable_path``; it never
downloads a browser of its own. One browser serves the module, a fresh context (its own
cookies) each test. Two services: ``vidhook demo --serve`` as a user starts it, for the
demo's jobs, and one in this process with a Slack channel pointed at the fake Slack.

``VIDHOOK_SCREENSHOTS=1`` also writes the README's screenshots to docs/screenshots/.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, BrowserContext, Page, sync_playwright
from starlette.applications import Starlette
from starlette.responses import HTMLResponse
from starlette.routing import Route

from receiver.demo import SAMPLES
from receiver.sandbox import ServerThread
from receiver.sandbox.slack import SlackAnswer, SlackSinkSettings, create_slack_sink
from tests.conftest import (
    ADMIN_TOKEN,
    VIDU_KEY,
    Sandbox,
    running_sandbox,
    running_service,
    settings_restored,
    wait_for,
)
from tests.tools import missing
from tests.vidu_signer import vidu_headers

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
log = logging.getLogger(__name__)


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
    service: Any
    slack: Any
    url: str
    sandbox: Sandbox


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
            yield Live(service, slack, service.url, sandbox)


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


# -- live, themes, phones, keyboards, times -------------------------------------------------

# Records, in the page, the moment (Date.now(), the same clock as time.time()) the element
# matching the selector first shows the status.
WATCH_FOR_STATUS = """([selector, status]) => {
  window.seenAt = null;
  const look = () => {
    const element = document.querySelector(selector);
    if (window.seenAt === null && element && element.dataset.status === status) {
      window.seenAt = Date.now();
    }
  };
  new MutationObserver(look).observe(document.body,
    { subtree: true, childList: true, attributes: true, attributeFilter: ["data-status"] });
}"""


def connected(page: Page) -> None:
    page.wait_for_selector("#live-state.connected", timeout=WAIT_MS)


def processing_callback(live: Live, job_id: str) -> float:
    """A signed callback moving the job to processing; the moment it was sent (its answer
    comes after the transition's commit, a few milliseconds later)."""
    ((url, task),) = live.service.rows(
        "SELECT callback_url, provider_job_id FROM jobs WHERE id = ?", job_id
    )
    body = json.dumps({"id": task, "state": "processing"}).encode()
    headers = vidu_headers(VIDU_KEY, url)
    sent = time.time()
    response = live.service.http.post(url, content=body, headers=headers)
    assert response.status_code == 200, response.text
    return sent


def test_a_change_reaches_the_open_list_and_job_page_promptly(context, live):
    listing = context.new_page()
    sign_in(listing, live.url, ADMIN_TOKEN)
    connected(listing)
    seen: list[tuple[float, float]] = []
    jobs = []
    with settings_restored(live.sandbox.settings) as settings:
        settings.queue_delay = 120  # the provider says nothing; the callback moves the job
        for n in range(3):
            job = live.service.submit(f"A candle flame in a draught {n}")
            jobs.append(job["id"])
            wait_for(lambda j=job: live.service.job(j["id"])["provider_job_id"], what="a task")
            page = context.new_page()
            page.goto(f"{live.url}/ui/jobs/{job['id']}")
            connected(page)
            listing.wait_for_selector(f'tr[data-job-id="{job["id"]}"]', timeout=WAIT_MS)
            row = f'tr[data-job-id="{job["id"]}"]'
            listing.evaluate(WATCH_FOR_STATUS, [row, "processing"])
            page.evaluate(WATCH_FOR_STATUS, ["article.job", "processing"])
            sent = processing_callback(live, job["id"])
            moments = []
            for shown in (listing, page):
                shown.wait_for_function("() => window.seenAt !== null", timeout=WAIT_MS)
                moments.append(shown.evaluate("() => window.seenAt") / 1000 - sent)
            seen.append((moments[0], moments[1]))
            page.close()
    for job_id in jobs:
        live.service.api.post(f"/api/jobs/{job_id}/cancel")
    log.info(
        "from sending the callback to the page showing it: list %s s, job page %s s",
        ", ".join(f"{a:.3f}" for a, _ in seen),
        ", ".join(f"{b:.3f}" for _, b in seen),
    )
    assert all(0 <= delay < 5 for pair in seen for delay in pair), seen


def full_job(live: Live, prompt: str) -> str:
    """A completed job with its result kept, callbacks received and a dead delivery."""
    live.slack.answer(SlackAnswer(status=500))
    job = live.service.submit(prompt)
    live.service.wait(
        job["id"],
        lambda j: (
            j["media"]["status"] == "kept" and [d["status"] for d in j["deliveries"]] == ["dead"]
        ),
    )
    return str(job["id"])


LONG_PROMPT = (
    "A slow dolly shot along a rain-soaked neon street at night, reflections rippling in "
    "puddles, steam rising from a noodle stall, reference https://images.example.com/"
    "moodboards/2026/neon-street-reference-frame-0042-final-final.png"
)

# Text and the background it sits on, as the reader sees them: the first non-transparent
# background up the tree.
COLOURS = """(selectors) => {
  const parse = (text) => (text.match(/[\\d.]+/g) || []).map(Number);
  const background = (element) => {
    for (let e = element; e; e = e.parentElement) {
      const value = parse(getComputedStyle(e).backgroundColor);
      if (value.length === 3 || value[3] > 0) return value.slice(0, 3);
    }
    return matchMedia("(prefers-color-scheme: dark)").matches ? [0, 0, 0] : [255, 255, 255];
  };
  const found = [];
  for (const selector of selectors) {
    for (const element of document.querySelectorAll(selector)) {
      if (!element.getClientRects().length) continue;
      found.push({ selector, text: element.textContent.trim().slice(0, 40),
        fg: parse(getComputedStyle(element).color).slice(0, 3), bg: background(element) });
    }
  }
  return found;
}"""
TEXTS = {
    "/ui/": ["body", "h1", "tr[data-job-id] a", ".status", ".id", ".count", "thead th",
             "button", ".button", "select", "input[name=q]", ".topbar nav a", ".error-text"],
    "job": ["h1", ".status", ".facts dt", ".facts dd", ".via", ".offset", ".dstatus",
            ".error-text", "button", ".button", "summary", "h2 .sub", ".sub"],
}  # fmt: skip


def luminance(rgb: list[float]) -> float:
    def linear(channel: float) -> float:
        c = channel / 255
        return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = (linear(c) for c in rgb)
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def contrast(fg: list[float], bg: list[float]) -> float:
    light, dark = sorted((luminance(fg), luminance(bg)), reverse=True)
    return (light + 0.05) / (dark + 0.05)


def test_the_dark_theme_follows_the_system_and_stays_readable(chromium, live):
    job_id = full_job(live, "A fox crossing a frozen river")
    failed = live.service.submit("Fireflies in a jar [fail]")
    live.service.wait_status(failed["id"], "failed")
    body: dict[str, tuple[list[float], list[float]]] = {}
    for scheme in ("light", "dark"):
        context = chromium.new_context(viewport={"width": 1280, "height": 900}, color_scheme=scheme)
        page = context.new_page()
        sign_in(page, live.url, ADMIN_TOKEN)
        unreadable = []
        for path, selectors in TEXTS.items():
            page.goto(f"{live.url}/ui/jobs/{job_id}" if path == "job" else f"{live.url}{path}")
            for found in page.evaluate(COLOURS, selectors):
                ratio = contrast(found["fg"], found["bg"])
                if ratio < 4.5:  # WCAG AA for body text
                    unreadable.append((path, found["selector"], found["text"], round(ratio, 2)))
                if found["selector"] == "body" or (path == "job" and found["selector"] == "h1"):
                    body.setdefault(scheme, (found["fg"], found["bg"]))
        context.close()
        assert unreadable == [], (scheme, unreadable)
    (light_fg, light_bg), (dark_fg, dark_bg) = body["light"], body["dark"]
    assert luminance(light_bg) > 0.8 and luminance(dark_bg) < 0.05
    assert luminance(light_fg) < 0.05 and luminance(dark_fg) > 0.7


def test_a_phone_width_needs_no_sideways_scrolling(chromium, live):
    job_id = full_job(live, LONG_PROMPT)
    context = chromium.new_context(
        viewport={"width": 375, "height": 812}, is_mobile=True, has_touch=True,
        device_scale_factor=2,
    )  # fmt: skip
    page = context.new_page()
    sign_in(page, live.url, ADMIN_TOKEN)
    wide = {}
    paths = ["/ui/", "/ui/?view=gallery", f"/ui/jobs/{job_id}", "/ui/deliveries", "/ui/new",
             "/ui/providers"]  # fmt: skip
    for path in paths:
        page.goto(f"{live.url}{path}")
        page.evaluate("() => document.querySelectorAll('details').forEach(d => d.open = true)")
        widths = page.evaluate(
            "() => [document.documentElement.scrollWidth, document.documentElement.clientWidth]"
        )
        if widths[0] > widths[1]:
            wide[path] = widths
    context.close()
    assert wide == {}


FOCUSED = """() => {
  const element = document.activeElement;
  const style = getComputedStyle(element);
  const parse = (text) => (text.match(/[\\d.]+/g) || []).map(Number).slice(0, 3);
  let behind = [255, 255, 255];
  for (let e = element.parentElement; e; e = e.parentElement) {
    const value = (getComputedStyle(e).backgroundColor.match(/[\\d.]+/g) || []).map(Number);
    if (value.length === 3 || value[3] > 0) { behind = value.slice(0, 3); break; }
  }
  return {
    tag: element.tagName.toLowerCase(),
    name: element.getAttribute("name"),
    text: (element.textContent || "").trim().replace(/\\s+/g, " ").slice(0, 60),
    in_row: Boolean(element.closest("tr[data-job-id]")),
    shown: element.matches(":focus-visible") && style.outlineStyle !== "none"
      && parseFloat(style.outlineWidth) >= 2,
    ring: parse(style.outlineColor),
    behind,
  };
}"""


def tab_through(page: Page, presses: int) -> list[dict[str, Any]]:
    """Where each press of Tab lands, until the page's end (focus back on the body)."""
    reached = []
    for _ in range(presses):
        page.keyboard.press("Tab")
        focused = page.evaluate(FOCUSED)
        if focused["tag"] == "body":
            break
        reached.append(focused)
    return reached


def unmarked(reached: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What had the focus without showing it plainly: no ring, or a ring that stands out
    from what is behind it by less than 3:1. Tab walks on into a video's own controls,
    which the browser draws and marks itself: the video is checked when it is reached."""
    return [
        r
        for r in reached
        if (not r["shown"] or contrast(r["ring"], r["behind"]) < 3)
        and not (r["tag"] == "video" and r is not first_video(reached))
    ]


def first_video(reached: list[dict[str, Any]]) -> dict[str, Any] | None:
    return next((r for r in reached if r["tag"] == "video"), None)


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_the_keyboard_reaches_filters_rows_and_actions_with_visible_focus(chromium, live, scheme):
    job_id = full_job(live, "Snow falling past a street lamp")
    context = chromium.new_context(viewport={"width": 1280, "height": 900}, color_scheme=scheme)
    page = context.new_page()
    sign_in(page, live.url, ADMIN_TOKEN)
    reached = tab_through(page, 60)
    assert reached[0]["text"] == "Skip to the content"
    names = {r["name"] for r in reached}
    assert {"q", "status", "provider"} <= names
    assert any(r["tag"] == "a" and r["in_row"] for r in reached)
    assert unmarked(reached) == []

    page.goto(f"{live.url}/ui/jobs/{job_id}")
    reached = tab_through(page, 60)
    buttons = {r["text"] for r in reached if r["tag"] == "button"}
    assert {"Download again", "Submit again", "Retry", "Sign out"} <= buttons
    assert first_video(reached) is not None
    assert unmarked(reached) == []
    # Enter on the focused Retry sends its form.
    page.keyboard.press("Shift+Tab")
    while page.evaluate(FOCUSED)["text"] != "Retry":
        page.keyboard.press("Shift+Tab")
    with page.expect_navigation():
        page.keyboard.press("Enter")
    assert "done=retried" in page.url
    context.close()


def test_a_relative_time_shows_the_exact_time_on_hover(context, live):
    job = live.service.submit("Clouds over a ridge")
    live.service.wait_status(job["id"], "completed")
    page = context.new_page()
    sign_in(page, live.url, ADMIN_TOKEN)
    page.goto(f"{live.url}/ui/jobs/{job['id']}")
    times = page.locator("time[data-relative]")
    assert times.count() >= 3
    for n in range(times.count()):
        element = times.nth(n)
        if not element.is_visible():
            continue
        element.hover()
        moment = datetime.fromisoformat(element.get_attribute("datetime"))
        title = element.get_attribute("title")
        assert moment.strftime("%Y-%m-%d %H:%M:%S UTC") in title, title
        assert re.fullmatch(r"just now|(in )?\d+ (s|min|h|days?|y)( ago)?", element.inner_text())

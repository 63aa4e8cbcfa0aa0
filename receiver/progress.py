"""Following one job to its end: `vidhook wait` and `vidhook submit --wait`.

Updates come from the service's event stream (``/api/events``), or from polling the job
when the service has none. On a terminal one status line is redrawn in place (elapsed
time, status, the provider's progress, when the next poll is due) below the timeline;
elsewhere only whole lines are written, so logs and pipes read well. Ctrl-C detaches:
the job goes on in the service, and ``vidhook wait ID`` picks it up again.
"""

from __future__ import annotations

import json
import queue
import shutil
import threading
import time
from datetime import datetime
from typing import Any, TextIO

from receiver.client import Client, NoEventStream
from receiver.timeline import format_timeline

TERMINAL = ("completed", "failed", "canceled")
POLL_EVERY = 1.0  # seconds between two GETs of the job when there is no event stream
REDRAW_EVERY = 0.2  # seconds between two redraws of the status line
HEARTBEAT_EVERY = 30.0  # not a terminal: a line this often while nothing happens
DETACHED = 130  # the exit code of a command stopped by Ctrl-C
_SPINNER = "|/-\\"
_CLEAR_LINE = "\r\x1b[K"


def follow(client: Client, job: dict[str, Any], out: TextIO, err: TextIO) -> int:
    """Print ``job``'s timeline as it grows until it ends; the exit code of the command."""
    live = out.isatty()
    job_id = job["id"]
    updates: queue.Queue[dict[str, Any] | BaseException] = queue.Queue()
    stop = threading.Event()
    source = threading.Thread(
        target=_watch, args=(client, job_id, updates, stop), name="vidhook-wait", daemon=True
    )
    view = _View(client, out, live)
    view.show(job)
    if view.ended():
        return view.finish()
    source.start()
    try:
        while not view.ended():
            try:
                update = updates.get(timeout=REDRAW_EVERY if live else POLL_EVERY)
            except queue.Empty:
                update = None
            if isinstance(update, BaseException):
                view.clear()
                raise update
            if update is not None:
                view.show(update)
            elif live and view.poll_overdue():
                # A poll that changed nothing makes no event: ask, to show the next one.
                view.show(client.call("GET", f"/api/jobs/{job_id}"))
            view.tick()
    except KeyboardInterrupt:
        view.clear()
        err.write(f"detached: {job_id} keeps running; follow it with: vidhook wait {job_id}\n")
        err.flush()
        return DETACHED
    finally:
        stop.set()
    return view.finish()


def _watch(
    client: Client,
    job_id: str,
    updates: queue.Queue[dict[str, Any] | BaseException],
    stop: threading.Event,
) -> None:
    """Put the job on ``updates`` whenever it may have changed, until ``stop``."""
    try:
        if not _stream(client, job_id, updates, stop):
            while not stop.wait(POLL_EVERY):
                updates.put(client.call("GET", f"/api/jobs/{job_id}"))
    except BaseException as exc:  # SystemExit with the client's message, mostly
        updates.put(exc)


def _stream(
    client: Client,
    job_id: str,
    updates: queue.Queue[dict[str, Any] | BaseException],
    stop: threading.Event,
) -> bool:
    """Follow the event stream until ``stop``; False when it cannot (or no longer can)
    be had, for polling to take over."""
    last_id: str | None = None
    while not stop.is_set():
        try:
            with client.event_stream(last_id) as events:
                # Subscribed: what happened before is in this read, what comes after in
                # the events (or, after a reconnection, in those since last_id).
                updates.put(client.call("GET", f"/api/jobs/{job_id}"))
                for event in events:
                    last_id = event.id or last_id
                    if stop.is_set():
                        return True
                    if event.type == "job" and _event_job_id(event.data) == job_id:
                        # The event's job may lack the timeline: read the whole job.
                        updates.put(client.call("GET", f"/api/jobs/{job_id}"))
        except NoEventStream:
            return False
        if stop.wait(1.0):  # the stream ended: come back after a pause
            break
    return True


def _event_job_id(data: str) -> str | None:
    try:
        job = json.loads(data)
    except ValueError:
        return None
    return job.get("id") if isinstance(job, dict) else None


class _View:
    """What the user sees of one job, updated as news comes in."""

    def __init__(self, client: Client, out: TextIO, live: bool) -> None:
        self.client = client
        self.out = out
        self.live = live
        self.job: dict[str, Any] = {}
        self.printed = 0  # timeline lines already written
        self.drawn = False  # a status line is on the screen
        self.frame = 0
        self.last_line = time.monotonic()
        self.asked_at = 0.0

    def ended(self) -> bool:
        return self.job.get("status") in TERMINAL

    def show(self, job: dict[str, Any]) -> None:
        if "transitions" not in job:
            return
        self.job = job
        lines = format_timeline(job)
        if len(lines) > self.printed:
            self.clear()
            for line in lines[self.printed :]:
                self.out.write(line + "\n")
            self.printed = len(lines)
            self.last_line = time.monotonic()
            self.out.flush()

    def tick(self) -> None:
        if self.ended():
            return
        if self.live:
            self.frame += 1
            width = shutil.get_terminal_size().columns
            self.out.write(_CLEAR_LINE + self.status_line()[: max(width - 1, 10)])
            self.out.flush()
            self.drawn = True
        elif time.monotonic() - self.last_line >= HEARTBEAT_EVERY:
            self.out.write(f"  ... {self.status_line().strip()}\n")
            self.out.flush()
            self.last_line = time.monotonic()

    def status_line(self) -> str:
        spinner = _SPINNER[self.frame % len(_SPINNER)] if self.live else ""
        return f"  {spinner} {status_line(self.job, self.client.now())}"

    def poll_overdue(self) -> bool:
        """The job's next poll was due a while ago (and we have not asked lately)."""
        next_poll = _timestamp(self.job.get("next_poll_at"))
        now = time.monotonic()
        if next_poll is None or self.client.now() < next_poll + 2 or now - self.asked_at < 2:
            return False
        self.asked_at = now
        return True

    def clear(self) -> None:
        if self.drawn:
            self.out.write(_CLEAR_LINE)
            self.out.flush()
            self.drawn = False

    def finish(self) -> int:
        self.clear()
        job = self.job
        if job["status"] == "completed":
            self.out.write(f"result: {job.get('result_url')}\n")
            code = 0
        elif job["status"] == "canceled":
            # Someone asked for it: a reason is shown where the provider gave one.
            self.out.write("canceled" + (f": {job['error']}" if job.get("error") else "") + "\n")
            code = 1
        else:
            self.out.write(f"failed: {job.get('error') or 'no reason given'}\n")
            code = 1
        self.out.flush()
        return code


def status_line(job: dict[str, Any], now: float) -> str:
    """Status, elapsed time, the provider's progress, when the next poll is due."""
    parts = [job.get("status", "?")]
    created = _timestamp(job.get("created_at"))
    if created is not None:
        parts.append(f"{duration(now - created)} elapsed")
    shown = progress_text(job.get("progress"))
    if shown:
        parts.append(shown)
    next_poll = _timestamp(job.get("next_poll_at"))
    if next_poll is not None:
        due = next_poll - now
        parts.append(f"next poll in {duration(due)}" if due >= 1 else "polling now")
    return "  ".join(parts)


def progress_text(progress: Any) -> str | None:
    """A job's ``progress`` as words: "42% done", "queue position 3"."""
    if not isinstance(progress, dict):
        return None
    percent, position = progress.get("percent"), progress.get("queue_position")
    if isinstance(position, int) and not isinstance(position, bool):
        return f"queue position {position}"
    if isinstance(percent, int | float) and not isinstance(percent, bool):
        return f"{percent:g}% done"
    return None


def duration(seconds: float) -> str:
    """12s, 1m 05s, 2h 03m."""
    whole = max(0, int(seconds))
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m {whole % 60:02d}s"
    return f"{whole // 3600}h {whole % 3600 // 60:02d}m"


def _timestamp(text: Any) -> float | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None

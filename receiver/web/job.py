"""/ui/jobs/{id}: one job, its video, its story, and what can be done about it."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from receiver import actions
from receiver.actions import Refused
from receiver.responses import iso
from receiver.states import Status
from receiver.store import pages as queries
from receiver.web import guard
from receiver.web.new import submit_payload
from receiver.web.templating import base_path

if TYPE_CHECKING:
    from receiver.runtime import Runtime

# What a finished action says on the page it returns to (?done=KEY): fixed words, so
# that nothing from the query string is ever shown.
DONE = {
    "refreshed": "Asked the provider for the job's status just now.",
    "cancel-requested": "The provider took the cancel request; its answer shows here soon.",
    "canceled": "The job is canceled.",
    "keeping": "The result is being downloaded again.",
    "retried": "The delivery is queued again.",
    "submitted": "Submitted.",
    "refused": "The provider refused the job; its answer is below.",
}
# Names of stored callback headers whose values are never shown, whatever they hold.
_SECRET_PARTS = ("auth", "signature", "token", "secret", "key", "cookie", "session", "password")
MAX_BODY_SHOWN = 4000


@dataclass(frozen=True)
class Stage:
    name: str
    start: float
    end: float | None

    @property
    def seconds(self) -> float | None:
        return None if self.end is None else max(0.0, self.end - self.start)


def stages(raw: Mapping[str, Any]) -> list[Stage]:
    """How long each part of the job's life took, from the stored times."""
    created = float(raw["created_at"])
    started = next(
        (t["at"] for t in raw["transitions"] if t["to_status"] == Status.PROCESSING), None
    )
    finished = raw.get("finished_at")
    found = [Stage("waiting for the provider", created, started or finished)]
    if started is not None:
        found.append(Stage("generating", started, finished))
    download = raw.get("download")
    if finished is not None and download is not None:
        found.append(Stage("keeping the copy", finished, download.get("finished_at")))
    if finished is not None:
        event = raw["status"]
        sent = [
            d["delivered_at"]
            for d in raw["deliveries"]
            if d["event"] == event and d["delivered_at"] is not None
        ]
        pending = any(d["event"] == event and d["delivered_at"] is None for d in raw["deliveries"])
        if sent or pending:
            found.append(Stage("notifying", finished, None if pending else max(sent)))
    return found


def waterfall(found: list[Stage], now: float, width: int = 1000) -> list[dict[str, float]]:
    """Each stage as a bar on one time axis (x and width in ``width`` units)."""
    if not found:
        return []
    origin = found[0].start
    end = max((s.end if s.end is not None else now) for s in found)
    span = max(end - origin, 1e-6)
    bars = []
    for stage in found:
        stop = stage.end if stage.end is not None else now
        x = (stage.start - origin) / span * width
        bars.append(
            {"x": round(x, 1), "width": round(max(2.0, (stop - stage.start) / span * width), 1)}
        )
    return bars


def shown_headers(headers: Mapping[str, str] | None) -> list[tuple[str, str]]:
    out = []
    for name, value in sorted((headers or {}).items()):
        secret = any(part in name.lower() for part in _SECRET_PARTS)
        out.append((name, f"redacted ({len(value)} characters)" if secret else value))
    return out


def shown_body(body: str | None) -> str:
    if not body:
        return ""
    try:
        text = json.dumps(json.loads(body), indent=2, ensure_ascii=False)
    except ValueError:
        text = body
    return text if len(text) <= MAX_BODY_SHOWN else text[:MAX_BODY_SHOWN] + "\n…"


async def render(
    request: Request, job_id: str, *, notice: str | None = None, status_code: int = 200
) -> Response:
    runtime: Runtime = request.app.state.runtime
    raw = await runtime.store.read(queries.job_page, job_id)
    if raw is None:
        return guard.problem(request, 404, "No such job", f"There is no job {job_id}.")
    job = runtime.render_job(raw)
    provider = runtime.providers.get(job["provider"])
    found = stages(raw)
    terminal = Status(job["status"]).terminal
    callbacks = {c["id"]: c for c in raw["callbacks"]}
    context = {
        "job": job,
        "notice": notice,
        "done": DONE.get(request.query_params.get("done", "")),
        "provider": provider,
        "stages": list(zip(found, waterfall(found, runtime.store.clock()), strict=True)),
        "polls": {
            "count": raw.get("polls") or 0,
            "failures": raw.get("poll_failures") or 0,
            "supports_callbacks": provider is not None and provider.supports_callbacks,
        },
        "callback_headers": {i: shown_headers(c.get("headers")) for i, c in callbacks.items()},
        "callback_bodies": {i: shown_body(c.get("body")) for i, c in callbacks.items()},
        "attempts": {
            delivery: [{**a, "at": iso(a["at"])} for a in rows]
            for delivery, rows in raw["attempts"].items()
        },
        "can": {
            "refresh": not terminal and job["provider_job_id"] is not None,
            "cancel": not terminal and provider is not None and provider.supports_cancel,
            "keep": job["status"] == Status.COMPLETED
            and bool(job["result_url"])
            and runtime.archive.enabled,
            "again": provider is not None,
        },
        "request_json": json.dumps(job["request"] or {}, indent=2, ensure_ascii=False),
    }
    board = guard.dashboard(request)
    return board.pages.render(request, "job.html", context, status_code=status_code)


@guard.page
async def page(request: Request) -> Response:
    return await render(request, request.path_params["job_id"])


def back_to(request: Request, job_id: str, done: str) -> RedirectResponse:
    root = base_path(request)
    return RedirectResponse(f"{root}/ui/jobs/{job_id}?done={done}", status_code=303)


@guard.form
async def refresh(request: Request, form: FormData) -> Response:
    runtime: Runtime = request.app.state.runtime
    job_id = request.path_params["job_id"]
    try:
        await actions.refresh(runtime, job_id)
    except Refused as refused:
        return await render(request, job_id, notice=refused.message, status_code=refused.status)
    return back_to(request, job_id, "refreshed")


@guard.form
async def cancel(request: Request, form: FormData) -> Response:
    runtime: Runtime = request.app.state.runtime
    job_id = request.path_params["job_id"]
    try:
        outcome, _ = await actions.cancel(runtime, job_id)
    except Refused as refused:
        return await render(request, job_id, notice=refused.message, status_code=refused.status)
    return back_to(request, job_id, "canceled" if outcome == "canceled" else "cancel-requested")


@guard.form
async def keep_again(request: Request, form: FormData) -> Response:
    runtime: Runtime = request.app.state.runtime
    job_id = request.path_params["job_id"]
    try:
        await actions.keep_again(runtime, job_id)
    except Refused as refused:
        return await render(request, job_id, notice=refused.message, status_code=refused.status)
    return back_to(request, job_id, "keeping")


@guard.form
async def again(request: Request, form: FormData) -> Response:
    """A new job with the same provider, prompt, model, images, mode, options and channels."""
    runtime: Runtime = request.app.state.runtime
    job_id = request.path_params["job_id"]
    job = await runtime.store.get_job(job_id)
    if job is None:
        return guard.problem(request, 404, "No such job", f"There is no job {job_id}.")
    asked = job["request"] or {}
    payload: dict[str, Any] = {
        "provider": job["provider"],
        "prompt": job["prompt"],
        "model": job["model"],
        "images": asked.get("images") or [],
        "mode": asked.get("mode"),
        "options": asked.get("options") or {},
        "notify": job["notify"],
    }
    outcome = await submit_payload(request, {k: v for k, v in payload.items() if v is not None})
    if isinstance(outcome, dict):
        problems = "; ".join(f"{name}: {why}" for name, why in outcome.items())
        return await render(
            request, job_id, notice=f"Not submitted again: {problems}", status_code=422
        )
    return outcome

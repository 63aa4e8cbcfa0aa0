"""/ui/new: submit a job from a form, checked exactly as POST /api/jobs checks it."""

from __future__ import annotations

import base64
import json
from typing import TYPE_CHECKING, Any

from starlette.datastructures import FormData, UploadFile
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from receiver.api import parse_submission
from receiver.web import guard
from receiver.web.templating import base_path

if TYPE_CHECKING:
    from receiver.runtime import Runtime

# Uploads travel to the provider base64-encoded inside JSON, a third larger; Vidu, the
# largest taker, reads request bodies up to 20 MB.
MAX_IMAGE_BYTES = 15 * 1024 * 1024
_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
)


def image_type(data: bytes) -> str | None:
    """The image's type from its first bytes, whatever its name or its claimed type says."""
    for signature, content_type in _SIGNATURES:
        if data.startswith(signature):
            return content_type
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


def parse_options(text: str) -> tuple[dict[str, Any], str | None]:
    """``key=value`` lines; a value that reads as JSON (8, true, [1,2]) is that JSON."""
    options: dict[str, Any] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        key, sep, value = line.partition("=")
        key = key.strip()
        if not sep or not key:
            return {}, f"line {number}: write each option as key=value, such as duration=8"
        if key in options:
            return {}, f"line {number}: {key} is given twice; keep one"
        try:
            options[key] = json.loads(value)
        except ValueError:
            options[key] = value.strip()
    return options, None


def _text(form: FormData, name: str) -> str:
    value = form.get(name)
    return value.strip() if isinstance(value, str) else ""


async def payload_of(form: FormData) -> tuple[dict[str, Any], dict[str, str]]:
    """The API's JSON body from the form, and what the form itself got wrong."""
    problems: dict[str, str] = {}
    payload: dict[str, Any] = {"provider": _text(form, "provider")}
    for name in ("prompt", "model", "mode"):
        if _text(form, name):
            payload[name] = _text(form, name)
    images = [line.strip() for line in _text(form, "images").splitlines() if line.strip()]
    for upload in form.getlist("files"):
        if not isinstance(upload, UploadFile) or not upload.filename:
            continue  # the file field left empty
        data = await upload.read(MAX_IMAGE_BYTES + 1)
        content_type = image_type(data)
        if len(data) > MAX_IMAGE_BYTES:
            limit = MAX_IMAGE_BYTES // (1024 * 1024)
            problems["images"] = f"{upload.filename} is larger than {limit} MB; give its URL"
        elif content_type is None:
            problems["images"] = f"{upload.filename} is not a PNG, JPEG, GIF or WebP image"
        else:
            images.append(f"data:{content_type};base64,{base64.b64encode(data).decode()}")
    if images:
        payload["images"] = images
    options, problem = parse_options(_text(form, "options"))
    if problem is not None:
        problems["options"] = problem
    if options:
        payload["options"] = options
    channels = [c for c in form.getlist("notify") if isinstance(c, str)]
    if _text(form, "notify_choice") == "chosen":
        payload["notify"] = channels
    return payload, problems


async def submit_payload(request: Request, payload: dict[str, Any]) -> Response | dict[str, str]:
    """Submit as the API does; the job's page, or the problems by field."""
    runtime: Runtime = request.app.state.runtime
    parsed = parse_submission(payload, runtime)
    if isinstance(parsed, dict):
        return parsed
    provider, submit, notify = parsed
    job_id, outcome = await runtime.submit(provider, submit, notify)
    done = "refused" if outcome in ("refused", "unknown") else "submitted"
    root = base_path(request)
    return RedirectResponse(f"{root}/ui/jobs/{job_id}?done={done}", status_code=303)


def form_context(
    runtime: Runtime, values: dict[str, Any], problems: dict[str, str]
) -> dict[str, Any]:
    providers = {
        name: {"type": p.config.type, "model": p.config.default_model}
        for name, p in sorted(runtime.providers.items())
    }
    blank = dict.fromkeys(("provider", "prompt", "model", "mode", "images", "options"), "")
    return {
        "providers": providers,
        "channels": sorted(runtime.config.channels),
        "default_channels": list(runtime.config.default_channels),
        "values": {**blank, "notify": None, **values},
        "problems": problems,
    }


@guard.page
async def page(request: Request) -> Response:
    runtime: Runtime = request.app.state.runtime
    values: dict[str, Any] = {}
    source = request.query_params.get("from")
    if source:
        job = await runtime.store.get_job(source)
        if job is not None:
            asked = job["request"] or {}
            values = {
                "provider": job["provider"],
                "prompt": job["prompt"] or "",
                "model": job["model"] or "",
                "mode": asked.get("mode") or "",
                "images": "\n".join(
                    i for i in asked.get("images") or [] if not i.startswith("data:")
                ),
                "options": "\n".join(
                    f"{k}={json.dumps(v, ensure_ascii=False) if not isinstance(v, str) else v}"
                    for k, v in (asked.get("options") or {}).items()
                ),
                "notify": job["notify"],
            }
    board = guard.dashboard(request)
    return board.pages.render(request, "new.html", form_context(runtime, values, {}))


@guard.form
async def submit(request: Request, form: FormData) -> Response:
    runtime: Runtime = request.app.state.runtime
    payload, problems = await payload_of(form)
    outcome: Response | dict[str, str] = problems
    if not problems:
        outcome = await submit_payload(request, payload)
    if isinstance(outcome, Response):
        return outcome
    fields = ("provider", "prompt", "model", "mode", "images", "options")
    values: dict[str, Any] = {name: _text(form, name) for name in fields}
    values["notify"] = payload.get("notify")
    context = form_context(runtime, values, outcome)
    board = guard.dashboard(request)
    return board.pages.render(request, "new.html", context, status_code=422)

"""The admin JSON API under /api, behind the admin bearer token."""

from __future__ import annotations

import hmac
import logging
import re
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from receiver.providers.base import InvalidRequest, ProviderError, SubmitRequest
from receiver.responses import JSON, dumps, error
from receiver.states import Status
from receiver.views import render_delivery, render_job

if TYPE_CHECKING:
    from receiver.runtime import Runtime

log = logging.getLogger("vidhook.api")

Handler = Callable[[Request], Awaitable[Response]]
DELIVERY_STATUSES = ("pending", "delivered", "dead")
MAX_REQUEST_BYTES = 25 * 1024 * 1024  # Vidu takes base64 images up to 20 MB
MAX_INTEGER = 2**63 - 1  # SQLite's largest integer: no row id or count is larger
# What runtime.new_job_id makes: a jobs cursor is always one of them.
JOB_ID = re.compile(r"job_[0-9A-Z]{26}")


def admin(handler: Handler) -> Handler:
    async def guarded(request: Request) -> Response:
        runtime: Runtime = request.app.state.runtime
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        expected = runtime.config.admin_token.reveal().encode()
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), expected):
            response = error(401, "unauthorized", "send Authorization: Bearer <admin token>")
            response.headers["WWW-Authenticate"] = 'Bearer realm="vidhook"'
            return response
        return await handler(request)

    return guarded


async def read_json(request: Request) -> tuple[Any, Response | None]:
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media != "application/json":
        return None, error(415, "unsupported_media_type", "send the request as application/json")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_REQUEST_BYTES:
            return None, error(
                413, "body_too_large", f"requests are limited to {MAX_REQUEST_BYTES} bytes"
            )
    try:
        payload = request.app.state.runtime.json_loads(body)
        # Escaped lone surrogates ("\ud800") parse but cannot be stored as UTF-8 text.
        dumps(payload)
        return payload, None
    except (ValueError, RecursionError):  # UnicodeError is a ValueError; deep nesting recurses
        return None, error(400, "invalid_json", "the request body is not valid JSON")


def parse_submission(
    payload: Any, runtime: Runtime
) -> tuple[str, SubmitRequest, list[str] | None] | dict[str, str]:
    """The provider name, the request and the notify list, or the problems by field."""
    if not isinstance(payload, dict):
        return {"body": "must be a JSON object"}
    problems: dict[str, str] = {}
    known = {"provider", "prompt", "model", "images", "mode", "options", "notify"}
    for name in payload:
        if name not in known:
            problems[name] = f"unknown field; known fields: {', '.join(sorted(known))}"
    provider = payload.get("provider")
    if not isinstance(provider, str) or provider not in runtime.providers:
        choices = ", ".join(sorted(runtime.providers))
        problems["provider"] = f"required; one of the configured providers: {choices}"
    for name in ("prompt", "model", "mode"):
        if payload.get(name) is not None and not isinstance(payload[name], str):
            problems[name] = "must be a string"
    images = payload.get("images", [])
    if not isinstance(images, list) or not all(isinstance(i, str) and i for i in images):
        problems["images"] = "must be a list of image URLs or data: URIs"
        images = []
    options = payload.get("options", {})
    if not isinstance(options, dict):
        problems["options"] = "must be an object of provider-specific fields"
        options = {}
    notify = payload.get("notify")
    if notify is not None:
        if not isinstance(notify, list) or not all(isinstance(n, str) for n in notify):
            problems["notify"] = "must be a list of channel names"
        elif unknown := [n for n in notify if n not in runtime.config.channels]:
            problems["notify"] = f"unknown channels: {', '.join(unknown)}"
        else:
            # A channel named twice is meant once (and twice would break the deliveries'
            # unique (transition, channel) index in the same transaction).
            notify = list(dict.fromkeys(notify))
    request = SubmitRequest(
        prompt=payload.get("prompt") if isinstance(payload.get("prompt"), str) else None,
        model=payload.get("model") if isinstance(payload.get("model"), str) else None,
        images=tuple(images),
        mode=payload.get("mode") if isinstance(payload.get("mode"), str) else None,
        options=options,
    )
    if isinstance(provider, str) and "provider" not in problems:
        try:
            runtime.providers[provider].validate(request)
        except InvalidRequest as exc:
            # A field already refused for its type keeps that message, the one to act on.
            for name, problem in exc.fields.items():
                problems.setdefault(name, problem)
    if problems or not isinstance(provider, str):
        return problems
    return provider, request, notify


@admin
async def create_job(request: Request) -> Response:
    runtime: Runtime = request.app.state.runtime
    payload, problem = await read_json(request)
    if problem is not None:
        return problem
    parsed = parse_submission(payload, runtime)
    if isinstance(parsed, dict):
        return error(422, "invalid_fields", "some fields are invalid", fields=parsed)
    provider_name, submit, notify = parsed
    job_id = await runtime.submit(provider_name, submit, notify)
    job = await runtime.store.job_detail(job_id)
    assert job is not None
    if job["status"] == Status.FAILED and job["provider_job_id"] is None:
        return error(
            502,
            "provider_refused",
            f"{provider_name} refused the job: {job['error']}",
            job=render_job(job),
        )
    return JSON(render_job(job), status_code=201, headers={"Location": f"/api/jobs/{job_id}"})


@admin
async def list_jobs(request: Request) -> Response:
    runtime: Runtime = request.app.state.runtime
    params = request.query_params
    problems: dict[str, str] = {}
    status = params.get("status")
    if status is not None and status not in {s.value for s in Status}:
        problems["status"] = f"one of {', '.join(s.value for s in Status)}"
    provider = params.get("provider")
    limit = _whole(params.get("limit", "50"))
    if limit is None or not 1 <= limit <= 500:
        problems["limit"] = "a whole number from 1 to 500"
    cursor = params.get("cursor")
    if cursor is not None and not JOB_ID.fullmatch(cursor):
        problems["cursor"] = "pass back the next_cursor of the previous page"
    if problems or limit is None:
        return error(422, "invalid_fields", "some query parameters are invalid", fields=problems)
    jobs = await runtime.store.list_jobs(
        status=status, provider=provider, before=cursor, limit=limit + 1
    )
    more = len(jobs) > limit
    jobs = jobs[:limit]
    return JSON(
        {
            "jobs": [render_job(j) for j in jobs],
            "next_cursor": jobs[-1]["id"] if more else None,
        }
    )


@admin
async def get_job(request: Request) -> Response:
    runtime: Runtime = request.app.state.runtime
    job = await runtime.store.job_detail(request.path_params["job_id"])
    if job is None:
        return error(404, "unknown_job", "no job has this id")
    return JSON(render_job(job))


@admin
async def refresh_job(request: Request) -> Response:
    runtime: Runtime = request.app.state.runtime
    job_id = request.path_params["job_id"]
    job = await runtime.store.get_job(job_id)
    if job is None:
        return error(404, "unknown_job", "no job has this id")
    if job["provider_job_id"] is not None and not Status(job["status"]).terminal:
        try:
            await runtime.poller.poll(job, raise_errors=True)
        except ProviderError as exc:
            return error(502, "provider_error", str(exc), transient=exc.transient)
    detail = await runtime.store.job_detail(job_id)
    assert detail is not None
    return JSON(render_job(detail))


@admin
async def list_deliveries(request: Request) -> Response:
    runtime: Runtime = request.app.state.runtime
    params = request.query_params
    problems: dict[str, str] = {}
    status = params.get("status")
    if status is not None and status not in DELIVERY_STATUSES:
        problems["status"] = f"one of {', '.join(DELIVERY_STATUSES)}"
    limit = _whole(params.get("limit", "50"))
    if limit is None or not 1 <= limit <= 500:
        problems["limit"] = "a whole number from 1 to 500"
    cursor = params.get("cursor")
    before = _whole(cursor) if cursor is not None else None
    if cursor is not None and before is None:
        problems["cursor"] = "pass back the next_cursor of the previous page"
    if problems or limit is None:
        return error(422, "invalid_fields", "some query parameters are invalid", fields=problems)
    rows = await runtime.store.list_deliveries(status=status, before=before, limit=limit + 1)
    more = len(rows) > limit
    rows = rows[:limit]
    return JSON(
        {
            "deliveries": [render_delivery(d) for d in rows],
            "next_cursor": str(rows[-1]["id"]) if more else None,
        }
    )


@admin
async def retry_delivery(request: Request) -> Response:
    runtime: Runtime = request.app.state.runtime
    delivery_id = _whole(request.path_params["delivery_id"])
    source = None if delivery_id is None else await runtime.store.delivery_source(delivery_id)
    if delivery_id is None or source is None:
        return error(404, "unknown_delivery", "no delivery has this id")
    if source["status"] != "dead":
        return error(
            409, "not_dead", f"only dead deliveries are retried; this one is {source['status']}"
        )
    delivery = await runtime.store.requeue_delivery(delivery_id)
    assert delivery is not None
    runtime.outbox.disabled.pop(delivery["channel"], None)
    runtime.outbox.wake()
    return JSON(render_delivery(delivery))


def _whole(text: str | None) -> int | None:
    """A decimal whole number that SQLite can hold, or None; never raises.

    isascii(): str.isdigit() also takes digits such as "²" that int() refuses. The length
    check comes first: int() refuses over 4,300 digits, SQLite anything over 2**63 - 1.
    """
    if text is None or not (text.isascii() and text.isdigit()):
        return None
    digits = text.lstrip("0") or "0"
    if len(digits) > len(str(MAX_INTEGER)) or int(digits) > MAX_INTEGER:
        return None
    return int(digits)


routes = [
    Route("/jobs", create_job, methods=["POST"]),
    Route("/jobs", list_jobs, methods=["GET"]),
    Route("/jobs/{job_id}", get_job, methods=["GET"]),
    Route("/jobs/{job_id}/refresh", refresh_job, methods=["POST"]),
    Route("/deliveries", list_deliveries, methods=["GET"]),
    Route("/deliveries/{delivery_id}/retry", retry_delivery, methods=["POST"]),
]

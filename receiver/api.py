"""The admin JSON API under /api, behind the admin bearer token."""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from receiver import actions, events
from receiver.access import is_admin
from receiver.actions import Refused
from receiver.bodies import BodyTooLarge, OverBudget, closing, hold_body, over_budget
from receiver.providers.base import InvalidRequest, SubmitRequest
from receiver.responses import JSON, dumps, error
from receiver.states import Status
from receiver.store.outbox import STATUSES
from receiver.views import render_delivery

if TYPE_CHECKING:
    from receiver.runtime import Runtime

log = logging.getLogger("vidhook.api")

Handler = Callable[[Request], Awaitable[Response]]
DELIVERY_STATUSES = STATUSES
MAX_REQUEST_BYTES = 25 * 1024 * 1024  # Vidu takes base64 images up to 20 MB
MAX_INTEGER = 2**63 - 1  # SQLite's largest integer: no row id or count is larger
# What runtime.new_job_id makes: a jobs cursor is always one of them.
JOB_ID = re.compile(r"job_[0-9A-Z]{26}")


def has_admin_credentials(request: Request) -> bool:
    return is_admin(request)


def admin(handler: Handler) -> Handler:
    async def guarded(request: Request) -> Response:
        if not has_admin_credentials(request):
            runtime: Runtime = request.app.state.runtime
            scheme, _, given = request.headers.get("authorization", "").partition(" ")
            if scheme.lower() == "bearer" and given.strip():
                message = (
                    "the admin token was refused; this service reads its token from the "
                    f"environment variable {runtime.config.admin_token_env} (admin_token_env)"
                )
            else:
                message = "send Authorization: Bearer <admin token>"
            response = error(401, "unauthorized", message)
            response.headers["WWW-Authenticate"] = 'Bearer realm="vidhook"'
            return response
        return await handler(request)

    return guarded


async def read_json(request: Request) -> tuple[Any, Response | None]:
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media != "application/json":
        return None, error(415, "unsupported_media_type", "send the request as application/json")
    try:
        body = await hold_body(request, MAX_REQUEST_BYTES, request.app.state.bodies)
    except BodyTooLarge:
        return None, closing(
            error(413, "body_too_large", f"requests are limited to {MAX_REQUEST_BYTES} bytes")
        )
    except OverBudget:
        return None, over_budget()
    try:
        payload = request.app.state.runtime.json_loads(body.content)
        # Escaped lone surrogates ("\ud800") parse but cannot be stored as UTF-8 text.
        dumps(payload)
        return payload, None
    except (ValueError, RecursionError):  # UnicodeError is a ValueError; deep nesting recurses
        return None, error(400, "invalid_json", "the request body is not valid JSON")
    finally:
        body.release()


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
    if isinstance(provider, str) and provider and provider not in runtime.providers:
        problems["provider"] = unknown_provider(provider, runtime)
    elif not isinstance(provider, str) or provider not in runtime.providers:
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
        adapter = runtime.providers[provider]
        if not adapter.accepts_image_data and any(i.startswith("data:") for i in images):
            problems["images"] = (
                f"{provider} takes images as http(s) URLs only, not as data: URIs "
                "(a local file); put the image at a URL the provider can fetch and pass that"
            )
        try:
            adapter.validate(request)
        except InvalidRequest as exc:
            # A field already refused for its type keeps that message, the one to act on.
            for name, problem in exc.fields.items():
                problems.setdefault(name, problem)
    if problems or not isinstance(provider, str):
        return problems
    return provider, request, notify


def unknown_provider(name: str, runtime: Runtime) -> str:
    """Why ``name`` names no provider here, and which name was likely meant."""
    configured = ", ".join(sorted(runtime.providers)) or "none"
    of_type = sorted(n for n, p in runtime.config.providers.items() if p.type == name)
    if of_type:
        which = " and ".join(of_type)
        return (
            f"{name} is a provider type, not a configured provider's name; "
            f"the configured provider of type {name} is {which}"
        )
    return f"no provider is named {name}; the configured providers are {configured}"


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
    job_id, outcome = await runtime.submit(provider_name, submit, notify)
    job = await runtime.store.job_detail(job_id)
    assert job is not None
    if outcome == "refused":
        return error(
            502,
            "provider_refused",
            f"{provider_name} refused the job: {job['error']}",
            job=runtime.render_job(job),
        )
    if outcome == "unknown":
        return error(502, "submission_outcome_unknown", job["error"], job=runtime.render_job(job))
    # pending: refused for now; the job's "submission" says when it is sent again.
    status_code = 202 if outcome == "pending" else 201
    return JSON(
        runtime.render_job(job),
        status_code=status_code,
        headers={"Location": f"/api/jobs/{job_id}"},
    )


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
    # A provider dropped from the config still lists its old jobs; a name no job ever
    # had is most likely a typo or a type.
    if (
        not jobs
        and provider is not None
        and provider not in runtime.providers
        and not await runtime.store.list_jobs(provider=provider, limit=1)
    ):
        fields = {"provider": unknown_provider(provider, runtime)}
        return error(422, "invalid_fields", "no such provider", fields=fields)
    more = len(jobs) > limit
    jobs = jobs[:limit]
    return JSON(
        {
            "jobs": [runtime.render_job(j) for j in jobs],
            "next_cursor": jobs[-1]["id"] if more else None,
        }
    )


@admin
async def get_job(request: Request) -> Response:
    runtime: Runtime = request.app.state.runtime
    job = await runtime.store.job_detail(request.path_params["job_id"])
    if job is None:
        return error(404, "unknown_job", "no job has this id")
    return JSON(runtime.render_job(job))


@admin
async def refresh_job(request: Request) -> Response:
    runtime: Runtime = request.app.state.runtime
    try:
        detail = await actions.refresh(runtime, request.path_params["job_id"])
    except Refused as refused:
        return refusal(refused)
    return JSON(runtime.render_job(detail))


@admin
async def archive_job(request: Request) -> Response:
    runtime: Runtime = request.app.state.runtime
    try:
        detail = await actions.keep_again(runtime, request.path_params["job_id"])
    except Refused as refused:
        return refusal(refused)
    return JSON(runtime.render_job(detail), status_code=202)


@admin
async def archive_summary(request: Request) -> Response:
    runtime: Runtime = request.app.state.runtime
    return JSON({"store": runtime.config.archive.store, **await runtime.store.archive_summary()})


@admin
async def archive_backfill(request: Request) -> Response:
    runtime: Runtime = request.app.state.runtime
    if not runtime.archive.enabled:
        return error(
            409, "archive_off", 'the archive is off; set [archive] store = "local" or "s3"'
        )
    lifetimes = {name: p.result_lifetime for name, p in runtime.providers.items()}
    queued = await runtime.store.backfill_downloads(lifetimes)
    return JSON({"queued": queued})


@admin
async def archive_prune(request: Request) -> Response:
    runtime: Runtime = request.app.state.runtime
    if not runtime.archive.enabled:
        return error(
            409, "archive_off", 'the archive is off; set [archive] store = "local" or "s3"'
        )
    return JSON({"pruned": await runtime.archive.worker.prune()})


@admin
async def cancel_job(request: Request) -> Response:
    """200 with the job once canceled; 202 when the provider took the request and a poll,
    due now, will tell how the job ended."""
    runtime: Runtime = request.app.state.runtime
    try:
        outcome, job = await actions.cancel(runtime, request.path_params["job_id"])
    except Refused as refused:
        return refusal(refused)
    return JSON(runtime.render_job(job), status_code=200 if outcome == "canceled" else 202)


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
    try:
        delivery = await actions.retry_delivery(runtime, _whole(request.path_params["delivery_id"]))
    except Refused as refused:
        return refusal(refused)
    return JSON(render_delivery(delivery))


@admin
async def retry_deliveries(request: Request) -> Response:
    """Every dead delivery queued again, and the channels enabled again with their held
    deliveries released: of one channel (``?channel=``) or of every configured one."""
    runtime: Runtime = request.app.state.runtime
    try:
        requeued = await actions.retry_channel(runtime, request.query_params.get("channel"))
    except Refused as refused:
        return refusal(refused)
    return JSON({"queued": requeued.total, "dead": requeued.dead, "held": requeued.held})


def refusal(refused: Refused) -> Response:
    return error(refused.status, refused.code, refused.message, **refused.extra)


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
    Route("/jobs/{job_id}/cancel", cancel_job, methods=["POST"]),
    Route("/jobs/{job_id}/archive", archive_job, methods=["POST"]),
    Route("/archive", archive_summary, methods=["GET"]),
    Route("/archive/backfill", archive_backfill, methods=["POST"]),
    Route("/archive/prune", archive_prune, methods=["POST"]),
    Route("/deliveries", list_deliveries, methods=["GET"]),
    Route("/deliveries/retry", retry_deliveries, methods=["POST"]),
    Route("/deliveries/{delivery_id}/retry", retry_delivery, methods=["POST"]),
    Route("/events", events.stream, methods=["GET"]),
]

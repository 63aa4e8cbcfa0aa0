"""/ui/deliveries: notifications that did not get through, and sending them again."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode

from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from receiver import actions
from receiver.actions import Refused
from receiver.responses import iso
from receiver.store import pages as queries
from receiver.views import render_delivery
from receiver.web import guard
from receiver.web.templating import base_path

if TYPE_CHECKING:
    from receiver.runtime import Runtime

PAGE_SIZE = 50
DONE = {
    "retried": "The delivery is queued again; its channel is enabled again.",
    "retried-all": "Every dead and held delivery of the channel is queued again.",
}


def _whole(text: str | None) -> int | None:
    return int(text) if text and text.isascii() and text.isdigit() else None


async def render(
    request: Request, *, notice: str | None = None, status_code: int = 200
) -> Response:
    runtime: Runtime = request.app.state.runtime
    params = request.query_params
    channel = params.get("channel") or None
    before = _whole(params.get("before"))
    rows = await runtime.store.read(
        queries.stuck_deliveries, channel=channel, before=before, limit=PAGE_SIZE + 1
    )
    health = await runtime.store.read(queries.channel_health)
    older = rows[PAGE_SIZE]["id"] if len(rows) > PAGE_SIZE else None
    channels: list[dict[str, Any]] = []
    for name in sorted(set(runtime.config.channels) | set(health)):
        configured = runtime.config.channels.get(name)
        state = health.get(name, {})
        channels.append(
            {
                "name": name,
                "type": configured.type if configured is not None else None,
                "pending": state.get("pending", 0),
                "dead": state.get("dead", 0),
                "held": state.get("held", 0),
                "disabled_reason": state.get("disabled_reason"),
                "disabled_iso": iso(state.get("disabled_at")),
            }
        )
    root = base_path(request)
    context = {
        "deliveries": [render_delivery(d) for d in rows[:PAGE_SIZE]],
        "channels": channels,
        "channel": channel,
        "older_link": f"{root}/ui/deliveries?"
        + urlencode({k: v for k, v in {"channel": channel, "before": older}.items() if v})
        if older is not None
        else None,
        "notice": notice,
        "done": DONE.get(params.get("done", "")),
    }
    board = guard.dashboard(request)
    return board.pages.render(request, "deliveries.html", context, status_code=status_code)


@guard.page
async def page(request: Request) -> Response:
    return await render(request)


def _back(request: Request, form: FormData, done: str) -> RedirectResponse:
    """Back where the form was sent from: a job's page or this one."""
    root = base_path(request)
    back = form.get("back")
    if isinstance(back, str) and back.startswith("/ui/jobs/") and "\\" not in back:
        target = f"{root}{quote(back)}?done=retried"
    else:
        target = f"{root}/ui/deliveries?done={done}"
    return RedirectResponse(target, status_code=303)


@guard.form
async def retry_one(request: Request, form: FormData) -> Response:
    runtime: Runtime = request.app.state.runtime
    try:
        await actions.retry_delivery(runtime, _whole(request.path_params["delivery_id"]))
    except Refused as refused:
        return await render(request, notice=refused.message, status_code=refused.status)
    return _back(request, form, "retried")


@guard.form
async def retry_channel(request: Request, form: FormData) -> Response:
    runtime: Runtime = request.app.state.runtime
    channel = form.get("channel")
    try:
        await actions.retry_channel(runtime, channel if isinstance(channel, str) else "")
    except Refused as refused:
        why = "; ".join(refused.extra.get("fields", {}).values()) or refused.message
        return await render(request, notice=f"Nothing was retried: {why}", status_code=422)
    return _back(request, form, "retried-all")

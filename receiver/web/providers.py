"""/ui/providers: how each provider is doing, as this service sees it now."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import Response

from receiver.store import pages as queries
from receiver.store.pages import by_status
from receiver.web import guard

if TYPE_CHECKING:
    from receiver.runtime import Runtime


@guard.page
async def page(request: Request) -> Response:
    runtime: Runtime = request.app.state.runtime
    board = guard.dashboard(request)
    counts = await board.job_counts()
    queues = await runtime.store.read(queries.provider_queues, runtime.store.clock())
    shown: list[dict[str, Any]] = []
    for name, provider in sorted(runtime.providers.items()):
        gate = provider.gate
        shown.append(
            {
                "name": name,
                "type": provider.config.type,
                "host": urlsplit(provider.config.base_url).netloc,
                "callbacks": provider.supports_callbacks,
                "cancel": provider.supports_cancel,
                "paused_for": gate.blocked_for,
                "in_flight": runtime.poller.in_flight(name),
                "max_concurrency": gate.max_concurrency,
                "last_error": provider.last_error,
                "queues": {
                    "polls_scheduled": 0,
                    "polls_due": 0,
                    "submissions_waiting": 0,
                    **queues.get(name, {}),
                },
                "jobs": by_status(counts, name),
            }
        )
    gone = sorted({name for name, _ in counts} - set(runtime.providers))
    context = {
        "providers": shown,
        "gone": [(name, by_status(counts, name)) for name in gone],
    }
    return board.pages.render(request, "providers.html", context)

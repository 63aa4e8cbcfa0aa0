"""A small stand-in for GET /api/events, used only by a service that has no such route.

It speaks the stream's protocol as the dashboard reads it (a ``job`` event per stored
transition, ``data`` the job's JSON, an increasing ``id``, ``?job=`` and resuming after
``Last-Event-ID``), polling the transitions table. The live browser test runs against
the service's own endpoint wherever it exists.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Mount, Route

from receiver.access import is_admin


def has_events(app: Starlette) -> bool:
    api = next(r for r in app.routes if isinstance(r, Mount) and r.path == "/api")
    return any(getattr(route, "path", None) == "/events" for route in api.routes)


def install(app: Starlette) -> None:
    api = next(r for r in app.routes if isinstance(r, Mount) and r.path == "/api")
    api.routes.append(Route("/events", events))


async def events(request: Request) -> Response:
    if not is_admin(request):
        return Response(status_code=401)
    runtime = request.app.state.runtime
    given = request.headers.get("last-event-id") or request.query_params.get("last_event_id")
    only = request.query_params.get("job")

    def newest(conn):
        return conn.execute("SELECT coalesce(max(id), 0) FROM transitions").fetchone()[0]

    def since(conn, last):
        return conn.execute(
            "SELECT id, job_id FROM transitions WHERE id > ? ORDER BY id", (last,)
        ).fetchall()

    last = int(given) if given and given.isdigit() else await runtime.store.read(newest)

    async def stream() -> AsyncIterator[bytes]:
        nonlocal last
        yield b": connected\n\n"
        while True:
            for event_id, job_id in await runtime.store.read(since, last):
                last = event_id
                if only and job_id != only:
                    continue
                job = runtime.render_job(await runtime.store.job_detail(job_id))
                data = json.dumps(job, separators=(",", ":"))
                yield f"event: job\nid: {event_id}\ndata: {data}\n\n".encode()
            await asyncio.sleep(0.1)

    return StreamingResponse(stream(), media_type="text/event-stream")

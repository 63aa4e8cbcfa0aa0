"""GET and HEAD /media/{job_id}/video and /cover: the kept files.

A signed link (``?expires=&sig=``, see ``links``) or the admin credentials open a file;
anything else is 403, before saying whether the job or the file exists. A file is served
only once its record exists, and its record is written only once the file is whole, so a
reader never sees part of a file: 404 until then. Local files are served with byte
ranges (one range; 206, or 416 past the end), an ETag from the file's sha256 and its
stored type; files in S3 are a redirect to a short-lived presigned URL.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from typing import IO, TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from receiver.api import has_admin_credentials
from receiver.media.content import KINDS
from receiver.media.ranges import Unsatisfiable, byte_range
from receiver.responses import error

if TYPE_CHECKING:
    from receiver.runtime import Runtime

log = logging.getLogger("vidhook.media")

CHUNK = 256 * 1024
CACHE = "private, max-age=3600"
REDIRECT_SECONDS = 300  # how long a presigned S3 URL we redirect to stays valid


def _headers(row: dict[str, Any]) -> dict[str, str]:
    return {
        "ETag": f'"{row["sha256"]}"',
        "Cache-Control": CACHE,
        "Accept-Ranges": "bytes",
        "Content-Disposition": f'inline; filename="{row["location"]}"',
        # The type was checked when the file was kept; browsers must not guess another.
        "X-Content-Type-Options": "nosniff",
    }


def _unchanged(request: Request, etag: str) -> bool:
    given = request.headers.get("if-none-match", "")
    return given.strip() == "*" or etag in (tag.strip() for tag in given.split(","))


async def media_file(request: Request) -> Response:
    runtime: Runtime = request.app.state.runtime
    archive = runtime.archive
    job_id: str = request.path_params["job_id"]
    kind: str = request.path_params["kind"]
    if kind not in KINDS:
        return error(404, "not_found", "media is /media/{job_id}/video or /media/{job_id}/cover")
    query = request.query_params
    signed = archive.links.verify(
        job_id, kind, query.get("expires"), query.get("sig"), runtime.store.clock()
    )
    if not signed and not has_admin_credentials(request):
        return error(
            403,
            "forbidden",
            "this media link is not valid or has expired; GET /api/jobs/{id} gives a fresh "
            "one, or send Authorization: Bearer <admin token>",
        )
    storage = archive.storage
    row = await runtime.store.kept_file(job_id, kind) if storage is not None else None
    if storage is None or row is None or row["store"] != storage.name:
        return error(404, "not_kept", f"no {kind} of this job is kept (yet)")
    headers = _headers(row)
    if _unchanged(request, headers["ETag"]):
        return Response(status_code=304, headers=headers)
    if storage.remote:
        if request.method == "HEAD":  # a presigned GET cannot answer HEAD: the record does
            return _ranged(request, None, row["bytes"], row["content_type"], headers)
        target = await storage.redirect(row["location"], REDIRECT_SECONDS)
        return Response(status_code=307, headers={"Location": target, "Cache-Control": "no-store"})
    try:
        file = await asyncio.to_thread(open, storage.path(row["location"]), "rb")
    except FileNotFoundError:
        log.error("job %s: its %s is recorded as kept but its file is missing", job_id, kind)
        return error(404, "not_kept", f"the {kind} of this job is kept but its file is missing")
    size = os.fstat(file.fileno()).st_size
    return _ranged(request, file, size, row["content_type"], headers)


def _ranged(
    request: Request,
    file: IO[bytes] | None,
    size: int,
    content_type: str,
    headers: dict[str, str],
) -> Response:
    """The answer for the range asked for; ``file`` (None for HEAD only) is closed after."""
    if_range = request.headers.get("if-range")
    asked = request.headers.get("range") if if_range in (None, headers["ETag"]) else None
    try:
        first_last = byte_range(asked, size)
    except Unsatisfiable:
        if file is not None:
            file.close()
        refused = error(416, "range_not_satisfiable", f"the file has {size} bytes")
        refused.headers["Content-Range"] = f"bytes */{size}"
        return refused
    first, last = first_last or (0, size - 1)
    length = max(0, last - first + 1)
    headers["Content-Length"] = str(length)
    status = 200
    if first_last is not None:
        status = 206
        headers["Content-Range"] = f"bytes {first}-{last}/{size}"
    if request.method == "HEAD" or file is None:
        if file is not None:
            file.close()
        return Response(status_code=status, headers=headers, media_type=content_type)
    return StreamingResponse(
        _chunks(file, first, length), status_code=status, headers=headers, media_type=content_type
    )


async def _chunks(file: IO[bytes], start: int, length: int) -> AsyncIterator[bytes]:
    try:
        await asyncio.to_thread(file.seek, start)
        left = length
        while left > 0:
            chunk = await asyncio.to_thread(file.read, min(CHUNK, left))
            if not chunk:
                break
            left -= len(chunk)
            yield chunk
    finally:
        file.close()


routes = [Route("/{job_id}/{kind}", media_file, methods=["GET", "HEAD"])]

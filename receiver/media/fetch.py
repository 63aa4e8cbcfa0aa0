"""Fetching one result to a temporary file: streamed, hashed as it arrives, checked.

Redirects are followed by hand, at most ``max_redirects`` of them, so that each hop is
checked like the first (an http(s) URL; the address, by the transport's GuardedBackend)
and the provider's credentials go only to the origin they were given for. The type is
checked before the first byte is written, the size on every chunk: a result that is not
a video (or, for a cover, an image), or that grows past ``max_bytes``, leaves nothing
behind. Writing and hashing run on a thread while the next megabyte arrives, so neither
holds up the event loop and no more than two blocks of a file are ever in memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Literal

import httpx

from receiver.media.content import SNIFF_BYTES, declared_ok, media_type, sniff
from receiver.media.hosts import RefusedHost
from receiver.providers.base import Download, is_transient_status, retry_after_seconds

Kind = Literal["transient", "gone", "permanent"]
MAX_REDIRECTS = 5
BLOCK = 1024 * 1024
GONE_STATUSES = (403, 404, 410)
_REDIRECTS = (301, 302, 303, 307, 308)


class FetchError(Exception):
    """Why a result was not fetched: ``transient`` (try again later), ``gone`` (the link
    answered 403, 404 or 410) or ``permanent`` (it never will be, as it is)."""

    def __init__(
        self,
        message: str,
        *,
        kind: Kind,
        status_code: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.kind = kind
        self.status_code = status_code
        self.retry_after = retry_after


@dataclass(frozen=True)
class Fetched:
    path: Path  # the temporary file, whole and flushed to disk
    size: int
    sha256: str
    content_type: str


def origin(url: httpx.URL) -> tuple[str, str, int | None]:
    default = {"http": 80, "https": 443}.get(url.scheme)
    return url.scheme, url.host, url.port or default


class Fetcher:
    def __init__(
        self,
        client: httpx.AsyncClient,
        staging: Path,
        *,
        max_bytes: int,
        max_redirects: int = MAX_REDIRECTS,
    ) -> None:
        self.client = client
        self.staging = staging
        self.max_bytes = max_bytes
        self.max_redirects = max_redirects

    async def fetch(self, download: Download, kind: str, name: str) -> Fetched:
        """Fetch ``download`` as a ``kind`` (video or cover) into a file named after ``name``.

        Raises FetchError; the temporary file is then gone.
        """
        try:
            url = httpx.URL(download.url)
        except httpx.InvalidURL:
            raise FetchError("the result URL is not a valid URL", kind="permanent") from None
        first = origin(url)
        for _hop in range(self.max_redirects + 1):
            if url.scheme not in ("http", "https") or not url.host:
                raise FetchError(
                    f"the result URL must be http(s), not {url.scheme or 'relative'}",
                    kind="permanent",
                )
            # Credentials belong to the origin they were given for, never to a redirect
            # target elsewhere (a CDN, or whoever the provider was made to redirect to).
            headers = dict(download.headers) if origin(url) == first else {}
            response = await self._send(url, headers)
            try:
                if response.status_code in _REDIRECTS and "location" in response.headers:
                    try:
                        url = url.join(response.headers["location"])
                    except httpx.InvalidURL:
                        raise FetchError(
                            f"{url.host} redirected to an invalid URL", kind="permanent"
                        ) from None
                    continue
                self._check_status(url, response)
                return await self._save(url, response, kind, name)
            finally:
                await response.aclose()
        raise FetchError(f"more than {self.max_redirects} redirects", kind="permanent")

    async def _send(self, url: httpx.URL, headers: dict[str, str]) -> httpx.Response:
        request = self.client.build_request("GET", url, headers=headers)
        try:
            return await self.client.send(request, stream=True, follow_redirects=False)
        except RefusedHost as exc:
            raise FetchError(str(exc), kind="permanent") from None
        except httpx.TimeoutException:
            raise FetchError(f"{url.host} timed out", kind="transient") from None
        except (httpx.UnsupportedProtocol, httpx.InvalidURL):
            raise FetchError(f"{url.host} cannot be fetched over HTTP", kind="permanent") from None
        except httpx.HTTPError as exc:
            raise FetchError(
                f"could not reach {url.host} ({exc.__class__.__name__})", kind="transient"
            ) from None

    def _check_status(self, url: httpx.URL, response: httpx.Response) -> None:
        status = response.status_code
        if status == 200:
            return
        message = f"{url.host} answered HTTP {status}"
        if status in GONE_STATUSES:
            raise FetchError(message, kind="gone", status_code=status)
        if is_transient_status(status):
            retry_after = retry_after_seconds(response.headers.get("retry-after"))
            raise FetchError(message, kind="transient", status_code=status, retry_after=retry_after)
        raise FetchError(message, kind="permanent", status_code=status)

    def _too_large(self) -> FetchError:
        return FetchError(
            f"the result is larger than [archive] max_bytes ({self.max_bytes} bytes); not kept",
            kind="permanent",
        )

    async def _save(
        self, url: httpx.URL, response: httpx.Response, kind: str, name: str
    ) -> Fetched:
        declared = media_type(response.headers.get("content-type"))
        fits = declared_ok(kind, declared)
        wanted = "a video" if kind == "video" else "an image"
        if fits is False:
            raise FetchError(f"{url.host} served {declared}, not {wanted}", kind="permanent")
        length = response.headers.get("content-length", "")
        if length.isdigit() and int(length) > self.max_bytes:
            raise self._too_large()
        self.staging.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(dir=self.staging, prefix=f"{name}.", suffix=".partial")
        sink = _Sink(os.fdopen(fd, "wb"))
        try:
            content_type = declared if fits else None
            # Chunks as they arrive, handed to the thread a megabyte at a time: no copy.
            block: list[bytes] = []
            block_size = received = 0
            writing: asyncio.Future[None] | None = None
            loop = asyncio.get_running_loop()
            try:
                async for chunk in response.aiter_bytes():
                    received += len(chunk)
                    if received > self.max_bytes:
                        raise self._too_large()
                    block.append(chunk)
                    block_size += len(chunk)
                    if content_type is None and received >= SNIFF_BYTES:
                        content_type = self._sniffed(url, kind, declared, b"".join(block))
                    if block_size >= BLOCK:
                        if writing is not None:
                            await writing
                        writing = loop.run_in_executor(None, sink.write, block)
                        block, block_size = [], 0
            except httpx.TimeoutException:
                raise FetchError(f"{url.host} stopped sending", kind="transient") from None
            except httpx.HTTPError as exc:
                raise FetchError(
                    f"the download from {url.host} broke off ({exc.__class__.__name__})",
                    kind="transient",
                ) from None
            finally:
                if writing is not None:
                    await writing
            if content_type is None:
                content_type = self._sniffed(url, kind, declared, b"".join(block))
            await loop.run_in_executor(None, sink.finish, block)
        except BaseException:
            sink.abandon()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)
            raise
        return Fetched(Path(temp), sink.size, sink.hash.hexdigest(), content_type)

    @staticmethod
    def _sniffed(url: httpx.URL, kind: str, declared: str, head: bytes) -> str:
        found = sniff(kind, head[:SNIFF_BYTES])
        if found is None:
            what = "a video" if kind == "video" else "an image"
            raise FetchError(
                f"{url.host} served {declared or 'an untyped file'} whose first bytes are "
                f"not {what}",
                kind="permanent",
            )
        return found


class _Sink:
    """The file being written, and the hash of what was written; used on one thread at a
    time (each write is awaited before the next is handed over)."""

    def __init__(self, file: IO[bytes]) -> None:
        self.file = file
        self.hash = hashlib.sha256()
        self.size = 0

    def write(self, chunks: list[bytes]) -> None:
        for chunk in chunks:
            self.hash.update(chunk)
            self.file.write(chunk)
            self.size += len(chunk)

    def finish(self, chunks: list[bytes]) -> None:
        """The last bytes, then flushed to disk: the file is whole before anyone records it."""
        self.write(chunks)
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()

    def abandon(self) -> None:
        with contextlib.suppress(OSError):
            self.file.close()

"""The HTTP client outgoing requests go through: httpx's API on aiohttp's connections.

Adapters, channels and the archive speak httpx (``httpx.AsyncClient``, ``httpx.Response``,
httpx's exceptions), and tests hand them an ``httpx.MockTransport``. Under that API the
connections are aiohttp's: httpx's own transport (httpcore) spent most of a poll's CPU
on its pool's bookkeeping, and httpx's client most of the rest (bench/README.md,
"Outgoing requests").

``AiohttpTransport`` keeps what the rest of vidhook relies on:

- httpx's timeouts: ``connect`` for making a connection, ``pool`` for waiting for one
  (and, as aiohttp counts, for the whole of getting one), ``read`` between two reads of
  the answer; aiohttp has no write timeout, so a request with a body must have its
  answer's head within the sum of all four: a peer that stops reading the body cannot
  hold it forever;
- which failures came before a byte was sent (``httpx.ConnectError``,
  ``httpx.ConnectTimeout``: no connection was made, or none came from the pool) and
  which may have come after the peer got the request (every other one): whether a
  submission may be sent again rests on it (``ProviderError.sent``);
- no redirects, cookies, proxies or decompression of its own: httpx's client does each
  as before, and the headers sent are exactly the ones httpx put on the request;
- a request is sent once, but for one thing aiohttp adds: an idempotent request (GET,
  PUT, DELETE) whose connection fails once it was written is sent once more, on a new
  connection, as HTTP allows (a poll or a cancel; never a submission, a POST);
- TLS verified with httpx's own context (certifi, or SSL_CERT_FILE / SSL_CERT_DIR);
- answers streamed as they arrive, aiohttp's flow control bounding what is buffered;
- at debug level, a line a request with its method, origin and outcome, never its path
  or query, which can hold a secret.

``ServiceClient.request`` sends the requests vidhook makes (a method, an absolute URL,
params, headers, a JSON or bytes body, a timeout) straight to its transport, with the
request and the answer httpx's client would have made, and leaves any other request to
httpx's client.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
import urllib.request
from collections.abc import AsyncIterator, Callable, Mapping
from datetime import timedelta
from typing import Any

import aiohttp
import httpx
from aiohttp.abc import AbstractResolver
from yarl import URL

log = logging.getLogger("vidhook.http")

SocketFactory = Callable[[Any], Any]

# httpx's own defaults, the pool the service's requests had before.
LIMITS = httpx.Limits(max_connections=100, max_keepalive_connections=20, keepalive_expiry=5.0)
_UNLIMITED = aiohttp.ClientTimeout(total=None, connect=None, sock_read=None, sock_connect=None)
# What ServiceClient.request sends itself; any other option goes through httpx's client.
_DIRECT = frozenset({"content", "json", "params", "headers", "timeout"})


class _Request(aiohttp.ClientRequest):
    # Without a body aiohttp writes "Content-Length: 0" for every method but these, and
    # httpx for POST, PUT and PATCH only: with DELETE here, the head is httpx's.
    GET_METHODS = aiohttp.ClientRequest.GET_METHODS | {"DELETE"}


class AiohttpTransport(httpx.AsyncBaseTransport):
    """An httpx transport whose connections are made and kept by an aiohttp session.

    The session is made on first use, on the running loop. ``resolver`` and
    ``socket_factory`` go to aiohttp's connector (the archive checks every address
    there); an exception of a ``passthrough`` type that stopped a connection comes out
    as itself rather than as ``httpx.ConnectError``.
    """

    def __init__(
        self,
        *,
        limits: httpx.Limits = LIMITS,
        ssl_context: ssl.SSLContext | None = None,
        trust_env: bool = True,
        resolver: AbstractResolver | None = None,
        socket_factory: SocketFactory | None = None,
        passthrough: tuple[type[OSError], ...] = (),
    ) -> None:
        self.limits = limits
        self.ssl_context = ssl_context or httpx.create_ssl_context(trust_env=trust_env)
        self.resolver = resolver
        self.socket_factory = socket_factory
        self.passthrough = passthrough
        self._session: aiohttp.ClientSession | None = None
        self._timeouts: dict[tuple[float | None, ...], aiohttp.ClientTimeout] = {}

    def _open(self) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(
            limit=self.limits.max_connections or 0,
            keepalive_timeout=self.limits.keepalive_expiry,
            ssl=self.ssl_context,
            resolver=self.resolver,
            socket_factory=self.socket_factory,
        )
        return aiohttp.ClientSession(
            connector=connector,
            # httpx's client keeps the cookies (the archive's, none): aiohttp keeps none.
            cookie_jar=aiohttp.DummyCookieJar(),
            timeout=_UNLIMITED,
            auto_decompress=False,
            # The headers are httpx's: aiohttp adds no Content-Type or User-Agent of its own.
            skip_auto_headers=("Content-Type", "User-Agent", "Accept", "Accept-Encoding"),
            trust_env=False,
            request_class=_Request,
            # A head h11 (httpx's own transport) takes: up to 16 KiB, a line as long.
            max_line_size=16384,
            max_field_size=16384,
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        if url.scheme not in ("http", "https"):
            raise httpx.UnsupportedProtocol(
                f"Request URL has an unsupported protocol '{url.scheme}://'.", request=request
            )
        if not url.host:
            raise httpx.UnsupportedProtocol("Request URL is missing a host.", request=request)
        session = self._session
        if session is None:
            session = self._session = self._open()
        timeouts: Mapping[str, float | None] = request.extensions.get("timeout", {})
        headers = request.headers
        body: bytes | AsyncIterator[bytes] | None
        try:
            body = request.content or None
        except httpx.RequestNotRead:
            body = _chunks(request.stream)
            headers = headers.copy()
            headers.pop("transfer-encoding", None)  # aiohttp frames it itself
        try:
            # Without a body there is nothing to write: connect, pool and read cover it all.
            async with asyncio.timeout(None if body is None else _head_deadline(timeouts)):
                answer = await session.request(
                    request.method,
                    URL(str(url), encoded=True),
                    headers=_as_sent(headers),
                    data=body,
                    allow_redirects=False,
                    timeout=self._client_timeout(timeouts),
                )
        except (aiohttp.ClientError, TimeoutError) as exc:
            own = _cause(exc, self.passthrough)
            failure = own if own is not None else _translate(exc, request)
            # The origin only: a path or a query can hold a secret (a Slack webhook's).
            log.debug("%s %s: %s", request.method, _origin(url), failure.__class__.__name__)
            if own is not None:
                raise own from None
            raise failure from exc
        log.debug("%s %s: HTTP %d", request.method, _origin(url), answer.status)
        return httpx.Response(
            status_code=answer.status,
            headers=answer.raw_headers,
            stream=_Body(answer, request),
            request=request,
            extensions={
                "http_version": b"HTTP/1.1",
                "reason_phrase": (answer.reason or "").encode("latin-1", "replace"),
            },
        )

    def _client_timeout(self, timeouts: Mapping[str, float | None]) -> aiohttp.ClientTimeout:
        connect, read, pool = timeouts.get("connect"), timeouts.get("read"), timeouts.get("pool")
        made = self._timeouts.get((connect, read, pool))
        if made is None:
            made = self._timeouts[(connect, read, pool)] = aiohttp.ClientTimeout(
                total=None,
                # aiohttp's connect bounds the wait for a pooled connection and the making
                # of a new one together, so a new one must also be made within ``pool``
                # (vidhook's timeouts give both the same value).
                connect=pool,
                sock_connect=connect,
                sock_read=read,
            )
        return made

    async def aclose(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()


class _Body(httpx.AsyncByteStream):
    """An answer's body as aiohttp receives it; its failures become httpx's."""

    def __init__(self, answer: aiohttp.ClientResponse, request: httpx.Request) -> None:
        self.answer = answer
        self.request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        content = self.answer.content
        try:
            while chunk := await content.readany():
                yield chunk
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _translate(exc, self.request, reading=True) from exc

    async def aclose(self) -> None:
        # Back to the pool when the body was read to its end, closed otherwise.
        self.answer.release()


def _origin(url: httpx.URL) -> str:
    return f"{url.scheme}://{url.host}" + ("" if url.port is None else f":{url.port}")


def _as_sent(headers: httpx.Headers) -> list[tuple[str, str]]:
    # The names as httpx was given them: aiohttp writes them as they come.
    encoding = headers.encoding
    return [(name.decode(encoding), value.decode(encoding)) for name, value in headers.raw]


async def _chunks(stream: httpx.AsyncByteStream | httpx.SyncByteStream) -> AsyncIterator[bytes]:
    assert isinstance(stream, httpx.AsyncByteStream)
    async for chunk in stream:
        yield chunk


def _head_deadline(timeouts: Mapping[str, float | None]) -> float | None:
    total = 0.0
    for name in ("connect", "pool", "write", "read"):
        part = timeouts.get(name)
        if part is None:
            return None
        total += part
    return total


def _translate(exc: BaseException, request: httpx.Request, *, reading: bool = False) -> Exception:
    """aiohttp's failure as the httpx exception that says the same about the request."""
    message = str(exc) or exc.__class__.__name__
    # Before anything was sent: no connection was made, or none came from the pool.
    if isinstance(exc, aiohttp.ClientConnectorError):
        return httpx.ConnectError(message, request=request)
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return httpx.ConnectTimeout(message, request=request)
    if isinstance(exc, aiohttp.InvalidURL | aiohttp.NonHttpUrlClientError):
        return httpx.UnsupportedProtocol(message, request=request)
    # Any other failure may have come after the peer got the request.
    if isinstance(exc, aiohttp.SocketTimeoutError) or (reading and isinstance(exc, TimeoutError)):
        return httpx.ReadTimeout(message, request=request)
    if isinstance(exc, TimeoutError):
        return httpx.WriteTimeout(
            "the request was not sent and answered within its timeouts", request=request
        )
    if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientResponseError):
        return httpx.RemoteProtocolError(message, request=request)
    if isinstance(exc, aiohttp.ClientPayloadError):
        return httpx.RemoteProtocolError(message, request=request)
    return httpx.ReadError(message, request=request)


def _cause(exc: BaseException, types: tuple[type[OSError], ...]) -> OSError | None:
    """The exception of one of ``types`` that ``exc`` came from, if any."""
    seen: BaseException | None = exc if types else None
    while seen is not None:
        if isinstance(seen, types):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _direct(option: tuple[str, Any]) -> bool:
    """Whether ServiceClient.request can send a request with this option itself."""
    name, value = option
    if name in _DIRECT or value is None or value is httpx.USE_CLIENT_DEFAULT:
        return True
    return name == "follow_redirects" and value is False


class ServiceClient(httpx.AsyncClient):
    """The client of provider adapters, notification channels and key fetches.

    Redirects are never followed. ``request`` (and so ``get`` and ``post``) sends what
    vidhook sends through the transport without httpx's client machinery (auth flows,
    redirects, event hooks, merging a base URL), none of which vidhook uses: the request
    is built the same way, with the client's default headers, cookies are kept as httpx
    keeps them, and the answer is read whole. That machinery cost ~85 us a request,
    close to aiohttp's whole request (bench/README.md).
    """

    def __init__(self, transport: httpx.AsyncBaseTransport) -> None:
        super().__init__(transport=transport, follow_redirects=False)
        self.transport = transport

    async def request(self, method: str, url: httpx.URL | str, **options: Any) -> httpx.Response:
        if (
            not all(map(_direct, options.items()))
            or self.cookies
            or self.is_closed
            or any(self.event_hooks.values())
        ):
            return await super().request(method, url, **options)
        timeout = options.pop("timeout", httpx.USE_CLIENT_DEFAULT)
        if not isinstance(timeout, httpx.Timeout):
            timeout = (
                self.timeout if timeout is httpx.USE_CLIENT_DEFAULT else httpx.Timeout(timeout)
            )
        headers = self.headers.copy()
        if options.get("headers"):
            headers.update(options["headers"])
        request = httpx.Request(
            method,
            url,
            params=options.get("params"),
            headers=headers,
            content=options.get("content"),
            json=options.get("json"),
            extensions={"timeout": timeout.as_dict()},
        )
        started = time.perf_counter()
        try:
            response = await self.transport.handle_async_request(request)
        except httpx.RequestError as exc:
            exc.request = request
            raise
        response.request = request
        if "set-cookie" in response.headers:
            self.cookies.extract_cookies(response)
        try:
            await response.aread()
        except BaseException:
            await response.aclose()
            raise
        response.elapsed = timedelta(seconds=time.perf_counter() - started)
        return response


def proxies_from_environment() -> bool:
    """Whether HTTP_PROXY, HTTPS_PROXY or ALL_PROXY asks for a proxy (NO_PROXY=* does not)."""
    found = urllib.request.getproxies()
    if "*" in (host.strip() for host in found.get("no", "").split(",")):
        return False
    return any(found.get(scheme) for scheme in ("http", "https", "all"))


def service_client(transport: httpx.AsyncBaseTransport | None = None) -> httpx.AsyncClient:
    """The client of providers, channels and key fetches: redirects are never followed.

    With a proxy in the environment, httpx's own client and transport, which honour it
    as vidhook always has (aiohttp's session would also take credentials from ~/.netrc).
    """
    if transport is None:
        if proxies_from_environment():
            return httpx.AsyncClient(follow_redirects=False)
        transport = AiohttpTransport()
    return ServiceClient(transport)

"""The service's HTTP client against real servers on loopback: what it sends, and what each
way a request can fail says about whether the peer got it."""

from __future__ import annotations

import asyncio
import datetime
import gzip
import ipaddress
import ssl
import threading
import time
from collections.abc import Awaitable, Callable

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from receiver.config import ProviderConfig, Secret
from receiver.http import AiohttpTransport, ServiceClient, service_client
from receiver.providers.base import UNSENT, ProviderError
from receiver.providers.kvid import Kvid
from tests.conftest import free_port

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class RawServer:
    """A TCP server on its own thread and loop, speaking whatever ``handler`` writes."""

    def __init__(self, handler: Handler, ssl_context: ssl.SSLContext | None = None) -> None:
        self.handler = handler
        self.ssl_context = ssl_context
        self.requests: list[tuple[str, dict[str, str], bytes]] = []
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> RawServer:
        self.thread.start()
        self.server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.ssl_context), self.loop
        ).result(5)
        self.port = self.server.sockets[0].getsockname()[1]
        scheme = "https" if self.ssl_context else "http"
        self.url = f"{scheme}://127.0.0.1:{self.port}"
        return self

    def __exit__(self, *exc: object) -> None:
        async def close() -> None:
            self.server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        asyncio.run_coroutine_threadsafe(close(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await self.handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def read_request(self, reader: asyncio.StreamReader) -> tuple[str, dict[str, str], bytes]:
        """One request, body and all; recorded."""
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        headers = dict(line.split(": ", 1) for line in head[1:] if line)
        length = int(headers.get("Content-Length", "0"))
        request = (head[0], headers, await reader.readexactly(length))
        self.requests.append(request)
        return request


def answer(status: int, body: bytes = b"{}", *extra: str) -> bytes:
    head = [f"HTTP/1.1 {status} X", f"Content-Length: {len(body)}", *extra]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def run(coro: Awaitable[object]) -> object:
    return asyncio.run(coro)  # type: ignore[arg-type]


def kvid(base_url: str, client: httpx.AsyncClient, timeout: float = 5) -> Kvid:
    config = ProviderConfig("kvid", "kvid", base_url, Secret("key"), timeout=timeout)
    return Kvid(config, client)


def provider_error(base_url: str, *, timeout: float = 5, body: object = None) -> ProviderError:
    async def go() -> ProviderError:
        async with service_client() as client:
            with pytest.raises(ProviderError) as raised:
                await kvid(base_url, client, timeout).request_json(
                    "POST", "/x", key=Secret("key"), json=body or {}
                )
        return raised.value

    return run(go())  # type: ignore[return-value]


def test_the_service_talks_through_aiohttp():
    client = service_client()
    assert isinstance(client, ServiceClient) and isinstance(client.transport, AiohttpTransport)
    assert not client.follow_redirects
    run(client.aclose())


def test_a_refused_connection_was_not_sent():
    error = provider_error(f"http://127.0.0.1:{free_port()}")
    assert error.transient and not error.sent and not error.may_have_acted
    assert "ConnectError" in error.message


def test_a_read_timeout_after_the_body_was_sent_may_have_acted():
    async def silent(reader, writer):
        await server.read_request(reader)
        await asyncio.sleep(30)

    with RawServer(silent) as server:
        started = time.monotonic()
        error = provider_error(server.url, timeout=0.5, body={"prompt": "a cat"})
        took = time.monotonic() - started
    assert error.transient and error.sent and error.may_have_acted
    assert "timed out" in error.message and took < 5
    assert [body for _, _, body in server.requests] == [b'{"prompt":"a cat"}']


def test_a_connection_dropped_after_the_body_was_sent_may_have_acted():
    async def hang_up(reader, writer):
        await server.read_request(reader)

    with RawServer(hang_up) as server:
        error = provider_error(server.url)
    assert error.transient and error.sent and error.may_have_acted
    assert len(server.requests) == 1


def test_a_request_that_waited_past_the_pool_timeout_was_not_sent():
    async def slow(reader, writer):
        while True:
            await server.read_request(reader)
            await asyncio.sleep(1.0)
            writer.write(answer(200))

    async def go() -> BaseException:
        transport = AiohttpTransport(limits=httpx.Limits(max_connections=1))
        async with ServiceClient(transport) as client:
            first = asyncio.create_task(client.get(f"{server.url}/first", timeout=5))
            await asyncio.sleep(0.2)  # the one connection is taken
            with pytest.raises(httpx.TransportError) as raised:
                await client.get(f"{server.url}/second", timeout=httpx.Timeout(5, pool=0.2))
            assert (await first).status_code == 200
        return raised.value

    with RawServer(slow) as server:
        failure = run(go())
    assert isinstance(failure, UNSENT)
    assert [line for line, _, _ in server.requests] == ["GET /first HTTP/1.1"]


def test_a_peer_that_stops_reading_cannot_hold_a_request_forever():
    async def deaf(reader, writer):
        await asyncio.sleep(30)

    async def go() -> BaseException:
        async with service_client() as client:
            with pytest.raises(httpx.TimeoutException) as raised:
                # More than the kernel's buffers on both ends hold.
                await client.post(server.url, content=b"x" * 64_000_000, timeout=0.3)
        return raised.value

    with RawServer(deaf) as server:
        started = time.monotonic()
        failure = run(go())
        took = time.monotonic() - started
    assert isinstance(failure, httpx.WriteTimeout) and not isinstance(failure, UNSENT)
    assert took < 5


def test_redirects_are_answers_not_followed():
    async def redirect(reader, writer):
        while True:
            await server.read_request(reader)
            writer.write(answer(302, b"", "Location: /elsewhere"))

    async def go() -> httpx.Response:
        async with service_client() as client:
            return await client.get(f"{server.url}/here")

    with RawServer(redirect) as server:
        response = run(go())
    assert response.status_code == 302  # type: ignore[attr-defined]
    assert len(server.requests) == 1


def test_what_goes_on_the_wire_is_what_httpx_sends():
    async def ok(reader, writer):
        while True:
            await server.read_request(reader)
            writer.write(answer(200))

    async def calls(client: httpx.AsyncClient) -> None:
        url = f"{server.url}/x"
        await client.get(url, params={"jobId": "a b&c"}, headers={"api-key": "k"})
        await client.post(url, json={"prompt": "é"}, headers={"Authorization": "Bearer t"})
        await client.post(url, content=b"raw", headers={"User-Agent": "vidhook"})
        await client.request("DELETE", url, timeout=3)
        await client.aclose()

    with RawServer(ok) as server:
        run(calls(httpx.AsyncClient()))
        stock = list(server.requests)
        server.requests.clear()
        run(calls(service_client()))
    assert server.requests == stock
    assert len(stock) == 4 and "Content-Type" not in stock[2][1]


def test_a_compressed_answer_is_decoded():
    body = gzip.compress(b'{"status": "processing"}')

    async def gzipped(reader, writer):
        await server.read_request(reader)
        writer.write(answer(200, body, "Content-Encoding: gzip"))

    async def go() -> object:
        async with service_client() as client:
            return (await client.get(server.url)).json()

    with RawServer(gzipped) as server:
        assert run(go()) == {"status": "processing"}


def test_an_answer_is_streamed_as_it_arrives():
    """The server sends the rest only once the client has the first megabyte."""
    first_seen = threading.Event()
    block = b"v" * 1_048_576

    async def halves(reader, writer):
        await server.read_request(reader)
        writer.write(answer(200, block * 2)[: -len(block)])
        await writer.drain()
        await asyncio.get_running_loop().run_in_executor(None, first_seen.wait, 10)
        writer.write(block)
        await writer.drain()

    async def go() -> list[int]:
        sizes: list[int] = []
        async with service_client() as client, client.stream("GET", server.url) as response:
            async for chunk in response.aiter_raw():
                sizes.append(len(chunk))
                if sum(sizes) >= len(block):
                    first_seen.set()
        return sizes

    with RawServer(halves) as server:
        sizes = run(go())
    assert sum(sizes) == 2 * len(block)  # type: ignore[arg-type]
    assert max(sizes) <= len(block)  # type: ignore[arg-type]


def self_signed() -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def test_certificates_are_verified(tmp_path):
    cert, key = self_signed()
    (tmp_path / "cert.pem").write_bytes(cert)
    (tmp_path / "key.pem").write_bytes(key)
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")

    async def ok(reader, writer):
        await server.read_request(reader)
        writer.write(answer(200))
        await writer.drain()

    async def go(transport: AiohttpTransport | None) -> int:
        async with service_client(transport) as client:
            return (await client.get(server.url)).status_code

    with RawServer(ok, server_context) as server:
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            run(go(None))  # the default client: certifi's authorities
        trusting = ssl.create_default_context(cadata=cert.decode())
        assert run(go(AiohttpTransport(ssl_context=trusting))) == 200
    assert len(server.requests) == 1


def test_a_proxy_in_the_environment_is_used_as_before(monkeypatch):
    for name in ("HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "https_proxy", "all_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)

    async def proxy(reader, writer):
        await server.read_request(reader)
        writer.write(answer(200, b'{"via": "proxy"}'))

    async def go() -> object:
        async with service_client() as client:
            return (await client.get("http://provider.invalid/status")).json()

    with RawServer(proxy) as server:
        monkeypatch.setenv("HTTP_PROXY", server.url)
        monkeypatch.setenv("http_proxy", server.url)
        assert not isinstance(service_client(), ServiceClient)
        assert run(go()) == {"via": "proxy"}
        assert server.requests[0][0] == "GET http://provider.invalid/status HTTP/1.1"
        monkeypatch.setenv("NO_PROXY", "*")
        monkeypatch.setenv("no_proxy", "*")
        assert isinstance(service_client(), ServiceClient)


def recording(seen: list[httpx.Request]) -> httpx.MockTransport:
    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        cookie = "Set-Cookie: session=s1; Path=/" if request.url.path == "/login" else None
        headers = {"Set-Cookie": cookie.split(": ", 1)[1]} if cookie else {}
        return httpx.Response(200, json={"path": request.url.path}, headers=headers)

    return httpx.MockTransport(handler)


def test_the_direct_way_builds_the_request_httpx_builds():
    async def calls(client: httpx.AsyncClient) -> list[object]:
        base = "https://provider.test"
        answers = [
            await client.get(f"{base}/status", params={"id": "a b"}, headers={"api-key": "k"}),
            await client.post(f"{base}/submit", json={"prompt": "é"}, timeout=7),
            await client.post(f"{base}/hook", content=b"{}", headers={"User-Agent": "vidhook"}),
            await client.request("PUT", f"{base}/x?y=1", params={"z": "2"}, timeout=None),
            await client.get(f"{base}/login"),
            await client.get(f"{base}/after"),  # with the cookie the login set
            await client.post(f"{base}/form", data={"a": "b"}),  # httpx's own way
        ]
        await client.aclose()
        return [(a.status_code, a.json(), a.request.url) for a in answers]  # type: ignore[attr-defined]

    stock: list[httpx.Request] = []
    direct: list[httpx.Request] = []
    stock_answers = run(calls(httpx.AsyncClient(transport=recording(stock))))
    direct_answers = run(calls(ServiceClient(recording(direct))))
    assert direct_answers == stock_answers

    def shape(request: httpx.Request) -> tuple[object, ...]:
        return (request.method, request.url, request.headers.raw, request.content,
                request.extensions["timeout"])  # fmt: skip

    assert [shape(r) for r in direct] == [shape(r) for r in stock]
    assert direct[5].headers["cookie"] == "session=s1"


def test_an_error_from_the_transport_names_its_request():
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused")

    async def go() -> httpx.ConnectError:
        async with ServiceClient(httpx.MockTransport(refuse)) as client:
            with pytest.raises(httpx.ConnectError) as raised:
                await client.get("https://provider.test/status")
        return raised.value

    error = run(go())
    assert error.request.url == "https://provider.test/status"  # type: ignore[attr-defined]


def test_a_long_header_in_an_answer_is_taken_as_httpx_took_it():
    cookie = "c=" + "x" * 12_000  # past aiohttp's default of 8,190 bytes a field

    async def long_header(reader, writer):
        while True:
            await server.read_request(reader)
            writer.write(answer(200, b"{}", f"Set-Cookie: {cookie}"))

    async def go(client: httpx.AsyncClient) -> int:
        async with client:
            return (await client.get(server.url)).status_code

    with RawServer(long_header) as server:
        assert run(go(httpx.AsyncClient())) == 200
        assert run(go(service_client())) == 200


def test_only_an_idempotent_request_is_sent_again_after_its_connection_dropped():
    async def hang_up(reader, writer):
        await server.read_request(reader)

    async def go(method: str) -> type[BaseException]:
        async with service_client() as client:
            with pytest.raises(httpx.TransportError) as raised:
                await client.request(method, f"{server.url}/{method.lower()}")
        return raised.type

    with RawServer(hang_up) as server:
        assert run(go("POST")) is httpx.RemoteProtocolError
        assert run(go("GET")) is httpx.RemoteProtocolError
    assert [line.split()[1] for line, _, _ in server.requests] == ["/post", "/get", "/get"]


def test_the_debug_log_names_the_origin_never_the_path(caplog):
    async def ok(reader, writer):
        await server.read_request(reader)
        writer.write(answer(204, b""))

    async def go() -> None:
        async with service_client() as client:
            await client.post(f"{server.url}/services/T0/B0/webhook-secret?token=s3cret")
            with pytest.raises(httpx.ConnectError):
                await client.get(f"http://127.0.0.1:{free_port()}/hooks/another-secret")

    caplog.set_level("DEBUG", logger="vidhook.http")
    with RawServer(ok) as server:
        run(go())
    lines = [r.getMessage() for r in caplog.records if r.name == "vidhook.http"]
    assert lines[0] == f"POST {server.url}: HTTP 204"
    assert lines[1].startswith("GET http://127.0.0.1:") and lines[1].endswith(": ConnectError")
    assert not any("secret" in line for line in lines)

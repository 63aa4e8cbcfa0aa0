"""Behind a proxy: forwarding headers from trusted proxies only, Host checks, a path prefix."""

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from receiver.app import AccessLog, create_app
from receiver.callbacks import received_url
from receiver.proxy import AllowedHosts, PathPrefix, host_name
from tests.conftest import service_config


async def whoami(request: Request):
    return JSONResponse(
        {"url": str(request.url), "client": request.client.host, "path": request.url.path}
    )


def app(prefix="/vidhook", hosts=("hooks.example.com", "localhost"), proxies=("127.0.0.1",)):
    inner = Starlette(routes=[Route("/who", whoami)])
    inner.add_middleware(PathPrefix, prefix=prefix)
    inner.add_middleware(AllowedHosts, hosts=hosts)
    inner.add_middleware(ProxyHeadersMiddleware, trusted_hosts=list(proxies))
    return inner


async def ask(application, path, headers, client=("127.0.0.1", 5000)):
    transport = httpx.ASGITransport(app=application, client=client)
    async with httpx.AsyncClient(transport=transport, base_url="http://internal") as http:
        return await http.get(path, headers=headers)


def call(application, path, headers, client=("127.0.0.1", 5000)):
    import asyncio

    return asyncio.run(ask(application, path, headers, client))


FORWARDED = {"host": "hooks.example.com", "x-forwarded-proto": "https",
             "x-forwarded-for": "203.0.113.9"}  # fmt: skip


@pytest.mark.parametrize("path", ["/vidhook/who", "/who"])
def test_a_trusted_proxy_gives_the_public_scheme_host_and_client(path):
    seen = call(app(), path, FORWARDED).json()
    assert seen["url"].startswith("https://hooks.example.com/")
    assert seen["client"] == "203.0.113.9"
    assert seen["path"] == "/vidhook/who" if path.startswith("/vidhook") else "/who"


def test_forwarding_headers_from_anyone_else_are_ignored():
    seen = call(app(), "/who", FORWARDED, client=("198.51.100.7", 5000)).json()
    assert seen["url"].startswith("http://hooks.example.com/")
    assert seen["client"] == "198.51.100.7"


def test_an_unknown_host_is_refused_with_a_json_error():
    response = call(app(), "/who", {"host": "evil.example.net"})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "host_not_allowed"


def test_a_star_allows_every_host():
    assert call(app(hosts=("*",)), "/who", {"host": "anything.test"}).status_code == 200


@pytest.mark.parametrize(
    ("header", "name"),
    [("Hooks.Example.com:8443", "hooks.example.com"), ("[::1]:8000", "::1"), ("::1", "::1"),
     ("localhost", "localhost")],
)  # fmt: skip
def test_host_name_drops_the_port_and_brackets(header, name):
    assert host_name(header) == name


def test_a_prefix_is_only_stripped_at_a_segment_boundary():
    response = call(app(), "/vidhookers/who", {"host": "localhost"})
    assert response.status_code == 404


async def both_urls(request: Request):
    return JSONResponse({"starlette": str(request.url), "ours": received_url(request.scope)})


@pytest.mark.parametrize("path", ["/vidhook/where", "/where", "/where?a=1&b=%20x", "/where?"])
@pytest.mark.parametrize("client", [("127.0.0.1", 5000), ("198.51.100.7", 5000)])
def test_the_stored_callback_url_is_the_url_starlette_sees(path, client):
    application = app()
    application.router.routes.append(Route("/where", both_urls))
    application.router.routes.append(Route("/vidhook/where", both_urls))
    seen = call(application, path, FORWARDED, client=client).json()
    assert seen["ours"] == seen["starlette"]


@pytest.mark.parametrize(
    ("server", "url"),
    [(("::1", 8000), "http://[::1]:8000/x"), (("10.0.0.1", 80), "http://10.0.0.1/x"),
     (None, "http:///x")],
)  # fmt: skip
def test_the_stored_callback_url_without_a_host_header_names_the_server(server, url):
    scope = {"type": "http", "scheme": "http", "path": "/x", "headers": [], "server": server}
    assert received_url(scope) == url


def layers(application) -> list[type]:
    return [m.cls for m in application.user_middleware]


@pytest.mark.parametrize(
    ("public_url", "server", "expected"),
    [
        ("https://hooks.example.com", {}, [ProxyHeadersMiddleware, AllowedHosts, AccessLog]),
        ("https://hooks.example.com/vh", {"trusted_proxies": [], "allowed_hosts": ["*"]},
         [PathPrefix, AccessLog]),
        ("https://hooks.example.com/vh/", {"trusted_proxies": ["10.0.0.2"]},
         [ProxyHeadersMiddleware, AllowedHosts, PathPrefix, AccessLog]),
    ],
)  # fmt: skip
def test_the_app_leaves_out_layers_that_would_do_nothing(tmp_path, public_url, server, expected):
    extra = {"server": server}
    config = service_config(public_url, "http://127.0.0.1:9", tmp_path / "v.db", extra=extra)
    application = create_app(config)
    assert layers(application) == expected
    # Without a Host check, any Host is served; without a prefix, paths are taken as they are.
    if "*" in server.get("allowed_hosts", []):
        assert call(application, "/vh/healthz", {"host": "any.test"}).status_code == 200

"""Fetching one result: redirects, credentials, types, sizes, and what a refusal means."""

from __future__ import annotations

import asyncio
import ipaddress

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from receiver.media import download_client
from receiver.media.fetch import Fetcher, FetchError
from receiver.media.hosts import Guard, RefusedHost, is_public
from receiver.providers.base import Download
from receiver.sandbox import ServerThread
from receiver.sandbox.media import sample_video

MP4 = sample_video()


class Origin:
    """A result host that records the Authorization header of each request it gets."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str | None]] = []
        self.redirect_to = ""

        async def handle(request: Request) -> Response:
            name = request.path_params["name"]
            self.seen.append((name, request.headers.get("authorization")))
            if name == "hop":
                return RedirectResponse(self.redirect_to, status_code=302)
            if name == "loop":
                return RedirectResponse("/r/loop", status_code=307)
            if name == "ftp":
                return RedirectResponse("ftp://files.example/v.mp4", status_code=301)
            if name == "video":
                return Response(MP4, media_type="video/mp4")
            if name == "untyped-video":
                return Response(MP4, media_type="application/octet-stream")
            if name == "untyped-junk":
                return Response(b"<html>not a video</html>", media_type="application/octet-stream")
            if name == "page":
                return Response("<html>sign in</html>", media_type="text/html")
            if name == "endless":
                return StreamingResponse(_endless(), media_type="video/mp4")
            if name == "busy":
                return Response("slow down", status_code=429, headers={"Retry-After": "7"})
            return Response(status_code=int(name))

        self.app = Starlette(routes=[Route("/r/{name}", handle)])


async def _endless():
    while True:
        yield MP4[:65536]
        await asyncio.sleep(0)


@pytest.fixture
def origins():
    first, second = Origin(), Origin()
    with ServerThread(first.app) as a, ServerThread(second.app) as b:
        yield (first, a.url), (second, b.url)


def fetch(tmp_path, url, *, headers=None, kind="video", max_bytes=10_000_000, private=True):
    async def run():
        async with download_client(private, 2) as client:
            fetcher = Fetcher(client, tmp_path / "staging", max_bytes=max_bytes)
            return await fetcher.fetch(Download(url, headers or {}), kind, "job_1-video")

    return asyncio.run(run())


def failure(tmp_path, url, **kwargs) -> FetchError:
    with pytest.raises(FetchError) as caught:
        fetch(tmp_path, url, **kwargs)
    assert list((tmp_path / "staging").glob("*")) == []  # nothing left behind
    return caught.value


KEY = {"Authorization": "Bearer gateway-key-123"}


def test_credentials_go_to_the_results_own_origin_only(tmp_path, origins):
    (first, a), (second, b) = origins
    first.redirect_to = f"{b}/r/video"
    fetched = fetch(tmp_path, f"{a}/r/hop", headers=KEY)
    assert fetched.path.read_bytes() == MP4
    assert first.seen == [("hop", KEY["Authorization"])]
    assert second.seen == [("video", None)]  # another port is another origin
    # Back to the same origin, the key goes along again.
    first.redirect_to = f"{a}/r/video"
    fetch(tmp_path, f"{a}/r/hop", headers=KEY)
    assert first.seen[-2:] == [("hop", KEY["Authorization"]), ("video", KEY["Authorization"])]


def test_redirects_are_limited_and_must_stay_http(tmp_path, origins):
    (first, a), _ = origins
    assert "more than 5 redirects" in failure(tmp_path, f"{a}/r/loop").message
    assert len(first.seen) == 6
    refused = failure(tmp_path, f"{a}/r/ftp")
    assert refused.kind == "permanent" and "http(s)" in refused.message


def test_what_is_not_a_video_is_refused(tmp_path, origins):
    (_, a), _ = origins
    page = failure(tmp_path, f"{a}/r/page")
    assert page.kind == "permanent" and "text/html, not a video" in page.message
    junk = failure(tmp_path, f"{a}/r/untyped-junk")
    assert "first bytes are not a video" in junk.message
    assert "not an image" in failure(tmp_path, f"{a}/r/video", kind="cover").message
    # Untyped, but the bytes are an MP4's: kept as video/mp4.
    fetched = fetch(tmp_path, f"{a}/r/untyped-video")
    assert (fetched.content_type, fetched.size) == ("video/mp4", len(MP4))


def test_a_result_growing_past_max_bytes_is_cut_off_and_removed(tmp_path, origins):
    (_, a), _ = origins
    declared = failure(tmp_path, f"{a}/r/video", max_bytes=1000)  # said by Content-Length
    assert declared.kind == "permanent" and "max_bytes (1000 bytes)" in declared.message
    streamed = failure(tmp_path, f"{a}/r/endless", max_bytes=500_000)  # no length: counted
    assert "max_bytes (500000 bytes)" in streamed.message


@pytest.mark.parametrize(
    ("status", "kind"),
    [(403, "gone"), (404, "gone"), (410, "gone"), (500, "transient"), (503, "transient"),
     (400, "permanent"), (401, "permanent")],
)  # fmt: skip
def test_each_refusal_has_its_kind(tmp_path, origins, status, kind):
    (_, a), _ = origins
    refused = failure(tmp_path, f"{a}/r/{status}")
    assert (refused.kind, refused.status_code) == (kind, status)


def test_retry_after_is_kept(tmp_path, origins):
    (_, a), _ = origins
    busy = failure(tmp_path, f"{a}/r/busy")
    assert (busy.kind, busy.retry_after) == ("transient", 7.0)


def test_loopback_is_refused_before_any_connection(tmp_path, origins):
    (first, a), _ = origins
    refused = failure(tmp_path, f"{a}/r/video", private=False)
    assert refused.kind == "permanent" and "allow_private_hosts" in refused.message
    assert first.seen == []
    assert (
        "127.0.0.1" in failure(tmp_path, a.replace("127.0.0.1", "localhost"), private=False).message
    )


@pytest.mark.parametrize(
    ("address", "public"),
    [("93.184.216.34", True), ("2606:2800:220:1:248:1893:25c8:1946", True),
     ("127.0.0.1", False), ("10.1.2.3", False), ("172.16.5.4", False), ("192.168.1.1", False),
     ("169.254.169.254", False), ("100.64.0.1", False), ("0.0.0.0", False),  # noqa: S104
     ("224.0.0.1", False), ("::1", False), ("fe80::1", False), ("fd00::1", False),
     ("::ffff:127.0.0.1", False), ("::ffff:10.0.0.1", False), ("2002:7f00:1::", False)],
)  # fmt: skip
def test_which_addresses_are_public(address, public):
    assert is_public(ipaddress.ip_address(address)) is public


@pytest.mark.parametrize(
    "addresses", [["10.0.0.7"], ["93.184.216.34", "192.168.0.9"], ["169.254.169.254"]]
)
def test_a_name_resolving_to_any_private_address_is_refused(addresses):
    """The resolver is a stand-in: nothing is looked up or connected to."""

    async def resolver(host, port):
        return [ipaddress.ip_address(a) for a in addresses]

    guard = Guard(resolver=resolver)
    with pytest.raises(RefusedHost) as refused:
        asyncio.run(guard.resolver.resolve("cdn.example", 443))
    assert refused.value.host == "cdn.example"
    assert not is_public(refused.value.address)


def only(*allowed):
    """A guard that lets through these loopback addresses alone, as if they were public."""
    return lambda address: str(address) in allowed


def test_every_redirect_is_checked_where_it_connects(tmp_path, origins):
    """127.0.0.1 stands for a public host and 127.0.0.2 for a private one: a redirect to
    the private one, by address or by a name resolving to it, is refused, never reached."""
    (first, a), (second, b) = origins
    port_b = b.rsplit(":", 1)[1]
    names = {"cdn.test": "127.0.0.2", "origin.test": "127.0.0.1"}

    async def resolver(host, port):
        return [ipaddress.ip_address(names[host])]

    def fetch_guarded(url):
        async def run():
            guard = Guard(allowed=only("127.0.0.1"), resolver=resolver)
            async with download_client(False, 2, guard) as client:
                fetcher = Fetcher(client, tmp_path / "staging", max_bytes=10_000_000)
                return await fetcher.fetch(Download(url), "video", "job_1-video")

        return asyncio.run(run())

    for target in (f"http://127.0.0.2:{port_b}/r/video", f"http://cdn.test:{port_b}/r/video"):
        first.redirect_to = target
        with pytest.raises(FetchError) as refused:
            fetch_guarded(f"{a}/r/hop")
        assert refused.value.kind == "permanent" and "127.0.0.2" in refused.value.message
    assert [name for name, _ in first.seen] == ["hop", "hop"]
    assert second.seen == []
    # The guard lets the allowed address through, by address and by name, hop by hop.
    port_a = a.rsplit(":", 1)[1]
    first.redirect_to = f"http://origin.test:{port_a}/r/video"
    assert fetch_guarded(f"{a}/r/hop").path.read_bytes() == MP4
    assert [name for name, _ in first.seen[-2:]] == ["hop", "video"]


def test_retries_back_off_and_never_come_before_retry_after():
    from receiver.media.archiver import RETRY_BASE, RETRY_MAX, retry_delay

    assert retry_delay(1, None, rng=lambda: 1.0) == RETRY_BASE
    assert retry_delay(4, None, rng=lambda: 1.0) == RETRY_BASE * 8
    assert retry_delay(4, None, rng=lambda: 0.0) == RETRY_BASE * 4  # jitter: half to whole
    assert retry_delay(30, None, rng=lambda: 1.0) == RETRY_MAX
    assert retry_delay(1, 120.0, rng=lambda: 1.0) == 120.0

"""Signing in to the dashboard, the session cookie, CSRF refusals and the security headers."""

from __future__ import annotations

import re
import time
from http.cookies import SimpleCookie

import pytest

from receiver.config import parse_config
from receiver.web.sessions import (
    SESSION_SECONDS,
    cookie_spec,
    csrf_matches,
    csrf_token,
    new_session,
    read_session,
)
from tests.conftest import ADMIN_TOKEN, ENV
from tests.sse import Stream
from tests.web.conftest import Browser

PAGES = ("/ui/", "/ui/new", "/ui/deliveries", "/ui/providers", "/ui/jobs/job_unknown")


def config_for(public_url, token=ADMIN_TOKEN):
    env = {**ENV, "VIDHOOK_ADMIN_TOKEN": token}
    vidu = {"base_url": "http://127.0.0.1:1/vidu", "api_key_env": "VIDU_API_KEY"}
    data = {"public_url": public_url, "database": "x.db", "providers": {"vidu": vidu}}
    return parse_config(data, env)


def set_cookie(response):
    cookie = SimpleCookie()
    cookie.load(response.headers["set-cookie"])
    ((name, morsel),) = cookie.items()
    return name, morsel


# -- the session itself --------------------------------------------------------------------


def test_a_session_is_genuine_until_it_expires_and_never_holds_the_token():
    config = config_for("http://127.0.0.1:8000")
    now = 1_800_000_000.0
    session, value = new_session(config, now)
    assert ADMIN_TOKEN not in value
    assert read_session(config, value, now) == session
    assert read_session(config, value, now + SESSION_SECONDS - 1) == session
    assert read_session(config, value, now + SESSION_SECONDS) is None


@pytest.mark.parametrize(
    "forge",
    [
        lambda v: v[:-1] + ("A" if v[-1] != "A" else "B"),  # the MAC changed
        lambda v: str(int(v.split(".")[0]) + 3600) + v[v.index(".") :],  # a later expiry
        lambda v: v.split(".")[0] + ".othernonce." + v.split(".")[2],
        lambda v: "",
        lambda v: "garbage",
        lambda v: v + ".extra",
        lambda v: "x" * 5000,
    ],
)
def test_a_changed_or_made_up_cookie_is_no_session(forge):
    config = config_for("http://127.0.0.1:8000")
    _, value = new_session(config, 1_800_000_000.0)
    assert read_session(config, forge(value), 1_800_000_000.0) is None


def test_rotating_the_admin_token_ends_every_session():
    old = config_for("http://127.0.0.1:8000", token="the-old-admin-token")
    new = config_for("http://127.0.0.1:8000", token="the-new-admin-token")
    _, value = new_session(old, 1_800_000_000.0)
    assert read_session(new, value, 1_800_000_000.0) is None


def test_a_csrf_token_belongs_to_its_session_only():
    config = config_for("http://127.0.0.1:8000")
    mine, _ = new_session(config, 1_800_000_000.0)
    theirs, _ = new_session(config, 1_800_000_000.0)
    assert csrf_matches(config, mine, csrf_token(config, mine))
    assert not csrf_matches(config, mine, csrf_token(config, theirs))
    assert not csrf_matches(config, mine, None)
    assert not csrf_matches(config, mine, "")


@pytest.mark.parametrize(
    ("public_url", "name", "path", "secure"),
    [
        ("http://127.0.0.1:8000", "vidhook-session", "/", False),
        ("https://hooks.example.com", "__Host-vidhook-session", "/", True),
        ("https://example.com/vidhook", "__Secure-vidhook-session", "/vidhook/", True),
    ],
)
def test_the_cookie_is_secure_and_scoped_when_the_public_url_is_https(
    public_url, name, path, secure
):
    spec = cookie_spec(config_for(public_url))
    assert (spec.name, spec.path, spec.secure) == (name, path, secure)


# -- through a running service --------------------------------------------------------------


def test_the_root_redirects_to_the_dashboard(service):
    response = service.http.get("/")
    assert response.status_code == 307
    assert response.headers["location"] == "/ui/"


@pytest.mark.parametrize("path", PAGES)
def test_a_page_without_the_cookie_redirects_to_the_login_form_and_back(service, path):
    anonymous = Browser(service.url)
    response = anonymous.get(path)
    assert response.status_code == 303
    assert response.headers["location"] == f"/ui/login?next={path}"
    form = anonymous.get(response.headers["location"])
    assert form.status_code == 200
    assert 'name="token"' in form.text
    assert f'name="next" value="{path}"' in form.text
    signed_in = anonymous.post_form("/ui/login", {"token": ADMIN_TOKEN, "next": path})
    assert signed_in.status_code == 303
    assert signed_in.headers["location"] == path
    assert anonymous.get(path).status_code in (200, 404)  # the unknown job is a 404 page


def test_logging_in_sets_an_httponly_strict_expiring_cookie_without_the_token(service):
    response = Browser(service.url).login()
    assert response.status_code == 303
    name, morsel = set_cookie(response)
    assert name == "vidhook-session"  # the service is on http://127.0.0.1: not Secure
    assert morsel["httponly"]
    assert morsel["samesite"].lower() == "strict"
    assert int(morsel["max-age"]) == SESSION_SECONDS
    assert morsel["path"] == "/"
    assert not morsel["secure"]
    assert ADMIN_TOKEN not in response.headers["set-cookie"]


def test_a_wrong_token_gets_a_message_a_delay_no_cookie_and_no_hint(service):
    anonymous = Browser(service.url)
    wrong = ADMIN_TOKEN[:-1] + "x"
    started = time.monotonic()
    response = anonymous.post_form("/ui/login", {"token": wrong, "next": "/ui/"})
    waited = time.monotonic() - started
    assert response.status_code == 401
    assert "That is not the admin token." in response.text
    assert "set-cookie" not in response.headers
    assert waited >= 0.9
    # Nothing of either token, nor how close the guess came, is in the answer.
    assert wrong not in response.text and ADMIN_TOKEN not in response.text
    assert ADMIN_TOKEN[:6] not in response.text
    assert anonymous.get("/ui/").status_code == 303


def test_after_login_next_never_leaves_the_dashboard(service):
    anonymous = Browser(service.url)
    for target in ("https://evil.example/", "//evil.example/ui/", "/api/jobs", "/ui\\..\\x"):
        response = anonymous.post_form("/ui/login", {"token": ADMIN_TOKEN, "next": target})
        assert response.headers["location"] == "/ui/"


def test_logging_out_deletes_the_cookie(browser):
    response = browser.act("/ui/logout")
    assert response.status_code == 303
    assert response.headers["location"] == "/ui/login"
    _, morsel = set_cookie(response)
    assert morsel["max-age"] == "0" or "1970" in morsel["expires"]
    assert browser.get("/ui/").status_code == 303


def test_a_cross_site_login_is_refused(service):
    anonymous = Browser(service.url)
    response = anonymous.post_form(
        "/ui/login", {"token": ADMIN_TOKEN}, origin="https://evil.example", site="cross-site"
    )
    assert response.status_code == 403
    assert "set-cookie" not in response.headers


@pytest.mark.parametrize(
    ("origin", "site", "token"),
    [
        ("https://evil.example", "cross-site", "valid"),  # a form on another site
        ("https://evil.example", None, "valid"),  # an older browser: Origin only
        (None, "same-site", "valid"),  # a sibling subdomain
        ("null", None, "valid"),  # a sandboxed frame or a privacy redirect
        ("same", "same-origin", None),  # no CSRF token
        ("same", "same-origin", "another session's"),
    ],
)
def test_a_form_post_that_is_not_the_dashboards_own_is_refused_and_writes_nothing(
    service, browser, origin, site, token
):
    before = service.counts()
    valid = browser.csrf("/ui/new")
    if token == "valid":
        csrf = valid
    elif token is None:
        csrf = None
    else:
        other = Browser(service.url)
        other.login()
        csrf = other.csrf("/ui/new")
        other.close()
    data = {"provider": "vidu", "prompt": "forged"}
    if csrf is not None:
        data["csrf"] = csrf
    response = browser.post_form(
        "/ui/new", data, origin=service.url if origin == "same" else origin, site=site
    )
    assert response.status_code == 403
    assert "refused" in response.text.lower()
    assert service.counts() == before


def test_the_api_takes_the_cookie_for_reads_and_for_same_origin_writes_only(service, browser):
    assert browser.get("/api/jobs").status_code == 200
    payload = {"provider": "vidu", "prompt": "from the cookie"}
    before = service.counts()
    bare = browser.http.post("/api/jobs", json=payload)  # no Origin: a script, not a page
    assert bare.status_code == 401
    forged = browser.http.post(
        "/api/jobs", json=payload, headers={"Origin": "https://evil.example"}
    )
    assert forged.status_code == 401
    assert service.counts() == before
    same = browser.http.post("/api/jobs", json=payload, headers={"Origin": service.url})
    assert same.status_code == 201, same.text


def session_cookie(browser) -> str:
    return f"vidhook-session={browser.http.cookies['vidhook-session']}"


def test_the_event_stream_takes_the_session_cookie(service, browser):
    with Stream(service.url, token=None, Cookie=session_cookie(browser)) as stream:
        stream.subscribed()
        assert stream.status == 200
        assert stream.headers["content-type"].startswith("text/event-stream")
        job = service.submit("A moth at a porch light")
        service.wait_status(job["id"], "completed")
        stream.wait(
            lambda p: "completed" in [e.job["status"] for e in p.job_events()],
            what="the job's events through the cookie",
        )
        assert {e.job["id"] for e in stream.job_events()} == {job["id"]}


@pytest.mark.parametrize(
    "cookie",
    [None, "forged", "signed out", "another token's"],
)
def test_the_event_stream_without_the_token_or_a_genuine_cookie_is_refused(
    service, browser, cookie
):
    job = service.submit("The secret prompt of a moth")
    service.wait_status(job["id"], "completed")
    headers = {}
    if cookie == "forged":
        value = session_cookie(browser)
        headers["Cookie"] = value[:-1] + ("A" if value[-1] != "A" else "B")
    elif cookie == "another token's":
        _, value = new_session(config_for(service.url, token="another-admin-token"), time.time())
        headers["Cookie"] = f"vidhook-session={value}"
    elif cookie == "signed out":
        browser.act("/ui/logout")  # the browser forgets its cookie: it sends none
        headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in browser.http.cookies.items())
    path = f"/api/events?job={job['id']}&last_event_id=0"
    response = service.http.get(path, headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == 'Bearer realm="vidhook"'
    assert job["id"] not in response.text and "moth" not in response.text
    assert service.server.app.state.runtime.events.streams == set()


def test_kept_media_opens_with_the_cookie(service, browser):
    job = service.submit("A lantern on the water")
    service.wait(job["id"], lambda j: j["media"]["status"] == "kept")
    assert Browser(service.url).get(f"/media/{job['id']}/video").status_code == 403
    video = browser.get(f"/media/{job['id']}/video", headers={"Range": "bytes=0-99"})
    assert video.status_code == 206
    assert video.headers["content-type"] == "video/mp4"


INLINE = [
    re.compile(r"<script(?![^>]*\bsrc=)[^>]*>", re.I),  # a script without src
    re.compile(r"<style", re.I),
    re.compile(r"\sstyle=", re.I),
    re.compile(r"\son[a-z]+=", re.I),  # onclick= and the like
    re.compile(r"javascript:", re.I),
]


def test_every_page_has_a_strict_policy_and_nothing_inline(service, browser):
    job = service.submit("A kite over the dunes")
    service.wait_status(job["id"], "completed")
    paths = [*PAGES, f"/ui/jobs/{job['id']}", "/ui/?view=gallery", "/ui/login"]
    for path in paths:
        response = browser.get(path)
        policy = response.headers["content-security-policy"]
        directives = dict(d.strip().split(" ", 1) for d in policy.split(";"))
        assert directives["default-src"] == "'self'"
        assert directives["script-src"] == "'self'"
        assert directives["style-src"] == "'self'"
        assert directives["frame-ancestors"] == "'none'"
        assert "unsafe" not in policy
        assert response.headers["x-frame-options"] == "DENY"
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["cache-control"] == "no-store"
        for pattern in INLINE:
            assert not pattern.search(response.text), (path, pattern.pattern)
        # Scripts, styles, images and media all come from here.
        for url in re.findall(r'\s(?:src|poster)="([^"]+)"', response.text):
            assert url.startswith("/"), (path, url)

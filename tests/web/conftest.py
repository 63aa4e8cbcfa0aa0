"""A running service and a browser-like client signed in to its dashboard."""

from __future__ import annotations

import re

import httpx
import pytest

from tests.conftest import ADMIN_TOKEN

CSRF = re.compile(r'name="csrf" value="([^"]+)"')


class Browser:
    """An httpx client that behaves as a browser on the dashboard's own pages: it keeps
    the cookie, and its form posts say where they come from."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.http = httpx.Client(base_url=url, timeout=10)

    def login(self, token: str = ADMIN_TOKEN) -> httpx.Response:
        return self.post_form("/ui/login", {"token": token, "next": "/ui/"})

    def get(self, path: str, **kwargs) -> httpx.Response:
        return self.http.get(path, **kwargs)

    def csrf(self, path: str = "/ui/") -> str:
        page = self.get(path)
        assert page.status_code == 200, page.text
        match = CSRF.search(page.text)
        assert match, "the page has no CSRF field"
        return match.group(1)

    def post_form(self, path, data=None, *, files=None, origin=None, site="same-origin"):
        headers = {"Origin": origin or self.url}
        if site is not None:
            headers["Sec-Fetch-Site"] = site
        return self.http.post(path, data=data or {}, files=files, headers=headers)

    def act(self, path, data=None, *, from_page="/ui/", files=None):
        """A form of the dashboard sent as the page would: with its CSRF token."""
        return self.post_form(path, {"csrf": self.csrf(from_page), **(data or {})}, files=files)

    def close(self) -> None:
        self.http.close()


@pytest.fixture
def browser(service):
    client = Browser(service.url)
    response = client.login()
    assert response.status_code == 303, response.text
    yield client
    client.close()

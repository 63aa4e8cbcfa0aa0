"""A running service and a browser-like client signed in to its dashboard."""

from __future__ import annotations

import re

import httpx
import pytest

from tests.conftest import ADMIN_TOKEN, running_service
from tests.web.forms import form_with_button

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

    def press(self, page: str, label: str, action_part: str = "") -> httpx.Response:
        """Send the form of ``page`` whose button reads ``label``, as the page holds it."""
        shown = self.get(page)
        assert shown.status_code == 200, shown.text
        form = form_with_button(shown.text, label, action_part)
        assert form.method == "post"
        return self.post_form(form.action, form.fields)

    def close(self) -> None:
        self.http.close()


@pytest.fixture
def browser(service):
    client = Browser(service.url)
    response = client.login()
    assert response.status_code == 303, response.text
    yield client
    client.close()


@pytest.fixture
def slack_service(sandbox, slack, db_path):
    """A service whose every job notifies the Slack channel "team", where a delivery dies
    at its first failure."""
    extra = {
        "env": {"SLACK_URL": slack.url},
        "default_channels": ["team"],
        "channels": {"team": {"type": "slack", "webhook_url_env": "SLACK_URL", "min_interval": 0}},
        "notify": {"retry_base": 0.1, "retry_max": 0.2, "max_attempts": 1},
    }
    with running_service(sandbox.url, db_path, extra=extra) as svc:
        yield svc

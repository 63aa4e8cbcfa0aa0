"""Signed webhooks to the user's own app, in the Standard Webhooks format (docs/webhooks.md).

Options: ``url`` (required, http or https), ``timeout`` (seconds, default 10).
Secret: ``secret_env`` names a variable holding ``whsec_...`` or bare base64 (v1,
HMAC-SHA256) or ``whsk_...`` (v1a, Ed25519); without it events go out unsigned.
"""

from __future__ import annotations

import math
import time

import httpx

from receiver.config import ChannelConfig
from receiver.notify.base import Channel, DeliveryError, Event, http_failure, post
from receiver.responses import dumps
from signing import standard

__all__ = ["DEFAULT_TIMEOUT", "USER_AGENT", "WebhookChannel"]

DEFAULT_TIMEOUT = 10.0
USER_AGENT = "vidhook"


class WebhookChannel(Channel):
    """POSTs each event as JSON; a 2xx answer is a delivery. ValueError for bad options."""

    def __init__(self, config: ChannelConfig, client: httpx.AsyncClient) -> None:
        super().__init__(config, client)
        self.url = _url(config)
        self.timeout = _timeout(config)
        self.what = f"webhook {self.name!r}"
        secret = config.secrets.get("secret")
        self._secret = secret.reveal() if secret is not None else None
        if self._secret is not None:
            try:
                # Signs nothing real: a bad secret should stop startup, not every delivery.
                standard.sign(self._secret, "check", 0, b"")
            except ValueError as exc:
                raise ValueError(f"channels.{self.name}.secret_env: {exc}") from None

    def body(self, event: Event) -> bytes:
        """The exact bytes sent, and signed: compact UTF-8 JSON of the event."""
        return dumps(event.payload())

    def headers(self, event: Event, body: bytes, *, now: float | None = None) -> dict[str, str]:
        if not (event.id and event.id.isascii() and event.id.isprintable()):
            # httpx would raise UnicodeEncodeError on such a header, which is no DeliveryError.
            raise DeliveryError(f"{self.what}: event id is not printable ASCII", kind="permanent")
        timestamp = math.floor(time.time() if now is None else now)
        headers = {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            "webhook-id": event.id,
            "webhook-timestamp": str(timestamp),
        }
        if self._secret is not None:
            try:
                headers.update(
                    standard.sign_headers(self._secret, event.id, body, timestamp=timestamp)
                )
            except ValueError:
                # Only the id can be at fault here; the secret was checked at startup.
                raise DeliveryError(
                    f"{self.what}: event id cannot be signed (needs printable ASCII, no '.')",
                    kind="permanent",
                ) from None
        return headers

    async def send(self, event: Event) -> None:
        body = self.body(event)
        response = await post(
            self.client,
            self.url,
            self.what,
            content=body,
            headers=self.headers(event, body),
            timeout=self.timeout,
            # A redirect is a failure: the receiver should fix the URL, not get a re-POST.
            follow_redirects=False,
        )
        failure = http_failure(response, self.what)
        if failure is not None:
            raise failure


def _url(config: ChannelConfig) -> str:
    # The URL is the user's own and may carry a token in its path or query: never echo it.
    where = f"channels.{config.name}.url"
    value = config.options.get("url")
    if not isinstance(value, str) or not value:
        raise ValueError(f"{where}: must be the http(s) URL of your endpoint")
    try:
        parsed = httpx.URL(value)
    except (httpx.InvalidURL, ValueError, TypeError):
        raise ValueError(f"{where}: is not a valid URL") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ValueError(f"{where}: must be an http:// or https:// URL with a host")
    return value


def _timeout(config: ChannelConfig) -> float:
    value = config.options.get("timeout", DEFAULT_TIMEOUT)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"channels.{config.name}.timeout: must be a number of seconds")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"channels.{config.name}.timeout: must be more than 0 seconds")
    return float(value)

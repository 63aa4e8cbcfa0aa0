"""Public keys a provider publishes as a JWKS, to check its signed webhooks with (fal).

The keys are fetched with the service's HTTP client, on the event loop, never where a
webhook is verified (the store's writer thread). A fetched set is trusted for a day at
most; a webhook that no key verifies may mean the provider rotated its keys, so the set
is fetched again then, but no more often than once a minute, so that forged webhooks
cannot make vidhook hammer the provider.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable

import httpx

from signing import fal as fal_signing

log = logging.getLogger("vidhook.providers.jwks")

KEYS_MAX_AGE = 86400.0  # a fetched JWKS is trusted this long at most
KEYS_MIN_INTERVAL = 60.0  # and fetched no more often than this
KEYS_TIMEOUT = 10.0  # a webhook waits on the fetch, and senders want an answer in seconds


class WebhookKeys:
    """The Ed25519 keys published at ``url``, fetched and trusted for a day at most."""

    def __init__(
        self,
        url: str,
        client: httpx.AsyncClient,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = url
        self.client = client
        self.clock = clock
        self._keys: tuple[fal_signing.PublicKey, ...] = ()
        self._fetched_at = -math.inf
        self._tried_at = -math.inf
        self._fetching = asyncio.Lock()  # webhooks that find the keys wanting share one fetch

    @property
    def usable(self) -> tuple[fal_signing.PublicKey, ...]:
        return () if self.expired else self._keys

    @property
    def expired(self) -> bool:
        return self.clock() - self._fetched_at > KEYS_MAX_AGE

    async def refresh(self) -> None:
        """Fetch the JWKS again, unless it was tried less than a minute ago."""
        async with self._fetching:
            now = self.clock()
            if now - self._tried_at < KEYS_MIN_INTERVAL:
                return  # a webhook waiting with this one had it fetched, or it failed
            self._tried_at = now
            try:
                response = await self.client.get(self.url, timeout=KEYS_TIMEOUT)
                if response.status_code != 200:
                    raise ValueError(f"HTTP {response.status_code}")
                keys = fal_signing.load_jwks(response.content)
            except (httpx.HTTPError, ValueError) as exc:
                why = str(exc) if isinstance(exc, ValueError) else exc.__class__.__name__
                log.warning("webhook keys could not be fetched from %s: %s", self.url, why)
                return
            self._keys, self._fetched_at = keys, now

"""Keeping results: the archiver, storage backends, signed links, serving with ranges."""

from __future__ import annotations

from collections.abc import Mapping
from http.cookiejar import CookieJar, DefaultCookiePolicy
from typing import Any

import httpx

from receiver.config import Config
from receiver.http import AiohttpTransport
from receiver.media.archiver import Archiver, OnDownload, OnStored
from receiver.media.fetch import Fetcher
from receiver.media.hosts import Guard, RefusedHost
from receiver.media.links import Links
from receiver.media.storage import STAGING, Storage, build_storage
from receiver.media.view import MediaView, held_until
from receiver.providers.base import Provider
from receiver.store import Store

__all__ = ["Archive"]

USER_AGENT = "vidhook"
# Generous: a result may be gigabytes from a slow CDN; a stalled one is cut off by `read`.
TIMEOUT = httpx.Timeout(30.0, read=60.0)


def download_client(
    allow_private: bool, concurrency: int, guard: Guard | None = None
) -> httpx.AsyncClient:
    """The client downloads go through: public addresses only (unless allowed: ``guard``
    decides which), no redirects of its own (fetch follows them), no proxy or certificate
    settings from the environment, no cookies kept."""
    limits = httpx.Limits(max_connections=concurrency * 2, max_keepalive_connections=concurrency)
    checks = None if allow_private else guard or Guard()
    transport = AiohttpTransport(
        limits=limits,
        trust_env=False,
        resolver=checks.resolver if checks else None,
        socket_factory=checks.socket_factory if checks else None,
        passthrough=(RefusedHost,),
    )
    return httpx.AsyncClient(
        transport=transport,
        timeout=TIMEOUT,
        follow_redirects=False,
        trust_env=False,
        headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity"},
        # One provider's CDN must not see another's cookies: none are kept at all.
        cookies=CookieJar(policy=DefaultCookiePolicy(allowed_domains=[])),
    )


class Archive:
    """The archive's parts, wired together for a running service."""

    def __init__(
        self,
        config: Config,
        store: Store,
        providers: Mapping[str, Provider],
        *,
        on_download: OnDownload | None = None,
        on_stored: OnStored | None = None,
    ) -> None:
        archive = self.config = config.archive
        self.store = store
        self.storage: Storage | None = build_storage(archive)
        self.links = Links.from_admin_token(config.admin_token, config.public_url, archive.link_ttl)
        storage_name = self.storage.name if self.storage is not None else "off"
        self.view = MediaView(archive, self.links, storage_name, store.clock)
        self.client = download_client(archive.allow_private_hosts, archive.concurrency)
        self.fetcher = Fetcher(self.client, archive.path / STAGING, max_bytes=archive.max_bytes)
        self.worker = Archiver(
            store, archive, self.storage, self.fetcher, providers,
            on_download=on_download, on_stored=on_stored,
        )  # fmt: skip

    @property
    def enabled(self) -> bool:
        return self.storage is not None

    def hold(self, delivery: Mapping[str, Any]) -> float | None:
        """Until when a completed notification waits for the copy (None: send it now)."""
        if not self.enabled:
            return None
        return held_until(delivery, self.store.clock(), self.config.notify_wait)

    def start(self) -> None:
        self.worker.start()

    async def stop(self) -> None:
        await self.worker.stop()
        await self.client.aclose()

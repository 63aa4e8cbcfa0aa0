"""`vidhook check`: what it reports beyond the config's own problems: disabled channels,
passwords that would travel without TLS, and test messages through every channel."""

from __future__ import annotations

import asyncio
import ipaddress
import secrets
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from receiver import logs
from receiver.config import Config
from receiver.http import service_client
from receiver.media.storage import StorageError, build_storage
from receiver.notify import build_all as build_channels
from receiver.notify.base import DeliveryError, Event
from receiver.responses import iso


def plaintext_passwords(config: Config) -> list[str]:
    """Email channels that would send their password over the network unencrypted."""
    found = []
    for name, channel in config.channels.items():
        host = str(channel.options.get("host", ""))
        if (
            channel.type == "email"
            and channel.options.get("security") == "none"
            and "password" in channel.secrets
            and not _is_loopback(host)
        ):
            found.append(
                f'channel {name} logs in to {host} without TLS (security = "none"): '
                'its password crosses the network in clear; use "starttls" or "tls"'
            )
    return found


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def make_test_event(now: float) -> Event:
    """A completed job that never was, saying so wherever a channel shows the prompt."""
    stamp = iso(now)
    job: dict[str, Any] = {
        "id": "job_TEST", "provider": "vidhook-test", "provider_job_id": None,
        "status": "completed", "provider_status": None, "model": "test",
        "prompt": "Test message from `vidhook check --send-test`: this channel works. "
                  "No video was generated.",
        "request": {}, "result_url": None, "cover_url": None, "error": None, "credits": None,
        "notify": None, "anomalies": [], "key_fingerprint": None, "created_at": stamp,
        "updated_at": stamp, "finished_at": stamp, "last_callback_at": None,
        "next_poll_at": None, "callback_url": None, "test": True,
    }  # fmt: skip
    return Event(id=f"test_{secrets.token_hex(8)}", type="job.completed", created_at=now, job=job)


def send_tests(config: Config) -> bool:
    """Send the test event through every channel and print each result; True if any failed."""
    if not config.channels:
        print("no channels to send a test message through")
        return False
    print("sending a test message through every channel:")
    results = asyncio.run(_send_tests(config))
    # A channel's message names no secret, but it may quote a server's answer.
    redact = logs.Redactor(logs.config_secrets(config))
    for name, failure in results.items():
        print(f"{name}: ok" if failure is None else f"{name}: FAILED {redact(failure)}")
    return any(failure is not None for failure in results.values())


async def _send_tests(config: Config) -> dict[str, str | None]:
    event = make_test_event(time.time())
    # The service's own client: a test message goes out as the service's messages do.
    async with service_client() as client:
        channels = build_channels(config, client)

        async def send(name: str) -> str | None:
            try:
                await channels[name].send(event)
            except DeliveryError as exc:
                return exc.message
            except Exception as exc:  # a channel's bug is its failure, not check's crash
                return f"unexpected {exc.__class__.__name__}"
            return None

        # At once: each channel has its own timeout, and one slow server delays only itself.
        failures = await asyncio.gather(*(send(name) for name in channels))
    return dict(zip(channels, failures, strict=True))


@dataclass
class StoredChannels:
    """What the database says of the channels: those the outbox disabled because their
    destination is gone (name -> reason, configuration fingerprint), held deliveries, and
    deliveries waiting to be sent or held (pending or held), by channel."""

    disabled: dict[str, tuple[str, str]] = field(default_factory=dict)
    held: dict[str, int] = field(default_factory=dict)
    waiting: dict[str, int] = field(default_factory=dict)


def check_database(config: Config) -> str | None:
    """The database, as `check` shows it; with PostgreSQL, after connecting and asking
    the server's version (None, with the reason printed, if that failed)."""
    if config.database_url is None:
        return str(config.database)
    from receiver.store import postgres
    from receiver.store.errors import DatabaseUnusable

    url = config.database_url.reveal()
    try:
        with postgres.connect(url) as conn:
            version = postgres.server_version(conn)
    except DatabaseUnusable as exc:
        redact = logs.Redactor(logs.config_secrets(config))
        print(f"database: FAILED {redact(str(exc))}")
        return None
    return f"{postgres.described(url)}, PostgreSQL {version}"


def stored_channels(config: Config) -> StoredChannels:
    if config.database_url is not None:
        return _stored_channels_postgres(config.database_url.reveal())
    database = config.database
    if not database.exists():
        return StoredChannels()
    conn = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    try:
        return _stored_channels(lambda sql: conn.execute(sql).fetchall())
    except sqlite3.Error:
        return StoredChannels()
    finally:
        conn.close()


def _stored_channels_postgres(url: str) -> StoredChannels:
    import psycopg

    from receiver.store import postgres
    from receiver.store.errors import DatabaseUnusable

    try:
        with postgres.connect(url) as conn:
            return _stored_channels(lambda sql: conn.execute(postgres.translate(sql)).fetchall())
    except (DatabaseUnusable, psycopg.Error):
        return StoredChannels()


def _stored_channels(rows: Callable[[str], list[Any]]) -> StoredChannels:
    found = StoredChannels()
    for name, reason, fingerprint in rows(
        "SELECT name, reason, config_fingerprint FROM channel_states"
    ):
        found.disabled[name] = (reason, fingerprint)
    for channel, status, count in rows(
        "SELECT channel, status, count(*) FROM deliveries"
        " WHERE status IN ('pending', 'held') GROUP BY 1, 2"
    ):
        found.waiting[channel] = found.waiting.get(channel, 0) + count
        if status == "held":
            found.held[channel] = count
    return found


def check_archive(config: Config) -> bool:
    """Print where results are kept, after writing a probe there; False if that failed."""
    storage = build_storage(config.archive)
    if storage is None:
        print("archive: off (results are not kept; notifications give the providers' links)")
        return True
    try:
        where = asyncio.run(storage.check())
    except StorageError as exc:
        print(f"archive: {config.archive.store}: FAILED {exc}")
        return False
    print(f"archive: {config.archive.store}, {where}")
    if config.archive.allow_private_hosts:
        print("  allow_private_hosts = true: results may be fetched from private addresses")
    return True

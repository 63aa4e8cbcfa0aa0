"""`vidhook check`: what it reports beyond the config's own problems: disabled channels,
passwords that would travel without TLS, and test messages through every channel."""

from __future__ import annotations

import asyncio
import ipaddress
import secrets
import sqlite3
import time
from pathlib import Path
from typing import Any

import httpx

from receiver import logs
from receiver.config import Config
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
    async with httpx.AsyncClient(follow_redirects=False) as client:
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


def disabled_channels(database: Path) -> dict[str, str]:
    """Channels the outbox disabled because their destination is gone."""
    if not database.exists():
        return {}
    conn = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT name, reason FROM channel_states").fetchall()
    except sqlite3.Error:
        return {}
    finally:
        conn.close()
    return {name: reason for name, reason in rows}

"""Notifications: the outbox worker and one module per channel type."""

from __future__ import annotations

import httpx

from receiver.config import ChannelConfig, Config, ConfigError
from receiver.notify.base import Channel
from receiver.notify.console import ConsoleChannel
from receiver.notify.email import EmailChannel
from receiver.notify.slack import SlackChannel
from receiver.notify.webhook import WebhookChannel

CHANNELS: dict[str, type[Channel]] = {
    "console": ConsoleChannel,
    "email": EmailChannel,
    "slack": SlackChannel,
    "webhook": WebhookChannel,
}


def build(config: ChannelConfig, client: httpx.AsyncClient) -> Channel:
    return CHANNELS[config.type](config, client)


def build_all(config: Config, client: httpx.AsyncClient) -> dict[str, Channel]:
    """Every configured channel; an option a channel refuses is a configuration error."""
    channels: dict[str, Channel] = {}
    problems: list[str] = []
    for name, channel in config.channels.items():
        try:
            channels[name] = build(channel, client)
        except ValueError as exc:
            problems.extend(f"{config.source}: {line}" for line in str(exc).splitlines())
    if problems:
        raise ConfigError(problems)
    return channels

"""Notifications: the outbox worker and one module per channel type."""

from __future__ import annotations

import httpx

from receiver.config import ChannelConfig
from receiver.notify.base import Channel
from receiver.notify.console import ConsoleChannel

CHANNELS: dict[str, type[Channel]] = {
    "console": ConsoleChannel,
}


def build(config: ChannelConfig, client: httpx.AsyncClient) -> Channel:
    return CHANNELS[config.type](config, client)

"""The console channel: one readable line per event on standard output."""

from __future__ import annotations

import sys
from typing import TextIO

import httpx

from receiver.config import ChannelConfig
from receiver.notify.base import Channel, Event
from receiver.notify.links import human_size, result_links
from receiver.responses import iso

EXCERPT = 60


def render(event: Event) -> str:
    job = event.job
    prompt = " ".join(str(job.get("prompt") or "").split())
    if len(prompt) > EXCERPT:
        prompt = prompt[: EXCERPT - 1] + "…"
    tail = job.get("error")
    if event.status == "completed":
        links = result_links(job)
        tail = links.video
        if links.size is not None:
            tail = f"{tail} ({human_size(links.size)})"
    parts = [
        f"[vidhook] {iso(event.created_at)}",
        f"{job.get('id')}",
        f"{event.status:<10}",
        f"{job.get('provider')}",
        f'"{prompt}"',
    ]
    if tail:
        parts.append(str(tail))
    return " ".join(parts)


class ConsoleChannel(Channel):
    def __init__(
        self, config: ChannelConfig, client: httpx.AsyncClient, stream: TextIO | None = None
    ) -> None:
        super().__init__(config, client)
        self.stream = stream

    async def send(self, event: Event) -> None:
        stream = self.stream or sys.stdout
        print(render(event), file=stream, flush=True)

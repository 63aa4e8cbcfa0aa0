"""Sending a fake provider's callbacks, and the record of every attempt."""

from __future__ import annotations

import time
from typing import NamedTuple

import httpx


class RecordedCallback(NamedTuple):
    time: float  # time.monotonic() when the attempt finished
    task_id: str
    status: str
    url: str
    body: bytes
    status_code: int | None
    error: str | None
    answer: bytes = b""


class CallbackSender:
    """POSTs JSON bodies to callback URLs; ``sent`` holds every attempt, failed or not."""

    def __init__(self) -> None:
        self.sent: list[RecordedCallback] = []
        self._client: httpx.AsyncClient | None = None

    async def post(
        self, url: str, body: bytes, *, task_id: str, status: str, timeout: float
    ) -> RecordedCallback:
        self._client = self._client or httpx.AsyncClient()
        code: int | None = None
        error: str | None = None
        answer = b""
        try:
            response = await self._client.post(
                url, content=body, headers={"Content-Type": "application/json"}, timeout=timeout
            )
            code, answer = response.status_code, response.content
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"
        record = RecordedCallback(time.monotonic(), task_id, status, url, body, code, error, answer)
        self.sent.append(record)
        return record

    def to(self, task_id: str) -> list[RecordedCallback]:
        return [r for r in self.sent if r.task_id == task_id]

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

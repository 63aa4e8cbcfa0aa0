"""What a notification channel is, and the event it delivers.

A channel sends one event; it either returns (delivered) or raises DeliveryError saying
whether trying again may help (transient), cannot (permanent), or whether the
destination itself is gone (the channel is then disabled until its config changes).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import httpx

from receiver.config import ChannelConfig
from receiver.providers.base import retry_after_seconds
from receiver.responses import iso

Kind = Literal["transient", "permanent", "gone"]


@dataclass(frozen=True)
class Event:
    """One state change of one job, for one channel.

    ``id`` is the delivery's event id: the same on every retry, so receivers can dedupe.
    ``job`` is the job as the admin API shows it (no secrets).
    """

    id: str
    type: str  # job.queued | job.processing | job.completed | job.failed | job.canceled
    created_at: float  # when the job changed state
    job: Mapping[str, Any]

    @property
    def status(self) -> str:
        return self.type.removeprefix("job.")

    def payload(self) -> dict[str, Any]:
        """The JSON body of a webhook event."""
        return {"type": self.type, "id": self.id, "created_at": iso(self.created_at),
                "data": dict(self.job)}  # fmt: skip


class DeliveryError(Exception):
    def __init__(
        self,
        message: str,
        *,
        kind: Kind,
        retry_after: float | None = None,
        status_code: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.kind = kind
        self.retry_after = retry_after
        self.status_code = status_code


class Channel(ABC):
    # Seconds to leave between two messages on this channel (Slack asks for one a second).
    min_interval: float = 0.0

    def __init__(self, config: ChannelConfig, client: httpx.AsyncClient) -> None:
        self.config = config
        self.name = config.name
        self.client = client

    @abstractmethod
    async def send(self, event: Event) -> None: ...


def http_failure(response: httpx.Response, what: str) -> DeliveryError | None:
    """None for a 2xx answer; otherwise the failure, classified the usual way."""
    status = response.status_code
    if 200 <= status < 300:
        return None
    message = f"{what} answered HTTP {status}"
    if status == 429 or status == 408 or status >= 500:
        retry_after = retry_after_seconds(response.headers.get("retry-after"))
        return DeliveryError(message, kind="transient", retry_after=retry_after, status_code=status)
    if status in (403, 404, 410):
        return DeliveryError(message, kind="gone", status_code=status)
    return DeliveryError(message, kind="permanent", status_code=status)


async def post(client: httpx.AsyncClient, url: str, what: str, **kwargs: Any) -> httpx.Response:
    """POST, turning network errors and timeouts into transient DeliveryErrors."""
    try:
        return await client.post(url, **kwargs)
    except httpx.TimeoutException:
        raise DeliveryError(f"{what} timed out", kind="transient") from None
    except httpx.HTTPError as exc:
        raise DeliveryError(
            f"could not reach {what} ({exc.__class__.__name__})", kind="transient"
        ) from None

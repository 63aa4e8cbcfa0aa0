"""Which links a message gives for a completed job: vidhook's kept copy when there is one.

A provider's link expires (a day, an hour, sometimes less) or needs the provider's key; a
message read the next morning must still open. So every channel links to the copy that
vidhook keeps (``media`` in the job's JSON, signed links), and falls back to the
provider's own link, saying so, while the copy is pending or when it could not be kept.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

PENDING_NOTE = "vidhook is still saving its copy; this is the provider's link, which may expire"
NOT_KEPT_NOTE = (
    "vidhook could not keep a copy ({why}); this is the provider's link, which may expire"
)


@dataclass(frozen=True)
class ResultLinks:
    video: str | None
    cover: str | None
    size: int | None  # bytes of the kept video
    note: str | None  # said beside a provider's link


def _url(entry: Any) -> str | None:
    url = entry.get("url") if isinstance(entry, Mapping) else None
    return url if isinstance(url, str) and url else None


def result_links(job: Mapping[str, Any]) -> ResultLinks:
    media = job.get("media")
    media = media if isinstance(media, Mapping) else {}
    video, cover = media.get("video"), media.get("cover")
    provider_video, provider_cover = job.get("result_url"), job.get("cover_url")
    kept = _url(video)
    if kept is not None:
        assert isinstance(video, Mapping)
        size = video.get("bytes")
        return ResultLinks(
            kept, _url(cover) or provider_cover, size if isinstance(size, int) else None, None
        )
    status = media.get("status")
    note = None
    if status == "pending":
        note = PENDING_NOTE
    elif status in ("failed", "expired"):
        note = NOT_KEPT_NOTE.format(why=media.get("error") or status)
    return ResultLinks(provider_video, _url(cover) or provider_cover, None, note)


def human_size(size: int) -> str:
    """1.2 MB: decimal units, as file managers and browsers show sizes."""
    value, unit = float(size), "bytes"
    for larger in ("kB", "MB", "GB"):
        if value < 1000:
            break
        value, unit = value / 1000, larger
    return f"{size} bytes" if unit == "bytes" else f"{value:.1f} {unit}"

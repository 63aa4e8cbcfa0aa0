"""What a kept file may be: videos and cover images, told by their type or first bytes."""

from __future__ import annotations

VIDEO, COVER = "video", "cover"
KINDS = (VIDEO, COVER)
# What a server says when it does not know: the file's first bytes decide then.
UNTYPED = frozenset({"", "application/octet-stream", "binary/octet-stream"})
SNIFF_BYTES = 16
_EXTENSIONS = {
    "video/mp4": ".mp4", "video/quicktime": ".mov", "video/webm": ".webm",
    "video/x-matroska": ".mkv", "image/jpeg": ".jpg", "image/png": ".png",
    "image/webp": ".webp", "image/gif": ".gif",
}  # fmt: skip
# ISO base media (MP4, MOV) starts with a box: a 4-byte size, then its type.
_MP4_BOXES = frozenset({b"ftyp", b"moov", b"mdat", b"wide", b"free", b"skip"})


def media_type(header: str | None) -> str:
    """The type and subtype of a Content-Type header, lower case, without parameters."""
    return (header or "").split(";", 1)[0].strip().lower()


def declared_ok(kind: str, declared: str) -> bool | None:
    """True if the declared type fits the kind, False if it does not, None if untyped."""
    if declared in UNTYPED:
        return None
    family = "video/" if kind == VIDEO else "image/"
    return declared.startswith(family) and len(declared) > len(family)


def sniff(kind: str, head: bytes) -> str | None:
    """The type the first bytes show, if they look like the kind; None otherwise."""
    if kind == VIDEO:
        if len(head) >= 8 and head[4:8] in _MP4_BOXES:
            return "video/quicktime" if head[8:12] == b"qt  " else "video/mp4"
        if head.startswith(b"\x1a\x45\xdf\xa3"):
            return "video/webm"
        return None
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return "image/webp"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    return None


def extension(content_type: str) -> str:
    return _EXTENSIONS.get(content_type, ".bin")

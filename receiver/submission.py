"""A job submission from command-line arguments: options, images, files.

What the API would refuse anyway (an unknown channel, an image a provider cannot take)
is left to the service, which knows the providers; what only this machine can know (a
file that is missing, or too large to send) is checked here.
"""

from __future__ import annotations

import base64
import json
import mimetypes
from pathlib import Path
from typing import Any

# Files travel base64-encoded inside the JSON request, which grows them by a third;
# Vidu, the largest taker, reads request bodies up to 20 MB.
MAX_IMAGE_BYTES = 15 * 1024 * 1024
_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
)


class ArgumentProblem(Exception):
    pass


def parse_options(pairs: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs; a VALUE that reads as JSON (8, true, [1,2], "x") is that JSON,
    anything else is the text itself."""
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ArgumentProblem(f"-o {pair}: write it as KEY=VALUE, such as -o duration=8")
        if key in options:
            raise ArgumentProblem(f"-o {key} is given twice; keep one")
        try:
            options[key] = json.loads(text)
        except ValueError:
            options[key] = text
    return options


def image_argument(value: str) -> str:
    """An image as the API takes it: a URL as it is, a local file as a data: URI."""
    if value.startswith(("http://", "https://", "data:")):
        return value
    path = Path(value).expanduser()
    if not path.is_file():
        raise ArgumentProblem(
            f"--image {value}: no such file, and not an http(s) URL; "
            "pass the image's URL or the path of a local file"
        )
    size = path.stat().st_size
    if size > MAX_IMAGE_BYTES:
        raise ArgumentProblem(
            f"--image {value}: {size / 1_000_000:.1f} MB is too large to send inline "
            f"(at most {MAX_IMAGE_BYTES / 1_000_000:.0f} MB); put it at a URL and pass that"
        )
    data = path.read_bytes()
    content_type = _image_type(path, data)
    if content_type is None:
        raise ArgumentProblem(
            f"--image {value}: not an image this can tell (PNG, JPEG, GIF or WebP)"
        )
    return f"data:{content_type};base64,{base64.b64encode(data).decode('ascii')}"


def _image_type(path: Path, data: bytes) -> str | None:
    for signature, content_type in _SIGNATURES:
        if data.startswith(signature):
            return content_type
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    guessed, _ = mimetypes.guess_type(path.name)
    return guessed if guessed and guessed.startswith("image/") else None

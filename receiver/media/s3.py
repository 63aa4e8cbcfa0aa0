"""Kept files in an S3-compatible bucket (AWS, MinIO, Cloudflare R2, Backblaze B2, ...).

Uploads are multipart above ``PART_SIZE`` (obstore uploads the parts concurrently), and
an object appears only when its upload completes, so a reader never sees a part. Readers
are redirected to a short-lived presigned URL: the bytes go from the bucket to them, not
through vidhook. The object carries its type, a file name and a cache policy, which the
bucket then serves with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import re
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import obstore
from obstore.store import S3Store

from receiver.config import S3Settings
from receiver.media.fetch import Fetched
from receiver.media.storage import Storage, StorageError

if TYPE_CHECKING:
    from obstore import Attributes

PART_SIZE = 8 * 1024 * 1024
PARALLEL_PARTS = 4
_PROBE = ".vidhook-check"
_ERROR_TEXT = 300
# obstore's message quotes the server's answer after its own words; S3 says what is wrong
# in the <Code> and <Message> of an XML error body, which the quote may cut short.
_STATUS = re.compile(r"status code: (\d{3})")
_CODE = re.compile(r"<Code>([^<]*)</Code>")
_MESSAGE = re.compile(r"<Message>([^<]*)</Message>")


class S3Storage(Storage):
    name = "s3"
    remote = True

    def __init__(self, settings: S3Settings) -> None:
        self.settings = settings
        options: dict[str, Any] = {"region": settings.region}
        if settings.endpoint_url:
            options["endpoint"] = settings.endpoint_url
            # S3-compatible servers mostly take the bucket in the path, not the host name.
            options["virtual_hosted_style_request"] = False
        if settings.access_key_id and settings.secret_access_key:
            options["access_key_id"] = settings.access_key_id.reveal()
            options["secret_access_key"] = settings.secret_access_key.reveal()
        self.store = S3Store(
            settings.bucket,
            prefix=settings.prefix or None,
            client_options={"allow_http": (settings.endpoint_url or "").startswith("http://")},
            **options,
        )

    def _where(self) -> str:
        prefix = f"/{self.settings.prefix}" if self.settings.prefix else ""
        return f"bucket {self.settings.bucket}{prefix}"

    def _failure(self, doing: str, exc: Exception) -> StorageError:
        # obstore's messages name the request and the server's answer, never the keys.
        text = " ".join(str(exc).split())
        return StorageError(f"{self._where()}: {doing} failed: {_reason(text)[:_ERROR_TEXT]}")

    async def prepare(self) -> None:
        """Nothing to create: the bucket is the operator's (``vidhook check`` tries it)."""

    async def put(self, fetched: Fetched, location: str) -> None:
        attributes: Attributes = {
            "Content-Type": fetched.content_type,
            "Content-Disposition": f'inline; filename="{location}"',
            "Cache-Control": "private, max-age=3600",
        }
        try:
            await obstore.put_async(
                self.store, location, fetched.path, attributes=attributes,
                chunk_size=PART_SIZE, max_concurrency=PARALLEL_PARTS,
            )  # fmt: skip
        except Exception as exc:
            raise self._failure(f"uploading {location}", exc) from None
        finally:
            with contextlib.suppress(FileNotFoundError):
                await asyncio.to_thread(fetched.path.unlink)

    async def delete(self, location: str) -> None:
        try:
            await obstore.delete_async(self.store, location)
        except FileNotFoundError:
            return
        except Exception as exc:
            raise self._failure(f"removing {location}", exc) from None

    async def check(self) -> str:
        try:
            await obstore.put_async(self.store, _PROBE, b"ok")
            await obstore.delete_async(self.store, _PROBE)
        except Exception as exc:
            raise self._failure("writing a probe object", exc) from None
        endpoint = self.settings.endpoint_url or "AWS"
        return f"{self._where()} at {endpoint} (writable)"

    async def redirect(self, location: str, seconds: int) -> str:
        try:
            return await obstore.sign_async(self.store, "GET", location, timedelta(seconds=seconds))
        except Exception as exc:
            raise self._failure(f"signing a link to {location}", exc) from None


def _reason(text: str) -> str:
    """S3's own code and message (``HTTP 403 SignatureDoesNotMatch: ...``) where the
    answer carries them, else obstore's words."""
    code = _CODE.search(text)
    if code is None:
        return text
    status = _STATUS.search(text)
    message = _MESSAGE.search(text)
    said = html.unescape(code[1]) + (f": {html.unescape(message[1])}" if message else "")
    return f"HTTP {status[1]} {said}" if status else said

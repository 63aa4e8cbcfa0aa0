"""What the archive tests share: a service that keeps results, and a link signer of their own."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from contextlib import contextmanager
from pathlib import Path

import httpx

from receiver.app import create_app
from receiver.sandbox import ServerThread
from tests.conftest import ADMIN_TOKEN, Service, service_config

# The sandbox runs on loopback, which downloads refuse unless told otherwise.
ARCHIVE = {"allow_private_hosts": True}
BUCKET = "vidhook-media"
S3_ENV = {"MEDIA_S3_KEY_ID": "AKIAVIDHOOKTEST", "MEDIA_S3_SECRET": "s3cr3t-for-moto-only"}


def archive_extra(extra=None, **archive):
    extra = dict(extra or {})
    extra["archive"] = {**ARCHIVE, **archive}
    return extra


def s3_extra(s3_url, extra=None, **archive):
    """Keep results in moto's bucket (see conftest's s3_url), under the prefix "kept"."""
    extra = archive_extra(
        extra, store="s3", bucket=BUCKET, prefix="kept", endpoint_url=s3_url,
        access_key_id_env="MEDIA_S3_KEY_ID", secret_access_key_env="MEDIA_S3_SECRET", **archive,
    )  # fmt: skip
    extra["env"] = {**extra.get("env", {}), **S3_ENV}
    return extra


def objects(s3_url: str) -> dict[str, tuple[str, int]]:
    """The bucket's objects as the server lists them: key -> (ETag, size)."""
    listing = httpx.get(f"{s3_url}/{BUCKET}", params={"list-type": "2"}, timeout=10).text
    found = {}
    for entry in listing.split("<Contents>")[1:]:
        key, etag, size = (_element(entry, name) for name in ("Key", "ETag", "Size"))
        found[key] = (etag.replace("&quot;", '"').strip('"'), int(size))
    return found


def _element(xml: str, name: str) -> str:
    return xml.split(f"<{name}>")[1].split(f"</{name}>")[0]


def wait_media(service, job_id, status="kept", timeout=20.0):
    return service.wait(job_id, lambda job: job["media"]["status"] == status, timeout)


def signed_url(base_url, job_id, kind, expires):
    """A media link made the way the docs describe, independently of receiver.media.links."""
    key = hmac.new(ADMIN_TOKEN.encode(), b"vidhook media links v1", hashlib.sha256).digest()
    mac = hmac.new(key, f"{job_id}\n{kind}\n{expires}".encode(), hashlib.sha256).digest()
    sig = base64.urlsafe_b64encode(mac).rstrip(b"=").decode()
    return f"{base_url}/media/{job_id}/{kind}?expires={expires}&sig={sig}"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def media_files(db_path: Path) -> list[str]:
    """Every file under the media folder, temporary ones included, by relative path."""
    root = db_path.parent / "media"
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


class Clock:
    """Real time plus an offset a test can move forward (the receiver's store clock)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


@contextmanager
def service_with_clock(sandbox_url, db_path, clock, extra=None, overrides=None):
    server = ServerThread(None)
    server.bind()
    config = service_config(server.url, sandbox_url, db_path, overrides, extra)
    server.app = create_app(config, clock=clock)
    server.start()
    service = Service(server, db_path)
    try:
        yield service
    finally:
        service.close()
        server.stop()


def get(url, **kwargs):
    return httpx.get(url, timeout=10, **kwargs)

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


def archive_extra(extra=None, **archive):
    extra = dict(extra or {})
    extra["archive"] = {**ARCHIVE, **archive}
    return extra


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

"""moto's S3 server on loopback, started once for every archive test that keeps to S3, and
``kept_in``: a test run once keeping to the local folder and once to the bucket."""

from __future__ import annotations

import logging
from pathlib import Path

import httpx
import pytest
from moto.server import ThreadedMotoServer

from tests.media.helpers import BUCKET, archive_extra, media_files, objects, s3_extra


@pytest.fixture(scope="session")
def s3_url():
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    httpx.put(f"{url}/{BUCKET}", timeout=10).raise_for_status()
    yield url
    server.stop()


class KeptIn:
    """Where a parametrized test keeps its results: the local folder or moto's bucket."""

    def __init__(self, store: str, s3_url: str | None) -> None:
        self.store = store
        self.s3_url = s3_url

    def config(self, extra=None, **archive):
        """The config's extra tables (see service_config), keeping results here."""
        if self.s3_url is None:
            return archive_extra(extra, **archive)
        return s3_extra(self.s3_url, extra, **archive)

    def files(self, db_path: Path, job_id: str) -> list[str]:
        """The job's kept files, wherever they are, by name."""
        if self.s3_url is None:
            return [name for name in media_files(db_path) if name.startswith(job_id)]
        return sorted(
            key.removeprefix("kept/")
            for key in objects(self.s3_url)
            if key.startswith(f"kept/{job_id}")
        )


@pytest.fixture(params=["local", "s3"])
def kept_in(request):
    s3_url = request.getfixturevalue("s3_url") if request.param == "s3" else None
    return KeptIn(request.param, s3_url)

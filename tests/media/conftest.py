"""moto's S3 server on loopback, started once for every archive test that keeps to S3."""

from __future__ import annotations

import logging

import httpx
import pytest
from moto.server import ThreadedMotoServer

from tests.media.helpers import BUCKET


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

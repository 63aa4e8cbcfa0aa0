"""The S3 backend, end to end against moto's S3 server on loopback."""

from __future__ import annotations

import logging

import httpx
import pytest
from moto.server import ThreadedMotoServer

from receiver.sandbox.media import sample_cover, sample_video
from tests.conftest import ADMIN_TOKEN, running_service
from tests.media.helpers import archive_extra, get, media_files, sha256, wait_media

BUCKET = "vidhook-media"
S3_ENV = {"MEDIA_S3_KEY_ID": "AKIAVIDHOOKTEST", "MEDIA_S3_SECRET": "s3cr3t-for-moto-only"}


@pytest.fixture(scope="module")
def s3_url():
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    httpx.put(f"{url}/{BUCKET}", timeout=10).raise_for_status()
    yield url
    server.stop()


def s3_extra(s3_url, **archive):
    extra = archive_extra(
        store="s3", bucket=BUCKET, prefix="kept", endpoint_url=s3_url,
        access_key_id_env="MEDIA_S3_KEY_ID", secret_access_key_env="MEDIA_S3_SECRET", **archive,
    )  # fmt: skip
    extra["env"] = S3_ENV
    return extra


def objects(s3_url):
    listing = httpx.get(f"{s3_url}/{BUCKET}", params={"list-type": "2"}, timeout=10).text
    return sorted(part.split("</Key>")[0] for part in listing.split("<Key>")[1:])


def test_the_s3_backend_keeps_and_serves_by_presigned_redirect(s3_url, sandbox, db_path):
    with running_service(sandbox.url, db_path, extra=s3_extra(s3_url)) as service:
        job = wait_media(service, service.submit("A lighthouse in a storm")["id"])
        media = job["media"]
        video = media["video"]
        served = get(job["result_url"]).content
        assert (video["bytes"], video["sha256"]) == (len(served), sha256(served))
        assert f"kept/{job['id']}.mp4" in objects(s3_url)
        assert f"kept/{job['id']}-cover.png" in objects(s3_url)

        moved = get(video["url"])
        assert moved.status_code == 307
        target = moved.headers["location"]
        assert target.startswith(f"{s3_url}/{BUCKET}/kept/{job['id']}.mp4?")
        assert "X-Amz-Signature=" in target and "MEDIA_S3_SECRET" not in target
        assert S3_ENV["MEDIA_S3_SECRET"] not in target

        whole = get(video["url"], follow_redirects=True)
        assert whole.status_code == 200 and sha256(whole.content) == sha256(served)
        assert whole.headers["content-type"] == "video/mp4"
        assert whole.headers["content-disposition"] == f'inline; filename="{job["id"]}.mp4"'
        part = get(video["url"], headers={"Range": "bytes=100-199"}, follow_redirects=True)
        assert part.status_code == 206 and part.content == served[100:200]
        assert get(media["cover"]["url"], follow_redirects=True).content == sample_cover()

        # HEAD is answered by vidhook itself from the record: a presigned GET cannot serve it.
        head = httpx.head(video["url"], timeout=10)
        assert head.status_code == 200 and head.headers["content-length"] == str(len(served))
        assert head.headers["etag"] == f'"{video["sha256"]}"'

        # Tampered links are refused before any redirect is signed.
        assert get(video["url"][:-3] + "xyz").status_code == 403
        admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        assert get(f"{service.url}/media/{job['id']}/video", headers=admin).status_code == 307
    assert served == sample_video()
    # Nothing stays on the local disk but the (empty) staging folder.
    assert media_files(db_path) == []


def test_an_unreachable_bucket_is_a_failure_that_is_retried(s3_url, sandbox, db_path):
    extra = s3_extra(s3_url)
    extra["archive"]["bucket"] = "no-such-bucket"
    with running_service(sandbox.url, db_path, extra=extra) as service:
        job = service.submit("Lanterns on a lake")
        job = service.wait(job["id"], lambda j: j["media"]["error"], 20)
    assert job["media"]["status"] == "pending"
    assert "no-such-bucket" in job["media"]["error"] and "uploading" in job["media"]["error"]
    assert S3_ENV["MEDIA_S3_SECRET"] not in job["media"]["error"]
    assert media_files(db_path) == []

"""A completed job's result and cover, kept by vidhook and served from its own copy.

The tests that involve the storage run twice (``kept_in``): with the local folder, and
with moto's S3 server, where a link opens by a redirect to the bucket.
"""

from __future__ import annotations

import stat
import time

import httpx
import pytest

from receiver.providers import ADAPTERS
from receiver.providers.base import Download
from receiver.providers.kvid import Kvid
from receiver.sandbox import ServerThread, create_sandbox_app
from receiver.sandbox.media import sample_cover, sample_video
from tests.conftest import ADMIN_TOKEN, VIDU_KEY, fake_settings, running_service, settings_restored
from tests.media.helpers import (
    Clock,
    archive_extra,
    get,
    media_files,
    service_with_clock,
    sha256,
    signed_url,
    wait_media,
)


@pytest.fixture
def keeping(sandbox, db_path, kept_in):
    with running_service(sandbox.url, db_path, extra=kept_in.config()) as service:
        yield service


def opened(url, **kwargs):
    """What a browser gets from a link: the file, after the redirect to the bucket if any."""
    return get(url, follow_redirects=True, **kwargs)


def test_a_kept_copy_is_exactly_what_the_provider_served(keeping, sandbox, db_path, kept_in):
    job = keeping.submit("A red fox trotting through fresh snow")
    job = wait_media(keeping, job["id"])
    assert job["status"] == "completed"
    served = get(job["result_url"]).content  # what the provider serves for this job
    assert served == sample_video()
    media = job["media"]
    assert media["error"] is None
    video = media["video"]
    assert (video["bytes"], video["sha256"]) == (len(served), sha256(served))
    assert video["content_type"] == "video/mp4"
    assert video["url"].startswith(f"{keeping.url}/media/{job['id']}/video?expires=")

    answer = opened(video["url"])  # no credentials: the signed link is enough
    assert answer.status_code == 200
    assert sha256(answer.content) == sha256(served)
    assert answer.headers["content-type"] == "video/mp4"
    assert answer.headers["content-disposition"] == f'inline; filename="{job["id"]}.mp4"'
    assert "max-age" in answer.headers["cache-control"]

    cover = media["cover"]
    assert cover["content_type"] == "image/png"
    assert opened(cover["url"]).content == sample_cover() == get(job["cover_url"]).content

    # Named by job, one file per kind, nothing else left over.
    assert kept_in.files(db_path, job["id"]) == [f"{job['id']}-cover.png", f"{job['id']}.mp4"]
    if kept_in.store == "local":
        assert media_files(db_path) == [f"{job['id']}-cover.png", f"{job['id']}.mp4"]
        assert answer.headers["etag"] == f'"{video["sha256"]}"'
        assert answer.headers["accept-ranges"] == "bytes"
        # Readable by the service alone.
        path = db_path.parent / "media" / f"{job['id']}.mp4"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    else:
        assert media_files(db_path) == []  # the staging folder is empty
        assert answer.history[0].status_code == 307  # the bytes come from the bucket


def test_byte_ranges_head_and_conditional_requests(keeping, kept_in):
    job = wait_media(keeping, keeping.submit("Paper boats on a rainy street")["id"])
    url = job["media"]["video"]["url"]
    whole = sample_video()
    size = len(whole)

    part = opened(url, headers={"Range": "bytes=100-199"})
    assert part.status_code == 206
    assert part.content == whole[100:200]
    assert part.headers["content-range"] == f"bytes 100-199/{size}"
    assert part.headers["content-length"] == "100"

    tail = opened(url, headers={"Range": "bytes=-10"})
    assert (tail.status_code, tail.content) == (206, whole[-10:])
    rest = opened(url, headers={"Range": f"bytes={size - 5}-"})
    assert (rest.status_code, rest.content) == (206, whole[-5:])

    beyond = opened(url, headers={"Range": f"bytes={size}-"})
    assert beyond.status_code == 416

    # HEAD and conditional requests are answered by vidhook itself, from the file's record.
    head = httpx.head(url, timeout=10)
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-length"] == str(size)
    assert head.headers["content-type"] == "video/mp4"
    etag = head.headers["etag"]
    assert etag == f'"{job["media"]["video"]["sha256"]}"'
    assert get(url, headers={"If-None-Match": etag}).status_code == 304

    # After the redirect the bucket answers ranges itself: moto's 416 carries no
    # Content-Range, and it ignores If-Range. These two are vidhook's answers alone.
    if kept_in.store == "local":
        assert beyond.headers["content-range"] == f"bytes */{size}"
        # A range for an older version of the file is answered with the whole file.
        stale = get(url, headers={"Range": "bytes=0-9", "If-Range": '"0000"'})
        assert (stale.status_code, stale.content) == (200, whole)


def test_a_changed_or_expired_link_is_refused(keeping):
    job = wait_media(keeping, keeping.submit("A hummingbird at a feeder")["id"])
    job_id, url = job["id"], job["media"]["video"]["url"]
    expires = int(url.split("expires=")[1].split("&")[0])

    # A link made independently, by the documented recipe, opens.
    assert opened(signed_url(keeping.url, job_id, "video", expires)).status_code == 200
    refused = [
        url[:-2] + ("AA" if not url.endswith("AA") else "BB"),  # the signature changed
        url.replace(f"expires={expires}", f"expires={expires + 1}"),  # the expiry moved
        url.replace("/video?", "/cover?"),  # the video's signature for the cover
        signed_url(keeping.url, job_id, "video", int(time.time()) - 1),  # expired
        f"{keeping.url}/media/{job_id}/video",  # no signature at all
        f"{keeping.url}/media/{job_id}/video?expires={expires}",
    ]
    for link in refused:
        answer = get(link)
        assert answer.status_code == 403, link
        assert answer.json()["error"]["code"] == "forbidden"
        assert "sig=" not in answer.text
    # The admin credentials open it without a signature; other paths are not found.
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    assert opened(f"{keeping.url}/media/{job_id}/video", headers=admin).content == sample_video()
    assert get(f"{keeping.url}/media/{job_id}/thumb", headers=admin).status_code == 404
    assert get(f"{keeping.url}/media/job_unknown/video", headers=admin).status_code == 404
    # An unknown job with a forged link is refused before anything is looked up.
    assert get(f"{keeping.url}/media/job_unknown/video?expires=9999999999&sig=x").status_code == 403


def test_a_running_job_has_no_copy_yet_and_its_link_is_404_until_kept(keeping, sandbox):
    with settings_restored(sandbox.settings) as settings:
        settings.run_time = 1.0
        job = keeping.submit("A paper crane unfolding")
        assert job["media"] == {"status": "pending", "video": None, "cover": None, "error": None}
        admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        assert get(f"{keeping.url}/media/{job['id']}/video", headers=admin).status_code == 404
        wait_media(keeping, job["id"])
    listed = keeping.api.get("/api/jobs").json()["jobs"]
    assert listed[0]["media"]["status"] == "kept"


def test_a_result_larger_than_max_bytes_fails_clearly_and_leaves_nothing(sandbox, db_path, kept_in):
    extra = kept_in.config(max_bytes=10_000)
    with running_service(sandbox.url, db_path, extra=extra) as service:
        job = service.submit("Waves against black rocks")
        job = wait_media(service, job["id"], "failed")
    assert job["status"] == "completed"
    assert "max_bytes" in job["media"]["error"] and "10000" in job["media"]["error"]
    assert job["media"]["video"] is None
    assert media_files(db_path) == []
    assert kept_in.files(db_path, job["id"]) == []


def test_a_result_on_a_private_address_is_refused_and_never_fetched(sandbox, db_path):
    extra = archive_extra(allow_private_hosts=False)
    with running_service(sandbox.url, db_path, extra=extra) as service:
        job = service.submit("City traffic in time-lapse")
        job = wait_media(service, job["id"], "failed")
    assert job["status"] == "completed"
    assert "127.0.0.1" in job["media"]["error"] and "allow_private_hosts" in job["media"]["error"]
    # Checked at the target: the sandbox never saw a request for the file.
    assert [r.path for r in sandbox.vidu.requests if "/files/" in r.path] == []
    assert media_files(db_path) == []


def test_a_link_the_provider_let_expire_ends_expired_and_the_job_stays_completed(sandbox, db_path):
    clock = Clock()
    with settings_restored(sandbox.settings) as settings:
        settings.file_ttl = -1  # the sandbox's links are dead from the start
        with service_with_clock(sandbox.url, db_path, clock, archive_extra()) as service:
            job = service.submit("Tea steam curling in morning light")
            # Within Vidu's 24 hours a refusal may be the CDN lagging: tried again later.
            job = service.wait(job["id"], lambda j: j["media"]["error"], 20)
            assert job["media"]["status"] == "pending"
            assert "HTTP 403" in job["media"]["error"]
            clock.offset = 2 * 86400.0  # two days on: Vidu's links are known to be gone
            job = wait_media(service, job["id"], "expired", timeout=30)
            assert job["status"] == "completed"
            error = job["media"]["error"]
            assert "expired" in error and "HTTP 403" in error and "24 h" in error
            assert job["media"]["video"] is None


def test_trying_again_by_hand_keeps_what_failed_before(sandbox, db_path, kept_in):
    kvid = sandbox.fake("kvid")
    with running_service(sandbox.url, db_path, extra=kept_in.config()) as service:
        with settings_restored(kvid.settings.faults) as faults:
            faults.paths, faults.outage, faults.error_status = r"/files/", True, 404
            job = service.submit("A lamp flickering", provider="kvid")
            job = service.wait(job["id"], lambda j: j["media"]["error"], 20)
            # kvid does not say how long its links last: a 404 is tried again later.
            assert job["media"]["status"] == "pending" and "HTTP 404" in job["media"]["error"]
        answer = service.api.post(f"/api/jobs/{job['id']}/archive")
        assert answer.status_code == 202
        assert answer.json()["media"]["status"] == "pending"
        job = wait_media(service, job["id"], timeout=10)
        attempts = service.rows("SELECT attempts FROM downloads WHERE job_id = ?", job["id"])
        assert opened(job["media"]["video"]["url"]).content == sample_video()
    assert job["media"]["video"]["sha256"] == sha256(sample_video())
    assert f"{job['id']}.mp4" in kept_in.files(db_path, job["id"])
    assert job["media"]["error"] is None
    assert attempts == [(1,)]  # counted afresh from the retry asked for


def test_trying_again_is_refused_for_what_has_no_result(keeping, sandbox):
    with settings_restored(sandbox.settings) as settings:
        settings.run_time = 5.0
        running = keeping.submit("A long one")
        answer = keeping.api.post(f"/api/jobs/{running['id']}/archive")
    assert answer.status_code == 409
    assert answer.json()["error"]["code"] == "no_result"
    assert keeping.rows("SELECT count(*) FROM downloads WHERE job_id = ?", running["id"]) == [(0,)]
    assert keeping.api.post("/api/jobs/job_nope/archive").status_code == 404
    assert keeping.http.post(f"/api/jobs/{running['id']}/archive").status_code == 401


def test_with_the_archive_off_nothing_is_kept_and_links_are_the_providers(sandbox, db_path):
    extra = {"archive": {"store": "off"}}
    with running_service(sandbox.url, db_path, extra=extra) as service:
        job = service.submit("Kites on a beach")
        job = service.wait_status(job["id"], "completed")
        time.sleep(0.3)
        job = service.job(job["id"])
        answer = service.api.post(f"/api/jobs/{job['id']}/archive")
        downloads = service.rows("SELECT status FROM downloads")
    assert job["media"] == {"status": "off", "video": None, "cover": None, "error": None}
    assert answer.status_code == 409 and answer.json()["error"]["code"] == "archive_off"
    assert downloads == [("off",)]
    assert not (db_path.parent / "media").exists()


class KeyedKvid(Kvid):
    """kvid as if its results needed its key, as a new-api gateway's content route does."""

    def download(self, job, url):
        return Download(url, {"Authorization": f"Bearer {self.key_for(job).reveal()}"})


def test_a_result_that_needs_the_providers_key_is_fetched_with_it(db_path, monkeypatch):
    monkeypatch.setitem(ADAPTERS, "kvid", KeyedKvid)
    seen = []
    fakes = create_sandbox_app(kvid=fake_settings())

    async def recording(scope, receive, send):
        if scope["type"] == "http" and "/files/" in scope["path"]:
            seen.append(dict(scope["headers"]).get(b"authorization"))
        await fakes(scope, receive, send)

    with (
        ServerThread(recording) as server,
        running_service(server.url, db_path, extra=archive_extra()) as service,
    ):
        job = wait_media(service, service.submit("A key", provider="kvid")["id"])
    assert job["media"]["video"]["sha256"] == sha256(sample_video())
    assert seen == [f"Bearer {VIDU_KEY}".encode()]

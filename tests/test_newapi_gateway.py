"""A new-api gateway through a running service, as the real gateway answers: Gemini and
Vertex (Veo) tasks, results only the gateway's key opens, 501 on /v1/videos, durations
and several images."""

from __future__ import annotations

import httpx
import pytest

from receiver.providers.base import JobRef
from receiver.sandbox.media import sample_video
from tests.conftest import ADMIN_TOKEN, VIDU_KEY, running_service, settings_restored
from tests.media.helpers import sha256, wait_media

VEO = "veo-3.0-generate-001"


def submit(service, prompt, **fields):
    response = service.api.post(
        "/api/jobs", json={"provider": "newapi", "prompt": prompt, **fields}
    )
    assert response.status_code == 201, response.text
    return response.json()


@pytest.mark.parametrize("enveloped", [True, False])
def test_a_veo_task_completes_with_its_url(service, sandbox, enveloped):
    with settings_restored(sandbox.newapi.settings) as settings:
        settings.gemini_envelope = enveloped
        job = submit(service, "Surf at golden hour", model=VEO)
        done = service.wait_status(job["id"], "completed")
    task_id = done["provider_job_id"]
    assert done["result_url"] == f"{sandbox.url}/newapi/v1/videos/{task_id}/content"
    assert done["provider_status"] == "succeeded"
    assert [t["to_status"] for t in done["transitions"]] == ["queued", "processing", "completed"]

    # The link opens only with the gateway's key, which the adapter adds for its own
    # origin: what the archive does with it.
    assert httpx.get(done["result_url"]).status_code == 401
    provider = service.server.app.state.runtime.providers["newapi"]
    how = provider.download(
        JobRef(done["id"], task_id, done["key_fingerprint"]), done["result_url"]
    )
    video = httpx.get(how.url, headers=dict(how.headers))
    assert video.status_code == 200 and video.headers["content-type"] == "video/mp4"


@pytest.mark.parametrize("enveloped", [True, False])
def test_a_veo_video_only_the_gateway_opens_is_kept_and_served_from_the_archive(
    service, sandbox, enveloped
):
    with settings_restored(sandbox.newapi.settings) as settings:
        settings.gemini_envelope = enveloped
        job = wait_media(service, submit(service, "Herons at dawn", model=VEO)["id"])
    task_id = job["provider_job_id"]
    content = f"/newapi/v1/videos/{task_id}/content"
    assert job["result_url"] == f"{sandbox.url}{content}"
    # What the gateway serves, to its key holder alone.
    served = httpx.get(job["result_url"], headers={"Authorization": f"Bearer {VIDU_KEY}"})
    assert served.status_code == 200 and served.content == sample_video()
    # The archive fetched it once, with the key (a request without it is refused 401).
    assert [r.status_code for r in sandbox.newapi.requests if r.path == content] == [200, 200]

    video = job["media"]["video"]
    assert (video["bytes"], video["sha256"]) == (len(served.content), sha256(served.content))
    assert video["content_type"] == "video/mp4"
    assert video["url"].startswith(f"{service.url}/media/{job['id']}/video?expires=")
    kept = httpx.get(video["url"], timeout=10)  # the signed link alone opens it
    assert kept.status_code == 200 and kept.content == served.content
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    direct = httpx.get(f"{service.url}/media/{job['id']}/video", headers=admin, timeout=10)
    assert direct.status_code == 200 and direct.content == served.content
    part = httpx.get(video["url"], headers={"Range": "bytes=100-199"}, timeout=10)
    assert part.status_code == 206 and part.content == served.content[100:200]


def test_a_failed_veo_task_keeps_the_gateways_message(service, sandbox):
    job = submit(service, "Surf [fail]", model=VEO)
    done = service.wait_status(job["id"], "failed")
    assert done["error"] == sandbox.newapi.settings.fail_reason
    assert done["provider_status"] == "failed"


def test_501_on_videos_falls_back_to_the_task_route(sandbox, tmp_path):
    with settings_restored(sandbox.newapi.settings) as settings:
        settings.no_video_converter = True
        with running_service(sandbox.url, tmp_path / "vidhook.db") as service:
            provider = service.server.app.state.runtime.providers["newapi"]
            provider.status_paths = (provider.status_paths[1], provider.status_paths[0])
            job = submit(service, "Rain on a tin roof")
            done = service.wait_status(job["id"], "completed")
    task_id = done["provider_job_id"]
    assert done["result_url"] == f"{sandbox.url}/newapi/files/{task_id}.mp4"
    asked = [r.status_code for r in sandbox.newapi.requests if r.task_id == task_id]
    assert 501 in asked and asked[-1] == 200


def test_501_with_no_task_route_fails_the_job_clearly(sandbox, tmp_path):
    with settings_restored(sandbox.newapi.settings) as settings:
        settings.no_video_converter = True
        settings.task_route = False
        with running_service(sandbox.url, tmp_path / "vidhook.db") as service:
            job = submit(service, "Rain on a tin roof")
            done = service.wait_status(job["id"], "failed")
    assert "/v1/videos answers 501" in done["error"]


def test_duration_and_several_images_reach_the_gateway_as_it_reads_them(service, sandbox):
    images = ["https://img.example/a.png", "https://img.example/b.png"]
    job = submit(service, "Two cats", images=images, options={"duration": "6"})
    done = service.wait_status(job["id"], "completed")
    task = sandbox.newapi.task(done["provider_job_id"])
    assert task is not None and task.duration == 6
    assert task.body["images"] == images and task.body["duration"] == 6


def test_a_duration_the_gateway_would_drop_is_422_and_nothing_is_written(service, sandbox):
    before, sent = service.counts(), len(sandbox.newapi.requests)
    response = service.api.post(
        "/api/jobs", json={"provider": "newapi", "prompt": "p", "options": {"duration": 5.5}}
    )
    assert response.status_code == 422
    assert "whole number of seconds" in response.json()["error"]["fields"]["options.duration"]
    assert service.counts() == before and len(sandbox.newapi.requests) == sent

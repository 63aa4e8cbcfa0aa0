"""A SIGKILL in the middle of a download: after the restart the file is kept once, whole.

A reader asking for the file all along gets 404 until the copy is complete, then the
whole file: never a part of it.
"""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from receiver.sandbox.media import FileSettings, sample_cover, sample_video
from tests.conftest import ADMIN_TOKEN, settings_restored, wait_for
from tests.media.helpers import media_files, sha256
from tests.test_restart import ServiceProcess

pytestmark = pytest.mark.slow

SIZE = 1_200_000
RATE = 300_000  # bytes a second: four seconds a download


class Reader(threading.Thread):
    """GETs the file over and over, noting what each answer was."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.seen: list[tuple[int, str | None]] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        with httpx.Client(timeout=10, headers=headers) as http:
            while not self.stopping.is_set():
                try:
                    answer = http.get(self.url)
                except httpx.HTTPError:
                    continue  # the service is down between the kill and the restart
                digest = sha256(answer.content) if answer.status_code == 200 else None
                self.seen.append((answer.status_code, digest))
                time.sleep(0.05)


def test_sigkill_during_a_slow_download_keeps_the_file_once_after_restart(sandbox, tmp_path):
    service = ServiceProcess(
        tmp_path, sandbox.url, extra_config="\n[archive]\nallow_private_hosts = true\n"
    )
    expected = sample_video(SIZE)
    partial = tmp_path / "media" / ".partial"
    with settings_restored(sandbox.settings) as settings:
        settings.files = FileSettings(video_bytes=SIZE, rate=RATE)
        try:
            service.start()
            job = service.submit("A slow river at dusk")
            reader = Reader(f"{service.url}/media/{job['id']}/video")
            reader.start()

            def midway() -> bool:
                return any(p.stat().st_size > 100_000 for p in partial.glob("*.partial"))

            wait_for(midway, timeout=20, what="a download under way")
            service.kill()
            assert not (tmp_path / "media" / f"{job['id']}.mp4").exists()
            service.start()
            wait_for(
                lambda: (
                    service.api.get(f"/api/jobs/{job['id']}").json()["media"]["status"] == "kept"
                ),
                timeout=30,
                what="the copy to be kept after the restart",
            )
            wait_for(lambda: reader.seen and reader.seen[-1][0] == 200, what="a whole read")
            reader.stopping.set()
            reader.join(10)
            kept = service.api.get(f"/api/jobs/{job['id']}").json()["media"]
        finally:
            service.close()
    assert kept["video"]["sha256"] == sha256(expected) and kept["video"]["bytes"] == SIZE
    # Once, and whole: one file per kind, nothing partial left, one record.
    assert media_files(tmp_path / "vidhook.db") == [f"{job['id']}-cover.png", f"{job['id']}.mp4"]
    assert (tmp_path / "media" / f"{job['id']}.mp4").read_bytes() == expected
    rows = service.rows("SELECT kind, bytes FROM media WHERE job_id = ? ORDER BY kind", job["id"])
    assert [tuple(r) for r in rows] == [("cover", len(sample_cover())), ("video", SIZE)]
    # The download started again from the first byte after the restart.
    fetched = [r for r in sandbox.vidu.requests if r.path.endswith(".mp4")]
    assert len(fetched) == 2
    # The reader saw nothing but "not kept yet" and then the complete file.
    statuses = {status for status, _ in reader.seen}
    assert statuses <= {404, 200} and 404 in statuses
    assert {digest for status, digest in reader.seen if status == 200} == {sha256(expected)}

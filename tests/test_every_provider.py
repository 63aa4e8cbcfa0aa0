"""Every provider type end to end, through a running service and the provider's fake:
the job completes, and vidhook keeps exactly the video the fake served."""

import hashlib

import pytest

from receiver.sandbox.media import sample_video
from tests.conftest import settings_restored

# The types vidhook speaks; each one's fake is in the sandbox under its own name.
TYPES = (
    "vidu", "kvid", "revid", "apimodels", "newapi", "kling", "runway", "luma", "minimax",
    "replicate", "fal", "pixverse", "veo",
)  # fmt: skip
KEPT_OR_NOT = ("kept", "failed", "expired")


@pytest.mark.parametrize("provider", TYPES)
def test_a_job_completes_and_its_video_is_kept_byte_for_byte(service, sandbox, provider):
    fake = getattr(sandbox, provider)
    with settings_restored(fake.settings):
        # PixVerse's webhook URL is set once for the account, in its console.
        if provider == "pixverse":
            fake.settings.webhook_url = f"{service.url}/callbacks/pixverse"
        job = service.submit("A lighthouse at dusk", provider=provider)
        done = service.wait(job["id"], lambda j: j["media"]["status"] in KEPT_OR_NOT, timeout=30)
    assert done["status"] == "completed"
    assert done["media"]["status"] == "kept", done["media"]
    served = sample_video(fake.settings.files.video_bytes)
    video = done["media"]["video"]
    assert (video["bytes"], video["sha256"]) == (len(served), hashlib.sha256(served).hexdigest())
    assert video["content_type"] == "video/mp4"
    # The signed link in the job opens the copy without credentials.
    opened = service.http.get(video["url"])
    assert opened.status_code == 200 and opened.content == served

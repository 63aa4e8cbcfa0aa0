"""Every provider type end to end, through a running service and the provider's fake:
the job completes, and vidhook keeps exactly the video the fake served."""

import hashlib
from pathlib import Path

import pytest

from receiver.providers import ADAPTERS
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


# How the README's "Canceling" names each type.
README_NAMES = {
    "vidu": "Vidu", "kvid": "kvid", "revid": "revid", "apimodels": "apimodels",
    "newapi": "new-api gateways", "kling": "Kling", "runway": "Runway", "luma": "Luma",
    "minimax": "MiniMax", "replicate": "Replicate", "fal": "fal", "pixverse": "PixVerse",
    "veo": "Veo",
}  # fmt: skip


def test_the_readme_says_which_providers_can_cancel():
    text = (Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")
    section = text.split("\n### Canceling\n", 1)[1].split("\n### ", 1)[0]
    can, cannot = section.split("\nThe others have no way to cancel a job:", 1)
    cannot = cannot.split("\n\n", 1)[0]
    bullets = {line[2:].split(" ", 1)[0].rstrip(":") for line in can.splitlines()
               if line.startswith("- ")}  # fmt: skip
    assert set(README_NAMES) == set(TYPES)
    for kind, name in README_NAMES.items():
        if ADAPTERS[kind].supports_cancel:
            assert name in bullets, kind
        else:
            assert name not in bullets and (name in cannot or f"Neither has {name}" in cannot), kind

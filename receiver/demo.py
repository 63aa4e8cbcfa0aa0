"""`vidhook demo`: the whole path on loopback, with no config, credentials or network.

Starts the sandbox providers and the receiver on free ports with a temporary database,
submits sample jobs through the admin API, prints each job's timeline, and succeeds only
if every job reached the end it was expected to reach.
"""

from __future__ import annotations

import logging
import secrets
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from receiver.app import create_app
from receiver.config import KEY_PAIR_TYPES, parse_config
from receiver.notify.links import human_size
from receiver.sandbox import (
    MARKER_MEANINGS,
    PREFIXES,
    ApimodelsFakeSettings,
    FakeSettings,
    FalFakeSettings,
    KlingFakeSettings,
    LumaFakeSettings,
    MiniMaxFakeSettings,
    NewApiFakeSettings,
    PixVerseFakeSettings,
    ReplicateFakeSettings,
    RunwayFakeSettings,
    ServerThread,
    VeoFakeSettings,
    ViduSandboxSettings,
    create_sandbox_app,
)
from receiver.sandbox.base import scenario_of
from receiver.states import Status
from receiver.timeline import format_timeline
from signing import standard


@dataclass(frozen=True)
class Sample:
    title: str
    payload: dict[str, Any]
    expected: str


SAMPLES = (
    Sample(
        "Vidu text-to-video, signed callbacks",
        {"provider": "vidu", "prompt": "A red fox trotting through fresh snow at dawn"},
        "completed",
    ),
    Sample(
        "Vidu image-to-video that the provider fails",
        {
            "provider": "vidu",
            "prompt": "The lighthouse beam sweeps the fog [fail]",
            "images": ["https://example.com/lighthouse.jpg"],
        },
        "failed",
    ),
    Sample(
        "Vidu with duplicated and out-of-order callbacks",
        {"provider": "vidu", "prompt": "Paper boats on a rainy street [duplicate] [out-of-order]"},
        "completed",
    ),
    Sample(
        "Vidu whose callbacks are lost: found by reconciliation polling",
        {"provider": "vidu", "prompt": "A hummingbird at a feeder, slow motion [lost]"},
        "completed",
    ),
    Sample(
        "apimodels: unsigned webhook, confirmed by a poll",
        {"provider": "apimodels", "prompt": "Tea steam curling in morning light"},
        "completed",
    ),
    Sample(
        "kvid: no webhooks, polled, with an undocumented status on the way",
        {"provider": "kvid", "prompt": "A paper crane unfolding [unknown]"},
        "completed",
    ),
    Sample(
        "revid: no webhooks, polled; the provider fails the job",
        {"provider": "revid", "prompt": "City traffic in time-lapse [fail]"},
        "failed",
    ),
    Sample(
        "new-api gateway: no webhooks, polled",
        {"provider": "newapi", "prompt": "Waves against black rocks", "model": "kling-v1"},
        "completed",
    ),
    Sample(
        "Luma: unsigned callbacks on every state, each sent twice; the last one confirmed",
        {"provider": "luma", "prompt": "A jellyfish drifting through blue light"},
        "completed",
    ),
    Sample(
        "MiniMax: the callback URL's challenge answered; the video file resolved by a poll",
        {"provider": "minimax", "prompt": "Rain on a neon street [Pan left]"},
        "completed",
    ),
    Sample(
        "Kling: unsigned callbacks, requests signed with a JWT; the end confirmed by a poll",
        {"provider": "kling", "prompt": "A koi pond in autumn, leaves drifting"},
        "completed",
    ),
    Sample(
        "Runway: no webhooks, polled",
        {"provider": "runway", "prompt": "A lighthouse on a cliff at dusk, waves below"},
        "completed",
    ),
    Sample(
        "Replicate: webhooks signed with the account's secret, applied as they say",
        {"provider": "replicate", "prompt": "A heron lifting off a misty river"},
        "completed",
    ),
    Sample(
        "fal: one webhook at the end, signed with Ed25519 keys fal publishes",
        {"provider": "fal", "prompt": "A glass of water catching the morning sun"},
        "completed",
    ),
    Sample(
        "PixVerse: a signed webhook to the account's one URL, naming its video",
        {"provider": "pixverse", "prompt": "Cherry blossoms falling on a quiet street"},
        "completed",
    ),
    Sample(
        "PixVerse whose webhook is lost: found by reconciliation polling",
        {"provider": "pixverse", "prompt": "A paper lantern rising into the night [lost]"},
        "completed",
    ),
    Sample(
        "Veo (Gemini API): the operation polled, the video fetched with the key",
        {"provider": "veo", "prompt": "A hot air balloon over green hills at sunrise"},
        "completed",
    ),
    Sample(
        "Veo: the video removed by Google's safety filters",
        {"provider": "veo", "prompt": "A crowd at a stadium, faces in close-up [filtered]"},
        "failed",
    ),
)
# Quick schedules for the demo; real defaults are in vidhook.example.toml. A callback
# job is reconciled only well after its fake's one-second run, so that on a busy machine
# its webhook still comes first, as the samples say.
DEMO_POLLING = {
    "initial_delay": 0.3,
    "poll_interval": 0.3,
    "poll_max_interval": 1.0,
    "reconcile_after": 4.0,
    "reconcile_interval": 2.0,
}


def demo_config(public_url: str, sandbox_url: str, database: Path, env: dict[str, str]) -> Any:
    return parse_config(
        {
            "public_url": public_url,
            "database": str(database),
            "admin_token_env": "VIDHOOK_DEMO_ADMIN_TOKEN",
            # Events as they happen, one line each, while the jobs run.
            "default_channels": ["console"],
            "channels": {"console": {"type": "console", "events": ["completed", "failed"]}},
            # The sandbox is on loopback, where a real service never downloads from.
            "archive": {"allow_private_hosts": True},
            "providers": {
                name: {
                    "base_url": f"{sandbox_url}/{name}",
                    **demo_keys(name),
                    **demo_extras(name, sandbox_url),
                    **DEMO_POLLING,
                }
                for name in PREFIXES
            },
        },
        env,
        source="<demo>",
    )


def demo_keys(provider: str) -> dict[str, str]:
    if provider in KEY_PAIR_TYPES:
        return {"access_key_env": "VIDHOOK_DEMO_ACCESS_KEY", "secret_key_env": "VIDHOOK_DEMO_KEY"}
    return {"api_key_env": "VIDHOOK_DEMO_KEY"}


def demo_extras(provider: str, sandbox_url: str) -> dict[str, str]:
    """What a provider type needs beyond its key: where the fake keeps its webhook keys."""
    if provider == "replicate":
        return {"webhook_secret_env": "VIDHOOK_DEMO_WEBHOOK_SECRET"}
    if provider == "fal":
        return {"jwks_url": f"{sandbox_url}/fal/.well-known/jwks.json"}
    if provider == "pixverse":
        return {"webhook_secret_env": "VIDHOOK_DEMO_PIXVERSE_SECRET"}
    return {}


def run_demo(timeout: float = 60.0, keep: bool = False, serve: bool = False) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    env = {
        "VIDHOOK_DEMO_ADMIN_TOKEN": secrets.token_urlsafe(24),
        "VIDHOOK_DEMO_KEY": "demo-" + secrets.token_hex(16),
        "VIDHOOK_DEMO_ACCESS_KEY": "demo-access-" + secrets.token_hex(8),
        "VIDHOOK_DEMO_WEBHOOK_SECRET": standard.new_secret(),
        "VIDHOOK_DEMO_PIXVERSE_SECRET": secrets.token_urlsafe(24),
    }
    tmp = tempfile.mkdtemp(prefix="vidhook-demo-")
    try:
        code = _serve_and_run(tmp, env, timeout, serve)
    finally:
        if not keep:
            shutil.rmtree(tmp, ignore_errors=True)
    if keep:
        database = Path(tmp) / "demo.db"
        print(f"\nthe database is kept: {database}")
        print(f"  sqlite3 {database} 'SELECT * FROM transitions'")
    return code


def _serve_and_run(tmp: str, env: dict[str, str], timeout: float, serve: bool) -> int:
    keys = [env["VIDHOOK_DEMO_KEY"]]
    pair = {env["VIDHOOK_DEMO_ACCESS_KEY"]: env["VIDHOOK_DEMO_KEY"]}
    app = create_sandbox_app(
        ViduSandboxSettings(api_keys=keys),
        kvid=FakeSettings(api_keys=keys),
        revid=FakeSettings(api_keys=keys),
        apimodels=ApimodelsFakeSettings(api_keys=keys, callback_retry_delays=(0.5, 1.0)),
        newapi=NewApiFakeSettings(api_keys=keys),
        kling=KlingFakeSettings(key_pairs=pair, callback_retry_delays=(0.5, 1.0)),
        runway=RunwayFakeSettings(api_keys=keys),
        luma=LumaFakeSettings(api_keys=keys),
        minimax=MiniMaxFakeSettings(api_keys=keys),
        replicate=ReplicateFakeSettings(
            api_keys=keys,
            webhook_secret=env["VIDHOOK_DEMO_WEBHOOK_SECRET"],
            webhook_retry_delays=(0.5, 1.0),
        ),
        fal=FalFakeSettings(api_keys=keys, webhook_retry_delays=(0.5, 1.0)),
        pixverse=PixVerseFakeSettings(
            api_keys=keys,
            webhook_secret=env["VIDHOOK_DEMO_PIXVERSE_SECRET"],
            webhook_retry_delays=(0.5, 1.0),
        ),
        veo=VeoFakeSettings(api_keys=keys),
    )
    with ServerThread(app) as sandbox:
        receiver = ServerThread(None)
        receiver.bind()
        config = demo_config(receiver.url, sandbox.url, Path(tmp) / "demo.db", env)
        receiver.app = create_app(config)
        # PixVerse's console: every job's webhook goes to the one account-level URL.
        app.state.pixverse.settings.webhook_url = config.callback_url("pixverse", None)
        with receiver:
            print(f"sandbox providers: {sandbox.url}")
            print(f"vidhook receiver:  {receiver.url} (database in {tmp})")
            print("\nnotifications (console channel) as they happen:")
            code = _run(receiver.url, env["VIDHOOK_DEMO_ADMIN_TOKEN"], timeout)
            if serve:
                _serve(receiver.url, env["VIDHOOK_DEMO_ADMIN_TOKEN"])
            return code


def _serve(url: str, admin_token: str) -> None:
    """Keep the demo's service up for a look at the dashboard, until Ctrl-C."""
    print(f"\ndashboard:   {url}/ui/")
    print(f"login token: {admin_token}")
    print("the demo keeps running; Ctrl-C stops it", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("\ndemo stopped")


def _run(url: str, admin_token: str, timeout: float) -> int:
    headers = {"Authorization": f"Bearer {admin_token}"}
    with httpx.Client(base_url=url, headers=headers, timeout=30) as http:
        ids = []
        for sample in SAMPLES:
            response = http.post("/api/jobs", json=sample.payload)
            response.raise_for_status()
            ids.append(response.json()["id"])
        deadline = time.monotonic() + timeout
        jobs: list[dict[str, Any]] = []
        while True:
            jobs = [http.get(f"/api/jobs/{job_id}").json() for job_id in ids]
            if all(_settled(j) for j in jobs):
                break
            if time.monotonic() > deadline:
                break
            time.sleep(0.2)
    ok = True
    for sample, job in zip(SAMPLES, jobs, strict=True):
        kept = job["media"]["status"] == "kept" or sample.expected != "completed"
        reached = job["status"] == sample.expected and _settled(job) and kept
        ok = ok and reached
        mark = "ok" if reached else f"EXPECTED {sample.expected}"
        print(f"\n{sample.title}\n  {job['id']}: {job['status']} [{mark}]")
        for marker in scenario_of(sample.payload["prompt"], list(MARKER_MEANINGS)):
            print(f"  [{marker}] in the prompt: {MARKER_MEANINGS[marker]}")
        for line in format_timeline(job):
            print(line)
        if job.get("error"):
            print(f"  error:  {job['error']}")
        for anomaly in job.get("anomalies") or []:
            print(f"  ignored: {anomaly['note']} (from {anomaly['source']})")
        video = job["media"]["video"]
        if video is not None:
            print(f"  kept:   {video['url']}")
            print(f"          {human_size(video['bytes'])} {video['content_type']}, "
                  f"sha256 {video['sha256'][:16]}…")  # fmt: skip
        elif job.get("result_url"):
            print(f"  result: {job['result_url']} (not kept: {job['media']['error']})")
    print("\ndemo " + ("passed: every job reached its expected end" if ok else "FAILED"))
    return 0 if ok else 1


def _settled(job: dict[str, Any]) -> bool:
    """Ended, its copy kept or given up on, and its notifications sent."""
    ended = Status(job["status"]).terminal and job["media"]["status"] != "pending"
    return ended and all(d["status"] == "delivered" for d in job["deliveries"])

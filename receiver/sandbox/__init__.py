"""Fake providers served on loopback for ``vidhook demo``, local development and tests.

Each provider is a Starlette app mounted under its own prefix (``/vidu``, ``/kvid``, ...),
so a provider's base_url is ``{sandbox_url}/{prefix}``.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager

from starlette.applications import Starlette
from starlette.routing import Mount

from receiver.sandbox.apimodels import ApimodelsFake, ApimodelsFakeSettings
from receiver.sandbox.base import MARKER_MEANINGS, FakeProvider, FakeSettings, Faults, Timing
from receiver.sandbox.fal import FalFake, FalFakeSettings
from receiver.sandbox.kling import KlingFake, KlingFakeSettings
from receiver.sandbox.kvid import KvidFake
from receiver.sandbox.luma import LumaFake, LumaFakeSettings
from receiver.sandbox.minimax import MiniMaxFake, MiniMaxFakeSettings
from receiver.sandbox.newapi import NewApiFake, NewApiFakeSettings
from receiver.sandbox.pixverse import PixVerseFake, PixVerseFakeSettings
from receiver.sandbox.replicate import ReplicateFake, ReplicateFakeSettings
from receiver.sandbox.revid import RevidFake
from receiver.sandbox.runway import RunwayFake, RunwayFakeSettings
from receiver.sandbox.server import ServerThread
from receiver.sandbox.veo import VeoFake, VeoFakeSettings
from receiver.sandbox.vidu import ViduSandbox, ViduSandboxSettings

__all__ = [
    "MARKER_MEANINGS",
    "PREFIXES",
    "ApimodelsFakeSettings",
    "FakeSettings",
    "FalFakeSettings",
    "Faults",
    "KlingFakeSettings",
    "LumaFakeSettings",
    "MiniMaxFakeSettings",
    "NewApiFakeSettings",
    "PixVerseFakeSettings",
    "ReplicateFakeSettings",
    "RunwayFakeSettings",
    "ServerThread",
    "Timing",
    "VeoFakeSettings",
    "ViduSandbox",
    "ViduSandboxSettings",
    "create_sandbox_app",
    "describe",
    "markers",
]

PREFIXES = (
    "vidu", "kvid", "revid", "apimodels", "newapi", "kling", "runway", "luma", "minimax",
    "replicate", "fal", "pixverse", "veo",
)  # fmt: skip


def create_sandbox_app(
    vidu: ViduSandboxSettings | None = None,
    *,
    kvid: FakeSettings | None = None,
    revid: FakeSettings | None = None,
    apimodels: ApimodelsFakeSettings | None = None,
    newapi: NewApiFakeSettings | None = None,
    kling: KlingFakeSettings | None = None,
    runway: RunwayFakeSettings | None = None,
    luma: LumaFakeSettings | None = None,
    minimax: MiniMaxFakeSettings | None = None,
    replicate: ReplicateFakeSettings | None = None,
    fal: FalFakeSettings | None = None,
    pixverse: PixVerseFakeSettings | None = None,
    veo: VeoFakeSettings | None = None,
) -> Starlette:
    """All fake providers in one app; ``app.state.<prefix>`` is each provider's fake."""
    fakes: dict[str, ViduSandbox | FakeProvider] = {
        "vidu": ViduSandbox(vidu),
        "kvid": KvidFake(kvid),
        "revid": RevidFake(revid),
        "apimodels": ApimodelsFake(apimodels),
        "newapi": NewApiFake(newapi),
        "kling": KlingFake(kling),
        "runway": RunwayFake(runway),
        "luma": LumaFake(luma),
        "minimax": MiniMaxFake(minimax),
        "replicate": ReplicateFake(replicate),
        "fal": FalFake(fal),
        "pixverse": PixVerseFake(pixverse),
        "veo": VeoFake(veo),
    }
    mounts = [Mount(f"/{name}", app=fake.app, name=name) for name, fake in fakes.items()]
    app = Starlette(routes=mounts, lifespan=_mounted_lifespans(mounts))
    for name, fake in fakes.items():
        setattr(app.state, name, fake)
    return app


def markers(app: Starlette) -> dict[str, tuple[str, ...]]:
    """Each mounted fake's prefix and the prompt markers it knows (its module's MARKERS)."""
    found: dict[str, tuple[str, ...]] = {}
    for route in app.routes:
        if isinstance(route, Mount) and route.name:
            fake = getattr(app.state, route.name)
            found[route.name] = tuple(getattr(sys.modules[type(fake).__module__], "MARKERS", ()))
    return found


def describe(app: Starlette, url: str) -> list[str]:
    """What `vidhook sandbox` says it serves: each provider's base URL, and the markers."""
    known = markers(app)
    lines = [
        f"vidhook sandbox: fake providers on {url}; any non-empty API key is accepted.",
        "",
        "provider   base_url",
        *(f"{name:<10} {url}/{name}" for name in known),
        "",
        "Put a marker in a prompt to choose what the fake provider does:",
    ]
    for marker in dict.fromkeys(m for found in known.values() for m in found):
        takers = [name for name, found in known.items() if marker in found]
        where = "every provider" if len(takers) == len(known) else ", ".join(takers)
        meaning = MARKER_MEANINGS.get(marker, "")
        lines.append(f"  [{marker}]".ljust(18) + f"{meaning} ({where})")
    pixverse = getattr(app.state, "pixverse", None)
    if isinstance(pixverse, PixVerseFake):
        console = pixverse.settings.webhook_url
        lines += [
            "",
            f"PixVerse sends every video's webhook to the URL set in its console: {console}"
            if console
            else "PixVerse's console has no webhook URL: it sends no webhooks (jobs are polled).",
        ]
    lines += ["", f"`vidhook init --sandbox {url}` writes a vidhook.toml that uses these."]
    return lines


def _mounted_lifespans(
    mounts: Sequence[Mount],
) -> Callable[[Starlette], AbstractAsyncContextManager[None]]:
    # Starlette does not run the lifespan of mounted apps, and each fake provider
    # relies on its own to cancel its background tasks on shutdown.
    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            for mount in mounts:
                if isinstance(mount.app, Starlette):
                    await stack.enter_async_context(mount.app.router.lifespan_context(mount.app))
            yield

    return lifespan

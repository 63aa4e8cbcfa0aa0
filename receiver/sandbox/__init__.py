"""Fake providers served on loopback for ``vidhook demo``, local development and tests.

Each provider is a Starlette app mounted under its own prefix (``/vidu``, ...), so a
provider's base_url is ``{sandbox_url}/{prefix}``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager

from starlette.applications import Starlette
from starlette.routing import Mount

from receiver.sandbox.server import ServerThread
from receiver.sandbox.vidu import ViduSandbox, ViduSandboxSettings

__all__ = ["ServerThread", "ViduSandbox", "ViduSandboxSettings", "create_sandbox_app"]


def create_sandbox_app(vidu: ViduSandboxSettings | None = None) -> Starlette:
    """All fake providers in one app; ``app.state.vidu`` is the :class:`ViduSandbox`."""
    vidu_sandbox = ViduSandbox(vidu)
    mounts = [Mount("/vidu", app=vidu_sandbox.app, name="vidu")]
    app = Starlette(routes=mounts, lifespan=_mounted_lifespans(mounts))
    app.state.vidu = vidu_sandbox
    return app


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

"""Running behind a reverse proxy: trusted forwarding headers, allowed hosts, a path prefix.

Order matters and is set in app.py: forwarding headers first (so the scheme and client
are the public ones), then the Host check, then the prefix. A proxy may pass the
public_url's path prefix through or strip it; both work.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from receiver.responses import error


def host_name(host_header: str) -> str:
    """The name part of a Host header: no port, no IPv6 brackets, lower case."""
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


class AllowedHosts:
    """Refuse requests for hosts this service is not (a Host header mismatch is a 400)."""

    def __init__(self, app: ASGIApp, hosts: tuple[str, ...]) -> None:
        self.app = app
        self.any = "*" in hosts
        self.hosts = {h.lower().strip("[]") for h in hosts}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not self.any:
            raw = next((v for k, v in scope["headers"] if k == b"host"), b"")
            host = host_name(raw.decode("latin-1"))
            if host not in self.hosts:
                response = error(
                    400,
                    "host_not_allowed",
                    "this Host is not served here; check public_url and [server] allowed_hosts",
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


class PathPrefix:
    """Serve public_url's path prefix, whether the proxy passes it through or strips it.

    Starlette expects ``path`` to be the full path and ``root_path`` the mount point, so
    a stripped request gets its prefix back: the app then sees the public URL either way.
    """

    def __init__(self, app: ASGIApp, prefix: str) -> None:
        self.app = app
        self.prefix = prefix.rstrip("/")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.prefix and scope["type"] == "http":
            scope = dict(scope)
            path = scope.get("path", "")
            if not (path == self.prefix or path.startswith(self.prefix + "/")):
                scope["path"] = self.prefix + path
                raw = scope.get("raw_path")
                if raw:
                    scope["raw_path"] = self.prefix.encode() + raw
            scope["root_path"] = self.prefix
        await self.app(scope, receive, send)

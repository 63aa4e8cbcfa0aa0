"""Refusing cross-site requests that ride on the session cookie.

Three checks, any of which refuses: the browser's own word (``Sec-Fetch-Site`` other
than same-origin), an ``Origin`` that is not this service's, and, for forms, a CSRF
token that does not belong to the session. SameSite=Strict already keeps the cookie off
cross-site requests; these hold where it does not (a sibling subdomain is same-site).
"""

from __future__ import annotations

from urllib.parse import urlsplit

from starlette.requests import Request

from receiver.config import Config

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# "none": the user opened the URL themselves (typed, bookmarked); never a forged request.
_TRUSTED_FETCH_SITES = frozenset({"same-origin", "none"})


def _origin_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


def own_origins(request: Request, config: Config) -> set[str]:
    """The public URL's origin, and the one this request was addressed to (a browser on
    an SSH tunnel or on the host's loopback name sees the service there)."""
    origins = {_origin_of(config.public_url)}
    host = request.headers.get("host")
    if host:
        origins.add(f"{request.url.scheme}://{host}".lower())
    return origins


def same_origin(request: Request, config: Config) -> bool:
    """Whether nothing says the request came from another site; an unsafe request must
    also carry proof from the browser (Origin or Sec-Fetch-Site) to pass."""
    site = request.headers.get("sec-fetch-site")
    if site is not None and site not in _TRUSTED_FETCH_SITES:
        return False
    origin = request.headers.get("origin")
    if origin is not None:
        return origin.lower() in own_origins(request, config)
    return site is not None

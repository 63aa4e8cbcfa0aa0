"""The dashboard's session cookie and the CSRF token tied to it.

A session is ``<expires>.<nonce>.<mac>``: an expiry, a random nonce and an HMAC of both
under a key derived from the admin token. Nothing is stored server-side, the admin token
never leaves the server, and rotating the token ends every session (their MACs no longer
verify). A form's CSRF token is another HMAC of the session's nonce, so it is worthless
without the cookie it belongs to.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from urllib.parse import urlsplit

from receiver.config import Config

SESSION_SECONDS = 12 * 3600
_KEY_LABEL = b"vidhook dashboard session v1"


@dataclass(frozen=True)
class Session:
    expires: int
    nonce: str


@dataclass(frozen=True)
class CookieSpec:
    """How the cookie is named and scoped for this service's public URL."""

    name: str
    path: str
    secure: bool


def cookie_spec(config: Config) -> CookieSpec:
    secure = urlsplit(config.public_url).scheme == "https"
    prefix = config.public_path
    if secure and not prefix:
        # __Host-: the browser accepts it only with Secure, Path=/ and no Domain, so no
        # other host, sibling subdomains included, can set or shadow it.
        return CookieSpec("__Host-vidhook-session", "/", True)
    if secure:
        return CookieSpec("__Secure-vidhook-session", prefix + "/", True)
    return CookieSpec("vidhook-session", (prefix or "") + "/", False)


def _key(config: Config) -> bytes:
    token = config.admin_token.reveal().encode()
    return hmac.new(token, _KEY_LABEL, hashlib.sha256).digest()


def _mac(key: bytes, message: str) -> str:
    digest = hmac.new(key, message.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def new_session(config: Config, now: float) -> tuple[Session, str]:
    """A fresh session and its cookie value."""
    session = Session(int(now) + SESSION_SECONDS, secrets.token_urlsafe(18))
    body = f"{session.expires}.{session.nonce}"
    return session, f"{body}.{_mac(_key(config), body)}"


def read_session(config: Config, value: str | None, now: float) -> Session | None:
    """The session a cookie value carries, if it is genuine and not expired."""
    if not value or len(value) > 200:
        return None
    parts = value.split(".")
    if len(parts) != 3 or not parts[0].isascii() or not parts[0].isdigit():
        return None
    expires, nonce, mac = parts
    if not hmac.compare_digest(mac.encode(), _mac(_key(config), f"{expires}.{nonce}").encode()):
        return None
    if int(expires) <= now:
        return None
    return Session(int(expires), nonce)


def csrf_token(config: Config, session: Session) -> str:
    return _mac(_key(config), f"csrf.{session.nonce}")


def csrf_matches(config: Config, session: Session, given: str | None) -> bool:
    return bool(given) and hmac.compare_digest(
        str(given).encode(), csrf_token(config, session).encode()
    )

"""Signed media links: anyone holding one may open that file of that job until it expires.

The signature is an HMAC-SHA256 over the job id, the kind (video or cover) and the expiry.
Its key is derived from the admin token rather than kept anywhere: it survives restarts,
every replica behind a load balancer derives the same one, nothing new has to be
generated, stored or backed up, and the database never holds it. Rotating the admin token
therefore also revokes every link given out, which is what a leaked token calls for.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math

from receiver.config import Secret

_PURPOSE = b"vidhook media links v1"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class Links:
    def __init__(self, key: bytes, public_url: str, ttl: float) -> None:
        self._key = key
        self.public_url = public_url.rstrip("/")
        self.ttl = ttl

    @classmethod
    def from_admin_token(cls, token: Secret, public_url: str, ttl: float) -> Links:
        key = hmac.new(token.reveal().encode(), _PURPOSE, hashlib.sha256).digest()
        return cls(key, public_url, ttl)

    def signature(self, job_id: str, kind: str, expires: int) -> str:
        message = f"{job_id}\n{kind}\n{expires}".encode()
        return _b64(hmac.new(self._key, message, hashlib.sha256).digest())

    def url(self, job_id: str, kind: str, now: float) -> str:
        expires = math.ceil(now + self.ttl)
        sig = self.signature(job_id, kind, expires)
        return f"{self.public_url}/media/{job_id}/{kind}?expires={expires}&sig={sig}"

    def verify(
        self, job_id: str, kind: str, expires: str | None, sig: str | None, now: float
    ) -> bool:
        """True for a link made by ``url`` for this job and kind that has not expired."""
        if not expires or not sig or not expires.isascii() or not expires.isdigit():
            return False
        if len(expires) > 12 or int(expires) < now:
            return False
        expected = self.signature(job_id, kind, int(expires))
        return hmac.compare_digest(expected.encode(), sig.encode("ascii", "replace"))

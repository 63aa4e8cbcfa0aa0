"""An independent Vidu callback signer for tests, written from the published scheme.

It shares no code with ``signing.vidu``, so a test that signs here and verifies in the
service checks the service against the scheme, not against itself.
"""

import base64
import hashlib
import hmac
import uuid
from datetime import UTC, datetime
from email.utils import format_datetime
from urllib.parse import urlsplit


def vidu_headers(secret, url, *, when=None, nonce=None, method="POST"):
    parts = urlsplit(url)
    date = format_datetime(when or datetime.now(UTC), usegmt=True)
    nonce = nonce or str(uuid.uuid4())
    text = (
        f"{method}\n{parts.path or '/'}\n{parts.query}\nvidu\n{date}\n"
        f"Date:{date}\nx-request-nonce:{nonce}\n"
    )
    digest = hmac.new(secret.encode(), text.encode(), hashlib.sha256).digest()
    return {
        "Date": date,
        "x-request-nonce": nonce,
        "X-HMAC-SIGNED-HEADERS": "Date;x-request-nonce",
        "X-HMAC-SIGNATURE": base64.b64encode(digest).decode(),
        "X-HMAC-ALGORITHM": "hmac-sha256",
        "X-HMAC-ACCESS-KEY": "vidu",
        "Content-Type": "application/json",
    }

"""Sign and verify provider and webhook signatures.

A pure library: the standard library and cryptography only. Every way a signature can be
wrong ends in :class:`SignatureError`, whose ``reason`` names the check that failed.

One module per scheme: :mod:`signing.vidu` (HMAC over the request line and headers),
:mod:`signing.standard` (Standard Webhooks: Replicate's, and vidhook's own outgoing
webhooks), :mod:`signing.fal` (Ed25519 against fal's published keys) and
:mod:`signing.pixverse` (HMAC over the time, a nonce and the body's fields).
"""

from __future__ import annotations

__all__ = ["SignatureError"]


class SignatureError(Exception):
    """A signature did not verify; ``reason`` is a short machine-readable code.

    Reasons: ``missing_header``, ``malformed_header``, ``unsupported_algorithm``,
    ``malformed_date``, ``stale_date``, ``malformed_body`` (a signature over parsed
    fields, whose body cannot be parsed), ``bad_signature``; and ``wrong_task``, raised by
    receivers when a genuine callback is about another job than the one it was sent to.
    The message never contains a secret or an expected signature.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message

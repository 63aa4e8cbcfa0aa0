"""Sign and verify provider and webhook signatures.

A pure library: the standard library and cryptography only. Every way a signature can be
wrong ends in :class:`SignatureError`, whose ``reason`` names the check that failed.
"""

from __future__ import annotations

__all__ = ["SignatureError"]


class SignatureError(Exception):
    """A signature did not verify; ``reason`` is a short machine-readable code.

    Reasons: ``missing_header``, ``malformed_header``, ``unsupported_algorithm``,
    ``malformed_date``, ``stale_date``, ``bad_signature``.
    The message never contains a secret or an expected signature.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message

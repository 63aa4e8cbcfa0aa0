"""The Range header of a GET: one byte range, as RFC 9110 describes (several are served
as the whole file, which the RFC allows)."""

from __future__ import annotations


class Unsatisfiable(Exception):
    """The range starts past the end of the file: answered 416."""


def byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The first and last byte asked for, or None for the whole file.

    A header that is malformed, for another unit, or asks for several ranges is
    ignored, as the RFC allows; a range past the end raises Unsatisfiable.
    """
    if not header:
        return None
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first_text, dash, last_text = spec.strip().partition("-")
    if not dash or not (first_text + last_text).isascii():
        return None
    first_text, last_text = first_text.strip(), last_text.strip()
    if not first_text:  # a suffix: the last N bytes
        if not last_text.isdigit():
            return None
        length = int(last_text)
        if length == 0 or size == 0:
            raise Unsatisfiable
        return max(0, size - length), size - 1
    if not first_text.isdigit() or (last_text and not last_text.isdigit()):
        return None
    first = int(first_text)
    if last_text and int(last_text) < first:
        return None
    if first >= size:
        raise Unsatisfiable
    last = int(last_text) if last_text else size - 1
    return first, min(last, size - 1)

"""Logging for `vidhook serve`: readable text or one JSON object a line, secrets redacted.

One handler on the root logger carries everything, uvicorn's loggers included. Its
filter formats each record itself and replaces every secret the config knows, and the
shapes of secrets it cannot know (callback tokens, Slack webhook paths, Bearer tokens,
passwords in URLs), before any formatter sees the record. Exception text is redacted the
same way: a traceback quotes exception messages, and those can hold a URL or a key.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, TextIO
from urllib.parse import quote, unquote, urlsplit

from receiver.config import Config, Secret

__all__ = [
    "FORMATS",
    "REDACTED",
    "JsonFormatter",
    "RedactingFilter",
    "Redactor",
    "TextFormatter",
    "config_secrets",
    "configure",
]

FORMATS = ("text", "json")
REDACTED = "***"
# A shorter secret would turn ordinary words of every line into "***"; keys and tokens
# are far longer, and a password this short is no secret to begin with.
MIN_SECRET_LENGTH = 4
# The path of a URL-shaped secret (a webhook) is what makes it secret: it is redacted on
# its own as well, since a request line or a proxy's error may quote the path alone.
MIN_SECRET_PATH = 8

# Secrets vidhook cannot know by value; each keeps its harmless prefix, for reading. The
# third item lists text one of which any match must contain, lowercase for the (?i)
# patterns: a line without any of them skips that pattern (most lines skip them all).
_PATTERNS: tuple[tuple[re.Pattern[str], str, tuple[str, ...]], ...] = (
    # /callbacks/{provider}/{token}: the token is each job's own secret.
    (
        re.compile(r"(/callbacks/[^/\s?#\"'<>]+/)[^/\s?#\"'<>]+"),
        r"\1" + REDACTED,
        ("/callbacks/",),
    ),
    # Slack incoming webhooks (and workflow triggers): the path is the credential.
    (
        re.compile(r"(hooks\.slack(?:-gov)?\.com/(?:services|workflows|triggers)/)[^\s\"'<>]+"),
        r"\1" + REDACTED,
        ("hooks.slack",),
    ),
    # Standard Webhooks secrets (HMAC and Ed25519) and Slack tokens.
    (re.compile(r"\bwhs(?:ec|k)_[A-Za-z0-9+/=_-]+"), REDACTED, ("whs",)),
    (re.compile(r"\bxox[a-z]-[A-Za-z0-9-]+"), REDACTED, ("xox",)),
    # Credentials in Authorization-like headers, wherever a header dump shows them.
    (
        re.compile(
            r"(?i)((?:authorization|x-api-key)[\"']?\s*[:=]\s*[\"']?"
            r"(?:(?:bearer|token|basic|digest)\s+)?)[^\s\"',;}]+"
        ),
        r"\1" + REDACTED,
        ("authorization", "x-api-key"),
    ),
    (re.compile(r"(?i)(\bbearer\s+)[A-Za-z0-9._~+/=-]+"), r"\1" + REDACTED, ("bearer",)),
    # user:password@ in a URL (SMTP, proxies, databases).
    (
        re.compile(r"(?i)(\b[a-z][a-z0-9+.-]*://[^/\s:@\"'<>]*:)[^/\s@\"'<>]*@"),
        r"\1" + REDACTED + "@",
        ("://",),
    ),
)


class Redactor:
    """Replaces known secret values and secret-shaped text with ``***``."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._values: set[str] = set()
        self._exact: re.Pattern[str] | None = None
        self.add(*secrets)

    def add(self, *secrets: str) -> None:
        for secret in secrets:
            self._values.update(v for v in _forms(secret) if len(v) >= MIN_SECRET_LENGTH)
        if self._values:
            # Longest first: a secret that contains another is replaced whole.
            ordered = sorted(self._values, key=len, reverse=True)
            self._exact = re.compile("|".join(re.escape(v) for v in ordered))

    def __call__(self, text: str) -> str:
        if self._exact is not None:
            text = self._exact.sub(REDACTED, text)
        # Only ASCII text may skip a pattern: (?i) also matches a few non-ASCII letters
        # (U+212A, U+017F, U+0131, U+0130) that lower() leaves alone: a check would miss them.
        folded = text.lower() if text.isascii() else None
        for pattern, replacement, needles in _PATTERNS:
            if folded is None or any(needle in folded for needle in needles):
                text = pattern.sub(replacement, text)
        return text


def _forms(secret: str) -> set[str]:
    """The secret as it may appear in a log line: as is, URL-encoded, its URL path."""
    forms = {secret, quote(secret, safe=""), quote(secret)}
    try:
        parts = urlsplit(secret)
    except ValueError:
        return forms
    if parts.scheme in ("http", "https") and parts.netloc:
        tail = parts.path + (f"?{parts.query}" if parts.query else "")
        if len(tail) >= MIN_SECRET_PATH:
            forms.add(tail)
    return forms


def config_secrets(config: Config) -> list[str]:
    """Every secret value the configuration holds: keys, the admin token, channel secrets."""
    found: list[Secret] = [config.admin_token]
    for provider in config.providers.values():
        found.extend(part for key in provider.keys for part in key.parts)
        if provider.webhook_secret is not None:
            found.append(provider.webhook_secret)
    for channel in config.channels.values():
        found.extend(channel.secrets.values())
    revealed = [secret.reveal() for secret in found]
    if config.database_url is not None:
        # The URL, and its password alone: a driver's message may quote either.
        url = config.database_url.reveal()
        revealed.append(url)
        password = urlsplit(url).password
        if password:
            revealed.append(unquote(password))
            revealed.append(password)
    return revealed


# Only its formatException is used: the same traceback text any handler would print.
_TRACEBACKS = logging.Formatter()


class RedactingFilter(logging.Filter):
    """Formats the record's message and exception text, then redacts both in place.

    Installed on a handler, so every record that handler emits passes through it, from
    whichever logger. Always returns True: it cleans records, it never drops them.
    """

    def __init__(self, redactor: Redactor) -> None:
        super().__init__()
        self.redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception as exc:
            # logging's own error report would print the raw arguments: say less.
            message = (
                f"unformattable log message at {record.pathname}:{record.lineno} "
                f"({exc.__class__.__name__})"
            )
        record.msg = self.redactor(message)
        record.args = ()
        if record.exc_info and not record.exc_text:
            record.exc_text = _TRACEBACKS.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redactor(record.exc_text)
        if record.stack_info:
            record.stack_info = self.redactor(record.stack_info)
        return True


# The last whole second formatted, with its text: strftime cost more than the rest of a
# log line's formatting, and lines come many to the second.
_last_second: tuple[datetime, str] = (datetime.min.replace(tzinfo=UTC), "")


def iso_utc(timestamp: float) -> str:
    global _last_second
    moment = datetime.fromtimestamp(timestamp, UTC)
    whole = moment.replace(microsecond=0)
    cached, text = _last_second  # one read: another thread may swap the pair meanwhile
    if whole != cached:
        text = whole.strftime("%Y-%m-%dT%H:%M:%S.")
        _last_second = (whole, text)
    return f"{text}{moment.microsecond // 1000:03d}Z"


# Control characters (C0, DEL, C1, and the two Unicode line breaks) as they are shown in
# text logs. A message quotes paths, header values and provider errors; raw, a newline
# there would start a forged record, an ANSI escape would rewrite the operator's terminal.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escaped(match: re.Match[str]) -> str:
    char = match.group()
    return _NAMED.get(char) or (
        f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}"
    )


def escape_controls(text: str) -> str:
    """``text`` with every control character written as an escape, so that it is one line."""
    return _CONTROL.sub(_escaped, text)


class TextFormatter(logging.Formatter):
    """``2025-05-06T12:09:00.123Z INFO vidhook.poller: message``, then any traceback.

    The message is always one line: control characters in it are escaped. A traceback or
    stack keeps its line breaks, each of its lines indented, so that no line of it (an
    exception message can quote a provider) can pass for a record of its own.
    """

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return iso_utc(record.created)

    def format(self, record: logging.LogRecord) -> str:
        record.message = escape_controls(record.getMessage())
        record.asctime = self.formatTime(record)
        text = self.formatMessage(record)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        for block in (record.exc_text, record.stack_info and self.formatStack(record.stack_info)):
            if block:
                text += "".join(f"\n  {escape_controls(line)}" for line in block.split("\n"))
        return text


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time (ISO, UTC), level, logger, message, exc_info."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": iso_utc(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exc_info"] = record.exc_text
        if record.stack_info:
            entry["stack_info"] = self.formatStack(record.stack_info)
        # ASCII escapes: a lone surrogate from a prompt cannot break the line's encoding,
        # and a newline inside a message cannot split the object over two lines.
        return json.dumps(entry, ensure_ascii=True)


# uvicorn's loggers: with log_config=None uvicorn adds no handlers of its own, and these
# propagate to the root handler; the cleanup covers loggers set up before that.
_UVICORN_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.asgi")


def configure(
    level: str = "info",
    fmt: str = "text",
    secrets: Iterable[str] = (),
    stream: TextIO | None = None,
) -> logging.Handler:
    """Route every log record through one redacting handler on the root logger."""
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}")
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(RedactingFilter(Redactor(secrets)))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    for name in _UVICORN_LOGGERS:
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
        logger.setLevel(logging.NOTSET)  # uvicorn.run sets its own level afterwards
    # httpx logs every request URL at INFO, and URLs can carry secrets; redaction would
    # catch the known ones, but a URL is noise at INFO anyway.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    # Warnings become records too, so that JSON logs stay one object a line.
    logging.captureWarnings(True)
    # Neither format shows the thread or the process, and looking them up for every
    # record was half the cost of a log line (two lines per callback under load).
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    return handler


# Where a handler leaves words for its request's access line (a list in the ASGI scope,
# which the copies of the scope that middlewares make all share): one line a request.
ACCESS_NOTES = "vidhook.access_notes"


def access_note(scope: Mapping[str, Any], text: str) -> bool:
    """Add ``text`` to the request's access line; False when no access line is kept."""
    notes = scope.get(ACCESS_NOTES)
    if notes is None:
        return False
    notes.append(text)
    return True

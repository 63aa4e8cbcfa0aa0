"""The email channel: one multipart message per event, sent over SMTP with aiosmtplib.

Security is explicit and never downgraded: "starttls" fails when the server does not offer
STARTTLS instead of sending in the clear, "tls" speaks TLS from the first byte, and "none"
never upgrades. Certificates are always verified; ``ca_file`` adds a private CA.

A message either reaches every recipient or none: the whole envelope is checked before
DATA, so a retry after a refused recipient never sends the others a second copy.
"""

from __future__ import annotations

import html
import socket
import ssl
from collections.abc import Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass
from datetime import datetime
from email.header import Header
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from email.utils import formatdate, getaddresses, make_msgid, parseaddr
from typing import Any
from urllib.parse import urlsplit

import aiosmtplib
import httpx

from receiver.config import ChannelConfig, Secret
from receiver.notify.base import Channel, DeliveryError, Event, Kind
from receiver.notify.links import human_size, result_links

__all__ = ["DEFAULT_PORTS", "EmailChannel", "EmailSettings", "render", "subject_for"]

DEFAULT_PORTS = {"starttls": 587, "tls": 465, "none": 25}
DEFAULT_TIMEOUT = 10.0
SUBJECT_EXCERPT = 60
_SERVER_TEXT_MAX = 200
_HEADLINES = {
    "completed": "Your video is ready.",
    "failed": "Your video could not be generated.",
    "canceled": "Your video was canceled before it was generated.",
    "processing": "Your video is being generated.",
    "queued": "Your video is queued.",
}


@dataclass(frozen=True)
class EmailSettings:
    """The channel's options, checked: ``from_config`` reports every problem at once."""

    host: str
    port: int
    security: str
    sender: str  # the From header as configured, display name included
    recipients: tuple[str, ...]  # the To entries as configured
    username: str | None = None
    password: Secret | None = None
    timeout: float = DEFAULT_TIMEOUT
    ca_file: str | None = None

    @property
    def envelope_sender(self) -> str:
        return parseaddr(self.sender)[1]

    @property
    def envelope_recipients(self) -> tuple[str, ...]:
        return tuple(parseaddr(r)[1] for r in self.recipients)

    @classmethod
    def from_config(cls, config: ChannelConfig) -> EmailSettings:
        options, key = config.options, f"channels.{config.name}"
        problems: list[str] = []

        def problem(name: str, what: str) -> None:
            problems.append(f"{key}.{name}: {what}")

        host: Any = options.get("host")
        if not isinstance(host, str) or not host or _unsafe(host):
            problem("host", "required: the SMTP server's host name")
        security = options.get("security", "starttls")
        if not isinstance(security, str) or security not in DEFAULT_PORTS:
            problem("security", f"must be one of {', '.join(DEFAULT_PORTS)}")
            security = "starttls"
        port = options.get("port", DEFAULT_PORTS[security])
        if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
            problem("port", "must be a port number between 1 and 65535")
        sender: Any = options.get("from")
        if not isinstance(sender, str) or not _address_ok(sender):
            problem("from", 'required: one ASCII address, such as "vidhook <vidhook@example.com>"')
        to = options.get("to")
        recipients: Any = [to] if isinstance(to, str) else to
        if (
            not isinstance(recipients, list)
            or not recipients
            or not all(isinstance(r, str) and _address_ok(r) for r in recipients)
        ):
            problem("to", 'required: a list of ASCII addresses, such as ["team@example.com"]')
        username = options.get("username")
        if username is not None and (
            not isinstance(username, str) or not username or _unsafe(username)
        ):
            problem("username", "must be a non-empty string")
        password = config.secrets.get("password")
        if username and password is None:
            problem("password_env", "missing; name the variable holding the SMTP password")
        if password is not None and not username:
            problem("username", "missing; password_env is set, so name the user to log in as")
        timeout = options.get("timeout", DEFAULT_TIMEOUT)
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
            problem("timeout", "must be a positive number of seconds")
        ca_file = options.get("ca_file")
        if ca_file is not None and (not isinstance(ca_file, str) or not ca_file):
            problem("ca_file", "must be the path of a PEM file of CA certificates")
        if problems:
            # ValueError, like the other channels; one problem per line.
            raise ValueError("\n".join(problems))
        return cls(
            host=host, port=port, security=security, sender=sender,
            recipients=tuple(recipients), username=username, password=password,
            timeout=float(timeout), ca_file=ca_file,
        )  # fmt: skip


def _unsafe(value: str) -> bool:
    return any(not c.isprintable() for c in value)


def _address_ok(value: str) -> bool:
    """One plain mailbox, display name allowed.

    Non-ASCII mailboxes would need SMTPUTF8, which many servers lack. "a@x, b@y" in one
    entry is refused: the envelope would take the first and silently drop the other.
    """
    if len(getaddresses([value])) != 1:
        return False
    address = parseaddr(value)[1]
    local, at, domain = address.rpartition("@")
    return (
        bool(local and at and domain)
        and address.isascii()
        and not _unsafe(value)
        and not any(c in address for c in ' <>"')
    )


class EmailChannel(Channel):
    def __init__(self, config: ChannelConfig, client: httpx.AsyncClient) -> None:
        super().__init__(config, client)
        self.settings = EmailSettings.from_config(config)
        self._tls = (
            None if self.settings.security == "none" else _tls_context(config.name, self.settings)
        )

    async def send(self, event: Event) -> None:
        s = self.settings
        data = render(event, s.sender, s.recipients).as_bytes()
        smtp = aiosmtplib.SMTP(
            hostname=s.host,
            port=s.port,
            username=s.username,
            password=s.password.reveal() if s.password else None,
            timeout=s.timeout,
            use_tls=s.security == "tls",
            # False rather than None for "tls" and "none": None means "upgrade if offered".
            start_tls=s.security == "starttls",
            validate_certs=True,
            tls_context=self._tls,
        )
        try:
            await smtp.connect()  # greeting, STARTTLS, AUTH
            await self._transfer(smtp, data)
        except _Refused as exc:
            raise self._refused(exc.refusals) from None
        except aiosmtplib.SMTPException as exc:
            raise self._smtp_failure(exc) from None
        except (OSError, TimeoutError) as exc:
            raise self._network_failure(exc) from None
        finally:
            smtp.close()

    async def _transfer(self, smtp: aiosmtplib.SMTP, data: bytes) -> None:
        await smtp.mail(self.settings.envelope_sender)
        refusals: list[aiosmtplib.SMTPRecipientRefused] = []
        for recipient in self.settings.envelope_recipients:
            try:
                await smtp.rcpt(recipient)
            except aiosmtplib.SMTPRecipientRefused as exc:
                refusals.append(exc)
        if refusals:
            with suppress(aiosmtplib.SMTPException, OSError, TimeoutError):
                await smtp.rset()
            raise _Refused(refusals)
        await smtp.data(data)
        # The server has taken the message: a failed goodbye must not cause a resend.
        with suppress(aiosmtplib.SMTPException, OSError, TimeoutError):
            await smtp.quit()

    # -- failures: each names the server and what went wrong, never the password --

    def _where(self) -> str:
        return f"SMTP server {self.settings.host}:{self.settings.port}"

    def _scrub(self, text: str) -> str:
        text = " ".join(text.split())
        if self.settings.password is not None:
            text = text.replace(self.settings.password.reveal(), "***")
        return _cut(text, _SERVER_TEXT_MAX)

    def _answer(self, code: int, step: str, text: str) -> DeliveryError:
        message = f"{self._where()} answered {code}{step}: {self._scrub(text)}"
        return DeliveryError(message, kind=_kind(code), status_code=code)

    def _refused(self, refusals: Sequence[aiosmtplib.SMTPRecipientRefused]) -> DeliveryError:
        # One permanent refusal dooms every attempt, since the message goes to all or none.
        worst = max(refusals, key=lambda r: (_kind(r.code) == "permanent", r.code))
        who = ", ".join(f"<{r.recipient}> ({r.code})" for r in refusals)
        message = f"{self._where()} refused {who}; nothing was sent: {self._scrub(worst.message)}"
        return DeliveryError(message, kind=_kind(worst.code), status_code=worst.code)

    def _smtp_failure(self, exc: aiosmtplib.SMTPException) -> DeliveryError:
        if isinstance(exc, aiosmtplib.SMTPAuthenticationError):
            user = self.settings.username
            return self._answer(exc.code, f" to the login of user {user!r}", exc.message)
        if isinstance(exc, aiosmtplib.SMTPResponseException):
            return self._answer(exc.code, _step(exc), exc.message)
        if isinstance(exc, aiosmtplib.SMTPTimeoutError):
            return DeliveryError(f"{self._where()} timed out", kind="transient")
        if isinstance(exc, aiosmtplib.SMTPConnectError | aiosmtplib.SMTPServerDisconnected):
            return self._network_failure(exc)
        # What is left is a mismatch with the server (no STARTTLS, no AUTH): retrying
        # cannot change it, and falling back to plain text would leak the password.
        return DeliveryError(f"{self._where()}: {self._scrub(exc.message)}", kind="permanent")

    def _network_failure(self, exc: BaseException) -> DeliveryError:
        return DeliveryError(f"{self._where()}: {_network_reason(exc)}", kind="transient")


class _Refused(Exception):
    def __init__(self, refusals: list[aiosmtplib.SMTPRecipientRefused]) -> None:
        super().__init__("recipients refused")
        self.refusals = refusals


def _kind(code: int) -> Kind:
    # 5xx means the server will say the same next time; anything else may pass later.
    return "permanent" if 500 <= code < 600 else "transient"


def _step(exc: aiosmtplib.SMTPResponseException) -> str:
    if isinstance(exc, aiosmtplib.SMTPConnectResponseError):
        return " on connect"
    if isinstance(exc, aiosmtplib.SMTPHeloError):
        return " to EHLO"
    if isinstance(exc, aiosmtplib.SMTPSenderRefused):
        return f" to MAIL FROM <{exc.sender}>"
    if isinstance(exc, aiosmtplib.SMTPDataError):
        return " to DATA"
    return ""  # STARTTLS is the only other command whose refusal reaches here


def _network_reason(exc: BaseException) -> str:
    """Why the connection failed, from aiosmtplib's wrapper or the error under it."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return f"TLS certificate not trusted ({seen.verify_message})"
        if isinstance(seen, ssl.SSLError):
            return f"TLS failed ({seen.reason or seen.__class__.__name__})"
        if isinstance(seen, ConnectionRefusedError):
            return "connection refused"
        if isinstance(seen, socket.gaierror):
            return "host name not found"
        if isinstance(seen, TimeoutError):
            return "timed out"
        seen = seen.__cause__
    if isinstance(exc, aiosmtplib.SMTPServerDisconnected):
        return "connection closed unexpectedly"
    cause = exc.__cause__ or exc
    return f"could not connect ({cause.__class__.__name__})"


def _tls_context(name: str, settings: EmailSettings) -> ssl.SSLContext:
    # Built once per channel: loading the system store costs milliseconds every time.
    # The private CA is added to the system store, not put in its place.
    context = ssl.create_default_context()
    if settings.ca_file is not None:
        try:
            context.load_verify_locations(cafile=settings.ca_file)
        except (OSError, ssl.SSLError) as exc:
            problem = f"cannot load {settings.ca_file} ({exc.__class__.__name__})"
            raise ValueError(f"channels.{name}.ca_file: {problem}") from None
    return context


# -- the message --


def subject_for(event: Event) -> str:
    prompt = _one_line(_str(event.job.get("prompt"))) or "(no prompt)"
    return f"[vidhook] {_one_line(event.status)}: {_cut(prompt, SUBJECT_EXCERPT)}"


def render(event: Event, sender: str, recipients: Sequence[str]) -> EmailMessage:
    """The message for one event: text and HTML alternatives of the same facts."""
    job = event.job
    message = EmailMessage(policy=SMTP_POLICY)
    subject = subject_for(event)
    if subject.isascii():
        message["Subject"] = subject
    else:
        # Encoded by hand: the email package's folder can drop the space between two
        # encoded words, or join them with none, which some providers reject (CPython
        # gh-144156). Lines stay short, so the generator writes them unchanged.
        message.set_raw("Subject", Header(subject, "utf-8", header_name="Subject").encode())
    message["From"] = sender
    message["To"] = ", ".join(recipients)
    message["Date"] = formatdate(localtime=False, usegmt=True)
    domain = parseaddr(sender)[1].rpartition("@")[2] or "vidhook.invalid"
    message["Message-ID"] = make_msgid(domain=domain)
    message["X-Vidhook-Event"] = _one_line(event.id)
    message["X-Vidhook-Job"] = _one_line(str(job.get("id") or ""))
    # RFC 3834: keeps vacation responders and ticket systems from answering.
    message["Auto-Submitted"] = "auto-generated"
    facts = _facts(event)
    prompt = _str(job.get("prompt"))
    # Quoted-printable keeps every line short and the message 7-bit clean, whatever the
    # prompt holds and whether or not the server offers 8BITMIME.
    message.set_content(_text(event, facts, prompt), cte="quoted-printable")
    message.add_alternative(_html(event, facts, prompt), subtype="html", cte="quoted-printable")
    return message


def _facts(event: Event) -> list[tuple[str, str]]:
    job = event.job
    links = result_links(job)
    rows = [
        ("Status", event.status),
        ("Provider", _str(job.get("provider"))),
        ("Model", _str(job.get("model"))),
        ("Elapsed", _elapsed(job, event.created_at)),
        ("Credits", _credits(job.get("credits"))),
        ("Result", _str(links.video)),
        ("Size", human_size(links.size) if links.size is not None else ""),
        ("Cover", _str(links.cover)),
        ("Note", _str(links.note)),
        ("Error", _str(job.get("error"))),
        ("Job", _str(job.get("id"))),
    ]
    return [(label, value) for label, value in rows if value]


def _text(event: Event, facts: list[tuple[str, str]], prompt: str) -> str:
    width = max((len(label) for label, _ in facts), default=0) + 2
    lines = [_HEADLINES.get(event.status, f"Your video is {event.status}."), ""]
    lines += [f"{label + ':':<{width}}{value}" for label, value in facts]
    lines += ["", "Prompt:", prompt or "(no prompt)", "", "-- ", f"vidhook, event {event.id}"]
    return "\n".join(lines) + "\n"


def _html(event: Event, facts: list[tuple[str, str]], prompt: str) -> str:
    esc = html.escape
    headline = _HEADLINES.get(event.status, f"Your video is {event.status}.")
    rows = "\n".join(
        f'<tr><th align="left" style="padding-right:1em">{esc(label)}</th>'
        f"<td>{_link(value) if label in ('Result', 'Cover') else esc(value)}</td></tr>"
        for label, value in facts
    )
    return (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8"></head>\n'
        '<body style="font-family:sans-serif">\n'
        f"<p><strong>{esc(headline)}</strong></p>\n<table>\n{rows}\n</table>\n"
        f'<p><strong>Prompt</strong></p>\n<p style="white-space:pre-wrap">'
        f"{esc(prompt or '(no prompt)')}</p>\n"
        f'<p style="color:#888">vidhook, event {esc(event.id)}</p>\n</body></html>\n'
    )


def _link(url: str) -> str:
    """An http(s) URL as a link; anything else (javascript:, data:) as inert text."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return html.escape(url)
    if parts.scheme.lower() in ("http", "https") and parts.netloc and not _unsafe(url):
        return f'<a href="{html.escape(url, quote=True)}">{html.escape(url)}</a>'
    return html.escape(url)


def _one_line(value: str) -> str:
    # Control characters become spaces first: CR and LF must never reach a header.
    return " ".join("".join(c if c.isprintable() else " " for c in _str(value)).split())


def _cut(value: str, limit: int) -> str:
    return value if len(value) <= limit else value[:limit].rstrip() + "…"


def _str(value: Any) -> str:
    # A lone surrogate (JSON allows "\ud800") cannot be encoded and would fail every retry.
    return "" if value is None else str(value).encode("utf-8", "replace").decode("utf-8")


def _credits(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return _str(value)


def _elapsed(job: Mapping[str, Any], event_time: float) -> str:
    """From creation to the end (or to this event, for a job still running)."""
    try:
        start = datetime.fromisoformat(str(job["created_at"])).timestamp()
        end_iso = job.get("finished_at")
        end = datetime.fromisoformat(str(end_iso)).timestamp() if end_iso else event_time
    except (KeyError, ValueError, TypeError):
        return ""
    seconds = round(end - start)
    if seconds < 0:
        return ""
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes} min"
    return f"{minutes} min {secs} s" if minutes else f"{secs} s"

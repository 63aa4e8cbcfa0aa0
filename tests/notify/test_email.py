"""The email channel against a real SMTP server (aiosmtpd) on loopback.

The message itself is a pure function and most of its tests need no server; the
delivery tests speak real SMTP, with real TLS using a certificate made here.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import html
import ipaddress
import ssl
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import parsedate_to_datetime
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from receiver.config import ChannelConfig, Secret
from receiver.notify.base import DeliveryError, Event
from receiver.notify.email import EmailChannel, EmailSettings, render, subject_for
from receiver.states import Status
from tests.conftest import free_port

SENDER = "vidhook <alerts@example.com>"
TO = ["team@example.com", "Bob Example <bob@example.com>"]
USER = "vidhook-mailer"
PASSWORD = "s3cret-Pa55-7f1e"
HEADERS = [
    "Subject", "From", "To", "Date", "Message-ID", "X-Vidhook-Event", "X-Vidhook-Job",
    "Auto-Submitted", "MIME-Version", "Content-Type",
]  # fmt: skip
SCRIPT_PROMPT = 'A cat <script>alert("x")</script> & a dog'


def job(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": "job_01HX", "provider": "vidu", "provider_job_id": "vd-123",
        "status": "completed", "provider_status": "success", "model": "viduq2",
        "prompt": "A red fox running through snow", "request": {}, "notify": None,
        "result_url": "https://cdn.example.com/v/fox.mp4?sig=a&exp=1",
        "cover_url": "https://cdn.example.com/v/fox.jpg", "error": None, "credits": 4.0,
        "anomalies": [], "key_fingerprint": None,
        "created_at": "2025-03-01T10:00:00.000Z", "updated_at": "2025-03-01T10:01:23.000Z",
        "finished_at": "2025-03-01T10:01:23.000Z", "callback_url": None,
    }  # fmt: skip
    return {**base, **fields}


def event(kind: str = "job.completed", **fields: Any) -> Event:
    return Event(id="dlv_7", type=kind, created_at=1740823283.0, job=job(**fields))


def roundtrip(message: EmailMessage | bytes) -> EmailMessage:
    data = message if isinstance(message, bytes) else message.as_bytes()
    parsed = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    return parsed


def lines(value: str) -> str:
    """Line ends as the text decodes, whatever the sender or the generator used."""
    return value.replace("\r\n", "\n").replace("\r", "\n")


def parts(message: EmailMessage) -> tuple[str, str]:
    text, body = message.get_body(("plain",)), message.get_body(("html",))
    assert text is not None and body is not None
    return text.get_content(), body.get_content()


class Links(HTMLParser):
    def __init__(self, document: str) -> None:
        super().__init__()
        self.hrefs: list[str] = []
        self.scripts = 0
        self.feed(document)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.scripts += tag == "script"
        self.hrefs += [v or "" for k, v in attrs if k == "href"]


# -- the message --


def test_subject_is_the_status_and_the_first_60_characters_of_the_prompt() -> None:
    long = "word " * 30
    assert subject_for(event(prompt=long)) == f"[vidhook] completed: {long[:60].rstrip()}…"
    assert subject_for(event("job.failed", prompt="Short")) == "[vidhook] failed: Short"
    assert subject_for(event(prompt="x" * 60)) == f"[vidhook] completed: {'x' * 60}"
    assert subject_for(event(prompt=None)) == "[vidhook] completed: (no prompt)"


def test_a_prompt_with_line_breaks_cannot_add_headers() -> None:
    prompt = "fox\r\nBcc: victim@example.net\r\n\r\nfake body\nX-Evil: 1\x00"
    parsed = roundtrip(render(event(prompt=prompt), SENDER, TO))
    assert (
        parsed["Subject"] == "[vidhook] completed: fox Bcc: victim@example.net fake body X-Evil: 1"
    )
    assert parsed["Bcc"] is None and parsed["X-Evil"] is None
    assert parsed.get_content_type() == "multipart/alternative"


def test_headers_and_both_parts() -> None:
    before = datetime.now(UTC).replace(microsecond=0)
    parsed = roundtrip(render(event(), SENDER, TO))
    assert list(parsed) == HEADERS
    assert parsed["From"] == SENDER
    assert parsed["To"] == "team@example.com, Bob Example <bob@example.com>"
    assert parsed["X-Vidhook-Event"] == "dlv_7" and parsed["X-Vidhook-Job"] == "job_01HX"
    date = parsedate_to_datetime(parsed["Date"])
    # The email package writes UTC as "+0000" (RFC 5322 made "GMT" obsolete syntax).
    assert date.utcoffset() == timedelta(0) and parsed["Date"].endswith(" +0000")
    assert before <= date <= datetime.now(UTC)
    assert parsed["Message-ID"].startswith("<") and parsed["Message-ID"].endswith("@example.com>")
    assert [p.get_content_type() for p in parsed.iter_parts()] == ["text/plain", "text/html"]
    assert all(p.get_content_charset() == "utf-8" for p in parsed.iter_parts())


def test_each_message_gets_its_own_message_id() -> None:
    first, second = (render(event(), SENDER, TO)["Message-ID"] for _ in range(2))
    assert first != second


def test_the_text_part_lists_the_facts_of_a_completed_job() -> None:
    text, _ = parts(roundtrip(render(event(), SENDER, TO)))
    rows = text.splitlines()
    assert rows[0] == "Your video is ready."
    for fact in (
        "Status:   completed",
        "Provider: vidu",
        "Model:    viduq2",
        "Elapsed:  1 min 23 s",
        "Credits:  4",
        "Result:   https://cdn.example.com/v/fox.mp4?sig=a&exp=1",
        "Job:      job_01HX",
    ):
        assert fact in rows
    assert rows[rows.index("Prompt:") + 1] == "A red fox running through snow"
    assert not any(row.startswith("Error:") for row in rows)


def test_the_text_part_of_a_failed_job_gives_the_error() -> None:
    failed = event(
        "job.failed",
        result_url=None,
        cover_url=None,
        credits=None,
        error="content policy: prompt rejected",
    )
    text, body = parts(roundtrip(render(failed, SENDER, TO)))
    assert text.splitlines()[0] == "Your video could not be generated."
    assert "Error:    content policy: prompt rejected" in text.splitlines()
    assert "Result:" not in text and "Credits:" not in text
    assert "content policy: prompt rejected" in body


def test_a_canceled_job_says_so_in_the_subject_and_the_headline() -> None:
    canceled = event("job.canceled", result_url=None, cover_url=None, credits=None)
    message = roundtrip(render(canceled, SENDER, TO))
    assert message["Subject"] == "[vidhook] canceled: A red fox running through snow"
    text, body = parts(message)
    assert text.splitlines()[0] == "Your video was canceled before it was generated."
    assert "Status:   canceled" in text.splitlines()
    assert "Your video was canceled before it was generated." in body


def test_elapsed_of_a_running_job_is_counted_to_the_event() -> None:
    running = Event(
        "dlv_1",
        "job.processing",
        1740823200.0 + 3725,
        job(status="processing", finished_at=None, created_at="2025-03-01T10:00:00Z"),
    )
    text, _ = parts(roundtrip(render(running, SENDER, TO)))
    assert "Elapsed:  1 h 2 min" in text.splitlines()


def test_the_html_part_escapes_a_script_prompt_and_the_text_part_keeps_it() -> None:
    evil = event(prompt=SCRIPT_PROMPT, model='<b>"m"</b>', error="<img src=x onerror=alert(1)>")
    text, body = parts(roundtrip(render(evil, SENDER, TO)))
    assert SCRIPT_PROMPT in text
    assert "<script>" not in body and "<img" not in body and "<b>" not in body
    assert html.escape(SCRIPT_PROMPT) in body
    assert "&lt;img src=x onerror=alert(1)&gt;" in body and "&lt;b&gt;&quot;m&quot;" in body
    assert Links(body).scripts == 0


def test_only_http_urls_become_links() -> None:
    quoted = 'https://cdn.example.com/a.mp4?x="><script>1</script>'
    for url in ("javascript:alert(1)", "data:text/html,<script>1</script>", "https:no-host"):
        _, body = parts(roundtrip(render(event(result_url=url), SENDER, TO)))
        assert Links(body).hrefs == ["https://cdn.example.com/v/fox.jpg"]  # only the cover
        assert html.escape(url) in body
    _, body = parts(roundtrip(render(event(result_url=quoted, cover_url=None), SENDER, TO)))
    links = Links(body)
    assert links.hrefs == [quoted] and links.scripts == 0


@pytest.mark.parametrize(
    "prompt",
    [
        "00000000000¡¡¡¡¡𒾐 ¡",  # hypothesis found the lost space between encoded words
        "Abo actualités digitales 20 semaines d\u2019abonnement à 24 heures, Tribune de Genève",
        "日本語のプロンプト " * 8,
    ],
)
def test_a_non_ascii_subject_is_encoded_in_short_separate_words(prompt: str) -> None:
    message = render(event(prompt=prompt), SENDER, TO)
    head = message.as_bytes().split(b"\r\n\r\n")[0].decode("ascii")
    subject = head[head.index("Subject:") : head.index("\r\nFrom:")]
    assert all(len(line) <= 78 for line in subject.split("\r\n"))
    assert "?==?" not in subject  # encoded words must be separated by white space
    assert roundtrip(message)["Subject"] == subject_for(event(prompt=prompt))


def test_a_lone_surrogate_in_a_prompt_does_not_break_the_message() -> None:
    parsed = roundtrip(render(event(prompt="fox \ud800 snow"), SENDER, TO))
    text, _ = parts(parsed)
    assert "fox ? snow" in text and parsed["Subject"] == "[vidhook] completed: fox ? snow"


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=200))
def test_any_prompt_keeps_headers_intact_and_html_escaped(prompt: str) -> None:
    parsed = roundtrip(render(event(prompt=prompt), SENDER, TO))
    assert parsed["Subject"] == subject_for(event(prompt=prompt))
    assert "\n" not in parsed["Subject"] and parsed["X-Vidhook-Job"] == "job_01HX"
    text, body = parts(parsed)
    assert lines(prompt) in lines(text)
    assert lines(html.escape(prompt or "(no prompt)")) in lines(body)


# -- settings --


def config(secrets: dict[str, str] | None = None, **options: Any) -> ChannelConfig:
    options = {"host": "127.0.0.1", "from": SENDER, "to": TO, **options}
    return ChannelConfig(
        name="mail",
        type="email",
        events=frozenset({Status.COMPLETED, Status.FAILED}),
        options={k: v for k, v in options.items() if v is not None},
        secrets={k: Secret(v) for k, v in (secrets or {}).items()},
    )


def test_ports_default_by_security_and_a_single_address_is_accepted() -> None:
    assert EmailSettings.from_config(config()).port == 587
    assert EmailSettings.from_config(config(security="tls")).port == 465
    assert EmailSettings.from_config(config(security="none")).port == 25
    single = EmailSettings.from_config(config(to="ops@example.com", port=2525, timeout=3))
    assert single.recipients == ("ops@example.com",) and single.port == 2525
    assert single.timeout == 3.0 and single.security == "starttls"
    assert EmailSettings.from_config(config()).envelope_recipients == (
        "team@example.com",
        "bob@example.com",
    )


def test_every_settings_problem_is_reported_at_once() -> None:
    with pytest.raises(ValueError) as caught:
        EmailSettings.from_config(
            config(
                host=None,
                to=[],
                security="ssl",
                timeout=0,
                port="25",
                **{"from": "not an address"},
                username=USER,
            )
        )
    keys = sorted(p.split(":")[0] for p in str(caught.value).splitlines())
    assert keys == [
        f"channels.mail.{k}"
        for k in ("from", "host", "password_env", "port", "security", "timeout", "to")
    ]


@pytest.mark.parametrize(
    "options",
    [
        {"to": ["ops@example.com\r\nRCPT TO:<x@evil.example>"]},
        {"from": "a@example.com\nBcc: x@evil.example"},
        {"to": ["ünïcode@example.com"]},
        {"to": ["no-at-sign"]},
        {"to": "ops@example.com, dev@example.com"},
        {"from": "a@example.com, b@example.com"},
        {"security": ["tls"]},
        {"username": "me\r\nAUTH"},
        {"host": "smtp.example.com\r\nQUIT"},
    ],
)
def test_unsafe_or_ambiguous_settings_are_refused(options: dict[str, Any]) -> None:
    secrets = {"password": PASSWORD} if "username" in options else None
    with pytest.raises(ValueError) as caught:
        EmailSettings.from_config(config(secrets, **options))
    [key] = options
    assert str(caught.value).startswith(f"channels.mail.{key}: ")
    assert "\n" not in str(caught.value)  # only the bad key is blamed


def test_a_password_needs_a_username_and_a_missing_ca_file_is_a_config_error(
    tmp_path: Path,
) -> None:
    with pytest.raises(ValueError, match=r"channels\.mail\.username: missing"):
        EmailSettings.from_config(config({"password": PASSWORD}))
    with pytest.raises(ValueError, match=r"channels\.mail\.ca_file") as caught:
        EmailChannel(config(ca_file=str(tmp_path / "missing.pem")), httpx.AsyncClient())
    assert PASSWORD not in str(caught.value)


# -- a real SMTP server --


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    content: bytes
    tls: bool


@dataclass
class Mailbox:
    """aiosmtpd handler: keeps what it accepts, and answers what it is told to."""

    messages: list[Received] = field(default_factory=list)
    logins: list[tuple[str, str]] = field(default_factory=list)
    mail_reply: str | None = None
    rcpt_replies: dict[str, str] = field(default_factory=dict)
    data_reply: str | None = None

    async def handle_MAIL(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        if self.mail_reply:
            return self.mail_reply
        envelope.mail_from = address
        return "250 OK"

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        if address in self.rcpt_replies:
            return self.rcpt_replies[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.data_reply:
            return self.data_reply
        tls = server.transport.get_extra_info("ssl_object") is not None
        self.messages.append(
            Received(envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content, tls)
        )
        return "250 2.0.0 Queued"

    def authenticate(
        self, server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any
    ) -> AuthResult:
        assert isinstance(auth_data, LoginPassword)
        login, password = auth_data.login.decode(), auth_data.password.decode()
        self.logins.append((login, password))
        # handled=False: aiosmtpd then answers 535 itself (handled=True would stay silent).
        return AuthResult(success=(login, password) == (USER, PASSWORD), handled=False)


class LoopbackController(Controller):
    """aiosmtpd on a free loopback port, chosen when it binds (no race)."""

    def __init__(self, handler: Mailbox, **kwargs: Any) -> None:
        super().__init__(handler, hostname="127.0.0.1", port=0, **kwargs)

    def _create_server(self) -> Awaitable[asyncio.AbstractServer]:
        async def create() -> asyncio.AbstractServer:
            server = await self.loop.create_server(
                self._factory_invoker, host=self.hostname, port=0, ssl=self.ssl_context
            )
            self.port = server.sockets[0].getsockname()[1]
            return server

        return create()


@contextmanager
def smtp_server(mailbox: Mailbox, **kwargs: Any) -> Iterator[LoopbackController]:
    controller = LoopbackController(mailbox, **kwargs)
    controller.start()
    try:
        yield controller
    finally:
        controller.stop()


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for localhost and 127.0.0.1: (cert PEM, key PEM)."""
    directory = tmp_path_factory.mktemp("tls")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "vidhook test SMTP")])
    now = datetime.now(UTC)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def server_tls(certificate: tuple[Path, Path]) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*certificate)
    return context


def send(channel_config: ChannelConfig, evt: Event | None = None) -> None:
    async def run() -> None:
        async with httpx.AsyncClient() as client:
            await EmailChannel(channel_config, client).send(evt or event())

    asyncio.run(run())


def failure(channel_config: ChannelConfig, evt: Event | None = None) -> DeliveryError:
    with pytest.raises(DeliveryError) as caught:
        send(channel_config, evt)
    error = caught.value
    # Secrets never leak into what the outbox stores and logs.
    assert PASSWORD not in f"{error} {error.message!r} {error!r}"
    assert error.__cause__ is None and error.__suppress_context__
    return error


def test_plain_delivery_has_both_parts_and_the_exact_headers() -> None:
    mailbox = Mailbox()
    with smtp_server(mailbox) as server:
        send(config(security="none", port=server.port), event(prompt=SCRIPT_PROMPT))
    [received] = mailbox.messages
    assert received.mail_from == "alerts@example.com" and not received.tls
    assert received.rcpt_tos == ["team@example.com", "bob@example.com"]
    parsed = roundtrip(received.content)
    assert list(parsed) == HEADERS
    assert parsed["Subject"] == f"[vidhook] completed: {SCRIPT_PROMPT}"
    assert parsed["From"] == SENDER and parsed["X-Vidhook-Event"] == "dlv_7"
    assert parsed["To"] == "team@example.com, Bob Example <bob@example.com>"
    assert parsed["Message-ID"].endswith("@example.com>") and parsed["Date"].endswith(" +0000")
    text, body = parts(parsed)
    assert SCRIPT_PROMPT in text
    assert "<script>" not in body and html.escape(SCRIPT_PROMPT) in body


def test_starttls_with_login(certificate: tuple[Path, Path]) -> None:
    mailbox = Mailbox()
    tls = server_tls(certificate)
    options = {
        "tls_context": tls,
        "require_starttls": True,
        "auth_required": True,
        "authenticator": mailbox.authenticate,
    }
    with smtp_server(mailbox, **options) as server:
        send(
            config(
                {"password": PASSWORD}, port=server.port, username=USER, ca_file=str(certificate[0])
            )
        )
    assert mailbox.logins == [(USER, PASSWORD)]
    [received] = mailbox.messages
    assert received.tls and roundtrip(received.content)["X-Vidhook-Job"] == "job_01HX"


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
def test_implicit_tls_with_login(certificate: tuple[Path, Path]) -> None:
    mailbox = Mailbox()
    # aiosmtpd only counts STARTTLS as TLS when deciding to offer AUTH.
    options = {
        "ssl_context": server_tls(certificate),
        "auth_required": True,
        "auth_require_tls": False,
        "authenticator": mailbox.authenticate,
    }
    with smtp_server(mailbox, **options) as server:
        send(
            config(
                {"password": PASSWORD},
                security="tls",
                port=server.port,
                username=USER,
                ca_file=str(certificate[0]),
            )
        )
    assert mailbox.logins == [(USER, PASSWORD)]
    [received] = mailbox.messages
    assert received.tls and received.rcpt_tos == ["team@example.com", "bob@example.com"]


def test_a_wrong_password_is_permanent_and_never_shown(certificate: tuple[Path, Path]) -> None:
    mailbox = Mailbox()
    options = {
        "tls_context": server_tls(certificate),
        "require_starttls": True,
        "auth_required": True,
        "authenticator": mailbox.authenticate,
    }
    wrong = PASSWORD[::-1]
    with smtp_server(mailbox, **options) as server:
        error = failure(
            config(
                {"password": wrong}, port=server.port, username=USER, ca_file=str(certificate[0])
            )
        )
    assert (error.kind, error.status_code) == ("permanent", 535)
    assert wrong not in str(error) and USER in str(error)
    assert mailbox.logins and not mailbox.messages


def test_an_untrusted_certificate_is_transient_and_says_so(
    certificate: tuple[Path, Path],
) -> None:
    mailbox = Mailbox()
    with smtp_server(mailbox, ssl_context=server_tls(certificate)) as server:
        error = failure(config(security="tls", port=server.port))
    assert error.kind == "transient" and "certificate not trusted" in str(error)
    assert not mailbox.messages


def test_starttls_that_the_server_does_not_offer_is_permanent_and_sends_nothing() -> None:
    mailbox = Mailbox()
    options = {"auth_require_tls": False, "authenticator": mailbox.authenticate}
    with smtp_server(mailbox, **options) as server:
        error = failure(config({"password": PASSWORD}, port=server.port, username=USER))
    assert error.kind == "permanent" and "STARTTLS" in str(error)
    assert not mailbox.logins and not mailbox.messages  # the password never went in clear


@pytest.mark.parametrize(
    ("reply", "kind"),
    [
        ("451 4.3.0 Try again later", "transient"),
        ("452 4.3.1 Out of storage", "transient"),
        ("554 5.7.1 Message rejected as spam", "permanent"),
        ("550 5.7.1 Policy rejection", "permanent"),
    ],
)
def test_the_reply_to_data_decides_whether_to_retry(reply: str, kind: str) -> None:
    mailbox = Mailbox(data_reply=reply)
    with smtp_server(mailbox) as server:
        error = failure(config(security="none", port=server.port))
    code = int(reply[:3])
    assert (error.kind, error.status_code) == (kind, code)
    assert str(error).startswith(f"SMTP server 127.0.0.1:{server.port} answered {code} to DATA")
    assert reply[4:] in str(error)


def test_a_refused_sender_is_classified_by_its_code() -> None:
    mailbox = Mailbox(mail_reply="553 5.7.1 Sender not allowed")
    with smtp_server(mailbox) as server:
        error = failure(config(security="none", port=server.port))
        mailbox.mail_reply = "421 4.7.0 Too many connections"
        again = failure(config(security="none", port=server.port))
    assert (error.kind, error.status_code) == ("permanent", 553)
    assert "MAIL FROM <alerts@example.com>" in str(error)
    assert (again.kind, again.status_code) == ("transient", 421)


def test_a_recipient_refused_with_550_is_permanent_and_nobody_gets_a_copy() -> None:
    mailbox = Mailbox(rcpt_replies={"bob@example.com": "550 5.1.1 No such user"})
    with smtp_server(mailbox) as server:
        error = failure(config(security="none", port=server.port))
    assert (error.kind, error.status_code) == ("permanent", 550)
    assert "<bob@example.com> (550)" in str(error) and "No such user" in str(error)
    assert not mailbox.messages


def test_a_recipient_refused_with_450_is_transient_and_nobody_gets_a_copy() -> None:
    mailbox = Mailbox(rcpt_replies={"team@example.com": "450 4.2.1 Mailbox busy"})
    with smtp_server(mailbox) as server:
        error = failure(config(security="none", port=server.port))
        assert (error.kind, error.status_code) == ("transient", 450)
        mailbox.rcpt_replies.clear()  # the retry then reaches everyone exactly once
        send(config(security="none", port=server.port))
    [received] = mailbox.messages
    assert received.rcpt_tos == ["team@example.com", "bob@example.com"]


def test_one_permanent_refusal_among_temporary_ones_is_permanent() -> None:
    replies = {"team@example.com": "450 4.2.1 Busy", "bob@example.com": "553 5.1.3 Bad address"}
    with smtp_server(Mailbox(rcpt_replies=replies)) as server:
        error = failure(config(security="none", port=server.port))
    assert (error.kind, error.status_code) == ("permanent", 553)


def test_nothing_listening_is_transient() -> None:
    port = free_port()
    error = failure(config({"password": PASSWORD}, security="none", port=port, username=USER))
    assert error.kind == "transient"
    assert str(error) == f"SMTP server 127.0.0.1:{port}: connection refused"


def test_an_unknown_host_is_transient() -> None:
    # .invalid never resolves (RFC 6761); a resolver that hangs instead gives a timeout.
    error = failure(config(host="vidhook-test.invalid", security="none", port=25, timeout=2))
    assert error.kind == "transient"
    assert str(error).split(": ", 1)[1] in ("host name not found", "timed out")


def raw_server(
    on_connect: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
    channel_config: Callable[[int], ChannelConfig],
) -> DeliveryError:
    """Runs the channel against a bare TCP server scripted by on_connect."""

    async def run() -> DeliveryError:
        server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            async with httpx.AsyncClient() as client:
                try:
                    await EmailChannel(channel_config(port), client).send(event())
                except DeliveryError as exc:
                    return exc
                raise AssertionError("the send did not fail")
        finally:
            server.close()

    error = asyncio.run(run())
    assert PASSWORD not in str(error)
    return error


def test_a_server_that_greets_with_421_is_transient() -> None:
    async def busy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"421 4.3.2 Service not available, closing\r\n")
        await writer.drain()
        writer.close()

    error = raw_server(busy, lambda port: config(security="none", port=port))
    assert (error.kind, error.status_code) == ("transient", 421)
    assert "answered 421 on connect" in str(error)


def test_a_server_that_hangs_up_mid_session_is_transient() -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 ready\r\n")
        await writer.drain()
        await reader.readline()
        writer.close()

    error = raw_server(hang_up, lambda port: config(security="none", port=port))
    assert error.kind == "transient" and error.status_code is None


def test_a_silent_server_times_out_as_transient() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()

    error = raw_server(silent, lambda port: config(security="none", port=port, timeout=0.2))
    assert error.kind == "transient" and "timed out" in str(error)

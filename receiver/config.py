"""Load and validate vidhook.toml plus the environment into frozen dataclasses.

Secrets never sit in the file: every secret is named by a key ending in ``_env`` whose
value is the name of an environment variable. A problem is reported with the file, the
key and what to do about it, and all problems are reported at once.
"""

from __future__ import annotations

import difflib
import hashlib
import os
import tomllib
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from receiver.states import Status

CONFIG_ENV = "VIDHOOK_CONFIG"
DEFAULT_CONFIG_PATH = "vidhook.toml"

# Scheduling defaults, in seconds: a provider table may override each of them.
_TIMING: dict[str, float] = {
    "timeout": 30.0,
    "initial_delay": 10.0,  # before the first poll of a poll-only provider's job
    "poll_interval": 10.0,  # the first gap between polls; gaps grow from here...
    "poll_max_interval": 60.0,  # ...to here
    "reconcile_after": 600.0,  # webhook providers: poll anyway if no callback ended the job
    "reconcile_interval": 60.0,  # and then at this slow cadence
    "deadline": 3600.0,  # a job not finished by then fails with "timed out"
    "submit_max_age": 600.0,  # a submission refused for now is retried this long, then fails
}
PROVIDER_TYPES: dict[str, dict[str, Any]] = {
    "vidu": {"base_url": "https://api.vidu.com", "default_model": "viduq2"},
    # kvid estimates about 30 s per video; a poll of a finished job costs two requests.
    "kvid": {"base_url": "https://api.kvid.ai", "default_model": "v2", "initial_delay": 15.0,
             "poll_interval": 5.0, "poll_max_interval": 30.0},
    # revid asks callers to wait 45 to 60 s before the first poll; 1000 requests/min.
    "revid": {"base_url": "https://ai.revidapi.com", "default_model": "kling-2.6",
              "initial_delay": 45.0, "requests_per_second": 16.0},
    # apimodels suggests polling every 5 to 10 s.
    "apimodels": {"base_url": "https://apimodels.app", "default_model": "grok-video-3",
                  "initial_delay": 5.0, "poll_interval": 5.0, "poll_max_interval": 10.0},
    # Gateways poll their upstream every 15 s: asking more often only costs requests.
    "newapi": {"base_url": None, "default_model": None, "initial_delay": 15.0,
               "poll_interval": 15.0},
    # Kling calls back on every change and each callback is confirmed by a poll; a video
    # takes minutes, so a missing callback is looked for after five.
    "kling": {"base_url": "https://api-singapore.klingai.com", "default_model": "kling-v2-6",
              "reconcile_after": 300.0, "reconcile_interval": 60.0, "poll_interval": 5.0},
    # Runway: poll only, and "not more often than every five seconds"; throttled tasks
    # wait for the account's concurrency, so give them longer than an hour.
    "runway": {"base_url": "https://api.dev.runwayml.com", "default_model": "gen4.5",
               "initial_delay": 15.0, "poll_interval": 5.0, "poll_max_interval": 30.0,
               "deadline": 7200.0},
    # Luma calls back on every state; a generation takes one to a few minutes, so a
    # silence of five minutes is worth a look.
    "luma": {"base_url": "https://api.lumalabs.ai/dream-machine/v1", "default_model": "ray-2",
             "poll_interval": 5.0, "poll_max_interval": 30.0, "reconcile_after": 300.0},
    # MiniMax calls back too; Hailuo takes minutes per video, and its download URL lasts
    # 9 hours from the poll that sees Success.
    "minimax": {"base_url": "https://api.minimax.io", "default_model": "MiniMax-Hailuo-02",
                "poll_interval": 10.0, "reconcile_after": 300.0},
    # Replicate signs its webhooks with the account's secret (no default: it must be set).
    "replicate": {"base_url": "https://api.replicate.com", "default_model": "google/veo-3.1-fast",
                  "webhook_secret_env": None},
    # fal: the queue API; webhooks signed with keys published as a JWKS. Requests past
    # the account's concurrency wait in fal's queue, so give them longer than an hour.
    "fal": {"base_url": "https://queue.fal.run",
            "default_model": "fal-ai/kling-video/v2.5-turbo/pro/text-to-video",
            "jwks_url": "https://rest.alpha.fal.ai/.well-known/jwks.json", "deadline": 7200.0},
    # PixVerse sends every job's webhooks to the one URL set in its console, signed with
    # the account's secret (no default: it must be set). A video takes a minute or two;
    # a job no webhook ended (the URL not set, say) is looked at after two.
    "pixverse": {"base_url": "https://app-api.pixverse.ai", "default_model": "v5",
                 "webhook_secret_env": None, "reconcile_after": 120.0,
                 "reconcile_interval": 30.0},
    # Veo through the Gemini API: long-running operations, polled (Google's samples ask
    # every 10 s); a video takes one to several minutes.
    "veo": {"base_url": "https://generativelanguage.googleapis.com",
            "default_model": "veo-3.1-generate-preview", "initial_delay": 20.0,
            "poll_interval": 10.0, "poll_max_interval": 30.0},
}  # fmt: skip
# Keys only some types take: a type takes one when its PROVIDER_TYPES entry names it,
# with its default (None: no default, the key must be set).
TYPE_KEYS = ("webhook_secret_env", "jwks_url")
# The keys each channel type takes besides `type` and `events`; *_env keys hold secrets.
CHANNEL_KEYS: dict[str, frozenset[str]] = {
    # An incoming webhook (webhook_url_env), or a bot token (bot_token_env) and a channel.
    "slack": frozenset(
        {"webhook_url_env", "bot_token_env", "channel", "api_url", "timeout", "min_interval"}
    ),
    "email": frozenset(
        {"host", "port", "security", "username", "password_env", "from", "to", "timeout", "ca_file"}
    ),
    "webhook": frozenset({"url", "secret_env", "timeout"}),
    "console": frozenset(),
}
CHANNEL_TYPES = tuple(CHANNEL_KEYS)
# (keys of which one is needed, what to do) per channel type.
_CHANNEL_NEEDS: dict[str, tuple[tuple[tuple[str, ...], str], ...]] = {
    "slack": (
        (("webhook_url_env", "bot_token_env"),
         "name the variable holding an incoming-webhook URL, or set bot_token_env and channel"),
    ),
    "email": (
        (("host",), "the SMTP server's host name"),
        (("from",), "the sender address"),
        (("to",), 'the recipients, such as ["team@example.com"]'),
    ),
    "webhook": ((("url",), "the https URL of your endpoint"),),
}  # fmt: skip
AUTH_SCHEMES = ("Token", "Bearer")
# Provider types that sign their own tokens with an access key and a secret key.
KEY_PAIR_TYPES = frozenset({"kling"})
_SINGLE_KEYS = ("api_key_env", "previous_api_key_envs")
_PAIR_KEYS = (
    "access_key_env", "secret_key_env", "previous_access_key_envs", "previous_secret_key_envs",
)  # fmt: skip
# Keys that would put a secret straight into the file; each has an *_env twin.
_SECRET_WORDS = ("key", "token", "secret", "password", "webhook_url")


class ConfigError(Exception):
    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class Secret:
    """A secret value that does not show itself in reprs, logs or tracebacks."""

    __slots__ = ("_fingerprint", "_value")

    def __init__(self, value: str) -> None:
        self._value = value
        self._fingerprint: str | None = None

    def reveal(self) -> str:
        return self._value

    @property
    def fingerprint(self) -> str:
        """A stable, non-reversible name for the secret, safe to store."""
        if self._fingerprint is None:  # every callback asks for it: worked out once
            self._fingerprint = "sha256:" + hashlib.sha256(self._value.encode()).hexdigest()[:16]
        return self._fingerprint

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    @property
    def parts(self) -> tuple[Secret, ...]:
        """The separate secret values it is made of, each to be kept out of logs."""
        return (self,)


class KeyPair(Secret):
    """An access key and a secret key that work only together (Kling's).

    The fingerprint covers both, so a job is tied to the exact pair that created it: a
    new secret key under the same access key is another pair. The two are joined with
    the access key's length in front, so that no two pairs join alike.
    """

    __slots__ = ("access", "secret")

    def __init__(self, access: Secret, secret: Secret) -> None:
        joined = access.reveal()
        super().__init__(f"{len(joined)}:{joined}{secret.reveal()}")
        self.access = access
        self.secret = secret

    @property
    def parts(self) -> tuple[Secret, ...]:
        return (self.access, self.secret)


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    # Proxies whose X-Forwarded-For and X-Forwarded-Proto are believed.
    trusted_proxies: tuple[str, ...] = ("127.0.0.1", "::1")
    # Host header values accepted; empty: the public_url's host and loopback names.
    allowed_hosts: tuple[str, ...] = ()
    # Connections kept open at once; past it the oldest idle one is closed to make room,
    # and when every one has a request in hand a request is answered 503 (Retry-After).
    max_connections: int = 500
    # Seconds a connection has to send a whole request head before it is closed.
    header_timeout: float = 5.0
    # Bytes of request bodies held in memory at once, across all requests.
    max_body_memory: int = 64 * 1024 * 1024


@dataclass(frozen=True)
class CallbackConfig:
    max_body_bytes: int = 1024 * 1024
    date_tolerance: float = 300.0


@dataclass(frozen=True)
class NotifyConfig:
    max_attempts: int = 12  # then the delivery is dead
    max_age: float = 86400.0  # seconds; then the delivery is dead however few its attempts
    retry_base: float = 5.0  # the first retry's delay; each further one doubles it
    retry_max: float = 3600.0


ARCHIVE_STORES = ("local", "s3", "off")


@dataclass(frozen=True)
class S3Settings:
    bucket: str
    prefix: str = ""
    endpoint_url: str | None = None  # None: AWS itself
    region: str = "us-east-1"
    access_key_id: Secret | None = None  # None: the usual AWS sources (role, profile)
    secret_access_key: Secret | None = None


@dataclass(frozen=True)
class ArchiveConfig:
    """[archive]: keeping every result. ``path`` is resolved beside the database."""

    store: str = "local"
    path: Path = Path("media")
    max_bytes: int = 2 * 1024**3
    keep_days: float = 0.0  # 0: forever
    link_ttl: float = 7 * 86400.0
    notify_wait: float = 120.0
    allow_private_hosts: bool = False
    concurrency: int = 4  # downloads at once
    s3: S3Settings | None = None
    # store = "local" on a folder that every replica mounts (NFS, a shared volume).
    shared_path: bool = False

    @property
    def enabled(self) -> bool:
        return self.store != "off"


@dataclass(frozen=True)
class ProviderConfig:
    name: str
    type: str
    base_url: str
    api_key: Secret
    previous_api_keys: tuple[Secret, ...] = ()
    auth_scheme: str = "Token"
    default_model: str | None = None
    timeout: float = 30.0
    initial_delay: float = 10.0
    poll_interval: float = 10.0
    poll_max_interval: float = 60.0
    reconcile_after: float = 600.0
    reconcile_interval: float = 60.0
    deadline: float = 3600.0
    submit_max_age: float = 600.0
    requests_per_second: float | None = None
    max_concurrency: int = 8
    webhook_secret: Secret | None = None  # the account's webhook signing secret
    jwks_url: str | None = None  # where the provider publishes its webhook keys

    @property
    def keys(self) -> tuple[Secret, ...]:
        return (self.api_key, *self.previous_api_keys)

    def key_for(self, fingerprint: str | None) -> Secret | None:
        """The key with this fingerprint, current or previous; None if it is gone."""
        for key in self.keys:
            if key.fingerprint == fingerprint:
                return key
        return None


@dataclass(frozen=True)
class ChannelConfig:
    name: str
    type: str
    events: frozenset[Status]
    options: Mapping[str, Any] = field(default_factory=dict)
    secrets: Mapping[str, Secret] = field(default_factory=dict)


@dataclass(frozen=True)
class Config:
    public_url: str
    database: Path
    admin_token: Secret
    providers: Mapping[str, ProviderConfig]
    channels: Mapping[str, ChannelConfig] = field(default_factory=dict)
    default_channels: tuple[str, ...] = ()
    server: ServerConfig = field(default_factory=ServerConfig)
    callbacks: CallbackConfig = field(default_factory=CallbackConfig)
    notify: NotifyConfig = field(default_factory=NotifyConfig)
    archive: ArchiveConfig = field(default_factory=ArchiveConfig)
    source: str = "<memory>"
    # The variable the admin token was read from: named (never quoted) when one is refused.
    admin_token_env: str = "VIDHOOK_ADMIN_TOKEN"  # noqa: S105 (a name, not a value)
    # PostgreSQL instead of the SQLite file: its postgresql:// URL, which holds a password.
    database_url: Secret | None = None

    @property
    def public_path(self) -> str:
        """The path prefix of public_url ("" or, say, "/vidhook")."""
        return urlsplit(self.public_url).path.rstrip("/")

    @property
    def allowed_hosts(self) -> tuple[str, ...]:
        if self.server.allowed_hosts:
            return self.server.allowed_hosts
        public = urlsplit(self.public_url).hostname or ""
        return (public, "localhost", "127.0.0.1", "::1")

    def callback_url(self, provider: str, token: str | None) -> str:
        """A job's callback URL; without a token, the provider's account-level webhook URL."""
        if token is None:
            return f"{self.public_url}/callbacks/{provider}"
        return f"{self.public_url}/callbacks/{provider}/{token}"

    def channels_for(self, status: Status, notify: list[str] | None) -> list[str]:
        names = self.default_channels if notify is None else notify
        return [n for n in names if n in self.channels and status in self.channels[n].events]


def config_path(explicit: str | None, env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    return Path(explicit or env.get(CONFIG_ENV) or DEFAULT_CONFIG_PATH)


def load_config(path: str | Path, env: Mapping[str, str] | None = None) -> Config:
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(
            [f"{path}: file not found; copy vidhook.example.toml there or pass --config PATH"]
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"{path}: cannot be read ({exc.__class__.__name__})"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path}: not valid TOML: {exc}"]) from None
    return parse_config(data, env, source=str(path), base_dir=path.parent)


def database_path(path: str | Path, env: Mapping[str, str] | None = None) -> Path:
    """Where the database is, reading only that from the config: no secrets needed.

    For commands such as `vidhook backup` that run from cron without the service's secrets.
    """
    env = os.environ if env is None else env
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError([f"{path}: file not found; pass --config PATH"]) from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError([f"{path}: cannot be read ({exc.__class__.__name__})"]) from None
    database = env.get("VIDHOOK_DATABASE") or data.get("database", "vidhook.db")
    if not isinstance(database, str):
        raise ConfigError([f"{path}: database: must be a string"])
    resolved = Path(database)
    return resolved if resolved.is_absolute() else path.parent / resolved


def database_url_env(path: str | Path) -> str | None:
    """The variable naming the PostgreSQL URL, if the config uses PostgreSQL; read
    without secrets, as ``database_path`` is."""
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError([f"{path}: cannot be read ({exc.__class__.__name__})"]) from None
    name = data.get("database_url_env")
    return name if isinstance(name, str) and name else None


def archive_location(path: str | Path, env: Mapping[str, str] | None = None) -> str | None:
    """Where kept results are ("folder ..." or "bucket ..."), None with the archive off;
    read without secrets, as ``database_path`` is."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError([f"{path}: cannot be read ({exc.__class__.__name__})"]) from None
    section = data.get("archive", {})
    section = section if isinstance(section, Mapping) else {}
    store = section.get("store", "local")
    if store == "s3":
        prefix = str(section.get("prefix", "")).strip("/")
        return f"bucket {section.get('bucket')}" + (f" (prefix {prefix}/)" if prefix else "")
    if store != "local":
        return None
    folder = Path(str(section.get("path", "media")))
    return f"folder {folder if folder.is_absolute() else database_path(path, env).parent / folder}"


def parse_config(
    data: Mapping[str, Any],
    env: Mapping[str, str] | None = None,
    *,
    source: str = "<memory>",
    base_dir: Path | None = None,
) -> Config:
    reader = _Reader(source, os.environ if env is None else env)
    config = reader.read(data, base_dir or Path.cwd())
    if reader.problems or config is None:
        raise ConfigError(reader.problems)
    return config


class _Reader:
    def __init__(self, source: str, env: Mapping[str, str]) -> None:
        self.source = source
        self.env = env
        self.problems: list[str] = []

    def problem(self, key: str, what: str) -> None:
        self.problems.append(f"{self.source}: {key}: {what}")

    def env_problem(self, var: str, what: str) -> None:
        """A problem of a variable that overrides the file, named as such."""
        self.problems.append(f"environment variable {var}: {what}")

    def read(self, data: Mapping[str, Any], base_dir: Path) -> Config | None:
        known = {
            "public_url", "database", "admin_token_env", "default_channels",
            "providers", "channels", "server", "callbacks", "notify", "archive",
            "database_url_env",
        }  # fmt: skip
        self.unknown_keys(data, known, "")
        public_url = self.public_url(data.get("public_url"), self.env.get("VIDHOOK_PUBLIC_URL"))
        database = self.typed(data, "database", str, "vidhook.db", "")
        database = self.env.get("VIDHOOK_DATABASE") or database
        database_url = self.database_url(data)
        admin_token = self.secret(data, "admin_token_env", "", default="VIDHOOK_ADMIN_TOKEN")
        provider_sections = self.tables(data, "providers")
        providers = {
            name: p
            for name, section in provider_sections.items()
            if (p := self.provider(name, section)) is not None
        }
        if not provider_sections:
            self.problem("providers", "no provider configured; add a [providers.vidu] table")
        channel_sections = self.tables(data, "channels")
        channels = {
            name: c
            for name, section in channel_sections.items()
            if (c := self.channel(name, section)) is not None
        }
        default_channels = self.string_list(data, "default_channels", "")
        for name in default_channels:
            if name not in channel_sections:
                self.problem("default_channels", f"names {name!r}; add a [channels.{name}] table")
        server = self.server(data.get("server", {}))
        callbacks = self.callbacks(data.get("callbacks", {}))
        notify = self.notify(data.get("notify", {}))
        db_path = Path(database)
        db_path = db_path if db_path.is_absolute() else base_dir / db_path
        archive = self.archive(data.get("archive", {}), db_path.parent)
        if database_url is not None and archive.store == "local" and not archive.shared_path:
            self.problem(
                "archive.store",
                '"local" keeps results on this machine\'s disk, where the other replicas '
                "sharing the PostgreSQL database (database_url_env) cannot serve them: use "
                'store = "s3", or set shared_path = true if path is a folder every replica '
                'mounts, or store = "off"',
            )
        if public_url is None or admin_token is None or self.problems:
            return None
        return Config(
            public_url=public_url,
            database=db_path,
            admin_token=admin_token,
            providers=providers,
            channels=channels,
            default_channels=tuple(default_channels),
            server=server,
            callbacks=callbacks,
            notify=notify,
            archive=archive,
            source=self.source,
            admin_token_env=str(data.get("admin_token_env", "VIDHOOK_ADMIN_TOKEN")),
            database_url=database_url,
        )

    def database_url(self, data: Mapping[str, Any]) -> Secret | None:
        if "database_url_env" not in data:
            return None
        url = self.secret(data, "database_url_env", "")
        if url is None:
            return None
        scheme = url.reveal().split(":", 1)[0].lower()
        if scheme not in ("postgresql", "postgres"):
            # The value holds a password: the message names the variable, never quotes it.
            self.problem(
                "database_url_env",
                f"environment variable {data['database_url_env']} must hold a postgresql:// "
                "URL (postgresql://user:password@host:5432/vidhook)",
            )
            return None
        return url

    def public_url(self, value: Any, from_env: str | None) -> str | None:
        if from_env:
            # The variable overrides the file: a bad value is the variable's fault.
            value = from_env

            def report(what: str) -> None:
                self.env_problem("VIDHOOK_PUBLIC_URL", f"{what}, got {from_env!r}")
        else:

            def report(what: str) -> None:
                self.problem("public_url", what)

        if value is None:
            report("missing; set it to the https URL providers use to reach vidhook")
            return None
        parts = urlsplit(value) if isinstance(value, str) else None
        if parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
            report("must be an absolute http(s) URL such as https://hooks.example.com")
            return None
        if parts.query or parts.fragment:
            report("must not carry a query or a fragment")
            return None
        return str(value).rstrip("/")

    def provider(self, name: str, section: Mapping[str, Any]) -> ProviderConfig | None:
        key = f"providers.{name}"
        kind = self.typed(section, "type", str, name, key)
        defaults = PROVIDER_TYPES.get(kind)
        if defaults is None:
            what = f"unknown provider type {kind!r}"
            close = difflib.get_close_matches(kind, list(PROVIDER_TYPES), n=1, cutoff=0.6)
            hint = (
                f"did you mean {close[0]}?"
                if close
                else f"choose one of {', '.join(PROVIDER_TYPES)}"
            )
            self.problem(f"{key}.type", f"{what}; {hint}")
            return None
        known = {
            "type", "base_url", "api_key_env", "previous_api_key_envs", "auth_scheme",
            "default_model", "requests_per_second", "max_concurrency", *_TIMING, *_PAIR_KEYS,
        }  # fmt: skip
        self.type_keys(section, key, kind)
        self.unknown_keys(section, known | set(TYPE_KEYS), key)
        base_url = self.typed(section, "base_url", str, defaults["base_url"] or "", key)
        base_url = base_url.rstrip("/")
        if urlsplit(base_url).scheme not in ("http", "https"):
            self.problem(f"{key}.base_url", "required: the provider's http(s) URL")
        scheme = self.typed(section, "auth_scheme", str, "Token", key)
        if scheme not in AUTH_SCHEMES:
            self.problem(f"{key}.auth_scheme", f"must be one of {', '.join(AUTH_SCHEMES)}")
        if kind in KEY_PAIR_TYPES:
            api_key, previous = self.key_pairs(section, key, kind)
        else:
            api_key, previous = self.api_keys(section, key, kind)
        timing = {n: self.seconds(section, n, defaults.get(n, d), key) for n, d in _TIMING.items()}
        if timing["poll_max_interval"] < timing["poll_interval"]:
            self.problem(f"{key}.poll_max_interval", "must not be less than poll_interval")
        rps = section.get("requests_per_second", defaults.get("requests_per_second"))
        if rps is not None:
            rps = self.seconds(section, "requests_per_second", rps, key, "requests per second")
        model = section.get("default_model", defaults["default_model"])
        if model is not None and not isinstance(model, str):
            self.problem(f"{key}.default_model", "must be a string")
        concurrency = self.typed(section, "max_concurrency", int, 8, key)
        if concurrency < 1:
            self.problem(f"{key}.max_concurrency", "must be at least 1")
        webhook_secret = None
        if "webhook_secret_env" in defaults:
            webhook_secret = self.secret(
                section, "webhook_secret_env", key, default=defaults["webhook_secret_env"]
            )
        jwks_url = None
        if "jwks_url" in defaults:
            jwks_url = self.typed(section, "jwks_url", str, defaults["jwks_url"], key)
            if urlsplit(jwks_url).scheme not in ("http", "https"):
                self.problem(f"{key}.jwks_url", "must be an http(s) URL")
        if api_key is None:
            return None
        return ProviderConfig(
            name=name,
            type=kind,
            base_url=base_url,
            api_key=api_key,
            previous_api_keys=previous,
            auth_scheme=scheme,
            default_model=model if isinstance(model, str) else None,
            requests_per_second=rps,
            max_concurrency=concurrency,
            webhook_secret=webhook_secret,
            jwks_url=jwks_url,
            **timing,
        )

    def type_keys(self, section: Mapping[str, Any], prefix: str, kind: str) -> None:
        """Refuse a key that only other provider types take, naming those types."""
        for name in TYPE_KEYS:
            takers = sorted(t for t, d in PROVIDER_TYPES.items() if name in d)
            if name in section and kind not in takers:
                self.problem(
                    f"{prefix}.{name}",
                    f"a {kind} provider does not take {name}; only {', '.join(takers)} do",
                )

    def api_keys(
        self, section: Mapping[str, Any], prefix: str, kind: str
    ) -> tuple[Secret | None, tuple[Secret, ...]]:
        for name in _PAIR_KEYS:
            if name in section:
                self.problem(
                    f"{prefix}.{name}",
                    f"a {kind} provider takes one key: name its variable with api_key_env "
                    f"(only {', '.join(sorted(KEY_PAIR_TYPES))} takes an access and a secret key)",
                )
        api_key = self.secret(section, "api_key_env", prefix)
        previous = tuple(
            s
            for i, var in enumerate(self.string_list(section, "previous_api_key_envs", prefix))
            if (s := self.env_secret(f"{prefix}.previous_api_key_envs[{i}]", var)) is not None
        )
        return api_key, previous

    def key_pairs(
        self, section: Mapping[str, Any], prefix: str, kind: str
    ) -> tuple[Secret | None, tuple[Secret, ...]]:
        """The access and secret key a provider signs its own tokens with, and the pairs
        used before a rotation (two lists, paired in order)."""
        for name, instead in zip(_SINGLE_KEYS, _PAIR_KEYS[::2], strict=True):
            if name in section:
                twin = instead.replace("access", "secret")
                self.problem(
                    f"{prefix}.{name}",
                    f"{kind} signs its own tokens with an access key and a secret key: "
                    f"name their variables with {instead} and {twin}",
                )
        access = self.secret(section, "access_key_env", prefix)
        secret = self.secret(section, "secret_key_env", prefix)
        accesses = self.string_list(section, "previous_access_key_envs", prefix)
        secrets = self.string_list(section, "previous_secret_key_envs", prefix)
        if len(accesses) != len(secrets):
            self.problem(
                f"{prefix}.previous_secret_key_envs",
                f"names {len(secrets)} variables for {len(accesses)} previous access keys; "
                "list one secret key per access key, in the same order",
            )
        previous: list[Secret] = []
        for i, (access_var, secret_var) in enumerate(zip(accesses, secrets, strict=False)):
            old_access = self.env_secret(f"{prefix}.previous_access_key_envs[{i}]", access_var)
            old_secret = self.env_secret(f"{prefix}.previous_secret_key_envs[{i}]", secret_var)
            if old_access is not None and old_secret is not None:
                previous.append(KeyPair(old_access, old_secret))
        pair = KeyPair(access, secret) if access is not None and secret is not None else None
        return pair, tuple(previous)

    def channel(self, name: str, section: Mapping[str, Any]) -> ChannelConfig | None:
        key = f"channels.{name}"
        kind = self.typed(section, "type", str, "", key)
        if kind not in CHANNEL_TYPES:
            self.problem(f"{key}.type", f"must be one of {', '.join(CHANNEL_TYPES)}")
            return None
        events: set[Status] = set()
        for event in self.string_list(section, "events", key, ["completed", "failed"]):
            try:
                events.add(Status(event))
            except ValueError:
                allowed = ", ".join(s.value for s in Status)
                self.problem(f"{key}.events", f"unknown event {event!r}; use {allowed}")
        options: dict[str, Any] = {}
        secrets: dict[str, Secret] = {}
        for option, value in section.items():
            if option in ("type", "events"):
                continue
            if option not in CHANNEL_KEYS[kind]:
                known = {*CHANNEL_KEYS[kind], "type", "events"}
                what = f"unknown key for a {kind} channel"
                self.problem(f"{key}.{option}", unknown_key(option, known, what))
            elif option.endswith("_env"):
                secret = self.secret(section, option, key)
                if secret is not None:
                    secrets[option.removesuffix("_env")] = secret
            else:
                options[option] = value
        for needed, hint in _CHANNEL_NEEDS.get(kind, ()):
            if not any(k in section for k in needed):
                self.problem(f"{key}.{needed[0]}", f"missing; {hint}")
        return ChannelConfig(name, kind, frozenset(events), options, secrets)

    def server(self, section: Any) -> ServerConfig:
        if not isinstance(section, Mapping):
            self.problem("server", "must be a table")
            return ServerConfig()
        known = {
            "host", "port", "trusted_proxies", "allowed_hosts",
            "max_connections", "header_timeout", "max_body_memory",
        }  # fmt: skip
        self.unknown_keys(section, known, "server")
        defaults = ServerConfig()
        max_connections = self.typed(
            section, "max_connections", int, defaults.max_connections, "server"
        )
        if max_connections < 1:
            self.problem("server.max_connections", "must be at least 1")
        max_body_memory = self.typed(
            section, "max_body_memory", int, defaults.max_body_memory, "server"
        )
        if max_body_memory < 1:
            self.problem("server.max_body_memory", "must be a positive number of bytes")
        port = self.typed(section, "port", int, 8000, "server")
        if not 0 <= port <= 65535:
            self.problem("server.port", "must be between 0 and 65535")
        proxies = self.string_list(section, "trusted_proxies", "server", ["127.0.0.1", "::1"])
        return ServerConfig(
            host=self.typed(section, "host", str, "127.0.0.1", "server"),
            port=port,
            trusted_proxies=tuple(proxies),
            allowed_hosts=tuple(self.string_list(section, "allowed_hosts", "server")),
            max_connections=max_connections,
            header_timeout=self.seconds(
                section, "header_timeout", defaults.header_timeout, "server"
            ),
            max_body_memory=max_body_memory,
        )

    def callbacks(self, section: Any) -> CallbackConfig:
        if not isinstance(section, Mapping):
            self.problem("callbacks", "must be a table")
            return CallbackConfig()
        self.unknown_keys(section, {"max_body_bytes", "date_tolerance"}, "callbacks")
        return CallbackConfig(
            max_body_bytes=self.typed(section, "max_body_bytes", int, 1024 * 1024, "callbacks"),
            date_tolerance=self.seconds(section, "date_tolerance", 300.0, "callbacks"),
        )

    def notify(self, section: Any) -> NotifyConfig:
        if not isinstance(section, Mapping):
            self.problem("notify", "must be a table")
            return NotifyConfig()
        known = {"max_attempts", "max_age", "retry_base", "retry_max"}
        self.unknown_keys(section, known, "notify")
        attempts = self.typed(section, "max_attempts", int, 12, "notify")
        if attempts < 1:
            self.problem("notify.max_attempts", "must be at least 1")
        return NotifyConfig(
            max_attempts=attempts,
            max_age=self.seconds(section, "max_age", 86400.0, "notify"),
            retry_base=self.seconds(section, "retry_base", 5.0, "notify"),
            retry_max=self.seconds(section, "retry_max", 3600.0, "notify"),
        )

    def archive(self, section: Any, beside: Path) -> ArchiveConfig:
        if not isinstance(section, Mapping):
            self.problem("archive", "must be a table")
            return ArchiveConfig(path=beside / "media")
        s3_keys = {"bucket", "prefix", "endpoint_url", "region", "access_key_id_env",
                   "secret_access_key_env"}  # fmt: skip
        known = {"store", "path", "max_bytes", "keep_days", "link_ttl", "notify_wait",
                 "allow_private_hosts", "concurrency", "shared_path", *s3_keys}  # fmt: skip
        self.unknown_keys(section, known, "archive")
        store = self.typed(section, "store", str, "local", "archive")
        if store not in ARCHIVE_STORES:
            self.problem("archive.store", f"must be one of {', '.join(ARCHIVE_STORES)}")
            store = "off"
        path = Path(self.typed(section, "path", str, "media", "archive"))
        max_bytes = self.typed(section, "max_bytes", int, ArchiveConfig.max_bytes, "archive")
        if max_bytes < 1:
            self.problem("archive.max_bytes", "must be a positive number of bytes")
        keep_days = section.get("keep_days", 0)
        if isinstance(keep_days, bool) or not isinstance(keep_days, int | float) or keep_days < 0:
            self.problem("archive.keep_days", "must be 0 (keep forever) or a number of days")
            keep_days = 0
        private = self.typed(section, "allow_private_hosts", bool, False, "archive")
        shared_path = self.typed(section, "shared_path", bool, False, "archive")
        concurrency = self.typed(section, "concurrency", int, 4, "archive")
        if concurrency < 1:
            self.problem("archive.concurrency", "must be at least 1")
        notify_wait = section.get("notify_wait", ArchiveConfig.notify_wait)
        if (
            isinstance(notify_wait, bool)
            or not isinstance(notify_wait, int | float)
            or (notify_wait < 0)
        ):
            self.problem("archive.notify_wait", "must be 0 (do not wait) or a number of seconds")
            notify_wait = 0
        s3 = None
        if store == "s3":
            s3 = self.s3(section)
        else:
            for name in sorted(s3_keys & set(section)):
                self.problem(f"archive.{name}", 'only used with store = "s3"')
        return ArchiveConfig(
            store=store,
            path=path if path.is_absolute() else beside / path,
            max_bytes=max_bytes,
            keep_days=float(keep_days),
            link_ttl=self.seconds(section, "link_ttl", ArchiveConfig.link_ttl, "archive"),
            notify_wait=float(notify_wait),
            allow_private_hosts=private,
            concurrency=concurrency,
            s3=s3,
            shared_path=shared_path,
        )

    def s3(self, section: Mapping[str, Any]) -> S3Settings | None:
        bucket = self.typed(section, "bucket", str, "", "archive")
        if not bucket:
            self.problem("archive.bucket", 'missing; store = "s3" needs the bucket\'s name')
        endpoint = section.get("endpoint_url")
        if endpoint is not None and (
            not isinstance(endpoint, str) or urlsplit(endpoint).scheme not in ("http", "https")
        ):
            self.problem("archive.endpoint_url", "must be an http(s) URL, or left out for AWS")
            endpoint = None
        key_id = secret = None
        if "access_key_id_env" in section or "secret_access_key_env" in section:
            key_id = self.secret(section, "access_key_id_env", "archive")
            secret = self.secret(section, "secret_access_key_env", "archive")
        prefix = self.typed(section, "prefix", str, "", "archive").strip("/")
        return S3Settings(
            bucket=bucket,
            prefix=prefix,
            endpoint_url=endpoint,
            region=self.typed(section, "region", str, "us-east-1", "archive"),
            access_key_id=key_id,
            secret_access_key=secret,
        )

    # -- typed accessors: each reports its own problem and returns a usable default --

    def typed(
        self, section: Mapping[str, Any], name: str, kind: type, default: Any, prefix: str
    ) -> Any:
        value = section.get(name, default)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            what = f"must be {_kind_name(kind)}, got {_kind_name(type(value))}"
            if isinstance(value, str) and kind in (int, float) and _is_number(value):
                what += f"; write {name} = {value.strip()} without quotes"
            self.problem(_join(prefix, name), what)
            return default
        return value

    def seconds(
        self,
        section: Mapping[str, Any],
        name: str,
        default: float,
        prefix: str,
        unit: str = "seconds",
    ) -> float:
        value = section.get(name, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            what = f"must be a positive number of {unit}"
            if not isinstance(value, int | float):
                what += f", got {_kind_name(type(value))}"
                if isinstance(value, str) and _is_number(value):
                    what += f"; write {name} = {value.strip()} without quotes"
            self.problem(_join(prefix, name), what)
            return default
        return float(value)

    def string_list(
        self, section: Mapping[str, Any], name: str, prefix: str, default: list[str] | None = None
    ) -> list[str]:
        value = section.get(name, default or [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self.problem(_join(prefix, name), 'must be a list of strings, such as ["a", "b"]')
            return []
        return value

    def tables(self, data: Mapping[str, Any], name: str) -> dict[str, Mapping[str, Any]]:
        value = data.get(name, {})
        if not isinstance(value, Mapping) or not all(
            isinstance(v, Mapping) for v in value.values()
        ):
            self.problem(name, f"must hold tables such as [{name}.NAME]")
            return {}
        return dict(value)

    def secret(
        self, section: Mapping[str, Any], name: str, prefix: str, default: str | None = None
    ) -> Secret | None:
        key = _join(prefix, name)
        var = section.get(name, default)
        if var is None:
            self.problem(key, "missing; name the environment variable that holds the secret")
            return None
        if not isinstance(var, str) or not var:
            self.problem(key, "must be the name of an environment variable")
            return None
        return self.env_secret(key, var)

    def env_secret(self, key: str, var: str) -> Secret | None:
        value = self.env.get(var)
        if value is None:
            self.problem(key, f"environment variable {var} is not set; export it before starting")
            return None
        if not value.strip():
            self.problem(key, f"environment variable {var} is set but empty; give it the value")
            return None
        return Secret(value)

    def unknown_keys(self, section: Mapping[str, Any], known: set[str], prefix: str) -> None:
        for name in section:
            if name not in known:
                self.problem(_join(prefix, name), unknown_key(name, known))


def unknown_key(name: str, known: Collection[str], what: str = "unknown key") -> str:
    """What to say of a key nobody reads: that a secret was written in the file, or the
    likeliest intended key, or the known ones."""
    secret_advice = (
        "secrets do not go in the file; put it in an environment variable "
        f"and name that variable with {name}_env"
    )
    if f"{name}_env" in known:
        return secret_advice
    close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.6)
    if close:
        return f"{what}; did you mean {close[0]}?"
    if not name.endswith("_env") and any(word in name for word in _SECRET_WORDS):
        return secret_advice
    return f"{what}; known keys: {', '.join(sorted(known)) or 'none'}"


_KIND_NAMES: dict[type, str] = {
    int: "an integer", float: "a number", str: "a string", bool: "true or false",
    list: "a list", dict: "a table", type(None): "nothing",
}  # fmt: skip


def _kind_name(kind: type) -> str:
    # tomllib's own types (dates, times) are spelled as they are.
    return _KIND_NAMES.get(kind, f"a {kind.__name__}")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name

"""`vidhook init`: a starter vidhook.toml, and the exports that make it start.

The file names only the providers asked for and a console channel, and holds no secret:
the admin token is made here and shown once, in an ``export`` line, and every key is a
variable the user sets. With a sandbox URL, the providers point at `vidhook sandbox`.
"""

from __future__ import annotations

import json
import secrets
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from receiver.config import PROVIDER_TYPES
from receiver.providers import ADAPTERS

DEFAULT_PORT = 8000
SANDBOX_URL = "http://127.0.0.1:8800"
# Where `vidhook sandbox`'s PixVerse sends its webhooks unless told otherwise: the account
# URL of a service on init's default port.
SANDBOX_PIXVERSE_WEBHOOK = f"http://127.0.0.1:{DEFAULT_PORT}/callbacks/pixverse"
# The sandbox takes any non-empty key: one variable serves every provider there.
SANDBOX_KEY_ENV = "SANDBOX_API_KEY"
SANDBOX_KEY = "sandbox-key"
ADMIN_TOKEN_ENV = "VIDHOOK_ADMIN_TOKEN"  # noqa: S105 (a variable's name)
# The secret-naming keys of provider types that take more than api_key_env.
SECRET_KEYS: dict[str, tuple[str, ...]] = {
    "kling": ("access_key_env", "secret_key_env"),
    "replicate": ("api_key_env", "webhook_secret_env"),
    "pixverse": ("api_key_env", "webhook_secret_env"),
}
# Quick schedules against the sandbox, whose jobs take seconds; real providers keep
# their types' defaults (see vidhook.example.toml).
SANDBOX_TIMING = {
    "initial_delay": 1,
    "poll_interval": 1,
    "poll_max_interval": 5,
    "reconcile_after": 15,
    "reconcile_interval": 15,
}
SAMPLE_PROMPT = "A red fox trotting through fresh snow at dawn"


@dataclass(frozen=True)
class Export:
    name: str
    value: str
    placeholder: bool = False  # a value the user must replace

    def line(self) -> str:
        return f"export {self.name}={shlex.quote(self.value)}"


@dataclass
class Starter:
    """The file's text, and what to export before starting."""

    text: str
    exports: list[Export] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # Where PixVerse is to send this service's webhooks, when PixVerse is configured.
    pixverse_webhook: str | None = None


class InitError(Exception):
    pass


def build(
    types: list[str],
    *,
    public_url: str | None = None,
    port: int = DEFAULT_PORT,
    sandbox_url: str | None = None,
    token: str | None = None,
) -> Starter:
    unknown = [t for t in types if t not in PROVIDER_TYPES]
    if unknown:
        raise InitError(
            f"unknown provider type {', '.join(unknown)}; choose from {', '.join(PROVIDER_TYPES)}"
        )
    if not types:
        raise InitError(
            "name the providers to configure, such as --provider vidu "
            f"(types: {', '.join(PROVIDER_TYPES)}), or try --sandbox"
        )
    url = (public_url or f"http://127.0.0.1:{port}").rstrip("/")
    lines = [
        "# vidhook configuration, written by `vidhook init`. Every key is explained in",
        "# vidhook.example.toml. Secrets never go in this file: a key ending in _env names",
        "# the environment variable that holds the secret.",
        "",
        "# How providers reach this service: callback URLs are {public_url}/callbacks/...",
        f"public_url = {_toml(url)}",
        'database = "vidhook.db"',
        f"admin_token_env = {_toml(ADMIN_TOKEN_ENV)}",
        'default_channels = ["console"]',
        "",
        "[server]",
        'host = "127.0.0.1"',
        f"port = {port}",
    ]
    exports = [Export(ADMIN_TOKEN_ENV, token or secrets.token_urlsafe(32))]
    notes: list[str] = []
    for kind in dict.fromkeys(types):
        lines += ["", *_provider(kind, sandbox_url, exports, notes)]
    if sandbox_url is not None:
        lines += [
            "",
            "[archive]",
            "# The sandbox serves its videos on loopback, where a service facing the internet",
            "# must never be led to fetch from: remove this line before real jobs.",
            "allow_private_hosts = true",
        ]
    lines += [
        "",
        "[channels.console]",
        'type = "console"                  # one line per event in the service\'s output',
        'events = ["completed", "failed", "canceled"]',
    ]
    exports.append(Export("VIDHOOK_URL", f"http://127.0.0.1:{port}"))
    if sandbox_url is None and public_url is None:
        notes.append(
            f"public_url is {url}: providers on the internet cannot call back there. "
            "Before real jobs, set it (or VIDHOOK_PUBLIC_URL) to this service's public "
            "https address; see deploy/README.md."
        )
    webhook = f"{url}/callbacks/pixverse" if "pixverse" in types else None
    return Starter("\n".join(lines) + "\n", _unique(exports), notes, webhook)


def _provider(
    kind: str, sandbox_url: str | None, exports: list[Export], notes: list[str]
) -> list[str]:
    how = "sends callbacks" if ADAPTERS[kind].supports_callbacks else "no callbacks: polled"
    lines = [f"[providers.{kind}]".ljust(34) + f"# {how}"]
    defaults = PROVIDER_TYPES[kind]
    if sandbox_url is not None:
        lines.append(f"base_url = {_toml(sandbox_url.rstrip('/') + '/' + kind)}")
    elif defaults.get("base_url"):
        lines.append(f"# base_url = {_toml(defaults['base_url'])}")
    else:
        lines.append('base_url = "https://gateway.example.com"   # required: where it runs')
        notes.append(f"set base_url in [providers.{kind}] to where your {kind} gateway runs.")
    for key in SECRET_KEYS.get(kind, ("api_key_env",)):
        if sandbox_url is not None and (secret := sandbox_secret(kind, key)) is not None:
            var = f"SANDBOX_{kind}_{key.removesuffix('_env')}".upper()
            exports.append(Export(var, secret))
        elif sandbox_url is not None:
            var = SANDBOX_KEY_ENV
            exports.append(Export(var, SANDBOX_KEY))
        else:
            var = f"{kind}_{key.removesuffix('_env')}".upper()
            exports.append(Export(var, f"<your {kind} {key.removesuffix('_env')}>", True))
        lines.append(f"{key} = {_toml(var)}")
    if sandbox_url is not None and kind == "fal":
        # The fake signs its webhooks with keys of its own, published beside its queue.
        lines.append(f"jwks_url = {_toml(sandbox_url.rstrip('/') + '/fal/.well-known/jwks.json')}")
    if defaults.get("default_model") is None:
        lines.append('default_model = "kling-v1"          # or name the model in each job')
    if sandbox_url is not None:
        lines += [f"{name} = {value}" for name, value in SANDBOX_TIMING.items()]
    return lines


def sandbox_secret(kind: str, key: str) -> str | None:
    """The value `vidhook sandbox`'s fake of ``kind`` expects for ``key``, where any
    non-empty value will not do (Replicate's webhook secret signs its webhooks)."""
    if (kind, key) == ("replicate", "webhook_secret_env"):
        from receiver.sandbox.replicate import ReplicateFakeSettings

        return ReplicateFakeSettings().webhook_secret
    if (kind, key) == ("pixverse", "webhook_secret_env"):
        from receiver.sandbox.pixverse import PixVerseFakeSettings

        return PixVerseFakeSettings().webhook_secret
    return None


def _unique(exports: list[Export]) -> list[Export]:
    return list({e.name: e for e in exports}.values())


def _toml(text: str) -> str:
    # A TOML basic string is JSON's string syntax for everything written here.
    return json.dumps(text)


def write(path: Path, starter: Starter, *, force: bool) -> None:
    if path.exists() and not force:
        raise InitError(f"{path} already exists; pass --force to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(starter.text, encoding="utf-8")


def report(path: Path, starter: Starter, types: list[str], sandbox_url: str | None) -> list[str]:
    """What was written, and what to do next: the exports and the commands, exactly as
    they are to be run."""
    where = f" against the sandbox at {sandbox_url}" if sandbox_url else ""
    names = ", ".join(dict.fromkeys(types))
    lines = [f"wrote {path}: providers {names}, and a console channel{where}"]
    if sandbox_url:
        port = httpx.URL(sandbox_url).port or 80
        command = f"vidhook sandbox --port {port}"
        webhook = starter.pixverse_webhook
        if webhook is not None and webhook != SANDBOX_PIXVERSE_WEBHOOK:
            # Set in the fake's console, as in PixVerse's: the sandbox must be told.
            command += f" --pixverse-webhook {shlex.quote(webhook)}"
        lines.append(f"(it needs the sandbox running: {command})")
    config = "" if path == Path("vidhook.toml") else f" --config {shlex.quote(str(path))}"
    lines += [
        "",
        "Export these in each shell that runs vidhook (the admin token was made just now and",
        "is written nowhere else):",
        "",
    ]
    lines += [e.line() for e in starter.exports]
    if any(e.placeholder for e in starter.exports):
        lines += ["", "Replace each <...> with the key from the provider's console."]
    for note in starter.notes:
        lines += ["", f"Note: {note}"]
    lines += [
        "",
        "Then start the service:",
        "",
        f"vidhook serve{config}",
        "",
        "and from another shell (with the same exports) submit a job and follow it:",
        "",
        f'vidhook submit {types[0]} --prompt "{SAMPLE_PROMPT}" --wait',
    ]
    return lines

"""The `vidhook` command line. `python -m receiver` is the same."""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import sqlite3
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from receiver import logs
from receiver.config import (
    Config,
    ConfigError,
    archive_location,
    config_path,
    database_path,
    load_config,
)
from receiver.http import service_client
from receiver.notify import build_all as build_channels
from receiver.notify.base import DeliveryError, Event
from receiver.notify.outbox import channel_fingerprint
from receiver.providers import ADAPTERS
from receiver.responses import iso
from receiver.states import Status
from receiver.timeline import format_job, format_timeline

DEFAULT_URL = "http://127.0.0.1:8000"
# Exit codes of `vidhook serve` refusing to start (3 is uvicorn's own startup failure,
# such as a port already taken). 2 and 4 need a person; 5 may pass once the other stops.
EXIT_CONFIG = 2
EXIT_DATABASE = 4  # the database is damaged, empty, not vidhook's, or not writable
EXIT_IN_USE = 5  # another process has the database
TERMINAL = ("completed", "failed", "canceled")


def setup_logging(level: str, fmt: str = "text", known_secrets: Iterable[str] = ()) -> None:
    logs.configure(level, fmt, known_secrets)


def cmd_serve(args: argparse.Namespace) -> int:
    from receiver.app import create_app
    from receiver.server import serve, uvicorn_config
    from receiver.store import DatabaseInUse, DatabaseUnusable

    try:
        config = load_config(config_path(args.config))
        # Before the app exists, so that whatever it logs is formatted and redacted.
        setup_logging(args.log_level, args.log_format, logs.config_secrets(config))
        app = create_app(config)
        # Before the server: a database it cannot serve ends the start here, in one line.
        app.state.runtime.open_database()
    except ConfigError as exc:
        print("vidhook: the configuration has problems:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return EXIT_CONFIG
    except DatabaseUnusable as exc:
        print(f"vidhook: {exc}", file=sys.stderr)
        return EXIT_IN_USE if isinstance(exc, DatabaseInUse) else EXIT_DATABASE
    return serve(
        uvicorn_config(
            app,
            config.server,
            host=args.host or config.server.host,
            port=args.port if args.port is not None else config.server.port,
            log_level=args.log_level.lower(),
            stack=args.http_stack,
        )
    )


def cmd_demo(args: argparse.Namespace) -> int:
    from receiver.demo import run_demo

    return run_demo(timeout=args.timeout)


def cmd_sandbox(args: argparse.Namespace) -> int:
    import uvicorn

    from receiver.sandbox import create_sandbox_app

    setup_logging("info")
    print(f"sandbox providers on http://{args.host}:{args.port} (Vidu at /vidu)")
    uvicorn.run(create_sandbox_app(), host=args.host, port=args.port, log_level="info")
    return 0


class Client:
    """The admin API of a running vidhook, for the commands that talk to it."""

    def __init__(self, args: argparse.Namespace) -> None:
        token = os.environ.get(args.token_env, "")
        if not token:
            raise SystemExit(f"vidhook: set {args.token_env} to the service's admin token")
        self.http = httpx.Client(
            base_url=args.url.rstrip("/"),
            headers={"Authorization": f"Bearer {token}"},
            timeout=120,
        )

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise SystemExit(
                f"vidhook: cannot reach {self.http.base_url} ({exc.__class__.__name__}); "
                "is `vidhook serve` running? (--url or VIDHOOK_URL)"
            ) from None
        try:
            body = response.json() if response.content else {}
        except ValueError:
            body = None  # not JSON: not vidhook answering (a proxy, another service)
        not_vidhook = (
            f"vidhook: {self.http.base_url} answered HTTP {response.status_code} "
            f"{response.reason_phrase} without a vidhook JSON body; "
            "is --url (or VIDHOOK_URL) a vidhook service?"
        )
        if response.status_code >= 400:
            err = body.get("error") if isinstance(body, dict) else None
            if not isinstance(err, dict) or not err.get("message"):
                raise SystemExit(not_vidhook)
            lines = [f"vidhook: {err['message']}"]
            fields = err.get("fields")
            if isinstance(fields, dict):
                lines += [f"  {k}: {v}" for k, v in fields.items()]
            raise SystemExit("\n".join(lines))
        if not isinstance(body, dict):
            raise SystemExit(not_vidhook)
        return body


def cmd_submit(args: argparse.Namespace) -> int:
    client = Client(args)
    payload: dict[str, Any] = {"provider": args.provider, "prompt": args.prompt}
    if args.model:
        payload["model"] = args.model
    if args.image:
        payload["images"] = args.image
    job = client.call("POST", "/api/jobs", json=payload)
    print(f"{job['id']} {job['status']}")
    submission = job.get("submission") or {}
    if submission.get("pending"):
        print(
            f"  {args.provider} refused it for now ({submission['last_error']}); "
            f"vidhook sends it again at {submission['next_attempt_at']}"
        )
    if not args.wait:
        return 0
    shown = 0
    while True:
        job = client.call("GET", f"/api/jobs/{job['id']}")
        lines = format_timeline(job)
        for line in lines[shown:]:
            print(line)
        shown = len(lines)
        if job["status"] in TERMINAL:
            break
        time.sleep(1)
    if job["status"] == "completed":
        print(f"result: {job['result_url']}")
        return 0
    print("canceled" if job["status"] == "canceled" else f"failed: {job['error']}")
    return 1


def cmd_jobs(args: argparse.Namespace) -> int:
    client = Client(args)
    params = {k: v for k, v in (("status", args.status), ("provider", args.provider)) if v}
    page = client.call("GET", "/api/jobs", params=params)
    for job in page["jobs"]:
        prompt = (job.get("prompt") or "").replace("\n", " ")
        print(f"{job['id']}  {job['provider']:<10} {job['status']:<10} ", end="")
        print(f"{job['created_at']}  {prompt[:50]}")
    if not page["jobs"]:
        print("no jobs")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    client = Client(args)
    job = client.call("GET", f"/api/jobs/{args.job_id}")
    for line in format_job(job):
        print(line)
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    job = Client(args).call("POST", f"/api/jobs/{args.job_id}/cancel")
    if job["status"] == "canceled":
        print(f"{job['id']} canceled")
    else:
        print(f"{job['id']} {job['status']}: {job['provider']} took the cancel request; "
              f"`vidhook show {job['id']}` tells when it ends")  # fmt: skip
    return 0


def cmd_deliveries(args: argparse.Namespace) -> int:
    client = Client(args)
    if args.action == "retry":
        if (args.delivery_id is None) == (not args.all) or (args.channel and not args.all):
            raise SystemExit("vidhook: give a delivery id, or --all [--channel C]")
        if args.all:
            params = {"channel": args.channel} if args.channel else {}
            queued = client.call("POST", "/api/deliveries/retry", params=params)
            where = f" to {args.channel}" if args.channel else ""
            print(
                f"{queued['queued']} deliveries{where} queued again "
                f"({queued['dead']} dead, {queued['held']} held)"
            )
            return 0
        delivery = client.call("POST", f"/api/deliveries/{args.delivery_id}/retry")
        print(f"delivery {delivery['id']} to {delivery['channel']} queued again")
        return 0
    params = {"status": args.status} if args.status else {}
    page = client.call("GET", "/api/deliveries", params=params)
    for d in page["deliveries"]:
        error = f"  {d['last_error']}" if d.get("last_error") else ""
        print(f"{d['id']:>8}  {d['channel']:<12} {d['event']:<10} {d['status']:<9} ", end="")
        print(f"attempts={d['attempts']}  {d['job_id']}{error}")
    if not page["deliveries"]:
        print("no deliveries")
    return 0


def cmd_archive(args: argparse.Namespace) -> int:
    client = Client(args)
    if args.backfill:
        queued = client.call("POST", "/api/archive/backfill")["queued"]
        print(f"queued {queued} completed jobs whose results are not kept yet")
    if args.prune:
        pruned = client.call("POST", "/api/archive/prune")["pruned"]
        print(f"removed {pruned} files kept longer than keep_days")
    summary = client.call("GET", "/api/archive")
    counts = ", ".join(f"{n} {status}" for status, n in sorted(summary["downloads"].items()))
    print(f"archive: {summary['store']}; downloads: {counts or 'none'}")
    print(f"kept now: {summary['files']} files, {summary['bytes']} bytes")
    return 0


def cmd_backup(args: argparse.Namespace) -> int:
    from receiver.backup import BackupError
    from receiver.backup import backup as take_backup

    try:
        report = take_backup(database_path(config_path(args.config)), Path(args.path))
    except (ConfigError, BackupError) as exc:
        print(f"vidhook: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, ConfigError) else 1
    print(report.summary())
    try:
        kept = archive_location(config_path(args.config))
    except ConfigError:
        kept = None
    if kept is not None:
        print(
            f"kept results are not in this backup: they are in the {kept}; back that up "
            "separately (a copy of the folder, e.g. rsync -a, or the bucket's own "
            "versioning or replication)"
        )
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    from receiver.backup import BackupError, restore

    try:
        database = database_path(config_path(args.config))
        restore(Path(args.path), database)
    except (ConfigError, BackupError) as exc:
        print(f"vidhook: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, ConfigError) else 1
    print(f"restored {args.path} to {database}; the files it replaced were kept beside it")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    path = config_path(args.config)
    try:
        config = load_config(path)
        build_channels(config, httpx.AsyncClient())
    except ConfigError as exc:
        print(f"vidhook: {path} has problems:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return 2
    print(f"{path}: ok")
    print(f"database: {config.database}")
    print("callback URLs (each job adds its own token):")
    for name, provider in config.providers.items():
        takes = ADAPTERS[provider.type].supports_callbacks
        where = config.callback_url(name, "<token>") if takes else "none: polled"
        print(f"  {name:<12} {where}")
    found = stored_channels(config.database)
    print("channels:" if config.channels else "channels: none configured")
    still_disabled = False
    for name, channel in config.channels.items():
        state = "enabled"
        if name in found.disabled:
            reason, fingerprint = found.disabled[name]
            if fingerprint == channel_fingerprint(channel):
                state, still_disabled = f"DISABLED: {reason}", True
            else:
                state = "disabled, but its configuration changed: enabled again at the next start"
        if found.held.get(name):
            state += f"; {found.held[name]} deliveries held"
        print(f"  {name:<12} {channel.type:<8} {state}")
    orphaned = {n: count for n, count in found.waiting.items() if n not in config.channels}
    if orphaned:
        print("deliveries held for channels not in the configuration (add one back to send them):")
        for name, count in sorted(orphaned.items()):
            print(f"  {name:<12} {count}")
    failed = not check_archive(config)
    if args.send_test:
        failed = send_tests(config) or failed
    return 1 if failed or still_disabled else 0


def check_archive(config: Config) -> bool:
    """Print where results are kept, after writing a probe there; False if that failed."""
    from receiver.media.storage import StorageError, build_storage

    storage = build_storage(config.archive)
    if storage is None:
        print("archive: off (results are not kept; notifications give the providers' links)")
        return True
    try:
        where = asyncio.run(storage.check())
    except StorageError as exc:
        print(f"archive: {config.archive.store}: FAILED {exc}")
        return False
    print(f"archive: {config.archive.store}, {where}")
    if config.archive.allow_private_hosts:
        print("  allow_private_hosts = true: results may be fetched from private addresses")
    return True


def make_test_event(now: float) -> Event:
    """A completed job that never was, saying so wherever a channel shows the prompt."""
    stamp = iso(now)
    job: dict[str, Any] = {
        "id": "job_TEST", "provider": "vidhook-test", "provider_job_id": None,
        "status": "completed", "provider_status": None, "model": "test",
        "prompt": "Test message from `vidhook check --send-test`: this channel works. "
                  "No video was generated.",
        "request": {}, "result_url": None, "cover_url": None, "error": None, "credits": None,
        "notify": None, "anomalies": [], "key_fingerprint": None, "created_at": stamp,
        "updated_at": stamp, "finished_at": stamp, "last_callback_at": None,
        "next_poll_at": None, "callback_url": None, "test": True,
    }  # fmt: skip
    return Event(id=f"test_{secrets.token_hex(8)}", type="job.completed", created_at=now, job=job)


def send_tests(config: Config) -> bool:
    """Send the test event through every channel and print each result; True if any failed."""
    if not config.channels:
        print("no channels to send a test message through")
        return False
    print("sending a test message through every channel:")
    results = asyncio.run(_send_tests(config))
    # A channel's message names no secret, but it may quote a server's answer.
    redact = logs.Redactor(logs.config_secrets(config))
    for name, failure in results.items():
        print(f"{name}: ok" if failure is None else f"{name}: FAILED {redact(failure)}")
    return any(failure is not None for failure in results.values())


async def _send_tests(config: Config) -> dict[str, str | None]:
    event = make_test_event(time.time())
    # The service's own client: a test message goes out as the service's messages do.
    async with service_client() as client:
        channels = build_channels(config, client)

        async def send(name: str) -> str | None:
            try:
                await channels[name].send(event)
            except DeliveryError as exc:
                return exc.message
            except Exception as exc:  # a channel's bug is its failure, not check's crash
                return f"unexpected {exc.__class__.__name__}"
            return None

        # At once: each channel has its own timeout, and one slow server delays only itself.
        failures = await asyncio.gather(*(send(name) for name in channels))
    return dict(zip(channels, failures, strict=True))


@dataclass
class StoredChannels:
    """What the database says of the channels: those the outbox disabled because their
    destination is gone (name -> reason, configuration fingerprint), held deliveries, and
    deliveries waiting to be sent or held (pending or held), by channel."""

    disabled: dict[str, tuple[str, str]] = field(default_factory=dict)
    held: dict[str, int] = field(default_factory=dict)
    waiting: dict[str, int] = field(default_factory=dict)


def stored_channels(database: Path) -> StoredChannels:
    found = StoredChannels()
    if not database.exists():
        return found
    conn = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    try:
        for name, reason, fingerprint in conn.execute(
            "SELECT name, reason, config_fingerprint FROM channel_states"
        ):
            found.disabled[name] = (reason, fingerprint)
        for channel, status, count in conn.execute(
            "SELECT channel, status, count(*) FROM deliveries"
            " WHERE status IN ('pending', 'held') GROUP BY 1, 2"
        ):
            found.waiting[channel] = found.waiting.get(channel, 0) + count
            if status == "held":
                found.held[channel] = count
    except sqlite3.Error:
        return StoredChannels()
    finally:
        conn.close()
    return found


def add_client_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url",
        default=os.environ.get("VIDHOOK_URL", DEFAULT_URL),
        help=f"the running service (default: $VIDHOOK_URL or {DEFAULT_URL})",
    )
    parser.add_argument(
        "--token-env",
        default="VIDHOOK_ADMIN_TOKEN",
        help="environment variable holding the admin token (default: VIDHOOK_ADMIN_TOKEN)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vidhook", description="Self-hosted companion for AI video-generation APIs."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the service")
    serve.add_argument("--config", help="path to vidhook.toml (default: $VIDHOOK_CONFIG)")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning"])
    serve.add_argument(
        "--log-format", default="text", choices=logs.FORMATS, help="text (default) or json"
    )
    serve.add_argument(
        "--http-stack",
        default="httptools",
        choices=["httptools", "h11"],
        help="httptools on uvloop (default), or h11 on the stock asyncio loop, which is slower"
        " and has no header limits or header timeout: for comparison only",
    )
    serve.set_defaults(func=cmd_serve)

    demo = commands.add_parser("demo", help="run everything on loopback with sample jobs")
    demo.add_argument("--timeout", type=float, default=60.0)
    demo.set_defaults(func=cmd_demo)

    sandbox = commands.add_parser("sandbox", help="run the fake providers alone")
    sandbox.add_argument("--host", default="127.0.0.1")
    sandbox.add_argument("--port", type=int, default=8800)
    sandbox.set_defaults(func=cmd_sandbox)

    submit = commands.add_parser("submit", help="submit a job to a running service")
    submit.add_argument("provider")
    submit.add_argument("--prompt", required=True)
    submit.add_argument("--model")
    submit.add_argument("--image", action="append", help="image URL; repeat for several")
    submit.add_argument("--wait", action="store_true", help="follow the job until it ends")
    add_client_options(submit)
    submit.set_defaults(func=cmd_submit)

    jobs = commands.add_parser("jobs", help="list jobs")
    jobs.add_argument("--status", choices=[s.value for s in Status])
    jobs.add_argument("--provider")
    add_client_options(jobs)
    jobs.set_defaults(func=cmd_jobs)

    show = commands.add_parser("show", help="show one job with its timeline")
    show.add_argument("job_id")
    add_client_options(show)
    show.set_defaults(func=cmd_show)

    cancel = commands.add_parser("cancel", help="ask the provider to stop a running job")
    cancel.add_argument("job_id")
    add_client_options(cancel)
    cancel.set_defaults(func=cmd_cancel)

    deliveries = commands.add_parser("deliveries", help="list notification deliveries")
    deliveries.add_argument("--status", choices=["pending", "delivered", "dead", "held"])
    actions = deliveries.add_subparsers(dest="action")
    retry = actions.add_parser(
        "retry", help="queue a dead or held delivery again, or (--all) every one"
    )
    retry.add_argument("delivery_id", nargs="?")
    retry.add_argument("--all", action="store_true", help="every dead delivery, and every held one")
    retry.add_argument("--channel", help="with --all: only this channel's")
    add_client_options(retry)
    add_client_options(deliveries)
    deliveries.set_defaults(func=cmd_deliveries)

    archive = commands.add_parser(
        "archive", help="the kept results: queue what is missing, drop what is too old"
    )
    archive.add_argument(
        "--backfill",
        action="store_true",
        help="download the results of completed jobs not kept yet (whose links may still work)",
    )
    archive.add_argument(
        "--prune", action="store_true", help="remove the files kept longer than keep_days now"
    )
    add_client_options(archive)
    archive.set_defaults(func=cmd_archive)

    check = commands.add_parser("check", help="validate the config and show callback URLs")
    check.add_argument("--config", help="path to vidhook.toml (default: $VIDHOOK_CONFIG)")
    check.add_argument(
        "--send-test",
        action="store_true",
        help="send a test message through every channel and report each result",
    )
    check.set_defaults(func=cmd_check)

    backup = commands.add_parser("backup", help="copy the database while the service runs")
    backup.add_argument("path", help="where to write the copy (folders are created)")
    backup.add_argument("--config", help="path to vidhook.toml (default: $VIDHOOK_CONFIG)")
    backup.set_defaults(func=cmd_backup)

    restore = commands.add_parser("restore", help="put a backup in place (service stopped)")
    restore.add_argument("path", help="the backup file")
    restore.add_argument("--config", help="path to vidhook.toml (default: $VIDHOOK_CONFIG)")
    restore.set_defaults(func=cmd_restore)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())

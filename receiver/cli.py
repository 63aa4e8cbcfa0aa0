"""The `vidhook` command line. `python -m receiver` is the same."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import httpx

from receiver import logs, progress, starter
from receiver.check import (
    check_archive,
    check_database,
    plaintext_passwords,
    send_tests,
    stored_channels,
)
from receiver.client import DEFAULT_URL, TOKEN_ENV, Client
from receiver.config import (
    ConfigError,
    archive_location,
    config_path,
    database_path,
    database_url_env,
    load_config,
)
from receiver.notify import build_all as build_channels
from receiver.notify.outbox import channel_fingerprint
from receiver.ports import PortProblem, check_free, listen
from receiver.providers import ADAPTERS
from receiver.states import Status
from receiver.submission import ArgumentProblem, image_argument, parse_options
from receiver.timeline import format_delivery, format_job

# Exit codes of `vidhook serve` refusing to start. 2 and 4 need a person; 3 and 5 may
# pass once the other program stops.
EXIT_CONFIG = 2
EXIT_PORT = 3  # the port is taken (uvicorn's own code for a failed start, too)
EXIT_DATABASE = 4  # the database is damaged, empty, not vidhook's, or not writable
EXIT_IN_USE = 5  # another process has the database
# How far past a page `jobs` looks to say how many more there are.
MORE_PEEK = 100


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
    except ConfigError as exc:
        print("vidhook: the configuration has problems:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        # Before the server: a database it cannot serve ends the start here, in one line.
        app.state.runtime.open_database()
    except DatabaseUnusable as exc:
        print(f"vidhook: {exc}", file=sys.stderr)
        return EXIT_IN_USE if isinstance(exc, DatabaseInUse) else EXIT_DATABASE
    host = args.host or config.server.host
    port = args.port if args.port is not None else config.server.port
    try:
        # Before the app starts: it says "vidhook ready" before uvicorn binds the port.
        # After the database: a second vidhook on the same file is named by its lock.
        check_free(host, port)
    except PortProblem as exc:
        print(f"vidhook: {exc}", file=sys.stderr)
        return EXIT_PORT
    return serve(
        uvicorn_config(
            app,
            config.server,
            host=host,
            port=port,
            log_level=args.log_level.lower(),
            stack=args.http_stack,
        )
    )


def cmd_demo(args: argparse.Namespace) -> int:
    from receiver.demo import run_demo

    return run_demo(timeout=args.timeout, keep=args.keep, serve=args.serve)


def cmd_sandbox(args: argparse.Namespace) -> int:
    import uvicorn

    from receiver.sandbox import PixVerseFakeSettings, create_sandbox_app, describe

    try:
        sock = listen(args.host, args.port)
    except PortProblem as exc:
        print(f"vidhook: {exc}", file=sys.stderr)
        return 2
    host = f"[{args.host}]" if ":" in args.host else args.host
    # PixVerse sends webhooks to the one URL set in its console, not to one per job.
    pixverse = PixVerseFakeSettings(webhook_url=args.pixverse_webhook or None)
    app = create_sandbox_app(pixverse=pixverse)
    for line in describe(app, f"http://{host}:{sock.getsockname()[1]}"):
        print(line)
    sys.stdout.flush()
    setup_logging("info")
    config = uvicorn.Config(app, log_level="info", log_config=None, lifespan="on")
    uvicorn.Server(config).run(sockets=[sock])
    return 0


def cmd_init(args: argparse.Namespace) -> int:
    from receiver.sandbox import PREFIXES

    path = config_path(args.path)
    types = args.provider or (list(PREFIXES) if args.sandbox else [])
    try:
        made = starter.build(
            types, public_url=args.public_url, port=args.port, sandbox_url=args.sandbox
        )
        starter.write(path, made, force=args.force)
    except starter.InitError as exc:
        print(f"vidhook: {exc}", file=sys.stderr)
        return 2
    for line in starter.report(path, made, types, args.sandbox):
        print(line)
    return 0


def client_of(args: argparse.Namespace) -> Client:
    return Client(args.url, args.token_env)


def cmd_submit(args: argparse.Namespace) -> int:
    try:
        payload: dict[str, Any] = {"provider": args.provider, "prompt": args.prompt}
        if args.model:
            payload["model"] = args.model
        if args.image:
            payload["images"] = [image_argument(i) for i in args.image]
        if args.mode:
            payload["mode"] = args.mode
        if args.option:
            payload["options"] = parse_options(args.option)
        if args.notify:
            payload["notify"] = args.notify
    except ArgumentProblem as exc:
        print(f"vidhook: {exc}", file=sys.stderr)
        return 2
    client = client_of(args)
    job = client.call("POST", "/api/jobs", json=payload)
    print(f"{job['id']} {job['status']}", flush=True)
    submission = job.get("submission") or {}
    if submission.get("pending"):
        print(
            f"  {args.provider} refused it for now ({submission['last_error']}); "
            f"vidhook sends it again at {submission['next_attempt_at']}"
        )
    if args.wait:
        return progress.follow(client, job, sys.stdout, sys.stderr)
    print(f"follow it with: vidhook wait {job['id']}", file=sys.stderr)
    return 0


def cmd_wait(args: argparse.Namespace) -> int:
    client = client_of(args)
    job = client.call("GET", f"/api/jobs/{args.job_id}")
    print(f"{job['id']} {job['provider']} {job['status']}", flush=True)
    return progress.follow(client, job, sys.stdout, sys.stderr)


def listing(
    args: argparse.Namespace, path: str, key: str, params: dict[str, str]
) -> tuple[list[dict[str, Any]], str | None, int]:
    """The rows ``--limit``/``--all`` ask for, the cursor of the rest, and how many more
    there are (counted up to MORE_PEEK + 1)."""
    client = client_of(args)
    rows, cursor = client.pages(path, key, params, None if args.all else args.limit)
    more = 0 if cursor is None else client.count_beyond(path, key, params, cursor, MORE_PEEK)
    return rows, cursor, more


def print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, ensure_ascii=False))


def say_more(more: int) -> None:
    if more:
        count = f"over {MORE_PEEK}" if more > MORE_PEEK else str(more)
        print(f"{count} more: --all (or --limit N)", file=sys.stderr)


def cmd_jobs(args: argparse.Namespace) -> int:
    params = {k: v for k, v in (("status", args.status), ("provider", args.provider)) if v}
    jobs, cursor, more = listing(args, "/api/jobs", "jobs", params)
    if args.json:
        print_json({"jobs": jobs, "next_cursor": cursor})
    for job in [] if args.json else jobs:
        prompt = (job.get("prompt") or "").replace("\n", " ")
        print(f"{job['id']}  {job['provider']:<10} {job['status']:<10} ", end="")
        print(f"{job['created_at']}  {prompt[:50]}")
    if not jobs and not args.json:
        print("no jobs")
    say_more(more)
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    job = client_of(args).call("GET", f"/api/jobs/{args.job_id}")
    if args.json:
        print_json(job)
        return 0
    for line in format_job(job):
        print(line)
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    job = client_of(args).call("POST", f"/api/jobs/{args.job_id}/cancel")
    if job["status"] == "canceled":
        print(f"{job['id']} canceled")
    else:
        print(f"{job['id']} {job['status']}: {job['provider']} took the cancel request; "
              f"`vidhook show {job['id']}` tells when it ends")  # fmt: skip
    return 0


def cmd_deliveries(args: argparse.Namespace) -> int:
    if args.action == "retry":
        if (args.delivery_id is None) == (not args.all) or (args.channel and not args.all):
            raise SystemExit("vidhook: give a delivery id, or --all [--channel C]")
        if args.all:
            params = {"channel": args.channel} if args.channel else {}
            queued = client_of(args).call("POST", "/api/deliveries/retry", params=params)
            where = f" to {args.channel}" if args.channel else ""
            print(
                f"{queued['queued']} deliveries{where} queued again "
                f"({queued['dead']} dead, {queued['held']} held)"
            )
            return 0
        delivery = client_of(args).call("POST", f"/api/deliveries/{args.delivery_id}/retry")
        print(f"delivery {delivery['id']} to {delivery['channel']} queued again")
        return 0
    params = {"status": args.status} if args.status else {}
    rows, cursor, more = listing(args, "/api/deliveries", "deliveries", params)
    if args.json:
        print_json({"deliveries": rows, "next_cursor": cursor})
    for d in [] if args.json else rows:
        print(format_delivery(d, indent="  ", with_job=True))
    if not rows and not args.json:
        print("no deliveries")
    say_more(more)
    return 0


def cmd_archive(args: argparse.Namespace) -> int:
    client = client_of(args)
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


def pg_dump_advice(variable: str, command: str) -> str:
    """What to do instead of `vidhook backup`/`restore` when the store is PostgreSQL."""
    return (
        f"the database is PostgreSQL (database_url_env = {variable}), which `vidhook {command}` "
        "does not copy: it copies an SQLite file. Back PostgreSQL up with its own tools while "
        f'the replicas run: pg_dump --format=custom --file vidhook.dump "${variable}"; restore '
        f'with the replicas stopped: pg_restore --clean --if-exists --dbname "${variable}" '
        "vidhook.dump (or use your provider's snapshots). deploy/README.md has the details"
    )


def cmd_backup(args: argparse.Namespace) -> int:
    from receiver.backup import BackupError
    from receiver.backup import backup as take_backup

    try:
        variable = database_url_env(config_path(args.config))
        if variable is not None:
            print(f"vidhook: {pg_dump_advice(variable, 'backup')}", file=sys.stderr)
            return 1
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
        variable = database_url_env(config_path(args.config))
        if variable is not None:
            print(f"vidhook: {pg_dump_advice(variable, 'restore')}", file=sys.stderr)
            return 1
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
    database = check_database(config)
    if database is None:
        return 1
    print(f"database: {database}")
    print("callback URLs (each job adds its own token):")
    for name, provider in config.providers.items():
        adapter = ADAPTERS[provider.type]
        if adapter.account_webhook:
            where = f"{config.callback_url(name, None)} (set it in the provider's console)"
        elif adapter.supports_callbacks:
            where = config.callback_url(name, "<token>")
        else:
            where = "none: polled"
        print(f"  {name:<12} {where}")
    found = stored_channels(config)
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
    for warning in plaintext_passwords(config):
        print(f"warning: {warning}")
    failed = not check_archive(config)
    if args.send_test:
        failed = send_tests(config) or failed
    return 1 if failed or still_disabled else 0


def add_client_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url",
        default=os.environ.get("VIDHOOK_URL", DEFAULT_URL),
        help=f"the running service (default: $VIDHOOK_URL or {DEFAULT_URL})",
    )
    parser.add_argument(
        "--token-env",
        default=TOKEN_ENV,
        help=f"environment variable holding the admin token (default: {TOKEN_ENV})",
    )


def add_list_options(parser: argparse.ArgumentParser, what: str) -> None:
    amount = parser.add_mutually_exclusive_group()
    amount.add_argument(
        "--limit", type=positive, default=50, metavar="N", help=f"at most N {what} (default 50)"
    )
    amount.add_argument("--all", action="store_true", help=f"every {what.rstrip('s')}")
    parser.add_argument("--json", action="store_true", help="print the API's JSON")


def positive(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number from 1, got {text!r}")
    return int(text)


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
    demo.add_argument(
        "--keep", action="store_true", help="keep the demo's database and say where it is"
    )
    demo.add_argument(
        "--serve", action="store_true", help="keep running afterwards, with the dashboard open"
    )
    demo.set_defaults(func=cmd_demo)

    sandbox = commands.add_parser("sandbox", help="run the fake providers alone")
    sandbox.add_argument("--host", default="127.0.0.1")
    sandbox.add_argument("--port", type=int, default=8800, help="0: any free port")
    sandbox.add_argument(
        "--pixverse-webhook",
        default=starter.SANDBOX_PIXVERSE_WEBHOOK,
        metavar="URL",
        help="the webhook URL of the fake PixVerse's console: where it sends every video's "
        f'webhook (default {starter.SANDBOX_PIXVERSE_WEBHOOK}; "" for none)',
    )
    sandbox.set_defaults(func=cmd_sandbox)

    init = commands.add_parser("init", help="write a starter vidhook.toml")
    init.add_argument("path", nargs="?", help="where to write it (default: vidhook.toml)")
    init.add_argument(
        "--provider",
        action="append",
        metavar="TYPE",
        help="a provider to configure; repeat for several",
    )
    init.add_argument(
        "--sandbox",
        nargs="?",
        const=starter.SANDBOX_URL,
        metavar="URL",
        help=f"point the providers at `vidhook sandbox` (default {starter.SANDBOX_URL})",
    )
    init.add_argument("--public-url", help="how providers reach this service")
    init.add_argument("--port", type=int, default=starter.DEFAULT_PORT, help="the service's port")
    init.add_argument("--force", action="store_true", help="replace an existing file")
    init.set_defaults(func=cmd_init)

    submit = commands.add_parser("submit", help="submit a job to a running service")
    submit.add_argument("provider")
    submit.add_argument("--prompt", required=True)
    submit.add_argument("--model")
    submit.add_argument(
        "--image",
        action="append",
        metavar="URL|FILE",
        help="an image URL or a local file (sent inline); repeat for several",
    )
    submit.add_argument(
        "-o",
        "--option",
        action="append",
        metavar="KEY=VALUE",
        help="a provider option; VALUE may be JSON (-o duration=8 -o bgm=true)",
    )
    submit.add_argument("--mode", help="a provider mode, such as img2video for Vidu")
    submit.add_argument(
        "--notify", action="append", metavar="CHANNEL", help="a channel to notify; repeatable"
    )
    submit.add_argument("--wait", action="store_true", help="follow the job until it ends")
    add_client_options(submit)
    submit.set_defaults(func=cmd_submit)

    wait = commands.add_parser("wait", help="follow a job to its end")
    wait.add_argument("job_id")
    add_client_options(wait)
    wait.set_defaults(func=cmd_wait)

    jobs = commands.add_parser("jobs", help="list jobs, newest first")
    jobs.add_argument("--status", choices=[s.value for s in Status])
    jobs.add_argument("--provider")
    add_list_options(jobs, "jobs")
    add_client_options(jobs)
    jobs.set_defaults(func=cmd_jobs)

    show = commands.add_parser("show", help="show one job with its timeline")
    show.add_argument("job_id")
    show.add_argument("--json", action="store_true", help="print the API's JSON")
    add_client_options(show)
    show.set_defaults(func=cmd_show)

    cancel = commands.add_parser("cancel", help="ask the provider to stop a running job")
    cancel.add_argument("job_id")
    add_client_options(cancel)
    cancel.set_defaults(func=cmd_cancel)

    deliveries = commands.add_parser("deliveries", help="list notification deliveries")
    deliveries.add_argument("--status", choices=["pending", "delivered", "dead", "held"])
    add_list_options(deliveries, "deliveries")
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
    try:
        result: int = args.func(args)
    except KeyboardInterrupt:
        return progress.DETACHED
    except BrokenPipeError:
        # The reader left (`vidhook jobs | head -1`): say nothing more, and let the
        # interpreter's last flush of stdout go nowhere rather than fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    return result


if __name__ == "__main__":
    sys.exit(main())

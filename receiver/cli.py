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
from receiver.check import disabled_channels, plaintext_passwords, send_tests
from receiver.client import DEFAULT_URL, TOKEN_ENV, Client
from receiver.config import ConfigError, config_path, database_path, load_config
from receiver.notify import build_all as build_channels
from receiver.ports import PortProblem, check_free, listen
from receiver.providers import ADAPTERS
from receiver.states import Status
from receiver.submission import ArgumentProblem, image_argument, parse_options
from receiver.timeline import format_delivery, format_job

# How far past a page `jobs` looks to say how many more there are.
MORE_PEEK = 100


def setup_logging(level: str, fmt: str = "text", known_secrets: Iterable[str] = ()) -> None:
    logs.configure(level, fmt, known_secrets)


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from receiver.app import create_app

    try:
        config = load_config(config_path(args.config))
        # Before the app exists, so that whatever it logs is formatted and redacted.
        setup_logging(args.log_level, args.log_format, logs.config_secrets(config))
        app = create_app(config)
    except ConfigError as exc:
        print("vidhook: the configuration has problems:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return 2
    host = args.host or config.server.host
    port = args.port if args.port is not None else config.server.port
    try:
        # Before the app starts: it says "vidhook ready" before uvicorn binds the port.
        check_free(host, port)
    except PortProblem as exc:
        print(f"vidhook: {exc}", file=sys.stderr)
        return 2
    uvicorn.run(
        app,
        host=host,
        port=port,
        access_log=False,
        log_level=args.log_level.lower(),
        # None: uvicorn installs no handlers of its own; its records reach the redacting one.
        log_config=None,
        timeout_graceful_shutdown=10,
        # The app reads forwarding headers itself, from [server] trusted_proxies only.
        proxy_headers=False,
    )
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from receiver.demo import run_demo

    return run_demo(timeout=args.timeout, keep=args.keep)


def cmd_sandbox(args: argparse.Namespace) -> int:
    import uvicorn

    from receiver.sandbox import create_sandbox_app, describe

    try:
        sock = listen(args.host, args.port)
    except PortProblem as exc:
        print(f"vidhook: {exc}", file=sys.stderr)
        return 2
    host = f"[{args.host}]" if ":" in args.host else args.host
    app = create_sandbox_app()
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


def cmd_deliveries(args: argparse.Namespace) -> int:
    if args.action == "retry":
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


def cmd_backup(args: argparse.Namespace) -> int:
    from receiver.backup import BackupError
    from receiver.backup import backup as take_backup

    try:
        report = take_backup(database_path(config_path(args.config)), Path(args.path))
    except (ConfigError, BackupError) as exc:
        print(f"vidhook: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, ConfigError) else 1
    print(report.summary())
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
    disabled = disabled_channels(config.database)
    print("channels:" if config.channels else "channels: none configured")
    for name, channel in config.channels.items():
        state = f"DISABLED: {disabled[name]}" if name in disabled else "enabled"
        print(f"  {name:<12} {channel.type:<8} {state}")
    for warning in plaintext_passwords(config):
        print(f"warning: {warning}")
    failed = False
    if args.send_test:
        failed = send_tests(config)
    return 1 if failed or any(name in disabled for name in config.channels) else 0


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
    serve.set_defaults(func=cmd_serve)

    demo = commands.add_parser("demo", help="run everything on loopback with sample jobs")
    demo.add_argument("--timeout", type=float, default=60.0)
    demo.add_argument(
        "--keep", action="store_true", help="keep the demo's database and say where it is"
    )
    demo.set_defaults(func=cmd_demo)

    sandbox = commands.add_parser("sandbox", help="run the fake providers alone")
    sandbox.add_argument("--host", default="127.0.0.1")
    sandbox.add_argument("--port", type=int, default=8800, help="0: any free port")
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

    deliveries = commands.add_parser("deliveries", help="list notification deliveries")
    deliveries.add_argument("--status", choices=["pending", "delivered", "dead"])
    add_list_options(deliveries, "deliveries")
    actions = deliveries.add_subparsers(dest="action")
    retry = actions.add_parser("retry", help="queue a dead delivery again")
    retry.add_argument("delivery_id")
    add_client_options(retry)
    add_client_options(deliveries)
    deliveries.set_defaults(func=cmd_deliveries)

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

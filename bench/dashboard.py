"""The dashboard's costs, measured against bare routes serving the same bytes.

    .venv/bin/python -m bench.dashboard            # both halves, one RESULT line
    .venv/bin/python -m bench.dashboard --pages    # the pages over a million jobs
    .venv/bin/python -m bench.dashboard --sse      # the event stream's fan-out

``--pages`` (bench/dashboard_pages.py): the job list (first page, filtered, searched)
and a job's page over ``--jobs`` jobs, p50/p99 against a bare route.
``--sse`` (bench/dashboard_sse.py): ``--clients`` open event streams receiving one
transition, the time from the commit to every client, against a bare broadcaster.

Output ends with ``RESULT list_p99_ms=<n> job_p99_ms=<n> sse_fanout_p99_ms=<n>
sse_clients=<n>`` (the figures of the halves that ran).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from bench import dashboard_pages, dashboard_sse
from bench.common import machine, percentile


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.dashboard",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--pages", action="store_true", help="the pages half")
    parser.add_argument("--sse", action="store_true", help="the event stream's half")
    pages = parser.add_argument_group("pages")
    pages.add_argument("--jobs", type=int, default=1_000_000)
    pages.add_argument("--rounds", type=int, default=3)
    pages.add_argument("--requests", type=int, default=200, help="per page per round")
    pages.add_argument("--keep", action="store_true", help="keep the temporary folder")
    sse = parser.add_argument_group("event stream")
    sse.add_argument("--clients", type=int, default=500, help="open streams per server")
    sse.add_argument("--sse-rounds", type=int, default=200, help="rounds measured")
    sse.add_argument("--warmup", type=int, default=5, help="rounds not counted")
    sse.add_argument("--gap", type=float, default=0.05, help="seconds between rounds")
    sse.add_argument("--timeout", type=float, default=10.0, help="seconds a round waits")
    sse.add_argument("--log-level", default="warning")
    parser.add_argument("--serve-bare", nargs=2, metavar=("PORT", "FOLDER"), help=argparse.SUPPRESS)
    parser.add_argument("--serve-bare-sse", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_bare:
        dashboard_pages.serve_bare(int(args.serve_bare[0]), Path(args.serve_bare[1]))
        return 0
    if args.serve_bare_sse:
        dashboard_sse.serve_bare_sse(args.serve_bare_sse, args.log_level)
        return 0
    both = not (args.pages or args.sse)
    print(machine(), flush=True)
    figures: dict[str, str] = {}
    code = 0
    if args.pages or both:
        folder = Path(tempfile.mkdtemp(prefix="vidhook-bench-dashboard-"))
        try:
            measured = dashboard_pages.measure_pages(args, folder)
        finally:
            if args.keep:
                print(f"kept: {folder}")
            else:
                shutil.rmtree(folder, ignore_errors=True)
        figures |= {name: f"{value:.2f}" for name, value in measured.items()}
    if args.sse or both:
        with tempfile.TemporaryDirectory(prefix="vidhook-bench-dashboard-") as tmp:
            result = dashboard_sse.run_sse(args, Path(tmp))
        for series in (result.vidhook, result.bare):
            print(series.describe(result.clients))
        for pct in (50, 99):
            vid, bare = (percentile(s.fanout_ms, pct) for s in (result.vidhook, result.bare))
            print(f"fan-out p{pct} ratio vidhook/bare: {vid / bare:.2f}")
        cpu = result.vidhook.cpu_s / result.bare.cpu_s if result.bare.cpu_s else 0.0
        print(f"server CPU ratio vidhook/bare: {cpu:.2f}")
        figures["sse_fanout_p99_ms"] = f"{result.fanout_p99_ms:.1f}"
        figures["sse_clients"] = str(result.clients)
        code = 1 if result.vidhook.lost else 0
    print("RESULT " + " ".join(f"{name}={value}" for name, value in figures.items()))
    return code


if __name__ == "__main__":
    sys.exit(main())

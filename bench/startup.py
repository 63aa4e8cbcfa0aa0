"""What `vidhook serve` spends on its database before it listens, by database size.

Before it listens, the service checks its database (receiver.store.health.prepare:
PRAGMA quick_check, vidhook's own migrations, one heartbeat write). Before the check
existed it only ran the migrations (receiver.store.migrate): that is the first baseline.
The second is reading the file's bytes once (what any check of every page must at
least do). All three run on the same file in this process, each several times, with the
file in the page cache (the benchmark does not drop the kernel's caches: from a cold
disk, every figure grows by the time the disk takes to read the file).

The database is filled with jobs, each with a transition and a callback body of about
1 KiB, as a busy service's would be, to about ``--mb`` MiB.

    .venv/bin/python -m bench.startup              # 200 MiB
    .venv/bin/python -m bench.startup --mb 800 --repeat 3

Ends with ``RESULT db_mb=<n> check_s=<n> migrate_only_s=<n> read_file_s=<n>`` (medians).
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

from receiver.store import migrate
from receiver.store.health import prepare

ROW_BYTES = 2100  # about what one job, its transition and its callback take on disk


def fill(path: Path, mb: int) -> int:
    migrate(path)
    jobs = mb * 1024 * 1024 // ROW_BYTES
    body = json.dumps({"id": "0" * 18, "state": "processing", "credits": 10, "pad": "x" * 900})
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN")
    for i in range(jobs):
        job_id = f"job_{i:026d}"
        conn.execute(
            "INSERT INTO jobs (id, provider, status, prompt, callback_token, created_at,"
            " updated_at) VALUES (?, 'vidu', 'processing', ?, ?, ?, ?)",
            (job_id, "A heron standing in the reeds at dawn " * 6, f"tok{i:029d}", i, i),
        )
        conn.execute(
            "INSERT INTO transitions (job_id, from_status, to_status, source, at)"
            " VALUES (?, 'queued', 'processing', 'callback', ?)",
            (job_id, i),
        )
        conn.execute(
            "INSERT INTO callbacks (job_id, provider, received_at, nonce, headers, body,"
            " outcome) VALUES (?, 'vidu', ?, ?, '{}', ?, 'applied')",
            (job_id, i, f"n{i}", body),
        )
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return jobs


def read_file(path: Path) -> None:
    with open(path, "rb") as f:
        while f.read(1 << 20):
            pass


def timed(fn: object, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        began = time.perf_counter()
        fn()  # type: ignore[operator]
        times.append(time.perf_counter() - began)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=int, default=200, help="database size to build (MiB)")
    parser.add_argument("--repeat", type=int, default=5, help="runs of each; medians reported")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="vidhook-bench-startup-") as tmp:
        path = Path(tmp) / "vidhook.db"
        print(f"filling {path} to about {args.mb} MiB ...", flush=True)
        jobs = fill(path, args.mb)
        size = os.path.getsize(path) / (1024 * 1024)
        print(f"{jobs} jobs, {size:.0f} MiB", flush=True)
        read_file(path)  # into the page cache, for all three alike
        read_s = timed(lambda: read_file(path), args.repeat)
        migrate_s = timed(lambda: migrate(path), args.repeat)
        check_s = timed(lambda: prepare(path, time.time()), args.repeat)
        print(
            f"RESULT db_mb={size:.0f} check_s={check_s:.3f} migrate_only_s={migrate_s:.3f} "
            f"read_file_s={read_s:.3f}"
        )


if __name__ == "__main__":
    main()

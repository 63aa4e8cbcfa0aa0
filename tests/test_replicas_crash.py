"""Two `vidhook serve` replicas on one PostgreSQL behind Caddy, one of them SIGKILLed and
started again three times while signed callbacks stream in for a minute.

Caddy runs deploy/Caddyfile.replicas (round robin over both replicas, /readyz health
checks) and is the public_url every job's callback URL points at, so the callbacks reach
either replica, as a load balancer would spread them. Replica A runs throughout; replica B
is killed at moments drawn from a seeded random.Random and started again on the same
database. The stream, the sink and most checks are those of the single-service crash
suite (tests/test_crash.py), with two replicas' rules:

- every callback answered 2xx is stored once, in its job; no transition is stored twice;
  every transition has exactly its deliveries, each delivered once and received by the
  sink, and an event reached the sink twice only when the first copy came from a process
  of B that was then killed (at most two per kill: one being sent, one being recorded);
- every polled job was polled by one replica at a time: the status fetches of one task,
  as the fake provider saw them arrive and leave, never overlap;
- every result is kept once: one file per completed job, fetched from the provider once,
  except a download a kill cut short, which the other replica takes over.

`VIDHOOK_CRASH_SEED=<seed>` replays the same kill schedule and choice of callbacks.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import random
import re
import signal
import socket
import subprocess
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

import pytest
from starlette.types import ASGIApp, Receive, Scope, Send

from receiver.sandbox import ViduSandboxSettings, create_sandbox_app
from receiver.sandbox.server import ServerThread
from tests.conftest import OLD_VIDU_KEY, VIDU_KEY, free_port, wait_for
from tests.deploy import DEPLOY
from tests.deploy.test_deploy_files import CADDY_VARS, caddy_env, newest_caddy
from tests.test_crash import (
    SECRET,
    SECRET_ENV,
    SEED,
    CallbackStream,
    Job,
    Run,
    WebhookSink,
    check_deliveries,
    check_transitions,
    config_for,
    count_answers,
    explained,
)
from tests.test_restart import ServiceProcess

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

KILLS = 3
STREAM = 60.0  # seconds of callbacks, the figure the feature was asked to stand
JOBS = 240
B_FIRST = 1  # the sink's process numbers: A is 0, B's starts are 1, 2, ...


class Visits:
    """ASGI middleware recording when each request to the fake provider came and went."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.lock = threading.Lock()
        self.visits: list[tuple[str, str, float, float]] = []  # method, path, start, end

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        began = time.monotonic()
        try:
            await self.app(scope, receive, send)
        finally:
            with self.lock:
                self.visits.append((scope["method"], scope["path"], began, time.monotonic()))


@contextlib.contextmanager
def caddy_in_front(port: int, upstreams: list[int], folder: Path):
    """deploy/Caddyfile.replicas on http://127.0.0.1:port, over the replicas' ports."""
    caddy = newest_caddy()
    variables = {
        **CADDY_VARS,
        "VIDHOOK_DOMAIN": f"http://127.0.0.1:{port}",
        "VIDHOOK_UPSTREAMS": " ".join(f"127.0.0.1:{p}" for p in upstreams),
    }
    env = caddy_env(folder, **variables)
    command = [caddy, "adapt", "--config", str(DEPLOY / "Caddyfile.replicas")]
    adapted = subprocess.run(
        [*command, "--adapter", "caddyfile"], env=env, capture_output=True, text=True, check=True
    )
    config = json.loads(adapted.stdout)
    config["admin"] = {"disabled": True}  # a Caddy already running here may hold :2019
    (folder / "caddy.json").write_text(json.dumps(config))
    with open(folder / "caddy.log", "wb") as log:
        process = subprocess.Popen(
            [caddy, "run", "--config", str(folder / "caddy.json")], env=env, stderr=log
        )
    try:

        def listening() -> bool:
            assert process.poll() is None, (folder / "caddy.log").read_text()
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                return True
            return False

        wait_for(listening, what="caddy")
        yield
    finally:
        process.kill()
        process.wait(timeout=10)


def replica_config(sink_url: str, media: Path) -> tuple[str, str]:
    top, extra = config_for(sink_url)
    # Results kept in one folder both replicas write to, as a shared volume would be.
    extra += (
        f"\n[archive]\nshared_path = true\nallow_private_hosts = true\n"
        f"path = {json.dumps(str(media))}\n"
    )
    return top, extra


def start(svc: ServiceProcess, process: int) -> None:
    """Start ``svc`` as the sink's process number ``process``: it posts to its own path."""
    config = svc.config_path.read_text(encoding="utf-8")
    svc.config_path.write_text(re.sub(r'/hook/\d+"', f'/hook/{process}"', config), encoding="utf-8")
    svc.start()


def test_two_replicas_behind_caddy_lose_and_double_nothing_while_one_is_killed_three_times(
    tmp_path, pg_url
):
    rng = random.Random(SEED)
    run = Run(SEED)
    vidu = ViduSandboxSettings(
        api_keys=[VIDU_KEY, OLD_VIDU_KEY], queue_delay=0.05, start_delay=0.05, run_time=0.15
    )
    visits = Visits(create_sandbox_app(vidu))
    sink = WebhookSink(random.Random(rng.random()))
    caddy_port = free_port()
    public = f"http://127.0.0.1:{caddy_port}"
    with ServerThread(visits) as fakes, ServerThread(sink.app) as sink_server:
        top, extra = replica_config(sink_server.url, tmp_path / "media")
        for name in ("a", "b", "caddy"):
            (tmp_path / name).mkdir()
        a, b = (
            ServiceProcess(
                tmp_path / name, fakes.url, top_config=top, extra_config=extra,
                database_url=pg_url, public_url=public,
            )
            for name in ("a", "b")
        )  # fmt: skip
        for svc in (a, b):
            svc.env[SECRET_ENV] = SECRET
        try:
            with explained(run, b.log_path):
                start(a, 0)
                start(b, B_FIRST)
                with caddy_in_front(caddy_port, [a.port, b.port], tmp_path / "caddy"):
                    stream = stream_while_killing(a, b, run, rng)
                    check_everything(a, run, stream, sink, visits)
        finally:
            a.close()
            b.close()


def stream_while_killing(
    a: ServiceProcess, b: ServiceProcess, run: Run, rng: random.Random
) -> CallbackStream:
    for i in range(JOBS):
        a.submit(f"A lighthouse in the fog, take {i} [lost]")
    jobs = [
        Job(r["id"], r["provider_job_id"], r["callback_url"])
        for r in a.rows("SELECT id, provider_job_id, callback_url FROM jobs ORDER BY id")
    ]
    assert len(jobs) == JOBS and all(j.callback_url.startswith(a.public_url) for j in jobs)
    stream = CallbackStream(jobs, random.Random(rng.random()))
    began = time.monotonic()
    stream.start()
    try:
        # A kill somewhere in each of three equal parts of the minute.
        part = STREAM / KILLS
        for kill in range(KILLS):
            at = began + kill * part + rng.uniform(0.2, 0.6) * part
            time.sleep(max(0.0, at - time.monotonic()))
            run.uptimes.append(time.monotonic() - began)
            b.kill()
            assert b.proc is not None and b.proc.returncode == -signal.SIGKILL
            run.downtimes.append(rng.uniform(0.5, 3.0))
            time.sleep(run.downtimes[-1])
            start(b, B_FIRST + kill + 1)
        time.sleep(max(0.0, began + STREAM - time.monotonic()))
    finally:
        stream.stop()
    stream.drain(timeout=60)
    return stream


def check_everything(
    a: ServiceProcess, run: Run, stream: CallbackStream, sink: WebhookSink, visits: Visits
) -> None:
    def settled() -> bool:
        (pending,) = a.rows(
            "SELECT (SELECT count(*) FROM deliveries WHERE status = 'pending')"
            " + (SELECT count(*) FROM jobs WHERE confirm_callback_id IS NOT NULL)"
            " + (SELECT count(*) FROM downloads WHERE status = 'pending')"
        )[0]
        return pending == 0

    # Work a killed replica had claimed waits for its lease to run out (15 s).
    wait_for(settled, timeout=90, what="every delivery sent, success confirmed, result kept")
    sent = stream.sent
    count_answers(run, sent)
    check_callbacks_of_replicas(a, sent)
    transitions = check_transitions(a, sent)
    deliveries = check_deliveries(a, transitions)
    run.stats.update(transitions=len(transitions), deliveries=len(deliveries))
    check_sink_of_replicas(run, sink, deliveries)
    check_polls_one_at_a_time(visits, run)
    check_results_kept_once(a, visits, run)
    print(run.describe())


def check_callbacks_of_replicas(a: ServiceProcess, sent: list) -> None:
    """The single service's checks of tests/test_crash.py, but for "a kill failed some":
    here Caddy sends what finds B gone to A instead."""
    # What a live replica answered is 200; Caddy answers 502 for a request cut by a kill.
    refused = [
        (cb.nonce, x)
        for cb in sent
        for x in cb.answers
        if x[:1].isdigit() and x[:3] not in ("200", "502")
    ]
    assert not refused, f"live replicas refused valid callbacks: {refused[:5]}"
    # "duplicate" only for a repeat of a request whose earlier attempt got no answer.
    first_duplicate = [cb.nonce for cb in sent if cb.answers[0] == "200 duplicate"]
    assert not first_duplicate, f"first attempts answered as duplicates: {first_duplicate[:5]}"
    rows = a.rows("SELECT nonce, job_id, provider_status, outcome FROM callbacks")
    per_nonce = Counter(r["nonce"] for r in rows)
    doubled = [nonce for nonce, n in per_nonce.items() if n > 1]
    assert not doubled, f"callbacks stored more than once: {doubled[:5]}"
    assert set(per_nonce) == {cb.nonce for cb in sent}, "stored callbacks differ from those sent"
    by_nonce = {r["nonce"]: r for r in rows}
    for cb in sent:
        row = by_nonce[cb.nonce]
        outcome = "confirming" if cb.state == "success" else "applied"
        stored = (row["job_id"], row["provider_status"], row["outcome"])
        assert stored == (cb.job.id, cb.state, outcome), f"{cb.nonce} was stored as {stored}"
    status = {r["id"]: r["status"] for r in a.rows("SELECT id, status FROM jobs")}
    for cb in sent:
        expected = {"completed"} if cb.state == "success" else {"processing", "completed"}
        assert status[cb.job.id] in expected, f"job {cb.job.id} is {status[cb.job.id]}"


def check_sink_of_replicas(run: Run, sink: WebhookSink, deliveries: dict[str, dict]) -> None:
    assert not sink.rejected, f"events the sink could not verify: {sink.rejected[:5]}"
    received = sink.by_event()
    missing = set(deliveries) - set(received)
    assert not missing, f"delivered events the sink never received: {sorted(missing)[:5]}"
    unknown = set(received) - set(deliveries)
    assert not unknown, f"events at the sink that no delivery stored: {sorted(unknown)[:5]}"
    killed = set(range(B_FIRST, B_FIRST + KILLS))
    cut_by: dict[int, list[str]] = defaultdict(list)
    for event_id, receipts in received.items():
        d = deliveries[event_id]
        for r in receipts:
            assert (r.type, r.job_id) == (f"job.{d['event']}", d["job_id"]), f"{event_id}: {r}"
        for earlier in receipts[:-1]:
            # A copy is excused only if the process that sent it was killed afterwards.
            assert earlier.process in killed, (
                f"{event_id} reached the sink twice, first from process {earlier.process},"
                " which was never killed"
            )
            cut_by[earlier.process].append(event_id)
    for process, cut in cut_by.items():
        assert len(cut) <= 2, f"the kill of process {process} cut {len(cut)} sends: {cut}"
    run.stats["sink_duplicates"] = sum(len(r) - 1 for r in received.values())
    run.stats["by_replica"] = dict(Counter(r.process for rs in received.values() for r in rs))
    assert sink.refusals, "the sink refused nothing: no retry was exercised"


def check_polls_one_at_a_time(visits: Visits, run: Run) -> None:
    with visits.lock:
        polls = [v for v in visits.visits if v[0] == "GET" and v[1].endswith("/creations")]
    by_task: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for _method, path, began, ended in polls:
        by_task[path].append((began, ended))
    overlapping = []
    for path, spans in by_task.items():
        spans.sort()
        for (_b1, e1), (b2, _e2) in itertools.pairwise(spans):
            if b2 < e1:
                overlapping.append(path)
    assert polls, "nothing was polled"
    assert not overlapping, f"tasks polled by two replicas at once: {overlapping[:5]}"
    run.stats["polls"] = len(polls)


def check_results_kept_once(a: ServiceProcess, visits: Visits, run: Run) -> None:
    completed = {r["id"]: r["provider_job_id"] for r in a.rows(
        "SELECT id, provider_job_id FROM jobs WHERE status = 'completed'"
    )}  # fmt: skip
    kept = Counter(r["job_id"] for r in a.rows("SELECT job_id FROM media WHERE kind = 'video'"))
    assert set(kept) == set(completed), "completed jobs without their video kept"
    with visits.lock:
        fetched = Counter(
            v[1].rsplit("/", 1)[1].split(".")[0]
            for v in visits.visits
            if "/files/" in v[1] and v[1].endswith(".mp4")
        )
    assert all(fetched[task] >= 1 for task in completed.values())
    again = sum(n - 1 for n in fetched.values())
    # Downloads run four at a time: a kill can cut at most four, taken over after it.
    assert again <= 4 * KILLS, f"{again} results were downloaded more than once: {fetched}"
    run.stats["results_kept"] = len(kept)
    run.stats["results_fetched_again"] = again

"""The crash suite: SIGKILL the service five times while signed callbacks stream in.

`vidhook serve` runs as a subprocess with a Vidu provider pointed at the sandbox and a
signed webhook channel pointed at a sink in this process. Sender threads stream signed
Vidu callbacks at the service (processing ones, and now and then a success that the
poller must confirm), retrying every one that was not answered 2xx, as Vidu would. Five
times, at moments drawn from a seeded random.Random, the service is SIGKILLed and started
again on the same files while the stream goes on.

Then, once everything has settled: every callback answered 2xx is stored exactly once and
its job moved; no transition is stored twice; every transition has exactly the
deliveries its channel subscribes to; every delivery was delivered and reached the sink;
and an event reached the sink twice only when a kill cut its attempt between the send and
the record. A kill cuts at most two sends of the channel: it sends one message at a time,
but the record of a delivered message may still be committing while the next one is sent.
Of those two, at most one is a refused attempt (a failure is recorded before the next send).

A failure names the seed; `VIDHOOK_CRASH_SEED=<seed> pytest tests/test_crash.py` replays
the same kill schedule and the same choice of callbacks (thread timing still varies).
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import os
import random
import signal
import threading
import time
import uuid
from collections import Counter, defaultdict, deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import standardwebhooks
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from receiver.sandbox.server import ServerThread
from tests.conftest import VIDU_KEY, wait_for
from tests.test_restart import ServiceProcess
from tests.vidu_signer import vidu_headers

pytestmark = pytest.mark.slow

SEED = int(os.environ.get("VIDHOOK_CRASH_SEED", "20250611"))
KILLS = 5
JOBS = 240
SENDERS = 4
RATE = 200.0  # callbacks per second, all senders together
FRESH = 0.15  # share of callbacks that are the first one of a job not yet started
SUCCESS = 0.06  # share that announce success for a processing job (confirmed by a poll)
CHANNEL = "app"
EVENTS = ("processing", "completed", "failed")
REFUSE_EVERY = 10  # the sink answers every tenth arrival 503, to be retried
SECRET_ENV = "CRASH_WEBHOOK_SECRET"
SECRET = "whsec_" + base64.b64encode(b"vidhook-crash-suite-secret-00001").decode()


@dataclass(frozen=True)
class Job:
    id: str
    task_id: str
    callback_url: str


@dataclass
class Callback:
    """One signed request; a retry sends these exact bytes again (same nonce and Date)."""

    job: Job
    state: str
    nonce: str
    headers: dict[str, str]
    body: bytes
    answers: list[str] = field(default_factory=list)  # "200", "200 duplicate", "ReadError"...
    acked_at: float | None = None  # time.time() of the first 2xx

    @property
    def acked(self) -> bool:
        return self.acked_at is not None


def signed_callback(job: Job, state: str) -> Callback:
    nonce = str(uuid.uuid4())
    # The shape of a Vidu status body; for a success the poll's answer decides anyway.
    creations = (
        [{"id": "c1", "url": "https://cdn.invalid/v.mp4", "cover_url": "https://cdn.invalid/c.jpg"}]
        if state == "success"
        else []
    )
    body = {
        "id": job.task_id,
        "state": state,
        "err_code": "",
        "credits": 10,
        "creations": creations,
    }
    headers = vidu_headers(VIDU_KEY, job.callback_url, nonce=nonce)
    return Callback(job, state, nonce, headers, json.dumps(body).encode())


class CallbackStream:
    """Sender threads posting signed callbacks at a steady rate, whether the service is up or not.

    A callback not answered 2xx goes back in the queue and is sent again, byte for byte,
    a little later: the service must then store it once and answer the repeat as a
    duplicate if the first attempt was committed before its answer was lost.
    """

    def __init__(self, jobs: list[Job], rng: random.Random) -> None:
        self._rng = rng
        self._lock = threading.Lock()
        self._fresh = deque(jobs)
        self._started: list[Job] = []  # a processing callback was acknowledged
        self._started_ids: set[str] = set()
        self._awaiting_success: list[Job] = []
        self._retries: deque[tuple[float, Callback]] = deque()
        self.sent: list[Callback] = []
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, name=f"crash-sender-{i}", daemon=True)
            for i in range(SENDERS)
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=15)
            assert not thread.is_alive(), f"{thread.name} did not stop"

    def acked(self) -> list[Callback]:
        with self._lock:
            return [cb for cb in self.sent if cb.acked]

    def drain(self, timeout: float = 20.0) -> None:
        """Once the service stays up: send every callback still unanswered until it is 2xx."""
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=5) as client:
            while pending := [cb for cb in self.sent if not cb.acked]:
                if time.monotonic() > deadline:
                    answers = {cb.nonce: cb.answers[-3:] for cb in pending[:5]}
                    raise AssertionError(
                        f"{len(pending)} callbacks never got a 2xx from the restarted "
                        f"service; last answers of some: {answers}"
                    )
                for cb in pending:
                    self._post(client, cb)
                time.sleep(0.1)

    def _run(self) -> None:
        interval = SENDERS / RATE
        with httpx.Client(timeout=5) as client:
            while not self._stop.is_set():
                began = time.monotonic()
                cb = self._next()
                if cb is not None and not self._post(client, cb):
                    with self._lock:
                        again = time.monotonic() + self._rng.uniform(0.1, 0.5)
                        self._retries.append((again, cb))
                self._stop.wait(max(0.0, interval - (time.monotonic() - began)))

    def _next(self) -> Callback | None:
        with self._lock:
            if self._retries and self._retries[0][0] <= time.monotonic():
                return self._retries.popleft()[1]
            roll = self._rng.random()
            if self._fresh and (roll < FRESH or not self._started):
                job, state = self._fresh.popleft(), "processing"
            elif roll < FRESH + SUCCESS and self._awaiting_success:
                index = self._rng.randrange(len(self._awaiting_success))
                job, state = self._awaiting_success.pop(index), "success"
            elif self._started:
                job, state = self._rng.choice(self._started), "processing"
            else:
                return None
            cb = signed_callback(job, state)
            self.sent.append(cb)
            return cb

    def _post(self, client: httpx.Client, cb: Callback) -> bool:
        try:
            response = client.post(cb.job.callback_url, content=cb.body, headers=cb.headers)
        except httpx.HTTPError as exc:  # the service is down, or died mid-request
            answer, ok = exc.__class__.__name__, False
        else:
            ok = response.status_code == 200
            duplicate = ok and response.json().get("duplicate") is True
            answer = f"{response.status_code}{' duplicate' if duplicate else ''}"
        with self._lock:
            cb.answers.append(answer)
            if ok and cb.acked_at is None:
                cb.acked_at = time.time()
                job = cb.job
                if cb.state == "processing" and job.id not in self._started_ids:
                    self._started_ids.add(job.id)
                    self._started.append(job)
                    self._awaiting_success.append(job)
        return ok


@dataclass(frozen=True)
class Receipt:
    process: int  # which start of the service sent it (0 = the first)
    event_id: str
    type: str
    job_id: str


class WebhookSink:
    """The user's app: verifies each event's signature and records every arrival.

    It answers a few milliseconds after recording, as a real app that does some work
    would; that widens the window in which a kill finds an event received but not yet
    recorded as delivered, the one case where an event may arrive twice. Every tenth
    arrival it answers 503 instead (a refusal, not a receipt), so that retries are
    scheduled, and cut by kills, too.
    """

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self._verifier = standardwebhooks.Webhook(SECRET)
        self.lock = threading.Lock()
        self.receipts: list[Receipt] = []
        self.refusals: list[Receipt] = []
        self.rejected: list[str] = []
        self.app = Starlette(routes=[Route("/hook/{process:int}", self._receive, methods=["POST"])])

    async def _receive(self, request: Request) -> Response:
        body = await request.body()
        try:
            event = self._verifier.verify(body, dict(request.headers))
        except standardwebhooks.WebhookVerificationError as exc:
            with self.lock:
                self.rejected.append(str(exc))
            return Response(status_code=400)
        arrival = Receipt(
            request.path_params["process"], event["id"], event["type"], event["data"]["id"]
        )
        with self.lock:
            # Counted, not drawn: even a short run is sure to see some retries.
            refuse = (len(self.receipts) + len(self.refusals)) % REFUSE_EVERY == REFUSE_EVERY // 2
            (self.refusals if refuse else self.receipts).append(arrival)
            delay = self._rng.uniform(0.0, 0.02)
        await asyncio.sleep(delay)
        return Response(status_code=503 if refuse else 204)

    def by_event(self) -> dict[str, list[Receipt]]:
        grouped: dict[str, list[Receipt]] = defaultdict(list)
        with self.lock:
            for receipt in self.receipts:
                grouped[receipt.event_id].append(receipt)
        return grouped


@dataclass
class Run:
    """What happened when, for the failure message."""

    seed: int
    starts: list[float] = field(default_factory=list)  # time.time() just before each Popen
    uptimes: list[float] = field(default_factory=list)
    downtimes: list[float] = field(default_factory=list)
    stats: dict[str, int] = field(default_factory=dict)

    def epoch(self, at: float) -> int:
        """Which process (0 = the first) was running, or had last run, at this moment."""
        return max(i for i, start in enumerate(self.starts) if start <= at)

    def describe(self) -> str:
        uptimes = ", ".join(f"{s:.2f}" for s in self.uptimes)
        downtimes = ", ".join(f"{s:.2f}" for s in self.downtimes)
        return (
            f"crash suite seed {self.seed} (replay: VIDHOOK_CRASH_SEED={self.seed} "
            f".venv/bin/pytest tests/test_crash.py); killed after {uptimes} s up, "
            f"restarted after {downtimes} s down; {self.stats}"
        )


@contextmanager
def explained(run: Run, log_path: Path) -> Iterator[None]:
    try:
        yield
    except Exception as exc:
        tail = ""
        if log_path.exists():
            tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-25:])
        raise AssertionError(
            f"{exc}\n\n{run.describe()}\n\nlast lines of vidhook.log:\n{tail}"
        ) from exc


def config_for(sink_url: str) -> tuple[str, str]:
    # Each start of the service posts to its own path (see start()), so the sink knows
    # for certain which process sent each event, however late it reads a dead one's.
    top = f'default_channels = ["{CHANNEL}"]\n'
    extra = (
        f"\n[channels.{CHANNEL}]\n"
        'type = "webhook"\n'
        f'url = "{sink_url}/hook/0"\n'
        f'secret_env = "{SECRET_ENV}"\n'
        "timeout = 5\n"
        f"events = {json.dumps(list(EVENTS))}\n"
        # Quick retries: an attempt that failed is sent again well within the test.
        "\n[notify]\nretry_base = 0.05\nretry_max = 0.5\n"
    )
    return top, extra


def test_five_sigkills_while_callbacks_stream_in_lose_and_double_nothing(
    sandbox, tmp_path, database
):
    rng = random.Random(SEED)
    run = Run(SEED)
    sink = WebhookSink(random.Random(rng.random()))
    with ServerThread(sink.app) as sink_server:
        top, extra = config_for(sink_server.url)
        svc = ServiceProcess(
            tmp_path, sandbox.url, top_config=top, extra_config=extra, database_url=database.url
        )
        svc.env[SECRET_ENV] = SECRET
        try:
            with explained(run, svc.log_path):
                stream = crash_while_streaming(svc, run, rng)
                check_everything(svc, run, stream, sink)
        finally:
            svc.close()


def start(svc: ServiceProcess, run: Run) -> None:
    process = len(run.starts)
    if process:
        config = svc.config_path.read_text(encoding="utf-8")
        new = config.replace(f'/hook/{process - 1}"', f'/hook/{process}"')
        assert new != config
        svc.config_path.write_text(new, encoding="utf-8")
    run.starts.append(time.time())
    svc.start()


def crash_while_streaming(svc: ServiceProcess, run: Run, rng: random.Random) -> CallbackStream:
    start(svc, run)
    # "[lost]": the sandbox sends no callbacks of its own, so every callback is ours.
    for i in range(JOBS):
        svc.submit(f"A paper boat on a flooded street, take {i} [lost]")
    jobs = [
        Job(r["id"], r["provider_job_id"], r["callback_url"])
        for r in svc.rows("SELECT id, provider_job_id, callback_url FROM jobs ORDER BY id")
    ]
    assert len(jobs) == JOBS and all(j.task_id and j.callback_url for j in jobs)

    stream = CallbackStream(jobs, random.Random(rng.random()))
    stream.start()
    try:
        for _ in range(KILLS):
            run.uptimes.append(rng.uniform(0.2, 2.0))
            time.sleep(run.uptimes[-1])
            svc.kill()
            assert svc.proc is not None and svc.proc.returncode == -signal.SIGKILL
            check_acked_callbacks_survived_the_kill(svc, stream, len(run.uptimes))
            run.downtimes.append(rng.uniform(0.0, 0.4))
            time.sleep(run.downtimes[-1])
            start(svc, run)
        time.sleep(1.0)  # the last process serves the stream for a while too
    finally:
        stream.stop()
    stream.drain()
    return stream


def count(svc: ServiceProcess, where: str) -> int:
    return int(svc.rows(f"SELECT count(*) FROM {where}")[0][0])


def check_acked_callbacks_survived_the_kill(
    svc: ServiceProcess, stream: CallbackStream, kill: int
) -> None:
    """Right after the kill, before a restart could repair anything."""
    acked = stream.acked()
    stored = {r["nonce"]: r for r in svc.rows("SELECT nonce, job_id FROM callbacks")}
    lost = [cb.nonce for cb in acked if cb.nonce not in stored]
    assert not lost, f"kill {kill}: {len(lost)} callbacks answered 2xx are not stored: {lost[:5]}"
    jobs = {r["id"]: r for r in svc.rows("SELECT id, status, confirm_callback_id FROM jobs")}
    unmoved = {cb.job.id for cb in acked if cb.state == "processing"} - {
        job_id for job_id, job in jobs.items() if job["status"] != "queued"
    }
    assert not unmoved, f"kill {kill}: still queued after a processing callback's 2xx: {unmoved}"
    # An acknowledged success is confirmed by a poll: either that is done, or it is on
    # disk as pending, so that the next process performs it.
    forgotten = {
        cb.job.id
        for cb in acked
        if cb.state == "success"
        and jobs[cb.job.id]["status"] != "completed"
        and jobs[cb.job.id]["confirm_callback_id"] is None
    }
    assert not forgotten, f"kill {kill}: success callbacks with no confirmation due: {forgotten}"


def check_everything(
    svc: ServiceProcess, run: Run, stream: CallbackStream, sink: WebhookSink
) -> None:
    def settled() -> bool:
        (pending,) = svc.rows(
            "SELECT (SELECT count(*) FROM deliveries WHERE status = 'pending')"
            " + (SELECT count(*) FROM jobs WHERE confirm_callback_id IS NOT NULL)"
        )[0]
        return pending == 0

    wait_for(settled, timeout=30, what="every delivery sent and every success confirmed")
    assert svc.stop() == 0, "the last process did not shut down cleanly"
    assert svc.starts == KILLS + 1

    sent = stream.sent
    count_answers(run, sent)
    check_callbacks(svc, sent)
    transitions = check_transitions(svc, sent)
    deliveries = check_deliveries(svc, transitions)
    run.stats.update(
        transitions=len(transitions),
        deliveries=len(deliveries),
        retried_attempts=count(svc, "delivery_attempts WHERE outcome = 'retry'"),
    )
    check_sink(svc, run, sink, deliveries)
    print(run.describe())  # shown with -s: how much of each path this run exercised


def count_answers(run, sent) -> None:
    """The run's figures of the callbacks sent and how they were answered."""
    answers = [a for cb in sent for a in cb.answers]
    run.stats.update(
        callbacks=len(sent),
        requests=len(answers),
        failed=sum(not a.startswith("200") for a in answers),
        answered_duplicate=answers.count("200 duplicate"),
        successes=sum(cb.state == "success" for cb in sent),
    )


def check_callbacks(svc: ServiceProcess, sent: list[Callback]) -> None:
    # The stream really ran through the kills: some requests met a dead service.
    failed = sum(1 for cb in sent for a in cb.answers if not a.startswith("200"))
    assert failed > 0, "no callback ever failed: the kills did not happen during the stream"
    # A live service refuses none of them; everything else is a transport error.
    refusals = [
        (cb.nonce, a) for cb in sent for a in cb.answers if a[:1].isdigit() and a[:3] != "200"
    ]
    assert not refusals, f"a live service refused valid callbacks: {refusals[:5]}"
    # "duplicate" only for a repeat of a request whose earlier attempt did not get its answer.
    first_duplicate = [cb.nonce for cb in sent if cb.answers[0] == "200 duplicate"]
    assert not first_duplicate, f"first attempts answered as duplicates: {first_duplicate[:5]}"

    rows = svc.rows("SELECT id, nonce, job_id, provider_status, outcome FROM callbacks")
    per_nonce = Counter(r["nonce"] for r in rows)
    doubled = [nonce for nonce, count in per_nonce.items() if count > 1]
    assert not doubled, f"callbacks stored more than once: {doubled[:5]}"
    by_nonce = {r["nonce"]: r for r in rows}
    assert set(by_nonce) == {cb.nonce for cb in sent}, "stored callbacks differ from those sent"
    for cb in sent:
        row = by_nonce[cb.nonce]
        outcome = "confirming" if cb.state == "success" else "applied"
        assert (row["job_id"], row["provider_status"], row["outcome"]) == (
            cb.job.id,
            cb.state,
            outcome,
        ), f"callback {cb.nonce} was stored as {dict(row)}"

    status = {r["id"]: r["status"] for r in svc.rows("SELECT id, status FROM jobs")}
    for cb in sent:
        # The sandbox's task had long succeeded, so the confirming fetch says success.
        expected = {"completed"} if cb.state == "success" else {"processing", "completed"}
        assert status[cb.job.id] in expected, (
            f"job {cb.job.id} is {status[cb.job.id]} after a {cb.state} callback answered 2xx"
        )


def check_transitions(svc: ServiceProcess, sent: list[Callback]) -> list[dict]:
    transitions = [dict(r) for r in svc.rows("SELECT * FROM transitions ORDER BY id")]
    twice = Counter((t["job_id"], t["to_status"]) for t in transitions)
    doubled = [key for key, count in twice.items() if count > 1]
    assert not doubled, f"transitions stored twice: {doubled[:5]}"
    chains: dict[str, list[dict]] = defaultdict(list)
    for t in transitions:
        chains[t["job_id"]].append(t)
    status = {r["id"]: r["status"] for r in svc.rows("SELECT id, status FROM jobs")}
    assert set(chains) == set(status), "jobs without transitions, or transitions without jobs"
    for job_id, chain in chains.items():
        steps = [(t["from_status"], t["to_status"]) for t in chain]
        # Unbroken: each starts where the last ended, and the last is where the job is.
        assert steps[0] == (None, "queued"), f"job {job_id}: {steps}"
        assert all(a[1] == b[0] for a, b in itertools.pairwise(steps)), f"job {job_id}: {steps}"
        assert steps[-1][1] == status[job_id], f"job {job_id} is {status[job_id]}: {steps}"
    # Each acknowledged success moved its job through a confirming poll, not the callback.
    for cb in sent:
        if cb.state == "success":
            done = [t for t in chains[cb.job.id] if t["to_status"] == "completed"]
            assert [t["source"] for t in done] == ["poll"], f"job {cb.job.id}: {done}"
    return transitions


def check_deliveries(svc: ServiceProcess, transitions: list[dict]) -> dict[str, dict]:
    deliveries = [dict(r) for r in svc.rows("SELECT * FROM deliveries ORDER BY id")]
    per_transition = Counter((d["transition_id"], d["channel"]) for d in deliveries)
    for t in transitions:
        wanted = 1 if t["to_status"] in EVENTS else 0
        got = per_transition[(t["id"], CHANNEL)]
        assert got == wanted, (
            f"transition {t['id']} ({t['job_id']} to {t['to_status']}) has {got} deliveries"
        )
    by_transition = {t["id"]: t for t in transitions}
    assert all(d["transition_id"] in by_transition for d in deliveries)
    for d in deliveries:
        t = by_transition[d["transition_id"]]
        assert (d["channel"], d["job_id"], d["event"]) == (CHANNEL, t["job_id"], t["to_status"])
    undelivered = [
        (d["id"], d["status"], d["last_error"]) for d in deliveries if d["status"] != "delivered"
    ]
    assert not undelivered, f"deliveries that did not end delivered: {undelivered[:5]}"
    outcomes: dict[int, list[str]] = defaultdict(list)
    for a in svc.rows("SELECT delivery_id, outcome FROM delivery_attempts ORDER BY id"):
        outcomes[a["delivery_id"]].append(a["outcome"])
    for d in deliveries:
        # Retries (the sink's 503s) may come first; one delivered attempt ends it.
        tried = outcomes[d["id"]]
        assert tried.count("delivered") == 1, f"delivery {d['id']}: {tried}"
        assert tried[-1] == "delivered" and set(tried) <= {"retry", "delivered"}, (
            f"delivery {d['id']}: {tried}"
        )
    return {d["event_id"]: d for d in deliveries}


def check_sink(
    svc: ServiceProcess, run: Run, sink: WebhookSink, deliveries: dict[str, dict]
) -> None:
    assert not sink.rejected, f"events the sink could not verify: {sink.rejected[:5]}"
    received = sink.by_event()
    missing = set(deliveries) - set(received)
    assert not missing, f"delivered events the sink never received: {sorted(missing)[:5]}"
    unknown = set(received) - set(deliveries)
    assert not unknown, f"events at the sink that no delivery stored: {sorted(unknown)[:5]}"
    delivered_at = {
        r["delivery_id"]: r["at"]
        for r in svc.rows(
            "SELECT delivery_id, at FROM delivery_attempts WHERE outcome = 'delivered'"
        )
    }

    cut_by: dict[int, list[str]] = defaultdict(list)  # kill (the process it ended) -> sends cut
    for event_id, receipts in received.items():
        d = deliveries[event_id]
        for r in receipts:
            assert (r.type, r.job_id) == (f"job.{d['event']}", d["job_id"]), f"{event_id}: {r}"
        senders = [r.process for r in receipts]
        # The attempt that counted was recorded by the process that made the last send.
        assert run.epoch(delivered_at[d["id"]]) == senders[-1], (
            f"{event_id} was sent by processes {senders} but recorded delivered by process "
            f"{run.epoch(delivered_at[d['id']])}"
        )
        for earlier, later in itertools.pairwise(senders):
            # A second arrival is only excused by a kill after the first one: the process
            # that sent it died before recording it, and a later one sent it again.
            assert earlier < later, f"{event_id} reached the sink twice from process {earlier}"
            assert earlier < KILLS, f"{event_id} doubled by the last process, never killed"
            assert len(cut_by[earlier]) < 2, (
                f"kill {earlier + 1} cut three sends, {cut_by[earlier]} and {event_id}; a "
                "channel has at most two unrecorded: one being sent, one whose record commits"
            )
            cut_by[earlier].append(event_id)
    duplicates = sum(len(r) - 1 for r in received.values())
    run.stats["sink_duplicates"] = duplicates
    assert duplicates == sum(len(cut) for cut in cut_by.values()) <= 2 * KILLS

    # Every 503 is recorded as a retry by the process that got it, except one that a kill
    # cut before its record (a refusal is recorded before the channel's next send, so at
    # most one); that kill can have cut at most one accepted send besides.
    assert sink.refusals, "the sink refused nothing: no retry was exercised"
    for r in sink.refusals:
        d = deliveries[r.event_id]
        assert (r.type, r.job_id) == (f"job.{d['event']}", d["job_id"]), f"refused {r}"
    refused = Counter(r.process for r in sink.refusals)
    recorded = Counter(
        run.epoch(a["at"])
        for a in svc.rows(
            "SELECT at FROM delivery_attempts WHERE outcome = 'retry' AND status_code = 503"
        )
    )
    run.stats["sink_refusals"] = len(sink.refusals)
    for process in sorted(set(refused) | set(recorded)):
        unrecorded = refused[process] - recorded[process]
        assert unrecorded in (0, 1), (
            f"process {process} got {refused[process]} refusals and recorded {recorded[process]}"
        )
        if unrecorded:
            assert process < KILLS, f"process {process}, never killed, lost a refusal's record"
            assert len(cut_by[process]) < 2, (
                f"kill {process + 1} cut three sends: {cut_by[process]} and a refused one"
            )
            cut_by[process].append("a refused attempt")
    run.stats["kills_that_cut_a_send"] = sum(1 for cut in cut_by.values() if cut)
    run.stats["sends_cut"] = sum(len(cut) for cut in cut_by.values())

"""``record_usage`` in process, against ``pgbench -N`` with as many clients.

Worker processes each loop ``record_usage`` (which commits) on a connection
of their own, with no web server in between: what recording costs the
database and the Python around it. Distinct users: each worker records for
users of its own on the pro plan, so no two wait for one row lock. One hot
user: every worker records for the same user, so all queue on its running
total. Notifying: distinct again, while ``send-notifications`` runs once a
second beside it; recording must keep 95 % of its pace. pgbench, distinct,
hot and notifying take turns in each round; the verdicts are on the median
of the rounds' ratios. Afterwards every call made must be one
``usage_events`` row and one unit of ``sum(usage_records.used)``, exactly.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier, Event
from typing import Any

from bench import harness as h
from portal import clock

GOALS = {"distinct": 0.50, "hot": 0.25}
NOTIFYING_GOAL = 0.95
"""Recording beside ``send-notifications`` keeps this share of its pace without it."""
NOTIFY_EVERY = 1.0
"""Seconds between notification runs: sixty times cron's pace."""
WORKERS = 8
USERS_PER_WORKER = 10
START_TIMEOUT = 120.0


@dataclass(frozen=True)
class Job:
    url: str
    users: tuple[int, ...]
    warmup: float
    seconds: float


def _work(job: Job, barrier: Barrier, results: Queue[tuple[int, int, float]]) -> None:
    """Warm up, wait for the others, then record for ``seconds``; report the calls."""
    from sqlalchemy import create_engine
    from sqlalchemy.orm import Session

    from portal.usage import record_usage

    session = Session(create_engine(job.url, pool_size=1))
    calls = 0

    def call() -> None:
        nonlocal calls
        user = job.users[calls % len(job.users)]
        record_usage(session, user, idempotency_key=f"{os.getpid()}-{calls}", now=clock.now())
        calls += 1

    deadline = time.monotonic() + job.warmup
    while time.monotonic() < deadline:
        call()
    barrier.wait(START_TIMEOUT)
    started, before = time.monotonic(), calls
    while time.monotonic() < started + job.seconds:
        call()
    results.put((calls, calls - before, time.monotonic() - started))


class _Receiver(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 - the http.server's name
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        return


def _notify(url: str, started: Event, stop: Event, runs: Queue[int]) -> None:
    """``send-notifications`` every ``NOTIFY_EVERY`` s, its webhook to a receiver of its own."""
    from portal import create_app
    from portal.extensions import db
    from portal.notify.cli import channels_for
    from portal.notify.run import send_notifications

    receiver = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    app = create_app(
        {
            "SQLALCHEMY_DATABASE_URI": url,
            "SECRET_KEY": "bench: signs the unsubscribe links",
            "PORTAL_BASE_URL": "http://127.0.0.1:5000",
            "NOTIFY_WEBHOOK_URL": f"http://127.0.0.1:{receiver.server_address[1]}/hook",
            "NOTIFY_WEBHOOK_SECRET": "bench: the webhook's signing key",
        }
    )
    count = 0
    with app.app_context():
        channels = channels_for(app)
        started.set()
        while not stop.is_set():
            send_notifications(db.session(), channels, clock.now)
            count += 1
            stop.wait(NOTIFY_EVERY)
    runs.put(count)


def record(url: str, jobs: list[Job], label: str, *, notifying: bool = False) -> h.LoadRun:
    """Run ``jobs`` in worker processes; the measured window's calls, checked exactly."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["portal.usage"])  # each worker starts with it imported
    barrier = context.Barrier(len(jobs) + 1)
    results: Queue[tuple[int, int, float]] = context.Queue()
    before = h.query(url, h.RECORDED)
    h.settle()
    started, stop, runs = context.Event(), context.Event(), context.Queue()
    notifier = context.Process(target=_notify, args=(url, started, stop, runs))
    if notifying:
        notifier.start()
        if not started.wait(START_TIMEOUT):
            raise h.BenchError(f"{label}: send-notifications did not start")
    workers = [context.Process(target=_work, args=(job, barrier, results)) for job in jobs]
    for worker in workers:
        worker.start()
    barrier.wait(START_TIMEOUT)
    meter = h.CpuMeter()
    reports = [results.get(timeout=START_TIMEOUT + jobs[0].seconds) for _ in jobs]
    for worker in workers:
        worker.join(START_TIMEOUT)
    cpu = meter.stop(label)
    if notifying:
        stop.set()
        h.log(f"{label}: send-notifications ran {runs.get(timeout=START_TIMEOUT)} times")
        notifier.join(START_TIMEOUT)
    calls = sum(report[0] for report in reports)
    rows, used = (b - a for a, b in zip(before, h.query(url, h.RECORDED), strict=True))
    if not calls == rows == used:
        raise h.BenchError(f"{label}: {calls} calls made, {rows} new rows, {used} units counted")
    window = sum(report[1] for report in reports)
    seconds = sum(report[2] for report in reports) / len(reports)
    run = h.LoadRun(label, seconds, window, window, float("nan"), float("nan"), cpu)
    h.log(f"{label}: {run.per_second:,.0f} calls/s")
    return run


def run() -> h.Section:
    s = h.settings()
    now = clock.now()
    emails = [h.EMAIL.format(n) for n in range(WORKERS * USERS_PER_WORKER)]
    with h.scratch_database("record") as url, h.scratch_database("pgbench", migrated=False) as pg:
        with h.portal_session(url) as session:
            ids = h.add_users(session, emails, now - timedelta(days=1))
        h.pgbench_init(pg, scale=WORKERS)
        slices = [tuple(ids[n::WORKERS]) for n in range(WORKERS)]
        distinct = [Job(url, users, s.warmup, s.seconds) for users in slices]
        modes = {
            "distinct": distinct,
            "hot": [Job(url, (ids[0],), s.warmup, s.seconds) for _ in range(WORKERS)],
            "notifying": distinct,
        }
        rounds = []
        for index in range(1, s.rounds + 1):
            base = h.pgbench(pg, WORKERS, f"pgbench -N, round {index}")
            runs = {
                mode: record(url, jobs, f"{mode}, round {index}", notifying=mode == "notifying")
                for mode, jobs in modes.items()
            }
            rounds.append((base, runs))
    verdicts, rows = [], []
    for mode, goal in GOALS.items():
        ratios = [runs[mode].per_second / base.per_second for base, runs in rounds]
        ratio = h.median(ratios)
        base, runs = sorted(rounds, key=lambda r: r[1][mode].per_second / r[0].per_second)[
            len(rounds) // 2
        ]
        label = "distinct users" if mode == "distinct" else "one hot user"
        verdicts.append(
            h.Verdict(
                f"`record_usage` in process, {label}",
                f"≥ {h.pct(goal)} of `pgbench -N`",
                f"{runs[mode].per_second:,.0f} calls/s ({h.pct(ratio)}, median)",
                f"{base.per_second:,.0f} transactions/s",
                ratio >= goal,
            )
        )
    ratios = [runs["notifying"].per_second / runs["distinct"].per_second for _, runs in rounds]
    ratio = h.median(ratios)
    by_ratio = sorted(zip(ratios, (runs for _, runs in rounds), strict=True), key=lambda r: r[0])
    middle = by_ratio[len(by_ratio) // 2][1]
    verdicts.append(
        h.Verdict(
            "`record_usage` beside `send-notifications`",
            f"≥ {h.pct(NOTIFYING_GOAL)} of distinct users alone",
            f"{middle['notifying'].per_second:,.0f} calls/s ({h.pct(ratio)}, median)",
            f"{middle['distinct'].per_second:,.0f} calls/s",
            ratio >= NOTIFYING_GOAL,
        )
    )
    for index, (base, runs) in enumerate(rounds, 1):
        rows.append([f"{index}", base.per_second, "100%", base.cpu.per(base.count)])
        for mode, run in runs.items():
            rows.append(
                [
                    f"{index} {mode}",
                    run.per_second,
                    h.pct(run.per_second / base.per_second),
                    run.cpu.per(run.count),
                ]
            )
    every = [run for base, runs in rounds for run in (base, *runs.values())]
    figures = h.table(["Round, run", "Calls or transactions/s", "of pgbench", "CPU ms/call"], rows)
    body = f"""{WORKERS} worker processes each loop `record_usage(session, user,
idempotency_key=…, now=…)` on a connection of their own (SQLAlchemy, no Flask) for
{s.seconds} s after {s.warmup} s of warm-up: **distinct**, each worker for its own
{USERS_PER_WORKER} pro users; **hot**, all of them for one pro user, so every call waits
for the others' lock on its running total; **notifying**, distinct again while a process
runs `send-notifications` (its webhook to a local receiver) every {NOTIFY_EVERY:g} s, sixty
times cron's pace: recording must not get slower for it. The baseline is
`pgbench -N -c {WORKERS} -j 2` (one UPDATE, one SELECT and one INSERT a transaction) on a
scratch database of its own (`pgbench -i -s {WORKERS}`), in turn with the others.

{figures}

A call sends two statements: the user's plan, then the recording, which PostgreSQL commits
as it runs it (a pro plan has no cap). With {WORKERS} workers on this machine's CPUs, calls/s
follow the CPU a call costs: the client column is the workers' Python (SQLAlchemy, psycopg),
against pgbench's C client. Every call made, warm-up included, was checked to be one
`usage_events` row and one unit of `sum(usage_records.used)`. {h.cpu_note(every)}"""
    return h.Section("`record_usage` in process", verdicts, body)

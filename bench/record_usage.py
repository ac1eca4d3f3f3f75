"""Throughput of ``record_usage`` on PostgreSQL, next to pgbench on the same server.

Eight worker processes each loop ``record_usage(...)`` (which commits) on a
connection of their own, in two modes:

* distinct users: each worker records for its own 50 users on the pro plan
  (no cap), so the workers never wait for each other's row locks;
* one hot user: every worker records for the same pro user, so all of them
  queue on that user's ``usage_records`` row.

Each mode runs ``BENCH_SECONDS`` (default 10) after ``BENCH_WARMUP_SECONDS``
(default 2) of warm-up. In the same run, ``pgbench -N -c 8 -j 2`` runs for as
long on a scratch database of its own (``pgbench -i -s 8``) and gives the
baseline: a small read-write transaction per call, with the same number of
clients on the same server. The three runs take turns so they never share the
CPU.

Afterwards the database must hold exactly one counted use per call made: a
benchmark that miscounts is a bug, reported as an error.

Settings: ``BENCH_DATABASE_URL`` (an admin connection allowed to create
databases; default ``postgresql://postgres@127.0.0.1:5432/test``),
``BENCH_SECONDS``, ``BENCH_WARMUP_SECONDS``, ``BENCH_PGBENCH`` (path of
pgbench; default: found on ``PATH``). The portal's own settings need
``PORTAL_ENV=development`` (``make bench`` exports it).
"""

from __future__ import annotations

import math
import multiprocessing
import os
import queue
import re
import shutil
import subprocess
import sys
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier
from pathlib import Path

from sqlalchemy import Engine, bindparam, create_engine, make_url, text
from sqlalchemy.engine import URL
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from portal.config import normalize_database_url

DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/test"
BENCH_DATABASE = "portal_bench"
PGBENCH_DATABASE = "portal_pgbench"
PROJECT_ROOT = Path(__file__).resolve().parent.parent
MIGRATIONS = PROJECT_ROOT / "migrations"

WORKERS = 8
USERS_PER_WORKER = 50
PLAN = "pro"
PGBENCH_SCALE = 8
PGBENCH_THREADS = 2
TARGET_DISTINCT = 0.50
TARGET_HOT = 0.25

# Every wait is bounded: a stuck server or worker fails the benchmark instead
# of hanging it.
WORKER_START_TIMEOUT = 120.0
"""Seconds for all workers to start and connect."""
WORKER_FINISH_GRACE = 60.0
"""Seconds after the measured window for the workers to report."""
PGBENCH_INIT_TIMEOUT = 600.0
PGBENCH_RUN_GRACE = 120.0
STATEMENT_TIMEOUT_MS = 30_000

TPS_LINE = re.compile(
    r"^tps = ([0-9.]+) \((?:without initial connection time|excluding connections establishing)\)",
    re.MULTILINE,
)
LATENCY_LINE = re.compile(r"^latency average = ([0-9.]+) ms", re.MULTILINE)


class BenchmarkError(RuntimeError):
    """The benchmark could not run, or its figures cannot be trusted."""


@dataclass(frozen=True)
class Settings:
    admin_url: URL
    seconds: int
    warmup: int
    pgbench: str


@dataclass(frozen=True)
class WorkerPlan:
    """What one worker process does; pickled to the process."""

    index: int
    mode: str
    database_url: str
    user_ids: tuple[int, ...]
    warmup: float
    seconds: float


@dataclass(frozen=True)
class WorkerResult:
    index: int
    calls: int
    """Every call made and committed, warm-up and overrun included."""
    window_calls: int
    """Calls that completed inside the measured window."""
    latencies: list[float]
    """Seconds per call, for the calls inside the window."""
    cpu_seconds: float
    """CPU time this process spent in the calls inside the window."""
    error: str | None = None


@dataclass(frozen=True)
class ModeResult:
    label: str
    seconds: float
    calls: int
    window_calls: int
    latencies: list[float]
    cpu_seconds: float

    @property
    def per_second(self) -> float:
        return self.window_calls / self.seconds

    @property
    def cpu_ms_per_call(self) -> float:
        """Client-side (Python) CPU per call: on N cores, 1 ms caps throughput at N × 1,000/s."""
        return self.cpu_seconds / self.window_calls * 1000 if self.window_calls else math.nan

    @property
    def p50_ms(self) -> float:
        return percentile(self.latencies, 0.50) * 1000

    @property
    def p99_ms(self) -> float:
        return percentile(self.latencies, 0.99) * 1000


@dataclass(frozen=True)
class PgbenchResult:
    tps: float
    latency_average_ms: float | None
    command: str


# -- settings ---------------------------------------------------------------


def admin_database_url() -> URL:
    """The admin connection: ``BENCH_DATABASE_URL`` or the local default."""
    raw = os.environ.get("BENCH_DATABASE_URL", "").strip() or DEFAULT_DATABASE_URL
    url = make_url(normalize_database_url(raw))
    if url.get_backend_name() != "postgresql":
        raise BenchmarkError(f"BENCH_DATABASE_URL must be a PostgreSQL URL, got {raw!r}")
    return url


def _int_setting(name: str, default: int, minimum: int, unit: str = "seconds") -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    if not (raw.isascii() and raw.isdigit()) or int(raw) < minimum:
        raise BenchmarkError(f"{name} must be a whole number of {unit} >= {minimum}, got {raw!r}")
    return int(raw)


def _find_pgbench() -> str:
    configured = os.environ.get("BENCH_PGBENCH", "").strip()
    found = shutil.which(configured or "pgbench")
    if found is None:
        raise BenchmarkError(
            f"pgbench not found ({configured or 'not on PATH'}): install the PostgreSQL "
            "client tools (Debian: apt-get install postgresql-client) or set BENCH_PGBENCH "
            "to its path"
        )
    return found


def _check_portal_environment() -> None:
    """Fail before any work if the portal would refuse its settings."""
    from portal.config import ConfigError, load_config

    try:
        load_config(os.environ, str(PROJECT_ROOT / "instance"))
    except ConfigError as error:
        raise BenchmarkError(
            f"the portal refuses its settings ({error}); PORTAL_ENV=development is all the "
            "benchmark needs (make bench sets it)"
        ) from None


def load_settings() -> Settings:
    _check_portal_environment()
    return Settings(
        admin_url=admin_database_url(),
        seconds=_int_setting("BENCH_SECONDS", 10, 1),
        warmup=_int_setting("BENCH_WARMUP_SECONDS", 2, 0),
        pgbench=_find_pgbench(),
    )


def _database_url(admin_url: URL, name: str) -> str:
    return admin_url.set(database=name).render_as_string(hide_password=False)


# -- scratch databases ------------------------------------------------------


def _admin_engine(admin_url: URL) -> Engine:
    return create_engine(
        admin_url, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 10}
    )


def _recreate_database(admin: Engine, name: str) -> None:
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{name}"'))


def _drop_database(admin: Engine, name: str) -> None:
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def other_activity(admin: Engine) -> int:
    """Busy client sessions on the server outside this benchmark's databases.

    Anything else running skews the figures; the report says so.
    """
    with admin.connect() as conn:
        busy = conn.execute(
            text(
                "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' "
                "AND state <> 'idle' AND pid <> pg_backend_pid() "
                "AND datname NOT IN (:bench, :pgbench)"
            ),
            {"bench": BENCH_DATABASE, "pgbench": PGBENCH_DATABASE},
        ).scalar_one()
    if busy:
        _log(f"warning: {busy} other busy session(s) on the server; figures will be skewed")
    return int(busy)


# -- pgbench ----------------------------------------------------------------


def pgbench_call(
    pgbench: str, url: URL, database: str, arguments: Sequence[str], timeout: float
) -> subprocess.CompletedProcess[str]:
    """Run pgbench against ``database`` on the server of ``url``; its output, or an error."""
    command = [
        pgbench,
        "-h",
        url.host or "127.0.0.1",
        "-p",
        str(url.port or 5432),
        "-U",
        url.username or "postgres",
        *arguments,
        database,
    ]
    env = {**os.environ, "PGCONNECT_TIMEOUT": "10"}
    if url.password:
        env["PGPASSWORD"] = str(url.password)
    try:
        completed = subprocess.run(
            command, capture_output=True, text=True, timeout=timeout, env=env, check=False
        )
    except subprocess.TimeoutExpired:
        raise BenchmarkError(f"{' '.join(command)} did not finish within {timeout:.0f} s") from None
    if completed.returncode != 0:
        tail = (completed.stderr or completed.stdout).strip().splitlines()[-5:]
        raise BenchmarkError(
            f"{' '.join(command)} failed with exit code {completed.returncode}: " + " | ".join(tail)
        )
    return completed


def init_pgbench(settings: Settings) -> None:
    pgbench_call(
        settings.pgbench,
        settings.admin_url,
        PGBENCH_DATABASE,
        ["-i", "-q", "-s", str(PGBENCH_SCALE)],
        PGBENCH_INIT_TIMEOUT,
    )


def run_pgbench(settings: Settings, seconds: int) -> PgbenchResult:
    arguments = ["-N", "-c", str(WORKERS), "-j", str(PGBENCH_THREADS), "-T", str(seconds)]
    completed = pgbench_call(
        settings.pgbench,
        settings.admin_url,
        PGBENCH_DATABASE,
        arguments,
        seconds + PGBENCH_RUN_GRACE,
    )
    tps = TPS_LINE.search(completed.stdout)
    if tps is None:
        raise BenchmarkError(f"no 'tps = …' line in pgbench's output:\n{completed.stdout}")
    if float(tps.group(1)) <= 0:
        raise BenchmarkError(f"pgbench measured no transactions:\n{completed.stdout}")
    latency = LATENCY_LINE.search(completed.stdout)
    return PgbenchResult(
        tps=float(tps.group(1)),
        latency_average_ms=float(latency.group(1)) if latency else None,
        command="pgbench " + " ".join(arguments),
    )


# -- the portal's database --------------------------------------------------


def prepare_portal_database(database_url: str) -> tuple[list[tuple[int, ...]], int]:
    """Migrate the scratch database and create the users.

    Returns each worker's distinct users and the hot user. Subscriptions start
    a day ago so the current billing period contains every event.
    """
    from flask_migrate import upgrade

    from portal import ConfigError, create_app
    from portal.accounts import create_user
    from portal.extensions import db

    try:
        app = create_app({"SQLALCHEMY_DATABASE_URI": database_url})
    except ConfigError as error:
        raise BenchmarkError(f"the portal refuses its settings: {error}") from None
    created = datetime.now(UTC) - timedelta(days=1)
    serial = 0

    def new_user(session: Session, email: str) -> int:
        nonlocal serial
        serial += 1
        user = create_user(
            session,
            email=email,
            password=None,
            plan_id=PLAN,
            stripe_customer_id=f"cus_bench{serial}",
            now=created,
        )
        return int(user.id)

    with app.app_context():
        upgrade(directory=str(MIGRATIONS))
        session: Session = db.session()
        distinct = [
            tuple(new_user(session, f"w{w}-u{u}@bench.example") for u in range(USERS_PER_WORKER))
            for w in range(WORKERS)
        ]
        hot = new_user(session, "hot@bench.example")
        session.commit()
        db.session.remove()
        db.engine.dispose()
    return distinct, hot


def verify_counts(engine: Engine, label: str, user_ids: Sequence[int], calls: int) -> None:
    """Every call made must be counted exactly once, all in one billing period."""
    totals = text(
        "SELECT coalesce(sum(used), 0), count(*) FROM usage_records WHERE user_id IN :ids"
    )
    events_count = text("SELECT count(*) FROM usage_events WHERE user_id IN :ids")
    ids = {"ids": list(user_ids)}
    with engine.connect() as conn:
        used, records = conn.execute(totals.bindparams(bindparam("ids", expanding=True)), ids).one()
        events = conn.execute(
            events_count.bindparams(bindparam("ids", expanding=True)), ids
        ).scalar_one()
    problems = []
    if used != calls:
        problems.append(f"sum(usage_records.used) = {used}")
    if events != calls:
        problems.append(f"{events} usage_events rows")
    if records != len(user_ids):
        problems.append(f"{records} usage_records rows for {len(user_ids)} users in one period")
    if problems:
        raise BenchmarkError(f"{label}: {calls} calls made but " + ", ".join(problems))


# -- worker processes -------------------------------------------------------


def _worker(plan: WorkerPlan, barrier: Barrier, results: Queue[WorkerResult]) -> None:
    """Entry point of a worker process: report a result or the error, never hang."""
    try:
        result = _record_loop(plan, barrier)
    except BaseException:
        barrier.abort()  # the others stop waiting for this worker
        result = WorkerResult(plan.index, 0, 0, [], 0.0, traceback.format_exc())
    results.put(result)


def _record_loop(plan: WorkerPlan, barrier: Barrier) -> WorkerResult:
    # Plain SQLAlchemy, no Flask: what a backend recording usage would do.
    from portal.usage import RecordResult, record_usage

    engine = create_engine(
        normalize_database_url(plan.database_url),
        pool_size=1,
        connect_args={
            "connect_timeout": 10,
            "options": f"-c statement_timeout={STATEMENT_TIMEOUT_MS} "
            f"-c lock_timeout={STATEMENT_TIMEOUT_MS}",
        },
    )
    # The worker holds its connection, as a long-running backend process
    # would: record_usage commits on it without a pool checkout per call.
    try:
        connection = engine.connect()  # connected before the clock starts
        barrier.wait(timeout=WORKER_START_TIMEOUT)
        clock, cpu_clock = time.perf_counter, time.process_time
        window_start = clock() + plan.warmup
        window_end = window_start + plan.seconds
        users = plan.user_ids
        latencies: list[float] = []
        calls = window_calls = 0
        cpu_seconds = 0.0
        with connection, Session(bind=connection) as session:
            while (started := clock()) < window_end:
                cpu_started = cpu_clock()
                outcome = record_usage(
                    session,
                    users[calls % len(users)],
                    idempotency_key=f"{plan.mode}-{plan.index}-{calls}",
                    now=datetime.now(UTC),
                )
                finished = clock()
                cpu_used = cpu_clock() - cpu_started
                calls += 1
                if outcome.result is not RecordResult.CREATED:
                    raise BenchmarkError(f"call {calls} returned {outcome.result}, not created")
                if window_start <= finished < window_end:
                    window_calls += 1
                    latencies.append(finished - started)
                    cpu_seconds += cpu_used
        return WorkerResult(plan.index, calls, window_calls, latencies, cpu_seconds)
    finally:
        engine.dispose()


def run_mode(
    settings: Settings, label: str, mode: str, database_url: str, users: Sequence[tuple[int, ...]]
) -> ModeResult:
    """Run ``WORKERS`` processes, worker ``i`` recording for ``users[i]``."""
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(WORKERS)
    results: Queue[WorkerResult] = context.Queue()
    processes = [
        context.Process(
            target=_worker,
            args=(
                WorkerPlan(i, mode, database_url, users[i], settings.warmup, settings.seconds),
                barrier,
                results,
            ),
            name=f"bench-{mode}-{i}",
            daemon=True,
        )
        for i in range(WORKERS)
    ]
    deadline = (
        time.monotonic()
        + WORKER_START_TIMEOUT
        + settings.warmup
        + settings.seconds
        + WORKER_FINISH_GRACE
    )
    reports: list[WorkerResult] = []
    try:
        for process in processes:
            process.start()
        for _ in processes:
            try:
                reports.append(results.get(timeout=max(0.1, deadline - time.monotonic())))
            except queue.Empty:
                raise BenchmarkError(
                    f"{label}: {WORKERS - len(reports)} worker(s) did not report in time"
                ) from None
    finally:
        for process in processes:
            process.join(timeout=10)
            if process.is_alive():
                process.terminate()
                process.join(timeout=10)
            if process.is_alive():
                process.kill()
                process.join(timeout=10)
        results.close()
    failed = [report for report in reports if report.error]
    if failed:
        first = min(failed, key=lambda report: "BrokenBarrierError" in (report.error or ""))
        raise BenchmarkError(f"{label}: worker {first.index} failed:\n{first.error}")
    return ModeResult(
        label=label,
        seconds=float(settings.seconds),
        calls=sum(report.calls for report in reports),
        window_calls=sum(report.window_calls for report in reports),
        latencies=sorted(latency for report in reports for latency in report.latencies),
        cpu_seconds=sum(report.cpu_seconds for report in reports),
    )


# -- report -----------------------------------------------------------------


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of already sorted values."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(fraction * len(sorted_values)))
    return sorted_values[rank - 1]


def _verdict(ratio: float, target: float) -> str:
    return "PASS" if ratio >= target else "MISS"


def render(
    settings: Settings,
    pgbench: PgbenchResult,
    distinct: ModeResult,
    hot: ModeResult,
    load_average: float,
    busy_sessions: Sequence[int],
) -> str:
    baseline = pgbench.tps
    average = (
        f"— (avg {pgbench.latency_average_ms:.2f})"
        if pgbench.latency_average_ms is not None
        else "—"
    )
    rows = [
        "| Workload | Calls/s | Latency p50 (ms) | Latency p99 (ms) | Client CPU/call (ms) "
        "| Ratio to pgbench | Target | Result |",
        "|---|---:|---:|---:|---:|---:|---:|:---:|",
        f"| Baseline: `{pgbench.command}` | {baseline:,.0f} tps | {average} | — | — "
        "| 100% | — | — |",
    ]
    for mode, target in ((distinct, TARGET_DISTINCT), (hot, TARGET_HOT)):
        ratio = mode.per_second / baseline
        rows.append(
            f"| {mode.label} | {mode.per_second:,.0f} | {mode.p50_ms:.2f} | {mode.p99_ms:.2f} "
            f"| {mode.cpu_ms_per_call:.2f} | {ratio:.0%} | ≥ {target:.0%} "
            f"| {_verdict(ratio, target)} |"
        )
    table = "\n".join(rows)
    cores = len(os.sched_getaffinity(0))
    cpu_cap = cores / distinct.cpu_ms_per_call * 1000 if distinct.cpu_ms_per_call > 0 else math.nan
    busy = ", ".join(str(count) for count in busy_sessions)
    return f"""## `record_usage` throughput on PostgreSQL

{WORKERS} worker processes each loop `record_usage(session, user, idempotency_key=…,
now=datetime.now(UTC))`, which commits, on a connection of their own (plain
SQLAlchemy, no Flask), for {settings.seconds} s after a {settings.warmup} s warm-up. The
baseline is `pgbench -N` (simple-update: one UPDATE, one SELECT and one INSERT per
transaction) with as many clients, on a scale-{PGBENCH_SCALE} scratch database of the
same server, in the same run. The three runs take turns (pgbench, distinct users, hot
user), so they never share the CPU.

- **Distinct users:** each worker records for its own {USERS_PER_WORKER} users on the
  {PLAN} plan (no cap), so no two workers touch the same running total.
- **One hot user:** all {WORKERS} workers record for the same {PLAN} user, so every call
  waits for the others' lock on that user's `usage_records` row.

{table}

- Calls/s counts the calls that completed inside the measured window; latency is one
  `record_usage` call, its commit included, as the worker sees it. On PostgreSQL the
  recording statement is its own transaction (one round trip, committed by the server).
- Client CPU/call is the worker process's own CPU time (Python, SQLAlchemy, psycopg)
  per call. On the {cores} CPUs of this machine, which the server shares, it alone caps
  throughput at about {cpu_cap:,.0f} calls/s with distinct users.
- Conditions: load average {load_average:.2f} (1 min) when the run started; busy
  sessions of other clients on the server as pgbench, distinct users and hot user
  started: {busy}. Anything but 0 means other work shared the server.
- Exact counting, checked after the run: every call made ({distinct.calls:,} with
  distinct users, {hot.calls:,} for the hot user, warm-up included) is one
  `usage_events` row and one unit of `sum(usage_records.used)`, in one billing period
  per user.
"""


# -- entry point ------------------------------------------------------------


def run() -> str:
    """Run the benchmark and return its markdown section."""
    settings = load_settings()
    admin = _admin_engine(settings.admin_url)
    try:
        with admin.connect() as conn:
            conn.execute(text("SELECT 1"))
    except OperationalError as error:
        admin.dispose()
        where = settings.admin_url.render_as_string(hide_password=True)
        raise BenchmarkError(f"cannot connect to PostgreSQL at {where}: {error.orig}") from None
    portal_url = _database_url(settings.admin_url, BENCH_DATABASE)
    try:
        for name in (BENCH_DATABASE, PGBENCH_DATABASE):
            _recreate_database(admin, name)
        _log(f"initialising {PGBENCH_DATABASE} (pgbench -i -s {PGBENCH_SCALE})")
        init_pgbench(settings)
        _log(f"migrating {BENCH_DATABASE} and creating users")
        distinct_users, hot_user = prepare_portal_database(portal_url)

        load_average = os.getloadavg()[0]
        busy_sessions = [other_activity(admin)]
        if settings.warmup:
            _log(f"pgbench warm-up ({settings.warmup} s)")
            run_pgbench(settings, settings.warmup)
        _log(f"pgbench ({settings.seconds} s)")
        pgbench = run_pgbench(settings, settings.seconds)
        busy_sessions.append(other_activity(admin))
        _log(f"record_usage, distinct users ({settings.warmup} + {settings.seconds} s)")
        distinct = run_mode(
            settings,
            f"Distinct users ({WORKERS} workers × {USERS_PER_WORKER} users)",
            "distinct",
            portal_url,
            distinct_users,
        )
        busy_sessions.append(other_activity(admin))
        _log(f"record_usage, one hot user ({settings.warmup} + {settings.seconds} s)")
        hot = run_mode(
            settings,
            f"One hot user ({WORKERS} workers, 1 user)",
            "hot",
            portal_url,
            [(hot_user,)] * WORKERS,
        )

        verify_engine = create_engine(normalize_database_url(portal_url))
        try:
            verify_counts(
                verify_engine,
                distinct.label,
                [user for users in distinct_users for user in users],
                distinct.calls,
            )
            verify_counts(verify_engine, hot.label, [hot_user], hot.calls)
        finally:
            verify_engine.dispose()
    finally:
        for name in (BENCH_DATABASE, PGBENCH_DATABASE):
            try:
                _drop_database(admin, name)
            except OperationalError as error:
                _log(f"could not drop database {name}: {error.orig}")
        admin.dispose()
    return render(settings, pgbench, distinct, hot, load_average, busy_sessions)


def _log(message: str) -> None:
    print(f"[record_usage] {message}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    try:
        print(run())
    except BenchmarkError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(1) from None

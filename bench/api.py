"""Throughput of the usage API under gunicorn, next to pgbench on the same server.

The portal runs under gunicorn on a scratch PostgreSQL database, with the
per-key rate limit raised out of the way, and ``wrk`` drives it over loopback
with a generated Lua script that gives every event an idempotency key of its
own (run tag, wrk thread, random salt, counter):

* single events: ``POST /api/v1/usage-events``, one event a request, 16
  connections (``wrk -t 2 -c 16``); every response must be ``201``;
* batches: ``POST /api/v1/usage-events/batch``, 1,000 events a request, 4
  connections (``wrk -t 4 -c 4``); every response must be ``200`` with all
  1,000 events ``created``.

Events go to 200 users on the pro plan (no cap); each wrk thread cycles
through a slice of its own, so no two requests in flight touch the same
running total. Each workload runs ``BENCH_SECONDS`` (default 10) after
``BENCH_WARMUP_SECONDS`` (default 2) of warm-up, for each gunicorn setting in
``SERVER_SETTINGS``; the report keeps the fastest setting per workload and
lists them all. In the same run, ``pgbench -N -c 16 -j 2`` runs for as long on
a scratch database of its own (``pgbench -i -s 16``) and gives the baseline:
right before and right after each single-event run, whose ratio is taken to
the mean of the two. A shared machine's speed drifts over a run of minutes;
a baseline measured once, minutes away, would tilt the ratios with it.
Single events run ``BENCH_API_ROUNDS`` times per setting (default 3), taking
turns with pgbench; a setting's ratio is the median of its rounds'.
The runs take turns so they never share the CPU.

After every wrk run the database must hold exactly what the responses said:
as many ``usage_events`` rows as units added to ``sum(usage_records.used)``,
at least the events the responses reported created, and no more than one
request per connection beyond that (requests still in flight when wrk
stopped). Any other answer than the expected status, any socket error, or a
miscount is an error, not a result.

Each measured run also says where the CPU went (from ``/proc``, when PostgreSQL
runs on this machine): gunicorn, the PostgreSQL backends, the load generator
and everything else. A run where everything else, less all interrupt time, took
more than ``DISTURBED_SHARE`` of the busy CPU had company (tests, a build) and is flagged
in the report: rerun it on a quiet machine.

Settings: ``BENCH_DATABASE_URL``, ``BENCH_SECONDS``, ``BENCH_WARMUP_SECONDS``
and ``BENCH_PGBENCH`` as in ``bench.record_usage``; ``BENCH_WRK`` (path of wrk;
default: found on ``PATH``); ``BENCH_API_ROUNDS`` (single-event rounds per
gunicorn setting; default 3).
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import resource
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import URL
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from bench.processes import free_port as _free_port
from bench.processes import log_tail as _log_tail
from bench.processes import stat_fields as _stat_fields
from bench.processes import stop_server
from bench.record_usage import (
    LATENCY_LINE,
    TPS_LINE,
    BenchmarkError,
    _admin_engine,
    _check_portal_environment,
    _database_url,
    _drop_database,
    _find_pgbench,
    _int_setting,
    _recreate_database,
    admin_database_url,
    pgbench_call,
)
from portal.config import normalize_database_url

__all__ = ["BenchmarkError", "check", "run"]

BENCH_DATABASE = "portal_bench_api"
PGBENCH_DATABASE = "portal_pgbench_api"
PROJECT_ROOT = Path(__file__).resolve().parent.parent
MIGRATIONS = PROJECT_ROOT / "migrations"

USERS = 200
PLAN = "pro"
EMAIL_TEMPLATE = "u{}@bench.example"
PGBENCH_CLIENTS = 16
PGBENCH_THREADS = 2
PGBENCH_SCALE = 16
TARGET_SINGLE_RATIO = 0.30
"""Single events: requests/s as a share of pgbench's transactions/s."""
TARGET_BATCH_EVENTS = 20_000
"""Batches: events/s (Lago publishes about 10,000 events/s for its REST batch ingestion)."""
RATE_LIMIT = "100000000 per minute"
"""The per-key limit for the benchmark's server: high enough never to throttle it."""

# Every wait is bounded: a stuck server or client fails the benchmark instead
# of hanging it.
SERVER_START_TIMEOUT = 60.0
SERVER_STOP_TIMEOUT = 15.0
REQUEST_TIMEOUT = 30
"""Seconds wrk (and the smoke request) wait for one answer."""
WRK_GRACE = 60.0
PGBENCH_INIT_TIMEOUT = 600.0
PGBENCH_RUN_GRACE = 120.0
SETTLE_TIMEOUT = 30.0
"""Seconds for requests still in flight when wrk stopped to finish on the server."""
DISTURBED_SHARE = 0.10
"""A run is flagged disturbed when more of the machine's busy CPU went elsewhere."""


@dataclass(frozen=True)
class ServerSetting:
    """One way to run gunicorn: production's set-up (``gunicorn_config.py``, the asgi
    worker) with some number of workers, or the plain WSGI app under another worker."""

    worker_class: str
    workers: int
    threads: int = 1

    @property
    def arguments(self) -> list[str]:
        if self.worker_class == "asgi":
            return ["--config", "gunicorn_config.py", "--workers", str(self.workers)]
        arguments = ["--workers", str(self.workers), "--worker-class", self.worker_class]
        if self.worker_class == "gthread":
            arguments += ["--threads", str(self.threads)]
        return [*arguments, "wsgi:app"]

    @property
    def label(self) -> str:
        return f"`{' '.join(self.arguments)}`"


SERVER_SETTINGS = (
    ServerSetting("asgi", 4),
    ServerSetting("asgi", 6),
    ServerSetting("gthread", 2, 4),
)
"""Tried in turn; 2 cores shared with PostgreSQL and wrk. The last is the threaded
worker production used before ``portal.serving``, for comparison."""


@dataclass(frozen=True)
class Workload:
    key: str
    label: str
    path: str
    events_per_request: int
    connections: int
    threads: int
    expected_status: int

    @property
    def users_per_thread(self) -> int:
        return USERS // self.threads

    @property
    def wrk_arguments(self) -> list[str]:
        return ["-t", str(self.threads), "-c", str(self.connections)]


SINGLE = Workload(
    "single",
    "Single events, 16 connections",
    "/api/v1/usage-events",
    events_per_request=1,
    connections=16,
    threads=2,
    expected_status=201,
)
BATCH = Workload(
    "batch",
    "Batches of 1,000 events, 4 connections",
    "/api/v1/usage-events/batch",
    events_per_request=1000,
    connections=4,
    threads=4,
    expected_status=200,
)
WORKLOADS = (SINGLE, BATCH)

# wrk runs this script: ``wrk … -- TAG USERS_PER_THREAD EVENTS_PER_REQUEST STATUS``,
# with the API key in the environment (BENCH_API_KEY) rather than on the command line.
WRK_SCRIPT = r"""
-- Generated by bench/api.py: POST usage events, each with an idempotency key of its own.
local threads = {}
local tag, users_per_thread, events_per_request, expected_status, salt
local first_user, counter = 0, 0
ok, other, created, first_error = 0, 0, 0, ""

function setup(thread)
    thread:set("thread_index", #threads)
    table.insert(threads, thread)
end

function init(args)
    tag = args[1]
    users_per_thread = tonumber(args[2])
    events_per_request = tonumber(args[3])
    expected_status = tonumber(args[4])
    first_user = thread_index * users_per_thread
    math.randomseed(os.time() * 1000 + thread_index)
    salt = string.format("%x", math.random(0, 2147483646))
    wrk.method = "POST"
    wrk.headers["Content-Type"] = "application/json"
    wrk.headers["Authorization"] = "Bearer " .. os.getenv("BENCH_API_KEY")
end

local function event()
    counter = counter + 1
    return string.format(
        '{"user_email":"u%d@bench.example","idempotency_key":"%s-%d-%s-%d","quantity":1}',
        first_user + counter % users_per_thread, tag, thread_index, salt, counter)
end

function request()
    local body
    if events_per_request == 1 then
        body = event()
    else
        local events = {}
        for i = 1, events_per_request do
            events[i] = event()
        end
        body = '{"events":[' .. table.concat(events, ",") .. ']}'
    end
    return wrk.format(nil, nil, nil, body)
end

function response(status, headers, body)
    if status == expected_status then
        ok = ok + 1
        if events_per_request == 1 then
            created = created + 1
        else
            created = created + (tonumber(string.match(body, '"created":(%d+)')) or 0)
        end
    else
        other = other + 1
        if first_error == "" then
            first_error = status .. " " .. (string.gsub(string.sub(body, 1, 300), "%s+", " "))
        end
    end
end

function done(summary, latency, requests)
    local total = {ok = 0, other = 0, created = 0}
    local first = ""
    for _, thread in ipairs(threads) do
        for name, _ in pairs(total) do
            total[name] = total[name] + thread:get(name)
        end
        if first == "" then
            first = thread:get("first_error")
        end
    end
    local errors = summary.errors
    io.write(string.format(
        "BENCH-RESULT duration_us=%.0f requests=%.0f ok=%.0f other=%.0f created=%.0f "
        .. "connect=%.0f read=%.0f write=%.0f status=%.0f timeout=%.0f p50_us=%.0f p99_us=%.0f\n",
        summary.duration, summary.requests, total.ok, total.other, total.created,
        errors.connect, errors.read, errors.write, errors.status, errors.timeout,
        latency:percentile(50), latency:percentile(99)))
    if first ~= "" then
        io.write("BENCH-FIRST-ERROR " .. first .. "\n")
    end
end
"""
RESULT_LINE = re.compile(r"^BENCH-RESULT (.*)$", re.MULTILINE)
FIRST_ERROR_LINE = re.compile(r"^BENCH-FIRST-ERROR (.*)$", re.MULTILINE)
NON_2XX_LINE = re.compile(r"Non-2xx or 3xx responses: (\d+)")
TRANSACTIONS_LINE = re.compile(r"^number of transactions actually processed: (\d+)", re.MULTILINE)


@dataclass(frozen=True)
class Settings:
    admin_url: URL
    seconds: int
    warmup: int
    rounds: int
    """Measured single-event runs per gunicorn setting, each between two pgbench runs."""
    pgbench: str
    wrk: str

    @property
    def local_server(self) -> bool:
        """Whether PostgreSQL runs on this machine, so its backends' CPU time can be read."""
        return (self.admin_url.host or "localhost") in ("localhost", "127.0.0.1", "::1")


@dataclass(frozen=True)
class CpuMark:
    """Cumulative CPU seconds at one moment, and the machine's busy and total jiffies."""

    busy: int
    interrupts: int
    total: int
    postgres: float
    """The whole PostgreSQL server: postmaster, backends (live and ended), background work."""
    backends: dict[int, float] | None
    """The backends connected to the portal's scratch database, by process id."""
    client: float
    """This process's ended children: the load generator, once it has been waited for."""
    server: float
    """gunicorn: master and workers."""


@dataclass(frozen=True)
class CpuUse:
    """CPU seconds spent during one measured run, and by whom."""

    machine: float
    machine_share: float
    """Share of all CPUs busy (0 to 1)."""
    interrupts: float
    """Hardware and soft interrupts: mostly the kernel's loopback networking. The
    kernel charges part of it to the process it interrupted, part to no process."""
    postgres: float
    """The backends serving gunicorn, or for pgbench the whole server; ``nan`` when
    PostgreSQL runs on another machine."""
    client: float
    server: float

    @property
    def outside(self) -> float:
        """Everything else: interrupts charged to no process, PostgreSQL's background
        work, and any other program."""
        postgres = 0.0 if math.isnan(self.postgres) else self.postgres
        # Per-process times are exact, the machine's are sampled per tick: never below 0.
        return max(0.0, self.machine - self.server - self.client - postgres)

    @property
    def others_share(self) -> float:
        """The most other programs can have taken: everything else less all interrupts."""
        return (self.outside - self.interrupts) / self.machine if self.machine > 0 else math.nan

    @property
    def disturbed(self) -> bool:
        return self.others_share > DISTURBED_SHARE


@dataclass(frozen=True)
class PgbenchResult:
    tps: float
    transactions: int
    latency_average_ms: float | None
    command: str
    cpu: CpuUse


@dataclass(frozen=True)
class Baseline:
    """pgbench right before and right after one single-event run."""

    before: PgbenchResult
    after: PgbenchResult

    @property
    def tps(self) -> float:
        return (self.before.tps + self.after.tps) / 2

    @property
    def runs(self) -> tuple[PgbenchResult, PgbenchResult]:
        return (self.before, self.after)


@dataclass(frozen=True)
class Counts:
    events: int
    used: int


@dataclass(frozen=True)
class WrkResult:
    seconds: float
    requests: int
    """Completed requests, as wrk counts them."""
    created: int
    """Events the responses reported created."""
    p50_ms: float
    p99_ms: float
    cpu: CpuUse

    @property
    def per_second(self) -> float:
        return self.requests / self.seconds


@dataclass(frozen=True)
class Check:
    """What the database holds after one wrk run, against what the responses said."""

    events: int
    used: int
    created: int


@dataclass(frozen=True)
class WorkloadResult:
    workload: Workload
    setting: ServerSetting
    measured: WrkResult
    checks: tuple[Check, ...]
    baseline: Baseline | None = None
    """pgbench right before and right after this run (single events only)."""

    @property
    def ratio(self) -> float:
        """Requests per second over the mean of the pgbench runs around this one."""
        assert self.baseline is not None, "only single-event runs have a baseline"
        return self.requests_per_second / self.baseline.tps

    @property
    def requests_per_second(self) -> float:
        return self.measured.per_second

    @property
    def events_per_second(self) -> float:
        return self.measured.per_second * self.workload.events_per_request

    def cpu_ms_per_request(self, seconds: float) -> float:
        requests = self.measured.requests
        return seconds / requests * 1000 if requests else math.nan


# -- settings ---------------------------------------------------------------


def _find_wrk() -> str:
    configured = os.environ.get("BENCH_WRK", "").strip()
    found = shutil.which(configured or "wrk")
    if found is None:
        raise BenchmarkError(
            f"wrk not found ({configured or 'not on PATH'}): the API benchmark drives the "
            "server with wrk; install it (Debian/Ubuntu: apt-get install -y wrk; macOS: brew "
            "install wrk) or set BENCH_WRK to its path"
        )
    return found


def _check_gunicorn() -> None:
    if importlib.util.find_spec("gunicorn") is None:
        raise BenchmarkError(
            "gunicorn is not installed in this Python: pip install -e . (make bench does)"
        )


def load_settings() -> Settings:
    _check_portal_environment()
    _check_gunicorn()
    return Settings(
        admin_url=admin_database_url(),
        seconds=_int_setting("BENCH_SECONDS", 10, 1),
        warmup=_int_setting("BENCH_WARMUP_SECONDS", 2, 0),
        rounds=_int_setting("BENCH_API_ROUNDS", 3, 1, unit="rounds"),
        pgbench=_find_pgbench(),
        wrk=_find_wrk(),
    )


def check() -> None:
    """Fail fast, before any benchmark runs, if a tool this one needs is missing."""
    load_settings()


# -- pgbench ----------------------------------------------------------------


def run_pgbench(settings: Settings, postmaster: int | None, seconds: int) -> PgbenchResult:
    arguments = [
        "-N",
        "-c",
        str(PGBENCH_CLIENTS),
        "-j",
        str(PGBENCH_THREADS),
        "-T",
        str(seconds),
    ]
    before = cpu_mark(postmaster)
    completed = pgbench_call(
        settings.pgbench,
        settings.admin_url,
        PGBENCH_DATABASE,
        arguments,
        seconds + PGBENCH_RUN_GRACE,
    )
    cpu = cpu_use(before, cpu_mark(postmaster))
    tps = TPS_LINE.search(completed.stdout)
    if tps is None:
        raise BenchmarkError(f"no 'tps = …' line in pgbench's output:\n{completed.stdout}")
    if float(tps.group(1)) <= 0:
        raise BenchmarkError(f"pgbench measured no transactions:\n{completed.stdout}")
    latency = LATENCY_LINE.search(completed.stdout)
    processed = TRANSACTIONS_LINE.search(completed.stdout)
    return PgbenchResult(
        tps=float(tps.group(1)),
        transactions=int(processed.group(1)) if processed else round(float(tps.group(1)) * seconds),
        latency_average_ms=float(latency.group(1)) if latency else None,
        command="pgbench " + " ".join(arguments),
        cpu=cpu,
    )


# -- the portal's database --------------------------------------------------


def prepare_portal_database(database_url: str) -> str:
    """Migrate the scratch database, create the users and return a new API key.

    Subscriptions start a day ago so the current billing period contains
    every event.
    """
    from flask_migrate import upgrade

    from portal import ConfigError, create_app
    from portal.accounts import create_user
    from portal.apikeys import create_api_key
    from portal.extensions import db

    try:
        app = create_app({"SQLALCHEMY_DATABASE_URI": database_url})
    except ConfigError as error:
        raise BenchmarkError(f"the portal refuses its settings: {error}") from None
    created = datetime.now(UTC) - timedelta(days=1)
    with app.app_context():
        upgrade(directory=str(MIGRATIONS))
        session: Session = db.session()
        for index in range(USERS):
            create_user(
                session,
                email=EMAIL_TEMPLATE.format(index),
                password=None,
                plan_id=PLAN,
                stripe_customer_id=f"cus_bench{index}",
                now=created,
            )
        _, key = create_api_key(session, "bench", datetime.now(UTC))
        session.commit()
        db.session.remove()
        db.engine.dispose()
    return key


def read_counts(engine: Engine) -> Counts:
    with engine.connect() as conn:
        events = conn.execute(text("SELECT count(*) FROM usage_events")).scalar_one()
        used = conn.execute(text("SELECT coalesce(sum(used), 0) FROM usage_records")).scalar_one()
    return Counts(int(events), int(used))


def _busy_sessions(admin: Engine, database: str) -> int:
    with admin.connect() as conn:
        busy = conn.execute(
            text(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = :name "
                "AND state IS NOT NULL AND state <> 'idle' AND pid <> pg_backend_pid()"
            ),
            {"name": database},
        ).scalar_one()
    return int(busy)


def settled_counts(admin: Engine, engine: Engine) -> Counts:
    """The counts once requests still in flight when wrk stopped have finished."""
    deadline = time.monotonic() + SETTLE_TIMEOUT
    readings: list[Counts] = []
    while time.monotonic() < deadline:
        if _busy_sessions(admin, BENCH_DATABASE) == 0:
            readings.append(read_counts(engine))
            if len(readings) >= 3 and readings[-1] == readings[-2] == readings[-3]:
                return readings[-1]
        else:
            readings.clear()
        time.sleep(0.2)
    raise BenchmarkError(f"the server was still recording {SETTLE_TIMEOUT:.0f} s after wrk ended")


def verify(label: str, before: Counts, after: Counts, created: int, in_flight: int) -> Check:
    """Each event is one row and one unit of ``used``; no event lost, none invented."""
    events, used = after.events - before.events, after.used - before.used
    problems = []
    if events != used:
        problems.append(f"{events} new usage_events rows but sum(usage_records.used) grew {used}")
    if events < created:
        problems.append(f"only {events} new usage_events rows for {created} events created")
    if events > created + in_flight:
        problems.append(
            f"{events} new usage_events rows: more than the {created} events created plus "
            f"the {in_flight} that could have been in flight when wrk stopped"
        )
    if problems:
        raise BenchmarkError(f"{label}: " + "; ".join(problems))
    return Check(events, used, created)


def verify_totals(engine: Engine) -> int:
    """One running total per user, all in one billing period; the number of events."""
    with engine.connect() as conn:
        records, users, events, used = conn.execute(
            text(
                "SELECT count(*), count(DISTINCT user_id), "
                "(SELECT count(*) FROM usage_events), coalesce(sum(used), 0) FROM usage_records"
            )
        ).one()
    if records != USERS or users != USERS or events != used:
        raise BenchmarkError(
            f"after all runs: {records} usage_records rows for {users} of {USERS} users, "
            f"{events} usage_events rows, sum(used) = {used}"
        )
    return int(events)


def other_activity(admin: Engine) -> int:
    """Busy client sessions on the server outside this benchmark's databases."""
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


# -- CPU accounting ---------------------------------------------------------

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _tree_cpu(pid: int | None) -> float:
    """CPU seconds of a process, its ended children and its live children."""
    if pid is None:
        return 0.0
    fields = _stat_fields(pid)
    if fields is None:
        return math.nan
    # utime, stime, cutime and cstime are fields 14 to 17 of the whole line.
    ticks = sum(int(value) for value in fields[11:15])
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            child = _stat_fields(int(entry.name))
            if child is not None and int(child[1]) == pid:
                ticks += int(child[11]) + int(child[12])
    return ticks / CLOCK_TICKS


def postmaster_pid(settings: Settings, admin: Engine) -> int | None:
    """The PostgreSQL server's main process, when it runs on this machine."""
    if not settings.local_server:
        return None
    with admin.connect() as conn:
        backend = int(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())
    fields = _stat_fields(backend)
    return int(fields[1]) if fields is not None else None


def _machine_jiffies() -> tuple[int, int, int]:
    """Busy, interrupt and total jiffies of all CPUs since boot (``/proc/stat``)."""
    try:
        first = Path("/proc/stat").read_text().splitlines()[0].split()
    except (OSError, IndexError):
        return 0, 0, 0
    # user nice system idle iowait irq softirq steal; guest is inside user
    values = [int(value) for value in first[1:9]]
    idle = values[3] + values[4]
    return sum(values) - idle, values[5] + values[6], sum(values)


def _backend_cpu(admin: Engine) -> dict[int, float]:
    """CPU seconds of each backend connected to the portal's scratch database."""
    with admin.connect() as conn:
        pids = conn.execute(
            text("SELECT pid FROM pg_stat_activity WHERE datname = :name"),
            {"name": BENCH_DATABASE},
        ).scalars()
        seconds = {}
        for pid in pids:
            fields = _stat_fields(int(pid))
            if fields is not None:  # utime and stime: fields 14 and 15 of the whole line
                seconds[int(pid)] = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    return seconds


def cpu_mark(
    postmaster: int | None, server: int | None = None, admin: Engine | None = None
) -> CpuMark:
    """Where CPU time stands now; with ``admin``, the portal's backends one by one."""
    busy, interrupts, total = _machine_jiffies()
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    local = postmaster is not None
    return CpuMark(
        busy,
        interrupts,
        total,
        _tree_cpu(postmaster) if local else math.nan,
        _backend_cpu(admin) if local and admin is not None else None,
        children.ru_utime + children.ru_stime,
        _tree_cpu(server),
    )


def cpu_use(before: CpuMark, after: CpuMark) -> CpuUse:
    total = after.total - before.total
    postgres = after.postgres - before.postgres
    if before.backends is not None and after.backends is not None:
        # Backends live as long as gunicorn's pool keeps them: count those still there.
        postgres = sum(
            seconds - before.backends.get(pid, 0.0) for pid, seconds in after.backends.items()
        )
    return CpuUse(
        machine=(after.busy - before.busy) / CLOCK_TICKS,
        machine_share=(after.busy - before.busy) / total if total > 0 else math.nan,
        interrupts=(after.interrupts - before.interrupts) / CLOCK_TICKS,
        postgres=postgres,
        client=after.client - before.client,
        server=after.server - before.server,
    )


# -- gunicorn ---------------------------------------------------------------


@dataclass(frozen=True)
class Server:
    pid: int
    base_url: str
    api_key: str


@contextmanager
def gunicorn(
    setting: ServerSetting, database_url: str, api_key: str, workdir: Path
) -> Iterator[Server]:
    """Run the portal under gunicorn until the block ends; always stopped, in bounded time."""
    port = _free_port()
    log_path = workdir / f"gunicorn-{setting.worker_class}-{setting.workers}x{setting.threads}.log"
    command = [
        sys.executable,
        "-m",
        "gunicorn",
        *setting.arguments,
        "--bind",
        f"127.0.0.1:{port}",
        "--graceful-timeout",
        "5",
    ]
    env = {
        **os.environ,
        "PORTAL_ENV": "production",
        "SECRET_KEY": secrets.token_urlsafe(48),
        "DATABASE_URL": database_url,
        "API_RATE_LIMIT": RATE_LIMIT,
        "RATE_LIMIT_STORAGE_URL": "memory://",
    }
    env.pop("PORT", None)
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command,
            cwd=PROJECT_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: the workers go with it
        )
    try:
        base_url = f"http://127.0.0.1:{port}"
        _wait_until_answering(process, base_url, log_path)
        yield Server(process.pid, base_url, api_key)
    finally:
        _stop(process)
    if process.returncode not in (0, -signal.SIGTERM):
        _log(f"gunicorn exited with {process.returncode}:\n{_log_tail(log_path)}")


def _wait_until_answering(process: subprocess.Popen[bytes], base_url: str, log: Path) -> None:
    deadline = time.monotonic() + SERVER_START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise BenchmarkError(
                f"gunicorn exited with code {process.returncode} on start:\n{_log_tail(log)}"
            )
        try:
            with urllib.request.urlopen(f"{base_url}/api/v1/openapi.json", timeout=2) as answer:
                if answer.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    raise BenchmarkError(
        f"gunicorn did not answer within {SERVER_START_TIMEOUT:.0f} s:\n{_log_tail(log)}"
    )


def smoke_test(server: Server) -> None:
    """One request by hand, so a broken setup fails with the server's own answer."""
    body = json.dumps(
        {
            "user_email": EMAIL_TEMPLATE.format(0),
            "idempotency_key": f"smoke-{secrets.token_hex(8)}",
            "quantity": 1,
        }
    ).encode()
    request = urllib.request.Request(
        f"{server.base_url}{SINGLE.path}",
        data=body,
        method="POST",
        headers={
            "Content-Type": "application/json",
            "Authorization": f"Bearer {server.api_key}",
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT) as answer:
            status, text_out = answer.status, answer.read(500).decode(errors="replace")
    except urllib.error.HTTPError as error:
        status, text_out = error.code, error.read(500).decode(errors="replace")
    except (urllib.error.URLError, OSError) as error:
        raise BenchmarkError(f"the smoke request to {server.base_url} failed: {error}") from None
    if status != 201:
        raise BenchmarkError(f"the smoke request got {status}, not 201: {text_out}")


# -- wrk --------------------------------------------------------------------


def run_wrk(
    settings: Settings,
    server: Server,
    admin: Engine,
    postmaster: int | None,
    workload: Workload,
    seconds: int,
    script: Path,
) -> WrkResult:
    tag = secrets.token_hex(4)
    command = [
        settings.wrk,
        *workload.wrk_arguments,
        "-d",
        f"{seconds}s",
        "--timeout",
        f"{REQUEST_TIMEOUT}s",
        "--latency",
        "-s",
        str(script),
        f"{server.base_url}{workload.path}",
        "--",
        tag,
        str(workload.users_per_thread),
        str(workload.events_per_request),
        str(workload.expected_status),
    ]
    env = {**os.environ, "BENCH_API_KEY": server.api_key}
    before = cpu_mark(postmaster, server.pid, admin)
    try:
        completed = subprocess.run(
            command,
            capture_output=True,
            text=True,
            env=env,
            timeout=seconds + WRK_GRACE,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise BenchmarkError(
            f"wrk did not finish within {seconds + WRK_GRACE:.0f} s: {' '.join(command)}"
        ) from None
    cpu = cpu_use(before, cpu_mark(postmaster, server.pid, admin))
    label = f"{workload.label} ({' '.join(command[1:4])}…)"
    output = completed.stdout + completed.stderr
    if completed.returncode != 0:
        raise BenchmarkError(f"{label}: wrk failed with code {completed.returncode}:\n{output}")
    line = RESULT_LINE.search(completed.stdout)
    if line is None:
        raise BenchmarkError(f"{label}: no result line in wrk's output:\n{output}")
    figures = {
        name: float(value) for name, value in (pair.split("=") for pair in line.group(1).split())
    }
    requests, ok = int(figures["requests"]), int(figures["ok"])
    problems = []
    if requests == 0:
        problems.append("no request completed")
    if figures["other"] or ok != requests:
        first = FIRST_ERROR_LINE.search(completed.stdout)
        problems.append(
            f"{requests - ok} of {requests} answers were not {workload.expected_status}"
            + (f" (first: {first.group(1)})" if first else "")
        )
    non_2xx = NON_2XX_LINE.search(completed.stdout)
    if non_2xx and int(non_2xx.group(1)) and not figures["other"]:
        problems.append(f"wrk counted {non_2xx.group(1)} non-2xx answers")
    socket_errors = {
        name: int(figures[name])
        for name in ("connect", "read", "write", "timeout")
        if figures[name]
    }
    if socket_errors:
        problems.append(f"socket errors {socket_errors}")
    created = int(figures["created"])
    if created != ok * workload.events_per_request:
        problems.append(
            f"{ok * workload.events_per_request - created} events of the "
            f"{ok} answered requests were not created"
        )
    if problems:
        raise BenchmarkError(f"{label}: " + "; ".join(problems) + f"\nwrk output:\n{output}")
    return WrkResult(
        seconds=figures["duration_us"] / 1e6,
        requests=requests,
        created=created,
        p50_ms=figures["p50_us"] / 1000,
        p99_ms=figures["p99_us"] / 1000,
        cpu=cpu,
    )


def run_workload(
    settings: Settings,
    server: Server,
    setting: ServerSetting,
    admin: Engine,
    postmaster: int | None,
    engine: Engine,
    workload: Workload,
    script: Path,
    *,
    warm_up: bool = True,
    round_label: str = "",
) -> WorkloadResult:
    """Warm-up (unless ``warm_up`` is false), then the measured run; each checked in the DB."""
    in_flight = workload.connections * workload.events_per_request
    checks = []
    measured: WrkResult | None = None
    phases = (("warm-up", settings.warmup if warm_up else 0), ("measured", settings.seconds))
    for phase, seconds in phases:
        if seconds == 0:
            continue
        _log(f"{workload.key} events, {setting.label}, {phase}{round_label} ({seconds} s)")
        before = settled_counts(admin, engine)
        result = run_wrk(settings, server, admin, postmaster, workload, seconds, script)
        after = settled_counts(admin, engine)
        label = f"{workload.label}, {setting.label}, {phase}"
        checks.append(verify(label, before, after, result.created, in_flight))
        measured = result
    assert measured is not None
    _warn_if_disturbed(f"{workload.key} events", measured.cpu)
    return WorkloadResult(workload, setting, measured, tuple(checks))


# -- report -----------------------------------------------------------------


def _verdict(passed: bool) -> str:
    return "PASS" if passed else "MISS"


def _ms(value: float) -> str:
    return "—" if math.isnan(value) else f"{value:.2f}"


def median_round(rounds: Sequence[WorkloadResult]) -> WorkloadResult:
    """The single-event run whose ratio is the median of its setting's rounds.

    With an even number of rounds, the lower of the two middle ones: a
    verdict never rests on a run better than half of them.
    """
    ordered = sorted(rounds, key=lambda r: r.ratio)
    return ordered[(len(ordered) - 1) // 2]


def baseline_runs(results: Sequence[WorkloadResult]) -> list[tuple[ServerSetting, PgbenchResult]]:
    """Every pgbench run once, with the setting it was measured around.

    A run between two rounds is the baseline of both.
    """
    runs = {
        id(run): (r.setting, run)
        for r in results
        if r.baseline is not None
        for run in r.baseline.runs
    }
    return list(runs.values())


def render(
    settings: Settings,
    results: Sequence[WorkloadResult],
    total_events: int,
    load_average: float,
    busy_sessions: Sequence[int],
) -> str:
    rounds = {
        setting: [r for r in results if r.workload is SINGLE and r.setting is setting]
        for setting in SERVER_SETTINGS
    }
    medians = {setting: median_round(runs) for setting, runs in rounds.items()}
    single = max(medians.values(), key=lambda r: r.ratio)
    batch = max((r for r in results if r.workload is BATCH), key=lambda r: r.events_per_second)
    pgbench_runs = [run for _, run in baseline_runs(results)]
    around_single = single.baseline
    assert around_single is not None
    baseline = around_single.tps
    batch_baseline = sum(run.tps for run in pgbench_runs) / len(pgbench_runs)
    batch_ratio = batch.events_per_second / batch_baseline
    latencies = [b.latency_average_ms for b in around_single.runs if b.latency_average_ms]
    average = f"— (avg {sum(latencies) / len(latencies):.2f})" if latencies else "—"
    pgbench = around_single.before
    rows = [
        "| Workload | Gunicorn | Requests/s | Events/s | Latency p50 (ms) | Latency p99 (ms) "
        "| Baseline | Ratio | Target | Result |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|:---:|",
        f"| Baseline: `{pgbench.command}`, before and after the median single-event run "
        f"| — | {around_single.before.tps:,.0f} and {around_single.after.tps:,.0f} tps "
        f"| — | {average} | — | — | 100% | — | — |",
        f"| {SINGLE.label} | {single.setting.label} | {single.requests_per_second:,.0f} "
        f"| {single.events_per_second:,.0f} | {single.measured.p50_ms:.2f} "
        f"| {single.measured.p99_ms:.2f} | {baseline:,.0f} tps (mean) "
        f"| {single.ratio:.0%} (median of {len(rounds[single.setting])}) "
        f"| ≥ {TARGET_SINGLE_RATIO:.0%} of pgbench "
        f"| {_verdict(single.ratio >= TARGET_SINGLE_RATIO)} |",
        f"| {BATCH.label} | {batch.setting.label} | {batch.requests_per_second:,.1f} "
        f"| {batch.events_per_second:,.0f} | {batch.measured.p50_ms:.2f} "
        f"| {batch.measured.p99_ms:.2f} | {batch_baseline:,.0f} tps (mean of all) "
        f"| {batch_ratio:.0%} "
        f"| ≥ {TARGET_BATCH_EVENTS:,} events/s "
        f"| {_verdict(batch.events_per_second >= TARGET_BATCH_EVENTS)} |",
    ]
    tried = [
        "| Gunicorn | Single: requests/s | pgbench before / after (tps) | Ratio (median) "
        "| Ratio of each round | p50 / p99 (ms) | Batch: events/s | p50 / p99 (ms) |",
        "|---|---:|---:|---:|---|---:|---:|---:|",
    ]
    for setting in SERVER_SETTINGS:
        one = medians[setting]
        many = next(r for r in results if r.workload is BATCH and r.setting is setting)
        around = one.baseline
        assert around is not None
        each = ", ".join(f"{r.ratio:.0%}" for r in rounds[setting])
        tried.append(
            f"| {setting.label} | {one.requests_per_second:,.0f} "
            f"| {around.before.tps:,.0f} / {around.after.tps:,.0f} | {one.ratio:.0%} | {each} "
            f"| {one.measured.p50_ms:.2f} / {one.measured.p99_ms:.2f} "
            f"| {many.events_per_second:,.0f} "
            f"| {many.measured.p50_ms:.2f} / {many.measured.p99_ms:.2f} |"
        )

    def per(seconds: float, count: int) -> str:
        return _ms(seconds / count * 1000 if count else math.nan)

    def cpu_row(label: str, setting: str, use: CpuUse, count: int) -> str:
        server = per(use.server, count) if setting != "—" else "—"
        return (
            f"| {label} | {setting} | {server} | {per(use.postgres, count)} "
            f"| {per(use.client, count)} | {per(use.outside, count)} "
            f"| {per(use.interrupts, count)} | {use.machine_share:.0%} |"
        )

    cpu = [
        "| Run | Gunicorn | gunicorn | PostgreSQL | wrk or pgbench | everything else "
        "| interrupts | CPUs busy |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
        cpu_row(
            "`pgbench -N` before the median run of the fastest setting, per transaction",
            "—",
            pgbench.cpu,
            pgbench.transactions,
        ),
    ]

    def run_label(result: WorkloadResult) -> str:
        if result.workload is not SINGLE:
            return result.workload.label
        return f"{result.workload.label}, round {rounds[result.setting].index(result) + 1}"

    for result in sorted(results, key=lambda r: WORKLOADS.index(r.workload)):
        measured = result.measured
        label = run_label(result)
        cpu.append(cpu_row(label, result.setting.label, measured.cpu, measured.requests))
    # Single events run in rounds, each with pgbench around it: name each kind of
    # run once, with how many of its runs were disturbed.
    disturbed_runs = Counter(
        label
        for label, use in [
            *(
                (f"pgbench around {setting.label}", run.cpu)
                for setting, run in baseline_runs(results)
            ),
            *((f"{r.workload.key} events with {r.setting.label}", r.measured.cpu) for r in results),
        ]
        if use.disturbed
    )
    disturbed = [
        f"{label} ({count} runs)" if count > 1 else label for label, count in disturbed_runs.items()
    ]
    quiet = (
        f"**Disturbed:** everything else, less all interrupts, took more than "
        f"{DISTURBED_SHARE:.0%} of the busy CPU in {', '.join(disturbed)}; rerun on a quiet "
        "machine."
        if disturbed
        else "No run was disturbed: everything else, less all interrupts, took at most "
        f"{DISTURBED_SHARE:.0%} of the busy CPU in each."
    )
    checks = []
    for workload in WORKLOADS:
        runs = [c for r in results if r.workload is workload for c in r.checks]
        surplus = [c.events - c.created for c in runs]
        checks.append(
            f"{workload.key} events: {len(runs)} wrk runs, {sum(c.events for c in runs):,} rows "
            f"for {sum(c.created for c in runs):,} events answered created (surplus "
            f"{min(surplus):,} to {max(surplus):,} a run; at most "
            f"{workload.connections * workload.events_per_request:,} allowed)"
        )
    cores = len(os.sched_getaffinity(0))
    busy = ", ".join(str(count) for count in busy_sessions)
    return f"""## Usage API throughput under gunicorn

The portal runs under gunicorn (`PORTAL_ENV=production`, PostgreSQL, the per-key rate
limit raised to `{RATE_LIMIT}` so it never throttles) and
[wrk](https://github.com/wg/wrk) drives it over loopback for {settings.seconds} s after a
{settings.warmup} s warm-up, with a Lua script that gives every event an idempotency key
of its own. Events go to {USERS} users on the {PLAN} plan; each wrk thread cycles
through its own slice of them, so no two requests in flight share a running total. The
baseline is `pgbench -N` with {PGBENCH_CLIENTS} clients on a scale-{PGBENCH_SCALE}
scratch database of the same server, in the same run, right before and right after
each single-event run: a shared machine's speed drifts, so each ratio is to the mean of
the two. pgbench, wrk and gunicorn take turns, so no two measurements share the CPU
(but wrk shares it with the server it drives, as pgbench shares it with PostgreSQL).
Single events are measured in {settings.rounds} rounds per gunicorn setting (pgbench, wrk,
pgbench, wrk, …, pgbench; the warm-up only before the first): a setting's ratio is the
median of its rounds', so one stall of the machine neither makes nor breaks the verdict,
and the second table lists every round's.

- **Single events:** `POST {SINGLE.path}`, one event a request, `wrk -t {SINGLE.threads}
  -c {SINGLE.connections}`; every answer must be `201`. Target: at least
  {TARGET_SINGLE_RATIO:.0%} of pgbench's transactions per second.
- **Batches:** `POST {BATCH.path}`, {BATCH.events_per_request:,} events a request,
  `wrk -t {BATCH.threads} -c {BATCH.connections}`; every answer must be `200` with all
  {BATCH.events_per_request:,} events `created`. Target: {TARGET_BATCH_EVENTS:,} events/s
  on this {cores}-CPU machine (Lago publishes about 10,000 events/s for its REST batch
  ingestion). Ratio is events/s over pgbench's transactions/s.

{chr(10).join(rows)}

Each workload ran under every gunicorn setting below (a fresh server each, after the
same warm-up); the table above shows the fastest per workload.

{chr(10).join(tried)}

Where the CPU went during each measured run, in milliseconds per request or
transaction (a batch request is {BATCH.events_per_request:,} events): the gunicorn
processes (Flask, SQLAlchemy, psycopg), the PostgreSQL backends serving them (for
pgbench: the whole PostgreSQL server), the load generator, and everything else:
PostgreSQL's background writers, kernel work charged to no process, and any other
program running at the time. "Interrupts" is the kernel's interrupt work (mostly loopback
networking), which it charges partly to the processes in the columns before it and partly
to no process. "CPUs busy" is the whole machine's ({cores} CPUs).

{chr(10).join(cpu)}

- Requests/s is wrk's count of completed requests over its measured duration; latency is
  wrk's, per request, from its `--latency` distribution (p50 and p99).
- Conditions: load average {load_average:.2f} (1 min) when the run started; busy
  sessions of other clients on the server as pgbench and each gunicorn setting started:
  {busy}. Anything but 0 means other work shared the server. {quiet}
- Exact counting, checked after every wrk run: each new `usage_events` row added one to
  `sum(usage_records.used)`, and the rows number at least the events the answers reported
  created, and at most one request per connection more (requests still in flight when
  wrk stopped). {"; ".join(checks)}. In all, {total_events:,} events, one `usage_records` row per
  user.
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
    engine: Engine | None = None
    try:
        for name in (BENCH_DATABASE, PGBENCH_DATABASE):
            _recreate_database(admin, name)
        _log(f"initialising {PGBENCH_DATABASE} (pgbench -i -s {PGBENCH_SCALE})")
        pgbench_call(
            settings.pgbench,
            settings.admin_url,
            PGBENCH_DATABASE,
            ["-i", "-q", "-s", str(PGBENCH_SCALE)],
            PGBENCH_INIT_TIMEOUT,
        )
        _log(f"migrating {BENCH_DATABASE}, creating {USERS} users and an API key")
        api_key = prepare_portal_database(portal_url)
        engine = create_engine(normalize_database_url(portal_url), pool_size=1)

        postmaster = postmaster_pid(settings, admin)
        load_average = os.getloadavg()[0]
        busy_sessions = [other_activity(admin)]
        if settings.warmup:
            _log(f"pgbench warm-up ({settings.warmup} s)")
            run_pgbench(settings, postmaster, settings.warmup)

        def baseline_run(when: str) -> PgbenchResult:
            _log(f"pgbench, {when} ({settings.seconds} s)")
            result = run_pgbench(settings, postmaster, settings.seconds)
            _warn_if_disturbed("pgbench", result.cpu)
            return result

        results: list[WorkloadResult] = []
        with tempfile.TemporaryDirectory(prefix="bench-api-") as directory:
            workdir = Path(directory)
            script = workdir / "usage_events.lua"
            script.write_text(WRK_SCRIPT)
            for setting in SERVER_SETTINGS:
                busy_sessions.append(other_activity(admin))
                _log(f"starting gunicorn {setting.label}")
                with gunicorn(setting, portal_url, api_key, workdir) as server:
                    smoke_test(server)
                    # Single events take turns with pgbench, p w p w … p: each run's
                    # ratio is to the pgbench runs on either side of it.
                    before = baseline_run(f"before single events, {setting.label}")
                    for round_ in range(1, settings.rounds + 1):
                        result = run_workload(
                            settings,
                            server,
                            setting,
                            admin,
                            postmaster,
                            engine,
                            SINGLE,
                            script,
                            warm_up=round_ == 1,
                            round_label=f", round {round_} of {settings.rounds}",
                        )
                        after = baseline_run(
                            f"after single events, round {round_}, {setting.label}"
                        )
                        results.append(replace(result, baseline=Baseline(before, after)))
                        before = after
                    results.append(
                        run_workload(
                            settings, server, setting, admin, postmaster, engine, BATCH, script
                        )
                    )
        total_events = verify_totals(engine)
    finally:
        if engine is not None:
            engine.dispose()
        for name in (BENCH_DATABASE, PGBENCH_DATABASE):
            try:
                _drop_database(admin, name)
            except OperationalError as error:
                _log(f"could not drop database {name}: {error.orig}")
        admin.dispose()
    return render(settings, results, total_events, load_average, busy_sessions)


def _warn_if_disturbed(label: str, use: CpuUse) -> None:
    if use.disturbed:
        _log(
            f"warning: {label}: up to {use.others_share:.0%} of the busy CPU went to other "
            "programs; figures will be skewed"
        )


def _stop(process: subprocess.Popen[bytes]) -> None:
    stop_server(process, SERVER_STOP_TIMEOUT, _log)


def _log(message: str) -> None:
    print(f"[api] {message}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    try:
        print(run())
    except BenchmarkError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(1) from None

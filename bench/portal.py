"""The portal's pages under load: the live usage region, and a 10,000-member organization.

Everything runs against a scratch PostgreSQL database of its own, served by
gunicorn exactly as in production (``PORTAL_ENV=production``, a random
``SECRET_KEY``), in two parts.

**The live region.** 200 users on the pro plan, each with some usage this
period, sign in through the real form (``GET /login`` for the CSRF token, then
``POST /login``), each from a loopback address of its own (127.0.1.x) so that
the per-address sign-in limit is not what is measured. wrk then drives
``GET /usage/current`` with 32 connections (``wrk -t 2 -c 32``), rotating the
200 session cookies, and ``GET /healthz`` (no database) with the very same
server, connections and request headers as the baseline, right before and
right after it: the ratio is taken to the mean of the two, since a shared
machine's speed drifts over a run. Every request carries
the user's sign-in address in ``X-Forwarded-For`` and the sign-in's
``User-Agent``, as a proxy would pass them on, so Flask-Login's session
protection recognizes the client and the session is not rewritten. wrk sends
no ``If-None-Match``, so the main row is the full ``200`` path (queries and
rendering); an extra row sends each user's current ETag and measures the
``304`` path. Each workload runs ``BENCH_SECONDS`` (default 10) after
``BENCH_WARMUP_SECONDS`` (default 2) of warm-up, one after the other.

**A large organization.** A business organization of 10,000 members with 12
billing periods of history is loaded with bulk SQL (users, memberships, one
``member_usage`` row per active member and period, the pool's
``usage_records`` row per period, one ``usage_events`` row per member and
period), then ``VACUUM ANALYZE``. Measured:

* the first page of the member table: ``get_org_usage_summary(…, page=1)``
  in-process, the whole ``GET /orgs/<slug>/usage`` page through Flask's test
  client (server time, no network), and the same page through gunicorn as a
  client on the same machine sees it;
* the CSV export ``GET /orgs/<slug>/usage.csv`` through gunicorn, end to end:
  every row received and counted, time to the first byte of the body against
  the total, the chunks it arrived in, and the serving worker's peak resident
  memory against its idle size.

Settings: ``BENCH_DATABASE_URL``, ``BENCH_SECONDS`` and ``BENCH_WARMUP_SECONDS``
as in ``bench.record_usage``; ``BENCH_WRK`` (path of wrk; default: found on
``PATH``); ``BENCH_GUNICORN_ARGS`` (gunicorn's options, with the app; default
``--config gunicorn_config.py``, production's set-up); ``BENCH_QUIET_WAIT``
(seconds to wait, before each wrk workload, for other work to leave the CPUs
mostly idle, and to measure a workload again, up to 3 times, when other processes
used more than 10 % of the CPUs during it; default 120, 0 to do neither);
``BENCH_PORTAL_PARTS`` (``all``, the default, or ``live`` for the live region
alone: no organization is loaded or measured, which saves most of the run while
tuning ``/usage/current``). The benchmark process itself needs
``PORTAL_ENV=development`` (``make bench`` exports it).
"""

from __future__ import annotations

import csv
import http.client
import importlib.util
import io
import math
import os
import re
import resource
import secrets
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import URL
from sqlalchemy.exc import OperationalError

from bench.processes import free_port as _free_port
from bench.processes import log_tail as _log_tail
from bench.processes import stat_fields as _stat_fields
from bench.processes import stop_server
from bench.record_usage import (
    BenchmarkError,
    _admin_engine,
    _check_portal_environment,
    _database_url,
    _drop_database,
    _int_setting,
    _recreate_database,
    admin_database_url,
    percentile,
)

__all__ = ["BenchmarkError", "check", "run"]

BENCH_DATABASE = "portal_bench_pages"
PROJECT_ROOT = Path(__file__).resolve().parent.parent
MIGRATIONS = PROJECT_ROOT / "migrations"

DEFAULT_GUNICORN_ARGS = "--config gunicorn_config.py"
"""Production's set-up: gunicorn's asgi worker, two workers a core (``portal.serving``)."""
CONNECTIONS = 32
WRK_THREADS = 2
USER_AGENT = "portal-bench/1.0"
PASSWORD = "bench-password"  # noqa: S105 - a scratch database's throwaway accounts

USERS = 200
USER_PLAN = "pro"
SIGN_IN_THREADS = 4

ORG_SLUG = "bench-org"
ORG_PLAN = "business"
ORG_MEMBERS = 10_000
"""Members including the admin who signs in."""
ORG_PERIODS = 12
ORG_ADMINS_EVERY = 1_000
"""Every so many members is an admin too, as in a real organization."""
ORG_ACTIVE_SHARE = 0.85
"""Share of members with any usage in a period; the others have no row."""
FIRST_NAMES = (
    "Ada Ben Chloe Dev Elena Farid Grace Hiro Ines Jonas Kemi Luca Maya Nils Olga Priya Quinn "
    "Rosa Sami Theo Uma Victor Wen Xavier Yara Zoe"
).split()
LAST_NAMES = (
    "Lovelace Okafor Martin Patel Rossi Nakamura Schmidt Silva Kowalski Haddad Jensen Moreau "
    "Novak Garcia Ivanova Kim"
).split()

SUMMARY_WARMUP = 5
SUMMARY_RUNS = 30
VIEW_WARMUP = 3
VIEW_RUNS = 20
CSV_RUNS = 5

TARGET_RATIO = 0.40
"""``/usage/current`` at least this share of ``/healthz``'s requests per second."""
TARGET_P99_MS = 50.0
TARGET_FIRST_PAGE_MS = 100.0
TARGET_CSV_SECONDS = 1.0

# Every wait is bounded: a stuck server or client fails the benchmark instead
# of hanging it.
SERVER_START_TIMEOUT = 60.0
SERVER_STOP_TIMEOUT = 15.0
REQUEST_TIMEOUT = 30.0
WRK_GRACE = 60.0
QUIET_BUSY = 0.25
"""Most of the CPUs that other work may keep busy before a workload starts."""
QUIET_DURING = 0.10
"""Most of the CPUs that other processes may use during a measurement before it is redone."""
ATTEMPTS = 3
STATEMENT_TIMEOUT_MS = 30_000

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
CSRF_FIELD = re.compile(r'name="csrf_token"[^>]*value="([^"]+)"')
SESSION_COOKIE = re.compile(r"(?:^|[\s,])session=([^;,\s]+)")

# wrk runs this script: ``wrk … -- PATH EXPECTED_STATUS MODE USERS_FILE``. USERS_FILE
# holds one ``cookie<TAB>address<TAB>etag`` line per user; the requests are built
# once per thread, and each thread cycles through all users from its own offset.
WRK_SCRIPT = r"""
-- Generated by bench/portal.py: GET one path with the users' session cookies in turn.
local threads = {}
local prepared = {}
local counter = 0
local expected_status
ok, changed, other, first_error = 0, 0, 0, ""

function setup(thread)
    thread:set("thread_index", #threads)
    table.insert(threads, thread)
end

function init(args)
    local path, mode = args[1], args[3]
    expected_status = tonumber(args[2])
    for line in io.lines(args[4]) do
        local cookie, address, etag = string.match(line, "^([^\t]+)\t([^\t]+)\t([^\t]+)$")
        local headers = {
            ["Cookie"] = "session=" .. cookie,
            ["X-Forwarded-For"] = address,
            ["User-Agent"] = "__USER_AGENT__",
        }
        if mode == "etag" then
            headers["If-None-Match"] = etag
        end
        table.insert(prepared, wrk.format("GET", path, headers))
    end
    counter = thread_index * math.floor(#prepared / 2)
end

function request()
    counter = counter + 1
    return prepared[counter % #prepared + 1]
end

function response(status, headers, body)
    if status == expected_status then
        ok = ok + 1
    elseif expected_status == 304 and status == 200 then
        changed = changed + 1  -- the region changed since the ETag was taken: a fresh copy
    else
        other = other + 1
        if first_error == "" then
            first_error = status .. " " .. (string.gsub(string.sub(body or "", 1, 300), "%s+", " "))
        end
    end
end

function done(summary, latency, requests)
    local total = {ok = 0, changed = 0, other = 0}
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
        "BENCH-RESULT duration_us=%.0f requests=%.0f ok=%.0f changed=%.0f other=%.0f "
        .. "connect=%.0f read=%.0f write=%.0f status=%.0f timeout=%.0f "
        .. "p50_us=%.0f p90_us=%.0f p99_us=%.0f\n",
        summary.duration, summary.requests, total.ok, total.changed, total.other,
        errors.connect, errors.read, errors.write, errors.status, errors.timeout,
        latency:percentile(50), latency:percentile(90), latency:percentile(99)))
    if first ~= "" then
        io.write("BENCH-FIRST-ERROR " .. first .. "\n")
    end
end
""".replace("__USER_AGENT__", USER_AGENT)
RESULT_LINE = re.compile(r"^BENCH-RESULT (.*)$", re.MULTILINE)
FIRST_ERROR_LINE = re.compile(r"^BENCH-FIRST-ERROR (.*)$", re.MULTILINE)


@dataclass(frozen=True)
class Settings:
    admin_url: URL
    seconds: int
    warmup: int
    wrk: str
    gunicorn_args: tuple[str, ...]
    quiet_wait: int
    live_only: bool = False
    """Measure the live region alone (``BENCH_PORTAL_PARTS=live``)."""

    @property
    def local_database(self) -> bool:
        """Whether PostgreSQL runs on this machine, so its backends' CPU time can be read."""
        return (self.admin_url.host or "localhost") in ("localhost", "127.0.0.1", "::1")


@dataclass(frozen=True)
class Fixture:
    """What the scratch database holds."""

    user_emails: list[str]
    org_id: int
    org_slug: str
    admin_email: str
    members: int
    member_usage_rows: int
    event_rows: int
    seconds: float


@dataclass(frozen=True)
class SignedIn:
    email: str
    address: str
    """The loopback address the user signed in from (and is known by)."""
    cookie: str
    etag: str


@dataclass(frozen=True)
class WrkResult:
    label: str
    path: str
    mode: str
    seconds: float
    requests: int
    ok: int
    changed: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    server_cpu_ms: float
    """gunicorn's CPU time (all processes) per request."""
    database_cpu_ms: float | None
    """CPU time of the PostgreSQL backends serving gunicorn, per request."""
    machine_busy: float
    """Share of all CPUs busy during the run (everything on the machine)."""
    other_load: float
    """Share of all CPUs busy with anything but gunicorn, its PostgreSQL backends and wrk."""
    command: str
    busy_before: float = math.nan
    """Share of all CPUs busy in the second before the workload, the server idle."""
    attempts: int = 1
    """Measurements made of this workload; the least disturbed one is kept."""

    @property
    def per_second(self) -> float:
        return self.requests / self.seconds if self.seconds else math.nan


@dataclass(frozen=True)
class Timings:
    label: str
    seconds: list[float]
    note: str = ""

    @property
    def median_ms(self) -> float:
        return statistics.median(self.seconds) * 1000

    @property
    def p95_ms(self) -> float:
        return percentile(sorted(self.seconds), 0.95) * 1000


@dataclass(frozen=True)
class CsvRun:
    total: float
    headers: float
    """Seconds until the status line and headers had arrived."""
    first_byte: float
    """Seconds until the first byte of the body had arrived."""
    rows: int
    size: int
    chunks: int
    chunked: bool
    content_length: str | None
    idle_rss: int
    """Resident bytes of the serving worker just before the request."""
    peak_rss: int | None
    """Its peak resident bytes while serving (``VmHWM`` after a reset); ``None`` if unknown."""


# -- settings ---------------------------------------------------------------


def _find_wrk() -> str:
    configured = os.environ.get("BENCH_WRK", "").strip()
    found = shutil.which(configured or "wrk")
    if found is None:
        raise BenchmarkError(
            f"wrk not found ({configured or 'not on PATH'}): this benchmark drives gunicorn "
            "with wrk; install it (Debian/Ubuntu: apt-get install -y wrk; macOS: brew install "
            "wrk) or set BENCH_WRK to its path"
        )
    return found


def _gunicorn_args() -> tuple[str, ...]:
    raw = os.environ.get("BENCH_GUNICORN_ARGS", "").strip() or DEFAULT_GUNICORN_ARGS
    arguments = tuple(shlex.split(raw))
    if any(arg.startswith(("--bind", "-b")) for arg in arguments):
        raise BenchmarkError("BENCH_GUNICORN_ARGS must not set --bind: the benchmark picks a port")
    return arguments


def _live_only() -> bool:
    parts = os.environ.get("BENCH_PORTAL_PARTS", "").strip() or "all"
    if parts not in ("all", "live"):
        raise BenchmarkError(f"BENCH_PORTAL_PARTS must be 'all' or 'live', got {parts!r}")
    return parts == "live"


def load_settings() -> Settings:
    _check_portal_environment()
    if importlib.util.find_spec("gunicorn") is None:
        raise BenchmarkError(
            "gunicorn is not installed in this Python: pip install -e . (make bench does)"
        )
    return Settings(
        admin_url=admin_database_url(),
        seconds=_int_setting("BENCH_SECONDS", 10, 1),
        warmup=_int_setting("BENCH_WARMUP_SECONDS", 2, 0),
        wrk=_find_wrk(),
        gunicorn_args=_gunicorn_args(),
        quiet_wait=_int_setting("BENCH_QUIET_WAIT", 120, 0),
        live_only=_live_only(),
    )


def check() -> None:
    """Fail fast when a tool or setting the benchmark needs is missing."""
    load_settings()


def _stop(process: subprocess.Popen[bytes]) -> None:
    stop_server(process, SERVER_STOP_TIMEOUT, _log)


def _log(message: str) -> None:
    print(f"[portal] {message}", file=sys.stderr, flush=True)


# -- the scratch database ---------------------------------------------------


def _user_address(index: int) -> str:
    """A loopback address of the user's own: 127.0.1.1, 127.0.1.2, …"""
    return f"127.0.{1 + index // 250}.{1 + index % 250}"


ADMIN_ADDRESS = "127.0.200.1"


def prepare_database(database_url: str, *, organization: bool = True) -> Fixture:
    """Migrate the scratch database; load the users and, if asked, the organization."""
    from flask_migrate import upgrade
    from werkzeug.security import generate_password_hash

    from portal import ConfigError, create_app
    from portal.accounts import create_organization, create_user
    from portal.extensions import db
    from portal.periods import add_months
    from portal.usage.organizations import organization_period
    from portal.usage.recording import UsageRequest, record_validated
    from portal.usage.subjects import resolve_effective_plan

    started = time.perf_counter()
    try:
        app = create_app({"SQLALCHEMY_DATABASE_URI": database_url})
    except ConfigError as error:
        raise BenchmarkError(f"the portal refuses its settings: {error}") from None
    now = datetime.now(UTC)
    password_hash = generate_password_hash(PASSWORD)  # one slow hash serves every account
    with app.app_context():
        upgrade(directory=str(MIGRATIONS))
        session = db.session()

        # Pro users whose period started ten days ago, each with some usage:
        # from a few suggestions to past the 75 included (overage).
        subscribed = now - timedelta(days=10)
        emails: list[str] = []
        for index in range(USERS):
            user = create_user(
                session,
                email=f"user{index:03d}@bench.example",
                password=None,
                plan_id=USER_PLAN,
                stripe_customer_id=f"cus_benchpages{index}",
                now=subscribed,
            )
            user.password_hash = password_hash
            emails.append(user.email)
            effective = resolve_effective_plan(session, user.id)
            used = 1 + (index * 37) % 100
            for part, quantity in enumerate((used // 2, used - used // 2)):
                if quantity:
                    moment = now - timedelta(days=9 - 4 * part, minutes=index)
                    request = UsageRequest(
                        f"bench-pages-{index}-{part}", "suggestion", quantity, moment, None
                    )
                    record_validated(session, effective, request, moment)

        # The organization, 13 months old, and its admin (who signs in).
        anchor = add_months(now.replace(day=7, hour=9, minute=0, second=0, microsecond=0), -13)
        org = create_organization(
            session,
            slug=ORG_SLUG,
            name="Bench Industries",
            plan_id=ORG_PLAN,
            seats=ORG_MEMBERS,
            stripe_customer_id="cus_benchorg",
            billing_anchor=anchor,
            now=anchor,
        )
        admin = create_user(
            session,
            email=f"admin@{ORG_SLUG}.example",
            password=None,
            display_name="Ada Admin",
            organization=org,
            role="admin",
            now=anchor,
        )
        admin.password_hash = password_hash
        org_id, admin_email = int(org.id), admin.email
        current = organization_period(org, now)
        periods = [current.shifted(-back) for back in range(ORG_PERIODS)]
        session.commit()

        rows = (
            _load_organization(session.connection(), org_id, anchor, now, periods, ORG_MEMBERS - 1)
            if organization
            else {"members": 1, "member_usage": 0, "events": 0}
        )
        session.commit()
        db.session.remove()
        db.engine.dispose()

    vacuum = create_engine(
        database_url, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 10}
    )
    try:
        with vacuum.connect() as conn:
            conn.execute(text("VACUUM ANALYZE"))
    finally:
        vacuum.dispose()
    return Fixture(
        user_emails=emails,
        org_id=org_id,
        org_slug=ORG_SLUG,
        admin_email=admin_email,
        members=rows["members"],
        member_usage_rows=rows["member_usage"],
        event_rows=rows["events"],
        seconds=time.perf_counter() - started,
    )


def _load_organization(
    conn: Any,
    org_id: int,
    anchor: datetime,
    now: datetime,
    periods: Sequence[Any],
    extra_members: int,
) -> dict[str, int]:
    """Members and a year of their usage, in a few set-based statements."""
    from portal.plans import get_plan

    plan = get_plan(ORG_PLAN)
    active_until = [min(p.end, now - timedelta(minutes=1)) for p in periods]
    # How much of each period has passed: the current one's usage is partial.
    elapsed = [max(0.01, min(1.0, p.elapsed_fraction(now))) for p in periods]
    conn.execute(text("SELECT setseed(0.2026)"))
    conn.execute(
        text(
            """
            INSERT INTO users (email, display_name, password_hash, created_at)
            SELECT format('member%s@bench-org.example', lpad(n::text, 5, '0')),
                   (CAST(:first AS text[]))[1 + n % :first_count] || ' '
                   || chr(65 + (n / 7) % 26) || '. '
                   || (CAST(:last AS text[]))[1 + (n / 3) % :last_count],
                   NULL, :created
            FROM generate_series(1, :count) AS n
            """
        ),
        {
            "first": FIRST_NAMES,
            "first_count": len(FIRST_NAMES),
            "last": LAST_NAMES,
            "last_count": len(LAST_NAMES),
            "created": anchor,
            "count": extra_members,
        },
    )
    conn.execute(
        text(
            """
            INSERT INTO memberships (user_id, organization_id, role, created_at)
            SELECT id, :org, CASE WHEN id % :admins_every = 0 THEN 'admin' ELSE 'member' END,
                   :created
            FROM users WHERE email LIKE 'member%@bench-org.example'
            """
        ),
        {"org": org_id, "admins_every": ORG_ADMINS_EVERY, "created": anchor},
    )
    # One row per active member and period: most use a little, some more than
    # their seat's 100 (every warning level is present).
    conn.execute(
        text(
            """
            INSERT INTO member_usage (organization_id, period_start, user_id, used, last_used_at)
            SELECT :org, start, user_id,
                   1 + floor(x * x * 150 * elapsed)::integer,
                   start + (active_until - start) * y
            FROM (
                SELECT m.user_id, p.start, p.active_until, p.elapsed,
                       random() AS x, random() AS y, random() AS active
                FROM memberships AS m
                CROSS JOIN unnest(
                    CAST(:starts AS timestamptz[]),
                    CAST(:active_until AS timestamptz[]),
                    CAST(:elapsed AS double precision[])
                ) AS p(start, active_until, elapsed)
                WHERE m.organization_id = :org
            ) AS drawn
            WHERE active < :active_share
            """
        ),
        {
            "org": org_id,
            "starts": [p.start for p in periods],
            "active_until": active_until,
            "elapsed": elapsed,
            "active_share": ORG_ACTIVE_SHARE,
        },
    )
    period_table = """unnest(
                CAST(:starts AS timestamptz[]),
                CAST(:ends AS timestamptz[]),
                CAST(:active_until AS timestamptz[])
            ) AS p(start, period_end, active_until)"""
    period_values = {
        "starts": [p.start for p in periods],
        "ends": [p.end for p in periods],
        "active_until": active_until,
    }
    # The pool's running total per period: the sum of its members' shares.
    conn.execute(
        text(
            f"""
            INSERT INTO usage_records (organization_id, period_start, period_end, used,
                included, plan_id, updated_at)
            SELECT :org, p.start, p.period_end,
                   (SELECT coalesce(sum(used), 0) FROM member_usage AS mu
                    WHERE mu.organization_id = :org AND mu.period_start = p.start),
                   :included, :plan, p.active_until
            FROM {period_table}
            """
        ),
        {
            **period_values,
            "org": org_id,
            "included": plan.included_for(ORG_MEMBERS),
            "plan": plan.id,
        },
    )
    # The events behind those totals (one per member and period), so the
    # database has a year of history; the pages above never read them. Only
    # the columns recording itself writes are named: the Stripe reporter's
    # state keeps its defaults (this benchmark does not run the reporter).
    conn.execute(
        text(
            f"""
            INSERT INTO usage_events (id, user_id, organization_id, plan_id, event_type,
                quantity, idempotency_key, occurred_at, recorded_at, period_start, period_end)
            SELECT gen_random_uuid(), mu.user_id, mu.organization_id, :plan, 'suggestion',
                   mu.used,
                   'bench-org-' || mu.user_id || '-' || to_char(mu.period_start, 'YYYYMMDD'),
                   mu.last_used_at, mu.last_used_at, mu.period_start, p.period_end
            FROM member_usage AS mu
            JOIN {period_table} ON p.start = mu.period_start
            WHERE mu.organization_id = :org
            """
        ),
        {**period_values, "org": org_id, "plan": plan.id},
    )
    counts = conn.execute(
        text(
            """
            SELECT (SELECT count(*) FROM memberships WHERE organization_id = :org),
                   (SELECT count(*) FROM member_usage WHERE organization_id = :org),
                   (SELECT count(*) FROM usage_events WHERE organization_id = :org)
            """
        ),
        {"org": org_id},
    ).one()
    if counts[0] != ORG_MEMBERS:
        raise BenchmarkError(f"the organization has {counts[0]} members, not {ORG_MEMBERS}")
    return {"members": counts[0], "member_usage": counts[1], "events": counts[2]}


# -- processes: CPU and memory ------------------------------------------------


def _cpu_seconds(pids: Sequence[int]) -> dict[int, float]:
    seconds = {}
    for pid in pids:
        fields = _stat_fields(pid)
        if fields is not None:  # utime and stime: fields 14 and 15 of the whole line
            seconds[pid] = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    return seconds


def _children(parent: int) -> list[int]:
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields is not None and int(fields[1]) == parent:
                children.append(int(entry.name))
    return children


def _machine_jiffies() -> tuple[int, int]:
    """Busy and total jiffies of all CPUs since boot (``/proc/stat``)."""
    try:
        first = Path("/proc/stat").read_text().splitlines()[0].split()
    except (OSError, IndexError):
        return 0, 0
    values = [int(value) for value in first[1:9]]
    idle = values[3] + values[4]  # idle + iowait
    return sum(values) - idle, sum(values)


def _database_backends(admin: Engine) -> list[int]:
    with admin.connect() as conn:
        rows = conn.execute(
            text("SELECT pid FROM pg_stat_activity WHERE datname = :name"),
            {"name": BENCH_DATABASE},
        ).scalars()
        return [int(pid) for pid in rows]


@dataclass(frozen=True)
class CpuSample:
    server: dict[int, float]
    database: dict[int, float]
    busy: int
    total: int


def sample_cpu(admin: Engine, server_pid: int, local_database: bool) -> CpuSample:
    database = _cpu_seconds(_database_backends(admin)) if local_database else {}
    busy, total = _machine_jiffies()
    return CpuSample(_cpu_seconds([server_pid, *_children(server_pid)]), database, busy, total)


def _spent(before: dict[int, float], after: dict[int, float]) -> float:
    return sum(seconds - before.get(pid, 0.0) for pid, seconds in after.items())


def _memory_field(pid: int, name: str) -> int | None:
    """A ``/proc/PID/status`` size such as ``VmRSS`` or ``VmHWM``, in bytes."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key == name:
                return int(value.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _reset_peak_rss(pid: int) -> bool:
    """Reset ``VmHWM`` to the current size (Linux 4.0+): ``echo 5 > /proc/PID/clear_refs``."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def other_activity(admin: Engine) -> int:
    """Busy client sessions on the server outside this benchmark's database."""
    with admin.connect() as conn:
        busy = conn.execute(
            text(
                "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' "
                "AND state <> 'idle' AND pid <> pg_backend_pid() AND datname <> :bench"
            ),
            {"bench": BENCH_DATABASE},
        ).scalar_one()
    if busy:
        _log(f"warning: {busy} other busy session(s) on the server; figures will be skewed")
    return int(busy)


# -- gunicorn ---------------------------------------------------------------


@dataclass(frozen=True)
class Server:
    pid: int
    host: str
    port: int
    command: str

    def workers(self) -> list[int]:
        return _children(self.pid)


@contextmanager
def gunicorn(settings: Settings, database_url: str, workdir: Path) -> Iterator[Server]:
    """Run the portal under gunicorn until the block ends; always stopped, in bounded time."""
    port = _free_port()
    log_path = workdir / "gunicorn.log"
    arguments = [*settings.gunicorn_args, "--bind", f"127.0.0.1:{port}"]
    command = [sys.executable, "-m", "gunicorn", *arguments]
    env = {
        **os.environ,
        "PORTAL_ENV": "production",
        "SECRET_KEY": secrets.token_urlsafe(48),
        "DATABASE_URL": database_url,
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
        _wait_until_answering(process, port, log_path)
        yield Server(process.pid, "127.0.0.1", port, "gunicorn " + " ".join(arguments))
    finally:
        _stop(process)
    if process.returncode not in (0, -signal.SIGTERM):
        _log(f"gunicorn exited with {process.returncode}:\n{_log_tail(log_path)}")


def _wait_until_answering(process: subprocess.Popen[bytes], port: int, log: Path) -> None:
    deadline = time.monotonic() + SERVER_START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise BenchmarkError(
                f"gunicorn exited with code {process.returncode} on start:\n{_log_tail(log)}"
            )
        try:
            status, _, _ = _request("127.0.0.1", port, "GET", "/healthz", timeout=2)
            if status == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise BenchmarkError(
        f"gunicorn did not answer within {SERVER_START_TIMEOUT:.0f} s:\n{_log_tail(log)}"
    )


# -- an HTTP client that keeps Secure cookies over plain HTTP ---------------


def _request(
    host: str,
    port: int,
    method: str,
    path: str,
    *,
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
    source: str | None = None,
    timeout: float = REQUEST_TIMEOUT,
) -> tuple[int, http.client.HTTPMessage, bytes]:
    """One request on a fresh connection (from ``source`` if given): status, headers, body."""
    connection = http.client.HTTPConnection(
        host, port, timeout=timeout, source_address=(source, 0) if source else None
    )
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.headers, response.read()
    finally:
        connection.close()


def _session_cookie(headers: http.client.HTTPMessage) -> str | None:
    """The ``session`` cookie a response sets, read from ``Set-Cookie`` itself.

    In production the cookie is ``Secure``, which a cookie jar would not send
    back over plain HTTP.
    """
    for value in headers.get_all("Set-Cookie") or []:
        found = SESSION_COOKIE.search(value)
        if found:
            return found.group(1)
    return None


def sign_in(server: Server, email: str, source: str) -> str:
    """Sign in through the form from ``source``; returns the session cookie."""
    base = {"User-Agent": USER_AGENT}
    status, headers, body = _request(
        server.host, server.port, "GET", "/login", headers=base, source=source
    )
    token = CSRF_FIELD.search(body.decode(errors="replace"))
    cookie = _session_cookie(headers)
    if status != 200 or token is None or cookie is None:
        raise BenchmarkError(f"GET /login answered {status} without a CSRF token and session")
    form = urllib.parse.urlencode(
        {"email": email, "password": PASSWORD, "csrf_token": token.group(1)}
    ).encode()
    status, headers, body = _request(
        server.host,
        server.port,
        "POST",
        "/login",
        headers={
            **base,
            "Cookie": f"session={cookie}",
            "Content-Type": "application/x-www-form-urlencoded",
        },
        body=form,
        source=source,
    )
    signed_in = _session_cookie(headers)
    if status != 302 or signed_in is None:
        text_out = re.sub(r"\s+", " ", body.decode(errors="replace"))[:300]
        raise BenchmarkError(f"signing in {email} answered {status}, not 302: {text_out}")
    if not any("Secure" in value for value in headers.get_all("Set-Cookie") or []):
        raise BenchmarkError("the session cookie is not Secure: is gunicorn really in production?")
    return signed_in


def _signed_get(
    server: Server, path: str, cookie: str, source: str
) -> tuple[int, http.client.HTTPMessage, bytes]:
    return _request(
        server.host,
        server.port,
        "GET",
        path,
        headers={"Cookie": f"session={cookie}", "User-Agent": USER_AGENT},
        source=source,
    )


def sign_in_users(server: Server, emails: Sequence[str]) -> list[SignedIn]:
    """Every user signs in, then fetches the live region once (checked, ETag kept)."""

    def one(item: tuple[int, str]) -> SignedIn:
        index, email = item
        address = _user_address(index)
        cookie = sign_in(server, email, address)
        status, headers, body = _signed_get(server, "/usage/current", cookie, address)
        if status != 200 or b'id="current-usage"' not in body:
            raise BenchmarkError(f"GET /usage/current for {email} answered {status}")
        if headers.get("Set-Cookie"):
            raise BenchmarkError(
                "GET /usage/current rewrote the session cookie: the benchmark would measure "
                "session writes, not the page"
            )
        etag = headers.get("ETag")
        if not etag:
            raise BenchmarkError("GET /usage/current answered without an ETag")
        return SignedIn(email, address, cookie, etag)

    with ThreadPoolExecutor(SIGN_IN_THREADS) as pool:
        return list(pool.map(one, enumerate(emails)))


# -- wrk --------------------------------------------------------------------


def _parse_result(stdout: str) -> dict[str, float]:
    found = RESULT_LINE.search(stdout)
    if found is None:
        raise BenchmarkError(f"no BENCH-RESULT line in wrk's output:\n{stdout[-2000:]}")
    return {key: float(value) for key, value in (p.split("=") for p in found.group(1).split())}


def run_wrk(
    settings: Settings,
    server: Server,
    admin: Engine,
    *,
    label: str,
    path: str,
    mode: str,
    expected_status: int,
    seconds: int,
    script: Path,
    users_file: Path,
) -> WrkResult:
    command = [
        settings.wrk,
        "-t",
        str(WRK_THREADS),
        "-c",
        str(CONNECTIONS),
        "-d",
        f"{seconds}s",
        "--timeout",
        f"{REQUEST_TIMEOUT:.0f}s",
        "--latency",
        "-s",
        str(script),
        f"http://{server.host}:{server.port}{path}",
        "--",
        path,
        str(expected_status),
        mode,
        str(users_file),
    ]
    before = sample_cpu(admin, server.pid, settings.local_database)
    wrk_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    try:
        completed = subprocess.run(
            command, capture_output=True, text=True, timeout=seconds + WRK_GRACE, check=False
        )
    except subprocess.TimeoutExpired:
        raise BenchmarkError(f"wrk did not finish within {seconds + WRK_GRACE:.0f} s") from None
    wrk_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    after = sample_cpu(admin, server.pid, settings.local_database)
    if completed.returncode != 0:
        tail = (completed.stderr or completed.stdout).strip().splitlines()[-5:]
        raise BenchmarkError(
            f"wrk failed with exit code {completed.returncode}: {' | '.join(tail)}"
        )
    result = _parse_result(completed.stdout)
    requests = int(result["requests"])
    errors = {
        name: int(result[name]) for name in ("connect", "read", "write", "timeout") if result[name]
    }
    first_error = FIRST_ERROR_LINE.search(completed.stdout)
    if result["other"] or errors or requests == 0:
        raise BenchmarkError(
            f"{label}: {requests} requests, {int(result['other'])} with an unexpected status, "
            f"socket errors {errors or 'none'}"
            + (f"; first: {first_error.group(1)}" if first_error else "")
        )
    busy = after.busy - before.busy
    total = after.total - before.total
    server_cpu = _spent(before.server, after.server)
    database = _spent(before.database, after.database) if settings.local_database else None
    wrk_cpu = sum(
        getattr(wrk_after, field) - getattr(wrk_before, field) for field in ("ru_utime", "ru_stime")
    )
    # Jiffies count every CPU: ``total`` is the wall time times the CPUs.
    others = busy / CLOCK_TICKS - server_cpu - (database or 0.0) - wrk_cpu
    return WrkResult(
        label=label,
        path=path,
        mode=mode,
        seconds=result["duration_us"] / 1e6,
        requests=requests,
        ok=int(result["ok"]),
        changed=int(result["changed"]),
        p50_ms=result["p50_us"] / 1000,
        p90_ms=result["p90_us"] / 1000,
        p99_ms=result["p99_us"] / 1000,
        server_cpu_ms=server_cpu / requests * 1000,
        database_cpu_ms=database / requests * 1000 if database is not None else None,
        machine_busy=busy / total if total else math.nan,
        other_load=max(0.0, others / (total / CLOCK_TICKS)) if total else math.nan,
        command=f"wrk -t {WRK_THREADS} -c {CONNECTIONS} -d {seconds}s --latency -s portal.lua",
    )


def measure_workload(
    settings: Settings,
    server: Server,
    admin: Engine,
    workdir: Path,
    users_file: Path,
    *,
    label: str,
    path: str,
    mode: str = "plain",
    expected_status: int = 200,
) -> WrkResult:
    script = workdir / "portal.lua"
    kwargs: dict[str, Any] = {
        "label": label,
        "path": path,
        "mode": mode,
        "expected_status": expected_status,
        "script": script,
        "users_file": users_file,
    }
    best: WrkResult | None = None
    for attempt in range(1, ATTEMPTS + 1):
        busy_before = wait_for_quiet(settings.quiet_wait)
        if settings.warmup:
            _log(f"{label}: warm-up ({settings.warmup} s)")
            run_wrk(settings, server, admin, seconds=settings.warmup, **kwargs)
        _log(f"{label}: {settings.seconds} s")
        result = replace(
            run_wrk(settings, server, admin, seconds=settings.seconds, **kwargs),
            busy_before=busy_before,
            attempts=attempt,
        )
        _log(
            f"{label}: {result.per_second:,.0f} req/s, p50 {result.p50_ms:.1f} ms, "
            f"p99 {result.p99_ms:.1f} ms; other processes used {result.other_load:.0%} "
            "of the CPUs meanwhile"
        )
        if best is None or result.other_load < best.other_load:
            best = replace(result, attempts=attempt)
        if result.other_load <= QUIET_DURING or settings.quiet_wait == 0:
            break
        if attempt < ATTEMPTS:
            _log(f"{label}: disturbed by other work; measuring again")
    assert best is not None
    return replace(best, attempts=attempt)


def _busy_share(seconds: float) -> float:
    busy_before, total_before = _machine_jiffies()
    time.sleep(seconds)
    busy_after, total_after = _machine_jiffies()
    total = total_after - total_before
    return (busy_after - busy_before) / total if total else 0.0


def wait_for_quiet(limit: int) -> float:
    """Wait (up to ``limit`` seconds) until other work leaves the CPUs mostly idle.

    On a shared machine another job's burst would otherwise land in one
    workload and not the other. Returns the busy share of the last second.
    """
    deadline = time.monotonic() + limit
    while True:
        share = _busy_share(1.0)
        if share <= QUIET_BUSY:
            return share
        if time.monotonic() >= deadline:
            _log(f"warning: the CPUs are {share:.0%} busy with other work; measuring anyway")
            return share
        _log(f"the CPUs are {share:.0%} busy with other work; waiting for them to calm down")
        time.sleep(4.0)


# -- the organization through gunicorn ----------------------------------------


def time_page_over_http(server: Server, path: str, cookie: str, source: str) -> Timings:
    """The member table's first page as a client on this machine sees it."""
    seconds = []
    for run in range(VIEW_WARMUP + VIEW_RUNS):
        started = time.perf_counter()
        status, _, body = _signed_get(server, path, cookie, source)
        elapsed = time.perf_counter() - started
        _check_first_page(status, body, path)
        if run >= VIEW_WARMUP:
            seconds.append(elapsed)
    return Timings("Whole page through gunicorn (client wall time)", seconds)


def _check_first_page(status: int, body: bytes, path: str) -> None:
    rows = body.count(b"<tr data-member=")
    if status != 200 or rows != 25:
        raise BenchmarkError(f"GET {path} answered {status} with {rows} member rows, not 25")


def fetch_csv(server: Server, path: str, cookie: str, source: str) -> CsvRun:
    """Download the export on a raw socket: when each part arrived, how many chunks."""
    workers = server.workers()
    idle = {pid: _memory_field(pid, "VmRSS") or 0 for pid in workers}
    peaks_known = all(_reset_peak_rss(pid) for pid in workers)
    request = (
        f"GET {path} HTTP/1.1\r\nHost: {server.host}:{server.port}\r\n"
        f"Cookie: session={cookie}\r\nUser-Agent: {USER_AGENT}\r\nConnection: close\r\n\r\n"
    ).encode()
    with socket.create_connection(
        (server.host, server.port), timeout=REQUEST_TIMEOUT, source_address=(source, 0)
    ) as connection:
        started = time.perf_counter()
        connection.sendall(request)
        reader = connection.makefile("rb")
        status_line = reader.readline().decode("latin-1")
        headers: dict[str, str] = {}
        while (line := reader.readline()) not in (b"\r\n", b"\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        at_headers = time.perf_counter() - started
        parts: list[bytes] = []
        first_byte = math.nan
        chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        if chunked:
            while True:
                size = int(reader.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    reader.readline()
                    break
                parts.append(reader.read(size))
                if len(parts) == 1:
                    first_byte = time.perf_counter() - started
                reader.readline()  # the CRLF after each chunk
        else:
            while block := reader.read1(65536):
                if not parts:
                    first_byte = time.perf_counter() - started
                parts.append(block)
        total = time.perf_counter() - started
    status = int(status_line.split()[1]) if len(status_line.split()) > 1 else 0
    body = b"".join(parts)
    if status != 200:
        raise BenchmarkError(f"GET {path} answered {status_line.strip()}: {body[:300]!r}")
    rows = list(csv.reader(io.StringIO(body.decode())))
    peaks = [_memory_field(pid, "VmHWM") for pid in workers] if peaks_known else []
    growth = [
        (peak - idle[pid], idle[pid], peak)
        for pid, peak in zip(workers, peaks, strict=True)
        if peak is not None
    ]
    serving = max(growth) if growth else None
    return CsvRun(
        total=total,
        headers=at_headers,
        first_byte=first_byte,
        rows=len(rows) - 1,
        size=len(body),
        chunks=len(parts) if chunked else 0,
        chunked=chunked,
        content_length=headers.get("content-length"),
        idle_rss=serving[1] if serving else max(idle.values(), default=0),
        peak_rss=serving[2] if serving else None,
    )


# -- the organization in-process ----------------------------------------------


class _SqlClock:
    """Time spent in the driver's ``execute``, and how many statements, while attached."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.seconds = 0.0
        self.statements = 0
        self._started: list[float] = []

    def _before(self, *_: Any) -> None:
        self._started.append(time.perf_counter())

    def _after(self, *_: Any) -> None:
        self.seconds += time.perf_counter() - self._started.pop()
        self.statements += 1

    def __enter__(self) -> _SqlClock:
        event.listen(self.engine, "before_cursor_execute", self._before)
        event.listen(self.engine, "after_cursor_execute", self._after)
        return self

    def __exit__(self, *_: object) -> None:
        event.remove(self.engine, "before_cursor_execute", self._before)
        event.remove(self.engine, "after_cursor_execute", self._after)


@dataclass(frozen=True)
class InProcess:
    summary: Timings
    page: Timings
    stream_peak: int
    """Peak Python allocations (``tracemalloc``) while iterating the export's rows."""
    list_peak: int
    """The same with every row held in a list and the CSV built as one string."""


def _export_memory(session: Any, org: Any, period: Any) -> tuple[int, int]:
    """Peak allocations of the export's rows streamed, against held in memory."""
    from portal.usage import iter_org_member_usage

    tracemalloc.start()
    try:
        for _ in iter_org_member_usage(session, org, period):
            pass
        stream_peak = tracemalloc.get_traced_memory()[1]
        session.rollback()
        tracemalloc.reset_peak()
        rows = list(iter_org_member_usage(session, org, period))
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        for row in rows:
            writer.writerow(
                [row.display_name, row.email, row.role, row.used, f"{row.share_percent}"]
                + [str(row.warning_level), row.last_used_at.isoformat() if row.last_used_at else ""]
            )
        whole = buffer.getvalue()
        list_peak = tracemalloc.get_traced_memory()[1]
        del rows, whole
        session.rollback()
    finally:
        tracemalloc.stop()
    return stream_peak, list_peak


def measure_in_process(database_url: str, fixture: Fixture) -> InProcess:
    """``get_org_usage_summary`` alone, then the whole page through Flask's test client."""
    from portal import create_app
    from portal.extensions import db
    from portal.models import Organization
    from portal.usage import get_org_usage_summary, organization_period

    app = create_app({"SQLALCHEMY_DATABASE_URI": database_url})
    with app.app_context():
        session = db.session()
        first = session.get(Organization, fixture.org_id)
        assert first is not None
        period = organization_period(first, datetime.now(UTC))
        sql_seconds: list[float] = []
        statements: list[int] = []

        with _SqlClock(db.engine) as clock:

            def summary() -> float:
                """One call, timed alone; the organization is loaded first, as a request does."""
                org = session.get(Organization, fixture.org_id)
                assert org is not None and org.plan_id
                before_sql, before_count = clock.seconds, clock.statements
                started = time.perf_counter()
                result = get_org_usage_summary(session, org, period, page=1)
                elapsed = time.perf_counter() - started
                sql_seconds.append(clock.seconds - before_sql)
                statements.append(clock.statements - before_count)
                session.rollback()  # end the transaction, as the request's teardown does
                if len(result.rows) != 25 or result.member_count != fixture.members:
                    raise BenchmarkError(
                        f"get_org_usage_summary gave {len(result.rows)} rows of "
                        f"{result.member_count} members"
                    )
                return elapsed

            for _ in range(SUMMARY_WARMUP):
                summary()
            sql_seconds.clear()
            seconds = [summary() for _ in range(SUMMARY_RUNS)]
        summary_timings = Timings(
            "`get_org_usage_summary(session, org, period, page=1)` in-process",
            seconds,
            f"{max(statements)} SQL statements a call, "
            f"{statistics.median(sql_seconds) * 1000:.1f} ms inside them (median)",
        )
        stream_peak, list_peak = _export_memory(session, first, period)
        db.session.remove()

    client = app.test_client()
    login = client.get("/login")
    token = CSRF_FIELD.search(login.get_data(as_text=True))
    if token is None:
        raise BenchmarkError("the test client's GET /login has no CSRF token")
    signed = client.post(
        "/login",
        data={"email": fixture.admin_email, "password": PASSWORD, "csrf_token": token.group(1)},
    )
    if signed.status_code != 302:
        raise BenchmarkError(f"signing in through the test client answered {signed.status_code}")
    path = f"/orgs/{fixture.org_slug}/usage"

    with app.app_context():
        engine = db.engine
    page_sql: list[float] = []
    page_statements: list[int] = []
    with _SqlClock(engine) as clock:

        def page() -> float:
            before_sql, before_count = clock.seconds, clock.statements
            started = time.perf_counter()
            response = client.get(path)
            body = response.get_data()
            elapsed = time.perf_counter() - started
            page_sql.append(clock.seconds - before_sql)
            page_statements.append(clock.statements - before_count)
            _check_first_page(response.status_code, body, path)
            return elapsed

        for _ in range(VIEW_WARMUP):
            page()
        page_sql.clear()
        page_seconds = [page() for _ in range(VIEW_RUNS)]
    page_timings = Timings(
        "Whole page (`GET /orgs/<slug>/usage`) through Flask's test client",
        page_seconds,
        f"{max(page_statements)} SQL statements a request, "
        f"{statistics.median(page_sql) * 1000:.1f} ms inside them (median)",
    )
    engine.dispose()
    return InProcess(summary_timings, page_timings, stream_peak, list_peak)


# -- report -----------------------------------------------------------------


def _verdict(passed: bool) -> str:
    return "PASS" if passed else "MISS"


def _mb(size: float) -> str:
    return f"{size / 1_048_576:.1f} MB"


@dataclass(frozen=True)
class OrganizationResults:
    over_http: Timings
    in_process: InProcess
    csv_runs: list[CsvRun]


@dataclass(frozen=True)
class Results:
    server_command: str
    fixture: Fixture
    baseline: WrkResult
    """``/healthz`` right before ``/usage/current``."""
    baseline_after: WrkResult
    """``/healthz`` right after it."""
    current: WrkResult
    not_modified: WrkResult

    @property
    def baseline_per_second(self) -> float:
        return (self.baseline.per_second + self.baseline_after.per_second) / 2

    organization: OrganizationResults | None
    """``None`` when only the live region was measured (``BENCH_PORTAL_PARTS=live``)."""
    conditions: dict[str, str]


def _live_table(results: Results) -> str:
    baseline = results.baseline_per_second
    rows = [
        "| Workload | Requests/s | p50 (ms) | p99 (ms) | Baseline req/s | Ratio "
        f"| Target ≥ {TARGET_RATIO:.0%} of baseline | Target p99 < {TARGET_P99_MS:.0f} ms "
        "| gunicorn CPU/req (ms) | PostgreSQL CPU/req (ms) |",
        "|---|---:|---:|---:|---:|---:|:---:|:---:|---:|---:|",
    ]

    def row(label: str, result: WrkResult, verdicts: tuple[str, str]) -> str:
        ratio = result.per_second / baseline
        database = f"{result.database_cpu_ms:.2f}" if result.database_cpu_ms is not None else "—"
        return (
            f"| {label} | {result.per_second:,.0f} | {result.p50_ms:.1f} | {result.p99_ms:.1f} "
            f"| {baseline:,.0f} | {ratio:.0%} | {verdicts[0]} | {verdicts[1]} "
            f"| {result.server_cpu_ms:.2f} | {database} |"
        )

    current = results.current
    rows.append(row("Baseline: `GET /healthz` (no database), before", results.baseline, ("—", "—")))
    rows.append(
        row(
            "**`GET /usage/current` → 200** (queries and rendering)",
            current,
            (
                _verdict(current.per_second >= TARGET_RATIO * baseline),
                _verdict(current.p99_ms < TARGET_P99_MS),
            ),
        )
    )
    rows.append(row("Baseline: `GET /healthz`, after", results.baseline_after, ("—", "—")))
    share = results.not_modified.ok / results.not_modified.requests
    rows.append(
        row(
            f"Extra: `GET /usage/current` with `If-None-Match` → 304 ({share:.0%} of answers)",
            results.not_modified,
            ("—", "—"),
        )
    )
    return "\n".join(rows)


def _page_table(results: OrganizationResults) -> str:
    rows = [
        "| Measurement | Runs | Median (ms) | p95 (ms) | Target | Result |",
        "|---|---:|---:|---:|---|:---:|",
    ]
    measured = (results.in_process.summary, results.in_process.page, results.over_http)
    for timings in measured:
        rows.append(
            f"| {timings.label} | {len(timings.seconds)} | {timings.median_ms:.1f} "
            f"| {timings.p95_ms:.1f} | < {TARGET_FIRST_PAGE_MS:.0f} ms "
            f"| {_verdict(timings.median_ms < TARGET_FIRST_PAGE_MS)} |"
        )
    return "\n".join(rows)


def _streamed(runs: Sequence[CsvRun]) -> bool:
    return all(run.chunked and run.content_length is None and run.chunks > 1 for run in runs)


def _csv_table(results: OrganizationResults) -> str:
    runs = results.csv_runs
    totals = sorted(run.total for run in runs)
    total = statistics.median(totals)
    first_byte = statistics.median(run.first_byte for run in runs)
    last = runs[-1]
    passed = total < TARGET_CSV_SECONDS and _streamed(runs)
    return "\n".join(
        [
            "| Measurement | Runs | Total, median (s) | Total, max (s) | First body byte, median "
            "(ms) | Rows | Size | Chunks | Target | Result |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---|:---:|",
            f"| `GET /orgs/<slug>/usage.csv` through gunicorn | {len(runs)} | {total:.3f} "
            f"| {totals[-1]:.3f} | {first_byte * 1000:.0f} | {last.rows:,} | {_mb(last.size)} "
            f"| {last.chunks} | < {TARGET_CSV_SECONDS:.0f} s, streamed | {_verdict(passed)} |",
        ]
    )


def _memory_note(results: OrganizationResults) -> str:
    runs = results.csv_runs
    last = runs[-1]
    growth = [run.peak_rss - run.idle_rss for run in runs if run.peak_rss is not None]
    in_process = results.in_process
    held = (
        f"In-process, iterating the export's 10,000 rows peaks at "
        f"{_mb(in_process.stream_peak)} of Python allocations (`tracemalloc`); holding them in "
        f"a list and building the CSV as one string would peak at {_mb(in_process.list_peak)}."
    )
    if not growth:
        return f"The worker's peak memory could not be read on this system. {held}"
    return (
        f"While serving it, the worker's resident memory rose at most {_mb(max(growth))} above "
        f"its idle {_mb(last.idle_rss)} (`VmHWM` after a reset through `/proc/PID/clear_refs`, "
        f"for a {_mb(last.size)} file). {held}"
    )


def render(settings: Settings, results: Results) -> str:
    conditions = "\n".join(f"- {key}: {value}" for key, value in results.conditions.items())
    cores = len(os.sched_getaffinity(0))
    organization = results.organization
    title = "the live region" + (
        " and a 10,000-member organization" if organization is not None else " alone"
    )
    sections = [_live_section(settings, results)]
    if organization is not None:
        sections.append(_organization_section(results.fixture, organization))
    body = "\n".join(sections)
    return f"""## Portal pages under gunicorn: {title}

Served by `{results.server_command}` with `PORTAL_ENV=production` (a random
64-character `SECRET_KEY`, `Secure` session cookies) on a scratch PostgreSQL database: by
default production's set-up, gunicorn's asgi worker with two workers a CPU
(`gunicorn_config.py`; `BENCH_GUNICORN_ARGS` sets others). gunicorn, PostgreSQL and the
load generator share the machine's {cores} CPUs.

{body}
### Conditions

{conditions}
"""


def _live_section(settings: Settings, results: Results) -> str:
    current, baseline = results.current, results.baseline
    return f"""### `/usage/current` with {CONNECTIONS} concurrent clients

{USERS} users on the {USER_PLAN} plan, each with usage this period, sign in through the
real form (`GET /login` for the CSRF token, `POST /login`), each from a loopback address
of its own; the session cookie is read from `Set-Cookie`. wrk (`wrk -t {WRK_THREADS}
-c {CONNECTIONS} --latency`, {settings.seconds} s per workload after {settings.warmup} s
of warm-up) cycles through the {USERS} cookies. The baseline, `GET /healthz`, touches no
database and runs on the same server with the same connections and the same request
headers (cookie, `X-Forwarded-For` with the user's address as a proxy would send it,
`User-Agent`), in the same run right before and right after; "Baseline req/s" is the
mean of the two, as a shared machine's speed drifts over a run.

{_live_table(results)}

- The 200 row is the whole path: session cookie, user, effective plan and usage
  queries, rendering the partial. wrk sends no `If-None-Match`, so every answer is a
  full 200 ({current.ok:,} of {current.requests:,}, checked in wrk's `response()`). The
  extra row sends each user's ETag, as a polling browser does
  ({results.not_modified.changed:,} answers were 200 because the region had changed).
- With {CONNECTIONS} clients always waiting, mean latency is {CONNECTIONS} ÷ throughput
  (Little's law): a p99 under {TARGET_P99_MS:.0f} ms needs well over
  {CONNECTIONS * 1000 / TARGET_P99_MS:,.0f} requests/s.
- CPU per request: CPU time of all gunicorn processes, and of the PostgreSQL backends
  serving them, over the requests. The machine was {current.machine_busy:.0%} busy during
  the 200 run ({baseline.machine_busy:.0%} during the baseline): CPU-bound.
"""


def _organization_section(fixture: Fixture, results: OrganizationResults) -> str:
    runs = results.csv_runs
    streamed = (
        f"no `Content-Length`, `Transfer-Encoding: chunked`, {runs[-1].chunks} chunks"
        if _streamed(runs)
        else f"NOT streamed (Content-Length {runs[-1].content_length}, chunked={runs[-1].chunked})"
    )
    first_byte = statistics.median(run.first_byte for run in runs) * 1000
    headers = statistics.median(run.headers for run in runs) * 1000
    total = statistics.median(run.total for run in runs) * 1000
    return f"""### An organization of {fixture.members:,} members with a year of history

A `{ORG_PLAN}` organization with {ORG_MEMBERS:,} seats, loaded with bulk SQL:
{fixture.members:,} users and memberships, {fixture.member_usage_rows:,} `member_usage`
rows over {ORG_PERIODS} billing periods (about {ORG_ACTIVE_SHARE:.0%} of the members active
in each), the pool's `usage_records` row per period and {fixture.event_rows:,}
`usage_events`; then `VACUUM ANALYZE`. The first page is the default view: current
period, sorted by usage, 25 rows (checked on every run).

{_page_table(results)}

- In-process: {results.in_process.summary.note}. Test client:
  {results.in_process.page.note}.
- Through gunicorn: one client, one request at a time, connection and HTTP on loopback
  included.

{_csv_table(results)}

- Every run received the header and one row per member (counted with the `csv` module).
  Streamed: {streamed}; headers after {headers:.0f} ms and the first body byte after
  {first_byte:.0f} ms of {total:.0f} ms (medians).
- {_memory_note(results)}

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
    database_url = _database_url(settings.admin_url, BENCH_DATABASE)
    try:
        _recreate_database(admin, BENCH_DATABASE)
        results = _run_all(settings, admin, database_url)
    finally:
        try:
            _drop_database(admin, BENCH_DATABASE)
        except OperationalError as error:
            _log(f"could not drop database {BENCH_DATABASE}: {error.orig}")
        admin.dispose()
    return render(settings, results)


def _run_all(settings: Settings, admin: Engine, database_url: str) -> Results:
    engine_url = _normalize(database_url)
    if settings.live_only:
        _log(f"loading {BENCH_DATABASE}: {USERS} users (live region only)")
    else:
        _log(f"loading {BENCH_DATABASE}: {USERS} users, an organization of {ORG_MEMBERS:,}")
    fixture = prepare_database(engine_url, organization=not settings.live_only)
    _log(f"loaded in {fixture.seconds:.1f} s")
    load_start = os.getloadavg()[0]
    busy = [other_activity(admin)]
    organization: OrganizationResults | None = None
    over_http: tuple[Timings, list[CsvRun]] | None = None
    with tempfile.TemporaryDirectory(prefix="bench-portal-") as scratch:
        workdir = Path(scratch)
        (workdir / "portal.lua").write_text(WRK_SCRIPT)
        with gunicorn(settings, database_url, workdir) as server:
            _log(f"signing in {USERS} users through POST /login")
            users = sign_in_users(server, fixture.user_emails)
            users_file = workdir / "users.tsv"
            users_file.write_text("".join(f"{u.cookie}\t{u.address}\t{u.etag}\n" for u in users))
            measure = _measurer(settings, server, admin, workdir, users_file)
            baseline = measure(label="GET /healthz", path="/healthz")
            busy.append(other_activity(admin))
            current = measure(label="GET /usage/current", path="/usage/current")
            busy.append(other_activity(admin))
            baseline_after = measure(label="GET /healthz, again", path="/healthz")
            not_modified = measure(
                label="GET /usage/current (If-None-Match)",
                path="/usage/current",
                mode="etag",
                expected_status=304,
            )
            if not settings.live_only:
                over_http = _organization_over_http(server, fixture, admin, busy)
            server_command = server.command.replace(f"127.0.0.1:{server.port}", "127.0.0.1:PORT")
    if over_http is not None:
        _log("the organization: in-process")
        busy.append(other_activity(admin))
        in_process = measure_in_process(engine_url, fixture)
        page_over_http, csv_runs = over_http
        organization = OrganizationResults(page_over_http, in_process, csv_runs)
    measured = (baseline, current, baseline_after, not_modified)
    others = ", ".join(f"{result.other_load:.0%}" for result in measured)
    redone = (
        "Measurements made of each workload (redone when other processes used more than "
        f"{QUIET_DURING:.0%} of the CPUs, up to {ATTEMPTS} times; the least disturbed is kept)"
    )
    conditions = {
        "Load average (1 min) at the start and at the end": (
            f"{load_start:.2f}, {os.getloadavg()[0]:.2f}"
        ),
        "CPUs busy just before each wrk run, the server idle (share of all CPUs)": ", ".join(
            f"{result.busy_before:.0%}" for result in measured
        ),
        "CPU used by other processes during the four wrk runs (share of all CPUs)": others,
        redone: ", ".join(str(result.attempts) for result in measured),
        f"Busy sessions of other clients on the PostgreSQL server (sampled {len(busy)} times)": (
            ", ".join(str(count) for count in busy)
        ),
        "Loading the scratch database": f"{fixture.seconds:.1f} s",
    }
    return Results(
        server_command=server_command,
        fixture=fixture,
        baseline=baseline,
        baseline_after=baseline_after,
        current=current,
        not_modified=not_modified,
        organization=organization,
        conditions=conditions,
    )


def _organization_over_http(
    server: Server, fixture: Fixture, admin: Engine, busy: list[int]
) -> tuple[Timings, list[CsvRun]]:
    """The member table's first page and the CSV export, as the organization's admin."""
    _log("the organization: first page and CSV through gunicorn")
    admin_cookie = sign_in(server, fixture.admin_email, ADMIN_ADDRESS)
    busy.append(other_activity(admin))
    over_http = time_page_over_http(
        server, f"/orgs/{fixture.org_slug}/usage", admin_cookie, ADMIN_ADDRESS
    )
    csv_path = f"/orgs/{fixture.org_slug}/usage.csv"
    fetch_csv(server, csv_path, admin_cookie, ADMIN_ADDRESS)  # warm-up
    csv_runs = [fetch_csv(server, csv_path, admin_cookie, ADMIN_ADDRESS) for _ in range(CSV_RUNS)]
    for csv_run in csv_runs:
        if csv_run.rows != fixture.members:
            raise BenchmarkError(
                f"the CSV had {csv_run.rows} rows, not one per member ({fixture.members})"
            )
    return over_http, csv_runs


def _measurer(
    settings: Settings, server: Server, admin: Engine, workdir: Path, users_file: Path
) -> Callable[..., WrkResult]:
    def measure(**kwargs: Any) -> WrkResult:
        return measure_workload(settings, server, admin, workdir, users_file, **kwargs)

    return measure


def _normalize(url: str) -> str:
    from portal.config import normalize_database_url

    return normalize_database_url(url)


if __name__ == "__main__":
    try:
        print(run())
    except BenchmarkError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(1) from None

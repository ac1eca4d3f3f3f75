"""What every benchmark of ``make bench`` shares.

Scratch databases (copies of one migrated template), seeding helpers, the
production server (``gunicorn --config gunicorn_config.py``) started and
stopped, wrk and pgbench runs and their parsing, settling PostgreSQL between
runs, CPU accounting from ``/proc``, and the report's pieces. A benchmark
script builds its workload from these and returns a ``Section``.

Settings (environment): ``BENCH_DATABASE_URL`` (an admin connection allowed
to create databases), ``BENCH_SECONDS`` (each measured load run),
``BENCH_WARMUP_SECONDS``, ``BENCH_ROUNDS`` (turns of target and baseline),
``BENCH_REPORT_EVENTS`` (the reporter's large backlog), ``BENCH_ORG_MEMBERS``
and ``BENCH_REPEATS`` (timed page fetches).
"""

from __future__ import annotations

import contextlib
import functools
import http.client
import math
import os
import re
import resource
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, make_url, text
from sqlalchemy.engine import URL
from sqlalchemy.orm import Session

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/test"
TEMPLATE = "bench_template"
PASSWORD = "bench-password"
EMAIL = "u{}@bench.example"
"""Every seeded user's address; wrk.lua spells it too."""
RATE_LIMIT = "100000000 per minute"
"""The API's per-key limit under load: never reached, so nothing is throttled."""
WRK_SCRIPT = ROOT / "bench" / "wrk.lua"
# Every wait is bounded: a stuck server, client or database fails the run instead of hanging it.
SERVER_START_TIMEOUT = 60.0
SETTLE_TIMEOUT = 120.0
REQUEST_TIMEOUT = 30.0
DISTURBED_SHARE = 0.10
"""A run in which other programs took more of the machine than this is flagged."""
TICK = os.sysconf("SC_CLK_TCK")
WRK_CONNECTIONS = 16
WRK_THREADS = 2
USERS_PER_THREAD = 100
"""wrk's threads each POST for users of their own: no two requests in flight share a total."""
API_USERS = WRK_THREADS * USERS_PER_THREAD


class BenchError(RuntimeError):
    """The benchmark could not run, or its figures cannot be trusted (a miscount, an error)."""


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- settings -----------------------------------------------------------------


def _env_int(name: str, default: int, minimum: int = 1) -> int:
    raw = os.environ.get(name, "").strip() or str(default)
    if not raw.isdigit() or int(raw) < minimum:
        raise BenchError(f"{name} must be a whole number of at least {minimum}, got {raw!r}")
    return int(raw)


@dataclass(frozen=True)
class Settings:
    admin_url: URL
    seconds: int
    warmup: int
    rounds: int
    report_events: int
    org_members: int
    repeats: int


@functools.cache
def settings() -> Settings:
    raw = os.environ.get("BENCH_DATABASE_URL", "").strip() or DEFAULT_DATABASE_URL
    from portal.config import normalize_database_url

    return Settings(
        admin_url=make_url(normalize_database_url(raw)),
        seconds=_env_int("BENCH_SECONDS", 5),
        warmup=_env_int("BENCH_WARMUP_SECONDS", 2, 0),
        rounds=_env_int("BENCH_ROUNDS", 5),
        report_events=_env_int("BENCH_REPORT_EVENTS", 1_000_000, 10_000),
        org_members=_env_int("BENCH_ORG_MEMBERS", 10_000),
        repeats=_env_int("BENCH_REPEATS", 10),
    )


# -- databases ----------------------------------------------------------------


@functools.cache
def admin() -> Engine:
    """The admin connection, in autocommit: CREATE DATABASE and CHECKPOINT need it."""
    return create_engine(settings().admin_url, isolation_level="AUTOCOMMIT", pool_size=1)


def database_url(name: str) -> str:
    return settings().admin_url.set(database=name).render_as_string(hide_password=False)


_scratch: set[str] = set()
"""The scratch databases that exist now: settling waits for autovacuum on these."""


def _drop(name: str) -> None:
    with admin().connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@functools.cache
def _template() -> str:
    """The migrated database every scratch database copies: migrations run once per run."""
    from flask_migrate import upgrade

    _drop(TEMPLATE)
    with admin().connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{TEMPLATE}"'))
    with portal_session(database_url(TEMPLATE)):
        upgrade(directory=str(ROOT / "migrations"))
    return TEMPLATE


@contextlib.contextmanager
def scratch_database(name: str, *, migrated: bool = True) -> Iterator[str]:
    """A new database ``bench_<name>`` (the portal's schema, or empty) for the block; its URL."""
    name = f"bench_{name}"
    _drop(name)
    template = f' TEMPLATE "{_template()}"' if migrated else ""
    with admin().connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"{template}'))
    _scratch.add(name)
    try:
        yield database_url(name)
    finally:
        _scratch.discard(name)
        if (used := _engines.pop(database_url(name), None)) is not None:
            used.dispose()
        _drop(name)


def drop_template() -> None:
    if _template.cache_info().currsize:
        _drop(TEMPLATE)
        _template.cache_clear()


_engines: dict[str, Engine] = {}


def engine(url: str) -> Engine:
    """One engine per scratch database, disposed of when the database is dropped."""
    if url not in _engines:
        _engines[url] = create_engine(url, pool_size=2)
    return _engines[url]


def query(url: str, sql: str, **params: Any) -> Any:
    """The first row of ``sql`` on the database at ``url``."""
    with engine(url).connect() as conn:
        return conn.execute(text(sql), params).one()


def execute(url: str, *statements: str, **params: Any) -> None:
    """``statements`` in one transaction, each with the parameters it names."""
    with engine(url).begin() as conn:
        for sql in statements:
            conn.execute(text(sql), params)  # each takes the parameters it names


def vacuum(url: str) -> None:
    """VACUUM ANALYZE after a bulk load, so the planner and the visibility map know it."""
    with engine(url).connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE"))


@contextlib.contextmanager
def portal_session(url: str) -> Iterator[Session]:
    """A session of the portal's own app on ``url``, inside its app context."""
    from portal import create_app
    from portal.extensions import db

    app = create_app({"SQLALCHEMY_DATABASE_URI": url})
    with app.app_context():
        try:
            yield db.session()
        finally:
            db.session.remove()
            db.engine.dispose()


def add_users(
    session: Session, emails: Sequence[str], anchor: datetime, *, password: str | None = None
) -> list[int]:
    """Users on the pro plan (no cap, a Stripe customer each), their period from ``anchor``."""
    from portal.accounts import create_user

    ids = []
    for email in emails:
        customer = "cus_" + re.sub(r"[^A-Za-z0-9]", "", email)
        user = create_user(
            session,
            email=email,
            password=password,
            now=anchor,
            plan_id="pro",
            stripe_customer_id=customer,
        )
        ids.append(user.id)
    session.commit()
    return ids


def api_key(session: Session, now: datetime) -> str:
    from portal.apikeys import create_api_key

    _, key = create_api_key(session, "bench", now)
    session.commit()
    return key


@contextlib.contextmanager
def api_database(name: str) -> Iterator[tuple[str, list[str]]]:
    """A scratch database with the pro users ``wrk.lua`` posts for and an API key.

    Yields its URL and the wrk header that authorizes. The users' period
    started yesterday, so every event of the run falls in it.
    """
    from portal import clock

    now = clock.now()
    users = [EMAIL.format(n) for n in range(API_USERS)]
    with scratch_database(name) as url:
        with portal_session(url) as session:
            add_users(session, users, now - timedelta(days=1))
            key = api_key(session, now)
        yield url, [f"Authorization: Bearer {key}"]


def bulk_users(conn: Connection, prefix: str, count: int, created: datetime) -> list[int]:
    """``count`` users ``<prefix><n>@bench.example`` in one statement; their ids in order."""
    rows = conn.execute(
        text(
            "INSERT INTO users (email, display_name, created_at) "
            "SELECT format('%s%s@bench.example', CAST(:prefix AS text), g), "
            "format('Bench %s', g), :created "
            "FROM generate_series(1, :count) AS g ORDER BY g RETURNING id"
        ),
        {"prefix": prefix, "count": count, "created": created},
    )
    return sorted(row.id for row in rows)


# -- settling -----------------------------------------------------------------


def settle() -> None:
    """Let the last run's after-effects pass before the next: CHECKPOINT, then no autovacuum.

    The dirty pages a run leaves are written by the next checkpoint and its
    dead rows by autovacuum; either, landing in the next measured run, cut its
    figure (to about 1,000 requests/s after a pgbench run, on a 2-core machine).
    """
    names = sorted(_scratch)
    deadline = time.monotonic() + SETTLE_TIMEOUT
    with admin().connect() as conn:
        conn.execute(text("CHECKPOINT"))
        while True:
            vacuuming = conn.execute(
                text(
                    "SELECT (SELECT count(*) FROM pg_stat_activity "
                    "WHERE backend_type = 'autovacuum worker' AND datname = ANY(:names)) + "
                    "(SELECT count(*) FROM pg_stat_progress_vacuum WHERE datname = ANY(:names))"
                ),
                {"names": names},
            ).scalar_one()
            if not vacuuming:
                return
            if time.monotonic() > deadline:
                log(f"warning: autovacuum still busy after {SETTLE_TIMEOUT:.0f} s; measuring")
                return
            time.sleep(0.5)


# -- CPU accounting -------------------------------------------------------------


@dataclass(frozen=True)
class _Process:
    ppid: int
    own: float
    """CPU seconds of the process itself."""
    reaped: float
    """CPU seconds of its children it has waited for."""


def _processes() -> dict[int, _Process]:
    found = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            raw = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        fields = raw[raw.rfind(")") + 2 :].split()  # after the command name: state, ppid, …
        ticks = [int(value) for value in fields[11:15]]  # utime stime cutime cstime
        found[int(entry.name)] = _Process(
            int(fields[1]), (ticks[0] + ticks[1]) / TICK, (ticks[2] + ticks[3]) / TICK
        )
    return found


def _tree(processes: dict[int, _Process], root: int) -> set[int]:
    members, frontier = {root}, [root]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, p in processes.items() if p.ppid == parent]
        members.update(children)
        frontier.extend(children)
    return members & processes.keys()


@functools.cache
def postmaster() -> int | None:
    """The PostgreSQL server's main process when it runs on this machine, else ``None``."""
    with admin().connect() as conn:
        backend = int(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())
    process = _processes().get(backend)
    return process.ppid if process is not None else None


def _machine() -> tuple[int, int, int]:
    """Busy, interrupt and total jiffies of all CPUs since boot (``/proc/stat``)."""
    first = Path("/proc/stat").read_text().splitlines()[0].split()
    user, nice, system, idle, iowait, irq, softirq, steal = (int(v) for v in first[1:9])
    busy = user + nice + system + irq + softirq + steal
    return busy, irq + softirq, busy + idle + iowait


@dataclass(frozen=True)
class _Sample:
    machine: tuple[int, int, int]
    server: float
    postgres: float
    ours: float


def _sample(server_pid: int | None) -> _Sample:
    processes = _processes()
    server = _tree(processes, server_pid) if server_pid else set()
    pg = postmaster()
    postgres = 0.0
    if pg in processes:
        postgres = processes[pg].reaped + sum(processes[pid].own for pid in _tree(processes, pg))
    # This process, the children it has waited for, and its live descendants but the server.
    usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    ours = sum(u.ru_utime + u.ru_stime for u in usage)
    ours += sum(
        processes[pid].own + processes[pid].reaped
        for pid in _tree(processes, os.getpid()) - server - {os.getpid()}
    )
    return _Sample(
        _machine(),
        sum(processes[pid].own + processes[pid].reaped for pid in server),
        postgres,
        ours,
    )


@dataclass(frozen=True)
class CpuUse:
    """CPU seconds spent during one run, and by whom."""

    server: float
    """The gunicorn master and workers."""
    postgres: float
    """Every PostgreSQL process: backends, and background work such as checkpoints."""
    client: float
    """This benchmark's own processes: wrk, pgbench, worker processes, this one."""
    other: float
    """Everything else, less interrupts: other programs sharing the machine."""
    capacity: float
    """CPU seconds the machine had: wall time times CPUs."""

    @property
    def other_share(self) -> float:
        return self.other / self.capacity if self.capacity else 0.0

    def per(self, count: int) -> str:
        """Milliseconds per request (or call): server / PostgreSQL / client; "—" for no server."""
        parts = [self.server, self.postgres, self.client]
        return " / ".join("—" if math.isnan(t) else f"{t / count * 1000:.2f}" for t in parts)


disturbed: list[str] = []
"""Runs during which other programs took more than ``DISTURBED_SHARE`` of the machine."""


class CpuMeter:
    """Started before a run, stopped after it: where the CPU went meanwhile."""

    def __init__(self, server_pid: int | None = None) -> None:
        self.server_pid = server_pid
        self.start = _sample(server_pid)

    def stop(self, label: str) -> CpuUse:
        end = _sample(self.server_pid)
        busy, interrupts, total = (
            b - a for a, b in zip(self.start.machine, end.machine, strict=True)
        )
        server = end.server - self.start.server if self.server_pid else math.nan
        postgres = end.postgres - self.start.postgres
        client = end.ours - self.start.ours
        other = (busy - interrupts) / TICK - postgres - client
        other = max(0.0, other - (0.0 if math.isnan(server) else server))
        use = CpuUse(server, postgres, client, other, total / TICK)
        if use.other_share > DISTURBED_SHARE and label != "warm-up":
            disturbed.append(f"{label}: {use.other_share:.0%}")
            log(f"warning: {label}: other programs took {use.other_share:.0%} of the CPUs")
        return use


# -- the production server ------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def request(
    port: int, method: str, path: str, headers: dict[str, str] | None = None, body: bytes = b""
) -> tuple[int, http.client.HTTPMessage, bytes]:
    """One request on a connection of its own: status, headers and body."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=REQUEST_TIMEOUT)
    try:
        connection.request(method, path, body=body or None, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.headers, response.read()
    finally:
        connection.close()


@dataclass(frozen=True)
class Timed:
    status: int
    headers: http.client.HTTPMessage
    body: bytes
    first_byte: float
    """Seconds until the answer's first byte of body arrived."""
    total: float
    """Seconds until the last byte arrived."""


def timed_get(port: int, path: str, cookie: str) -> Timed:
    """``GET path`` with a session cookie, timed to the first and to the last byte."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=REQUEST_TIMEOUT)
    try:
        started = time.perf_counter()
        connection.request("GET", path, headers={"Cookie": f"session={cookie}"})
        response = connection.getresponse()
        first = response.read(1)
        first_byte = time.perf_counter() - started
        body = first + response.read()
        total = time.perf_counter() - started
        return Timed(response.status, response.headers, body, first_byte, total)
    finally:
        connection.close()


@dataclass(frozen=True)
class Server:
    process: subprocess.Popen[bytes]
    port: int
    app: str

    @property
    def workers(self) -> int:
        return len(_tree(_processes(), self.process.pid)) - 1


def server_environment(url: str) -> dict[str, str]:
    """Production's settings, on the scratch database ``url``."""
    return {
        **os.environ,
        "PORTAL_ENV": "production",
        "SECRET_KEY": secrets.token_urlsafe(32),
        "DATABASE_URL": url,
        "API_RATE_LIMIT": RATE_LIMIT,
        "RATE_LIMIT_STORAGE_URL": "memory://",
    }


@contextlib.contextmanager
def gunicorn(app: str, url: str) -> Iterator[Server]:
    """``gunicorn --config gunicorn_config.py --bind … APP``, as production runs it."""
    port = free_port()
    command = [sys.executable, "-m", "gunicorn", "--config", "gunicorn_config.py"]
    command += ["--bind", f"127.0.0.1:{port}", app]
    log_path = ROOT / "instance" / f"bench-gunicorn-{port}.log"
    log_path.parent.mkdir(exist_ok=True)
    with log_path.open("wb") as output:
        process = subprocess.Popen(
            command,
            cwd=ROOT,
            env=server_environment(url),
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a process group of its own: the workers go with it
        )
    try:
        _wait_until_answering(process, port, log_path)
        yield Server(process, port, app)
    finally:
        _stop(process)
        log_path.unlink(missing_ok=True)


def _wait_until_answering(process: subprocess.Popen[bytes], port: int, log_path: Path) -> None:
    deadline = time.monotonic() + SERVER_START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise BenchError(f"gunicorn exited on start:\n{log_path.read_text()[-2000:]}")
        with contextlib.suppress(OSError):
            request(port, "GET", "/healthz")  # any answer, even a 404, is a worker answering
            return
        time.sleep(0.2)
    raise BenchError(f"gunicorn did not answer in {SERVER_START_TIMEOUT:.0f} s")


def _stop(process: subprocess.Popen[Any]) -> None:
    """SIGTERM (a graceful stop), then SIGKILL to the whole process group if need be."""
    if process.poll() is None:
        process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=15)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=15)


def wait_until_idle(server: Server, url: str) -> None:
    """Until the requests still running when the load stopped have finished.

    wrk stops with requests in flight, which the server still finishes: a
    worker computes, then writes. Idle is, three checks in a row, no query
    running in the database and no CPU time spent by the server.
    """
    name = make_url(url).database
    deadline = time.monotonic() + SETTLE_TIMEOUT
    quiet, last = 0, -1.0
    with admin().connect() as conn:
        while quiet < 3:
            busy = conn.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = :name "
                    "AND state <> 'idle' AND pid <> pg_backend_pid()"
                ),
                {"name": name},
            ).scalar_one()
            processes = _processes()
            spent = sum(processes[pid].own for pid in _tree(processes, server.process.pid))
            quiet = quiet + 1 if busy == 0 and spent == last else 0
            last = spent
            if time.monotonic() > deadline:
                raise BenchError(f"{name} was still busy {SETTLE_TIMEOUT:.0f} s after the load")
            time.sleep(0.1)


_SESSION_COOKIE = re.compile(r"(?:^|;\s*)session=([^;]+)")
_CSRF_FIELD = re.compile(r'name="csrf_token"[^>]*value="([^"]+)"')


def _session_cookie(headers: http.client.HTTPMessage) -> str | None:
    """The ``session`` cookie a response sets: read from the header, as production marks it
    ``Secure`` and a cookie jar would not send it back over plain HTTP."""
    for value in headers.get_all("Set-Cookie") or []:
        if found := _SESSION_COOKIE.search(value):
            return found.group(1)
    return None


def sign_in(server: Server, email: str) -> str:
    """Sign in through the real ``/login`` form, CSRF token and all; the session cookie."""
    import urllib.parse

    status, headers, body = request(server.port, "GET", "/login")
    token = _CSRF_FIELD.search(body.decode())
    cookie = _session_cookie(headers)
    if status != 200 or token is None or cookie is None:
        raise BenchError(f"GET /login answered {status} without a CSRF token and a session")
    form = {"email": email, "password": PASSWORD, "csrf_token": token.group(1)}
    status, headers, body = request(
        server.port,
        "POST",
        "/login",
        {"Cookie": f"session={cookie}", "Content-Type": "application/x-www-form-urlencoded"},
        urllib.parse.urlencode(form).encode(),
    )
    signed_in = _session_cookie(headers)
    if status != 302 or signed_in is None:
        raise BenchError(f"signing in {email} answered {status}, not a redirect")
    return signed_in


# -- load generators --------------------------------------------------------------


@dataclass(frozen=True)
class LoadRun:
    """One measured run of wrk or pgbench."""

    label: str
    seconds: float
    count: int
    """Requests (wrk) or transactions (pgbench)."""
    created: int
    """Usage events the answers said were created (wrk POSTs)."""
    p50_ms: float
    p99_ms: float
    """Latency percentiles from wrk's distribution; NaN for pgbench, which gives none."""
    cpu: CpuUse

    @property
    def per_second(self) -> float:
        return self.count / self.seconds


_RESULT = re.compile(r"^BENCH (.*)$", re.MULTILINE)
_FIRST_ERROR = re.compile(r"^BENCH-FIRST-ERROR (.*)$", re.MULTILINE)


def wrk(
    server: Server,
    path: str,
    label: str,
    *,
    expect: int = 200,
    events: int = 0,
    headers: Sequence[str] = (),
    connections: int = WRK_CONNECTIONS,
    seconds: int | None = None,
) -> LoadRun:
    """wrk against ``server`` after settling; any other status or a socket error is an error.

    ``events`` > 0 POSTs that many usage events a request (``wrk.lua``) to the
    users ``EMAIL`` 0 to ``WRK_THREADS * USERS_PER_THREAD - 1``.
    """
    seconds = seconds or settings().seconds
    command = ["wrk", "-t", str(WRK_THREADS), "-c", str(connections), "-d", f"{seconds}s"]
    command += ["--timeout", f"{REQUEST_TIMEOUT:.0f}s", "-s", str(WRK_SCRIPT)]
    for header in headers:
        command += ["-H", header]
    command += [f"http://127.0.0.1:{server.port}{path}", "--", str(expect), str(events)]
    command += [secrets.token_hex(4), str(USERS_PER_THREAD)]
    settle()
    meter = CpuMeter(server.process.pid)
    completed = subprocess.run(
        command, capture_output=True, text=True, timeout=seconds + 60, check=False
    )
    cpu = meter.stop(label)
    found = _RESULT.search(completed.stdout)
    if completed.returncode != 0 or found is None:
        raise BenchError(f"{label}: wrk failed: {(completed.stderr or completed.stdout)[-500:]}")
    result = {key: int(value) for key, value in (part.split("=") for part in found[1].split())}
    if result["other"] or result["socket_errors"] or not result["ok"]:
        first = _FIRST_ERROR.search(completed.stdout)
        raise BenchError(
            f"{label}: {result['ok']} answers {expect}, {result['other']} others"
            f"{f' (first: {first[1]})' if first else ''}, {result['socket_errors']} socket errors"
        )
    run = LoadRun(
        label,
        result["duration_us"] / 1e6,
        result["requests"],
        result["created"],
        result["p50_us"] / 1000,
        result["p99_us"] / 1000,
        cpu,
    )
    log(f"{label}: {run.per_second:,.0f} requests/s, p99 {run.p99_ms:.1f} ms")
    return run


def warm_up(server: Server, path: str, **options: Any) -> None:
    """An unmeasured run: every worker has loaded the app and opened its connections."""
    if settings().warmup:
        wrk(server, path, "warm-up", seconds=settings().warmup, **options)


RECORDED = (
    "SELECT (SELECT count(*) FROM usage_events), (SELECT coalesce(sum(used), 0) FROM usage_records)"
)
"""Rows of ``usage_events`` and units of ``sum(usage_records.used)``: equal, if nothing is lost."""


def post_events(
    server: Server,
    url: str,
    path: str,
    label: str,
    *,
    events: int,
    headers: Sequence[str] = (),
    connections: int = WRK_CONNECTIONS,
    counts: str = RECORDED,
) -> LoadRun:
    """wrk POSTing usage events; then the database must hold exactly what the answers said.

    ``counts`` is SQL for (rows, units counted). One row and one unit an
    event, none invented; as wrk stops with requests in flight that the server
    still finishes, rows may exceed the answers by that many requests' events.
    """
    wait_until_idle(server, url)
    before = query(url, counts)
    expect = 201 if events == 1 else 200
    run = wrk(
        server, path, label, expect=expect, events=events, headers=headers, connections=connections
    )
    wait_until_idle(server, url)
    rows, used = (after - first for first, after in zip(before, query(url, counts), strict=True))
    in_flight = connections * events
    problems = []
    if used != rows:
        problems.append(f"{rows} new rows but {used} units counted")
    if not run.created <= rows <= run.created + in_flight:
        problems.append(f"{rows} new rows for {run.created} events answered created")
    if problems:
        raise BenchError(f"{label}: " + "; ".join(problems))
    return run


def _pgbench_command(url: str, *arguments: str) -> tuple[list[str], dict[str, str]]:
    parsed = make_url(url)
    command = ["pgbench", "-h", parsed.host or "127.0.0.1", "-p", str(parsed.port or 5432)]
    command += ["-U", parsed.username or "postgres", *arguments, parsed.database or ""]
    return command, {**os.environ, "PGPASSWORD": parsed.password or ""}


def pgbench_init(url: str, scale: int) -> None:
    command, env = _pgbench_command(url, "-i", "-q", "-s", str(scale))
    completed = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if completed.returncode != 0:
        raise BenchError(f"pgbench -i failed: {completed.stderr[-500:]}")


_TPS = re.compile(r"^tps = ([0-9.]+) \(without initial connection time\)", re.MULTILINE)
_TRANSACTIONS = re.compile(r"^number of transactions actually processed: (\d+)", re.MULTILINE)


def pgbench(url: str, clients: int, label: str) -> LoadRun:
    """``pgbench -N`` (simple update: UPDATE, SELECT, INSERT a transaction), after settling."""
    seconds = settings().seconds
    arguments = ("-N", "-c", str(clients), "-j", "2", "-T", str(seconds))
    command, env = _pgbench_command(url, *arguments)
    settle()
    meter = CpuMeter()
    completed = subprocess.run(
        command, capture_output=True, text=True, env=env, timeout=seconds + 60, check=False
    )
    cpu = meter.stop(label)
    tps, transactions = _TPS.search(completed.stdout), _TRANSACTIONS.search(completed.stdout)
    if completed.returncode != 0 or tps is None or transactions is None:
        raise BenchError(f"pgbench failed: {(completed.stderr or completed.stdout)[-500:]}")
    count = int(transactions[1])
    run = LoadRun(label, count / float(tps[1]), count, 0, math.nan, math.nan, cpu)
    log(f"{label}: {run.per_second:,.0f} transactions/s")
    return run


# -- memory ---------------------------------------------------------------------

_MAX_RSS = re.compile(r"Maximum resident set size \(kbytes\): (\d+)")


def run_measuring_memory(
    command: Sequence[str], env: dict[str, str], timeout: float
) -> tuple[str, int]:
    """``command`` under ``/usr/bin/time -v``: its standard output and its peak RSS in kB."""
    completed = subprocess.run(
        ["/usr/bin/time", "-v", *command],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    peak = _MAX_RSS.search(completed.stderr)
    if completed.returncode != 0 or peak is None:
        raise BenchError(f"{command[-3:]} failed: {completed.stderr[-1500:]}")
    return completed.stdout, int(peak[1])


# -- the report -------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    """One row of the results table."""

    target: str
    goal: str
    measured: str
    baseline: str
    passed: bool


@dataclass(frozen=True)
class Section:
    """What one benchmark returns: its rows of the results table, and its section."""

    title: str
    verdicts: list[Verdict]
    body: str


def table(header: Sequence[str], rows: Sequence[Sequence[object]], *, left: int = 1) -> str:
    """A Markdown table: the first ``left`` columns left-aligned, the figures right-aligned."""

    def cell(value: object) -> str:
        if isinstance(value, float):
            return f"{value:,.0f}" if abs(value) >= 100 else f"{value:,.1f}"
        return f"{value:,}" if isinstance(value, int) else str(value)

    align = "|" + "---|" * left + "---:|" * (len(header) - left)
    lines = ["| " + " | ".join(header) + " |", align]
    lines += ["| " + " | ".join(cell(value) for value in row) + " |" for row in rows]
    return "\n".join(lines)


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def pct(value: float) -> str:
    return f"{value:.0%}"


def busy_note(cpus: Sequence[CpuUse]) -> str:
    """How much of the machine other programs took during these runs."""
    worst = max(cpu.other_share for cpu in cpus)
    busy = " (a busy machine: rerun)" if worst > DISTURBED_SHARE else ""
    return f"Other programs took at most {worst:.0%} of the CPUs during these runs{busy}."


def cpu_note(runs: Sequence[LoadRun]) -> str:
    """The CPU line every load section ends with."""
    return "CPU ms per request (or call): server / PostgreSQL / client, from `/proc`. " + busy_note(
        [run.cpu for run in runs]
    )


def verdict_text(passed: bool) -> str:
    return "PASS" if passed else "**FAIL**"

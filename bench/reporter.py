"""``flask report-usage`` against the Stripe stand-in: throughput and memory.

Accounts: 1,000 Stripe customers, 800 users on the pro plan and 200
organizations on the business plan (five members each), all in their current
billing period. The backlog is generated with one ``INSERT … SELECT
generate_series`` that writes each event and its row in the reporter's backlog
queue, as recording does (every customer gets the same number of events,
quantities 1-3, occurred in the last two days) and the reporter then runs exactly as
cron runs it, in a process of its own (``python -m flask --app wsgi
report-usage --json``, default batch size and senders), against the stand-in of the test
suite (``tests/stripe_standin.py``) over HTTP through the real ``stripe``
library.

Three runs, on the same accounts: one reporter on 10,000 events, one on
1,000,000 events, and two reporters started together on a fresh 1,000,000
(how PostgreSQL deployments go faster: runs share a backlog safely). For
each: events reported per second (by the reporters' own clocks, process
start-up excluded; the wall time is reported too), the meter events sent, and
the peak resident memory of a reporter process (``ru_maxrss`` from
``wait4``). The targets: at least 50,000 events/s on the large backlog, and
the large backlog's peak memory within 1.2x of the small one's.

Afterwards every event must be reported and the stand-in must hold, per
customer, exactly the sum of that customer's quantities: a benchmark that
miscounts is an error, not a result.

Settings: ``BENCH_DATABASE_URL`` (admin connection allowed to create
databases; default ``postgresql://postgres@127.0.0.1:5432/test``),
``BENCH_REPORTER_EVENTS`` (the large backlog, default 1,000,000).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import Engine, create_engine, text
from sqlalchemy.exc import OperationalError

from bench.record_usage import (
    BenchmarkError,
    _admin_engine,
    _database_url,
    _drop_database,
    _recreate_database,
    admin_database_url,
)
from portal.config import normalize_database_url

PROJECT_ROOT = Path(__file__).resolve().parent.parent
MIGRATIONS = PROJECT_ROOT / "migrations"
BENCH_DATABASE = "portal_bench_reporter"
API_KEY = "sk_test_benchmark0000000000000000"

INDIVIDUALS = 800
ORGANIZATIONS = 200
MEMBERS_PER_ORGANIZATION = 5
CUSTOMERS = INDIVIDUALS + ORGANIZATIONS
SMALL_BACKLOG = 10_000
DEFAULT_LARGE_BACKLOG = 1_000_000
TARGET_EVENTS_PER_SECOND = 50_000
TARGET_MEMORY_RATIO = 1.2
REPORTER_TIMEOUT = 1800.0
"""Seconds a reporter run may take before the benchmark gives up on it."""


@dataclass(frozen=True)
class RunResult:
    backlog: int
    processes: int
    events_reported: int
    meter_events: int
    duration_s: float
    """The reporters' own measure, from the start to the last summary."""
    wall_s: float
    """The processes, start-up and interpreter exit included."""
    peak_rss_mb: float
    """The largest of the processes' peaks."""

    @property
    def events_per_second(self) -> float:
        return self.events_reported / self.duration_s if self.duration_s else 0.0


def _large_backlog() -> int:
    raw = os.environ.get("BENCH_REPORTER_EVENTS", "").strip()
    if not raw:
        return DEFAULT_LARGE_BACKLOG
    if not raw.isdigit() or int(raw) < SMALL_BACKLOG:
        raise BenchmarkError(f"BENCH_REPORTER_EVENTS must be a number >= {SMALL_BACKLOG}")
    return int(raw)


def prepare_accounts(database_url: str, now: datetime) -> None:
    """Migrate the scratch database and create the 1,000 customers' accounts in bulk."""
    from flask_migrate import upgrade

    from portal import create_app

    app = create_app({"SQLALCHEMY_DATABASE_URI": database_url})
    with app.app_context():
        upgrade(directory=str(MIGRATIONS))
        from portal.extensions import db

        db.engine.dispose()
    anchor = now - timedelta(days=10)
    members = ORGANIZATIONS * MEMBERS_PER_ORGANIZATION
    engine = create_engine(normalize_database_url(database_url))
    try:
        with engine.begin() as conn:
            params = {"anchor": anchor, "individuals": INDIVIDUALS, "members": members}
            conn.execute(
                text(
                    "INSERT INTO users (id, email, display_name, created_at) "
                    "SELECT g, 'bench' || g || '@example.com', 'Bench ' || g, :anchor "
                    "FROM generate_series(1, :individuals + :members) AS g"
                ),
                params,
            )
            conn.execute(
                text(
                    "INSERT INTO user_subscriptions (user_id, plan_id, status, "
                    "stripe_customer_id, billing_anchor, created_at) "
                    "SELECT g, 'pro', 'active', 'cus_bench_user' || g, :anchor, :anchor "
                    "FROM generate_series(1, :individuals) AS g"
                ),
                params,
            )
            conn.execute(
                text(
                    "INSERT INTO organizations (id, name, slug, plan_id, seats, "
                    "subscription_status, stripe_customer_id, billing_anchor, created_at) "
                    "SELECT g, 'Org ' || g, 'org-' || g, 'business', :seats, 'active', "
                    "'cus_bench_org' || g, :anchor, :anchor "
                    "FROM generate_series(1, :organizations) AS g"
                ),
                {**params, "seats": MEMBERS_PER_ORGANIZATION, "organizations": ORGANIZATIONS},
            )
            conn.execute(
                text(
                    "INSERT INTO memberships (user_id, organization_id, role, created_at) "
                    "SELECT :individuals + g, (g - 1) / :per_org + 1, 'member', :anchor "
                    "FROM generate_series(1, :members) AS g"
                ),
                {**params, "per_org": MEMBERS_PER_ORGANIZATION},
            )
    finally:
        engine.dispose()


def generate_backlog(engine: Engine, events: int, now: datetime) -> None:
    """Empty the reporting state and write ``events`` pending events, spread evenly.

    Event g goes to customer g mod 1,000: customers below 800 are
    individual users, the rest organizations (their members take turns).
    """
    anchor = now - timedelta(days=10)
    from portal.periods import add_months

    period_end = add_months(anchor, 1)
    with engine.begin() as conn:
        conn.execute(
            text(
                "TRUNCATE usage_events, usage_report_backlog, usage_report_batches, "
                "usage_report_skips, usage_report_runs"
            )
        )
        # Each event goes into the reporter's backlog with it, as recording does.
        conn.execute(
            text(
                """
                WITH recorded AS (
                    INSERT INTO usage_events (id, user_id, organization_id, plan_id, event_type,
                        quantity, idempotency_key, occurred_at, recorded_at, period_start,
                        period_end)
                    SELECT gen_random_uuid(),
                        CASE WHEN c < :individuals THEN c + 1
                            ELSE :individuals + (c - :individuals) * :per_org
                                + (g / :customers) % :per_org + 1 END,
                        CASE WHEN c < :individuals THEN NULL ELSE c - :individuals + 1 END,
                        CASE WHEN c < :individuals THEN 'pro' ELSE 'business' END,
                        'suggestion', 1 + g % 3, 'bench-' || g,
                        :now - (g % 172800) * interval '1 second',
                        :now - (g % 172800) * interval '1 second',
                        :period_start, :period_end
                    FROM (SELECT g, g % :customers AS c FROM generate_series(0, :events - 1) AS g) s
                    RETURNING id, organization_id, user_id, period_start
                )
                INSERT INTO usage_report_backlog (event_id, organization_id, user_id, period_start)
                SELECT id, organization_id, user_id, period_start FROM recorded
                """
            ),
            {
                "individuals": INDIVIDUALS,
                "per_org": MEMBERS_PER_ORGANIZATION,
                "customers": CUSTOMERS,
                "events": events,
                "now": now,
                "period_start": anchor,
                "period_end": period_end,
            },
        )
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE usage_events, usage_report_backlog"))


def run_reporters(database_url: str, standin_url: str, backlog: int, processes: int) -> RunResult:
    """``flask report-usage --json`` in ``processes`` children at once; summaries and memory."""
    env = {
        **os.environ,
        "PORTAL_ENV": "development",
        "DATABASE_URL": database_url,
        "STRIPE_API_KEY": API_KEY,
        "STRIPE_API_BASE": standin_url,
    }
    command = [
        sys.executable,
        "-m",
        "flask",
        "--app",
        "wsgi",
        "report-usage",
        "--json",
        "--max-seconds",
        str(int(REPORTER_TIMEOUT)),
    ]
    started = time.perf_counter()
    children = [
        subprocess.Popen(
            command, cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        for _ in range(processes)
    ]
    summaries = []
    peak_kb = 0
    for child in children:
        # wait4 gives this child's own resource usage, peak memory included.
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
        peak_kb = max(peak_kb, usage.ru_maxrss)  # kilobytes on Linux
        assert child.stdout is not None and child.stderr is not None
        out, err = child.stdout.read().decode(), child.stderr.read().decode()
        if child.returncode != 0:
            raise BenchmarkError(
                f"report-usage exited {child.returncode}: {(err or out).strip()[-2000:]}"
            )
        summaries.append(json.loads(out))
    wall = time.perf_counter() - started
    return RunResult(
        backlog=backlog,
        processes=processes,
        events_reported=sum(summary["events_reported"] for summary in summaries),
        meter_events=sum(summary["batches_sent"] for summary in summaries),
        duration_s=max(summary["duration_s"] for summary in summaries),
        wall_s=wall,
        peak_rss_mb=peak_kb / 1024,
    )


def verify(engine: Engine, standin: object, backlog: int) -> None:
    """Every event reported, and Stripe holding exactly each customer's usage."""
    with engine.connect() as conn:
        # Reported: listed by a sent batch, each event once; nothing left anywhere else.
        reported, distinct, waiting, unsent = conn.execute(
            text(
                "SELECT COUNT(*), COUNT(DISTINCT j.value), "
                "(SELECT COUNT(*) FROM usage_report_backlog), "
                "(SELECT COUNT(*) FROM usage_report_batches WHERE status <> 'sent') "
                "FROM usage_report_batches AS b, json_array_elements_text(b.event_ids) AS j "
                "WHERE b.status = 'sent'"
            )
        ).one()
        expected = dict(
            conn.execute(
                text(
                    "SELECT COALESCE(o.stripe_customer_id, s.stripe_customer_id), "
                    "SUM(e.quantity) FROM usage_events e "
                    "LEFT JOIN organizations o ON o.id = e.organization_id "
                    "LEFT JOIN user_subscriptions s ON e.organization_id IS NULL "
                    "AND s.user_id = e.user_id GROUP BY 1"
                )
            ).all()
        )
    if (reported, distinct, waiting, unsent) != (backlog, backlog, 0, 0):
        raise BenchmarkError(
            f"of {backlog} events, {reported} are listed by sent batches ({distinct} distinct), "
            f"{waiting} still wait in the backlog and {unsent} batches are not sent"
        )
    totals = standin.totals()  # type: ignore[attr-defined]
    if totals != expected:
        wrong = sum(1 for c in expected if totals.get(c) != expected[c])
        raise BenchmarkError(f"the stand-in's totals differ from the usage for {wrong} customers")


def check() -> None:
    """Fail before any benchmark runs if this one cannot: settings and the server."""
    _large_backlog()
    admin = _admin_engine(admin_database_url())
    try:
        with admin.connect() as conn:
            conn.execute(text("SELECT 1"))
    except OperationalError as error:
        raise BenchmarkError(f"cannot connect to PostgreSQL: {error.orig}") from None
    finally:
        admin.dispose()


def run() -> str:
    """Run the benchmark and return its markdown section."""
    sys.path.insert(0, str(PROJECT_ROOT))
    from tests.stripe_standin import StripeStandIn

    large = _large_backlog()
    admin_url = admin_database_url()
    admin = _admin_engine(admin_url)
    try:
        with admin.connect() as conn:
            conn.execute(text("SELECT 1"))
    except OperationalError as error:
        admin.dispose()
        raise BenchmarkError(f"cannot connect to PostgreSQL: {error.orig}") from None
    database_url = _database_url(admin_url, BENCH_DATABASE)
    now = datetime.now(UTC)
    results: list[RunResult] = []
    try:
        _recreate_database(admin, BENCH_DATABASE)
        _log("migrating and creating 1,000 customers")
        prepare_accounts(database_url, now)
        engine = create_engine(normalize_database_url(database_url))
        try:
            for backlog, processes in ((SMALL_BACKLOG, 1), (large, 1), (large, 2)):
                _log(f"generating a backlog of {backlog:,} events")
                started = time.perf_counter()
                generate_backlog(engine, backlog, datetime.now(UTC))
                _log(f"  generated in {time.perf_counter() - started:.1f} s; reporting")
                # Stand-in without the request log or the per-request delay:
                # the benchmark measures the reporter, not the stand-in.
                with StripeStandIn(
                    api_key=API_KEY, record_requests=False, processing_delay=0
                ).running() as standin:
                    result = run_reporters(database_url, standin.url, backlog, processes)
                    verify(engine, standin, backlog)
                _log(
                    f"  {processes} run(s): {result.events_reported:,} events in "
                    f"{result.meter_events:,} meter "
                    f"events, {result.duration_s:.1f} s, {result.events_per_second:,.0f} events/s, "
                    f"peak {result.peak_rss_mb:.0f} MB"
                )
                results.append(result)
        finally:
            engine.dispose()
    finally:
        try:
            _drop_database(admin, BENCH_DATABASE)
        except OperationalError as error:
            _log(f"could not drop database {BENCH_DATABASE}: {error.orig}")
        admin.dispose()
    return render(results)


HEADER = (
    "| Backlog (events) | Runs at once | Reported | Meter events sent | Reporter time (s) "
    "| Wall time (s) | Events/s | Events per meter event | Peak memory per run (MB) |\n"
    "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
)


def render(results: list[RunResult]) -> str:
    small, large, shared = results
    ratio = large.peak_rss_mb / small.peak_rss_mb
    rows = "\n".join(
        f"| {r.backlog:,} | {r.processes} | {r.events_reported:,} | {r.meter_events:,} | "
        f"{r.duration_s:.1f} | {r.wall_s:.1f} | **{r.events_per_second:,.0f}** | "
        f"{r.events_reported / r.meter_events if r.meter_events else 0:,.0f} | "
        f"{r.peak_rss_mb:.0f} |"
        for r in results
    )
    best = max(large.events_per_second, shared.events_per_second)
    speed_ok = best >= TARGET_EVENTS_PER_SECOND
    memory_ok = ratio <= TARGET_MEMORY_RATIO
    return f"""## Reporting usage to Stripe (`flask report-usage`)

`bench/reporter.py`: a backlog of pending usage events over {CUSTOMERS:,} Stripe customers
({INDIVIDUALS} pro users, {ORGANIZATIONS} business organizations of
{MEMBERS_PER_ORGANIZATION} members), reported by `flask report-usage --json` in processes of
their own (default `--batch-size` and `--senders`) to the Stripe stand-in of the test
suite, through the real `stripe` library over HTTP on loopback. Afterwards every event is
reported and the stand-in holds exactly each customer's usage (checked).

{HEADER}
{rows}

- Throughput on the {large.backlog:,}-event backlog: **{large.events_per_second:,.0f} events/s**
  with one run, **{shared.events_per_second:,.0f} events/s** with two runs at once
  (target ≥ {TARGET_EVENTS_PER_SECOND:,}): {"met" if speed_ok else "**missed**"}.
- Peak memory, {large.backlog:,} vs {small.backlog:,} events: **{ratio:.2f}×**
  (target ≤ {TARGET_MEMORY_RATIO}×): {"met" if memory_ok else "**missed**"}. A run claims
  at most one batch of events at a time, so its memory does not grow with the backlog.
- Events/s counts from the reporters' start to their last summary; the wall time adds the
  Python processes' start-up and exit. Aggregation sends one meter event per customer,
  billing period and claim, so Stripe calls number in the thousands. Reporting writes no
  usage event: a claim locks a chunk of the backlog queue (`FOR UPDATE SKIP LOCKED`),
  deletes it and writes one batch row per customer and period listing its events, and
  sending a batch rewrites that one row. The claim's lookup of each event by primary key
  and the queue rows' deletion are most of the database's work. Senders send while the
  run claims its next chunk, so one run puts both cores to work.
- The backlog is generated as recording writes it: each event with its row in
  `usage_report_backlog`, in one statement.
- Other work shares this 2-core machine while benchmarks run, so figures vary by tens of
  percent from one run to the next.
"""


def _log(message: str) -> None:
    print(f"[reporter] {message}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    try:
        print(run())
    except BenchmarkError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(1) from None

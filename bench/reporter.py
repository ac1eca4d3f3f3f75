"""``flask report-usage`` on a 1,000,000-event backlog, against the Stripe stand-in process.

The backlog is written set-based, as recording would have left it: each
event in ``usage_events`` with its row in ``usage_report_backlog``, the
running totals in ``usage_records`` and the members' shares in
``member_usage``, for 1,000 paying customers (pro users and business
organizations). The reporter runs as cron runs it, a process of its own
under ``/usr/bin/time -v`` for its peak memory, against
``tests/stripe_standin/`` as a process of its own. Afterwards every event
must have been reported exactly once: the stand-in's totals per customer are
the backlog's, and nothing is left in the backlog or the outbox.
"""

from __future__ import annotations

import ast
import contextlib
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import text

from bench import harness as h
from portal import clock
from portal.periods import add_months

GOAL_RATE = 100_000
GOAL_MEMORY = 1.2
SMALL = 10_000
INDIVIDUALS = 900
ORGANIZATIONS = 100
MEMBERS = 10
CUSTOMERS = INDIVIDUALS + ORGANIZATIONS

# One row per paying customer: who its events belong to (members take turns).
CUSTOMERS_TABLE = """
CREATE TABLE bench_customers (
    c integer PRIMARY KEY, customer text, organization_id integer, plan_id text,
    members integer[])"""
BACKLOG = """
WITH recorded AS (
    INSERT INTO usage_events (id, user_id, organization_id, plan_id, event_type, quantity,
        idempotency_key, occurred_at, recorded_at, period_start, period_end)
    SELECT gen_random_uuid(), c.members[1 + (g / :customers) % cardinality(c.members)],
        c.organization_id, c.plan_id, 'suggestion', 1 + g % 3, 'bench-' || g,
        :now - (g % 86400) * interval '1 second', :now - (g % 86400) * interval '1 second',
        :start, :end
    FROM generate_series(0, :events - 1) AS g JOIN bench_customers AS c ON c.c = g % :customers
    RETURNING id, organization_id, user_id, period_start
)
INSERT INTO usage_report_backlog (event_id, organization_id, user_id, period_start)
SELECT id, organization_id, user_id, period_start FROM recorded"""
TOTALS = """
INSERT INTO usage_records (user_id, organization_id, period_start, period_end, used, included,
    plan_id, updated_at)
SELECT CASE WHEN organization_id IS NULL THEN user_id END, organization_id, period_start,
    period_end, sum(quantity), CASE plan_id WHEN 'pro' THEN 75 ELSE 100 * :members END,
    plan_id, max(recorded_at)
FROM usage_events
GROUP BY CASE WHEN organization_id IS NULL THEN user_id END, organization_id, period_start,
    period_end, plan_id"""
SHARES = """
INSERT INTO member_usage (organization_id, period_start, user_id, used, last_used_at)
SELECT organization_id, period_start, user_id, sum(quantity), max(occurred_at)
FROM usage_events WHERE organization_id IS NOT NULL
GROUP BY organization_id, period_start, user_id"""
EMPTY = (
    "TRUNCATE usage_events, usage_report_backlog, usage_records, member_usage, "
    "usage_report_batches, usage_report_skips, usage_report_runs, usage_alerts, notifications"
)
REPORTED = """
SELECT (SELECT count(*) FROM usage_report_backlog),
    (SELECT count(*) FROM usage_report_batches WHERE status <> 'sent'),
    (SELECT count(DISTINCT j.value) FROM usage_report_batches AS b,
        json_array_elements_text(b.event_ids) AS j)"""


def accounts(url: str, anchor: datetime) -> None:
    """The customers: pro users, and business organizations of ``MEMBERS`` members each."""
    with h.engine(url).begin() as conn:
        ids = h.bulk_users(conn, "r", INDIVIDUALS + ORGANIZATIONS * MEMBERS, anchor)
        people, members = ids[:INDIVIDUALS], ids[INDIVIDUALS:]
        conn.execute(
            text(
                "INSERT INTO user_subscriptions (user_id, plan_id, status, stripe_customer_id, "
                "billing_anchor, created_at) SELECT id, 'pro', 'active', 'cus_u' || id, :anchor, "
                ":anchor FROM unnest(CAST(:ids AS integer[])) AS id"
            ),
            {"ids": people, "anchor": anchor},
        )
        orgs = (
            conn.execute(
                text(
                    "INSERT INTO organizations (name, slug, plan_id, seats, subscription_status, "
                    "stripe_customer_id, billing_anchor, created_at) SELECT 'Org ' || g, "
                    "'org-' || g, 'business', :members, 'active', 'cus_o' || g, :anchor, :anchor "
                    "FROM generate_series(1, :count) AS g ORDER BY g RETURNING id"
                ),
                {"members": MEMBERS, "anchor": anchor, "count": ORGANIZATIONS},
            )
            .scalars()
            .all()
        )
        teams = [members[n * MEMBERS : (n + 1) * MEMBERS] for n in range(ORGANIZATIONS)]
        conn.execute(
            text(
                "INSERT INTO memberships (user_id, organization_id, role, created_at) "
                "VALUES (:user_id, :org, 'member', :anchor)"
            ),
            [
                {"user_id": u, "org": o, "anchor": anchor}
                for o, t in zip(orgs, teams, strict=True)
                for u in t
            ],
        )
        conn.execute(text(CUSTOMERS_TABLE))
        rows = [(c, f"cus_u{u}", None, "pro", [u]) for c, u in enumerate(people)]
        rows += [
            (INDIVIDUALS + n, f"cus_o{n + 1}", o, "business", t)
            for n, (o, t) in enumerate(zip(orgs, teams, strict=True))
        ]
        conn.execute(
            text("INSERT INTO bench_customers VALUES (:c, :customer, :org, :plan, :members)"),
            [
                dict(zip(("c", "customer", "org", "plan", "members"), row, strict=True))
                for row in rows
            ],
        )


def backlog(url: str, events: int, now: datetime, anchor: datetime) -> dict[str, int]:
    """A backlog of ``events`` events, spread evenly over the customers; their totals."""
    started = time.monotonic()
    h.execute(
        url,
        EMPTY,
        BACKLOG,
        TOTALS,
        SHARES,
        customers=CUSTOMERS,
        events=events,
        now=now,
        start=anchor,
        end=add_months(anchor, 1),
        members=MEMBERS,
    )
    h.vacuum(url)
    h.log(f"backlog of {events:,} events written in {time.monotonic() - started:.1f} s")
    with h.engine(url).connect() as conn:
        totals = conn.execute(
            text(
                "SELECT c.customer, sum(e.quantity) FROM usage_events AS e JOIN bench_customers "
                "AS c ON c.organization_id = e.organization_id OR (c.organization_id IS NULL "
                "AND e.organization_id IS NULL AND c.members[1] = e.user_id) GROUP BY 1"
            )
        )
        return {customer: int(total) for customer, total in totals}


@contextlib.contextmanager
def standin() -> Iterator[tuple[str, int, dict[str, int]]]:
    """The stand-in as a process: its URL and pid; after the block, the totals it received."""
    port = h.free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.stripe_standin", "--port", str(port)],
        cwd=h.ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    received: dict[str, int] = {}
    try:
        deadline = time.monotonic() + h.SERVER_START_TIMEOUT
        while True:
            with contextlib.suppress(OSError):
                h.request(port, "GET", "/")
                break
            if time.monotonic() > deadline or process.poll() is not None:
                raise h.BenchError("the Stripe stand-in did not start")
            time.sleep(0.1)
        yield f"http://127.0.0.1:{port}", process.pid, received
    finally:
        process.terminate()  # it prints what it received as it stops
        out, _ = process.communicate(timeout=60)
    last = out.strip().splitlines()[-1] if out.strip() else ""
    if "totals: " not in last:
        raise h.BenchError(f"the Stripe stand-in said: {out[-500:]}")
    received.update(ast.literal_eval(last.split("totals: ", 1)[1]))


@dataclass(frozen=True)
class Reported:
    summary: dict[str, Any]
    peak_kb: int
    cpu: h.CpuUse
    """The "server" is the stand-in; the client, the reporter."""

    @property
    def rate(self) -> float:
        return float(self.summary["events_reported"] / self.summary["duration_s"])


def report(url: str, events: int, expected: dict[str, int]) -> Reported:
    """One ``flask report-usage --json`` run, its peak memory and CPU, checked exactly."""
    with standin() as (base, pid, received):
        env = {**h.server_environment(url), "STRIPE_API_KEY": "sk_test_" + "b" * 24}
        env["STRIPE_API_BASE"] = base
        command = [sys.executable, "-m", "flask", "--app", "wsgi", "report-usage", "--json"]
        meter = h.CpuMeter(pid)
        out, peak = h.run_measuring_memory(command, env, timeout=900)
        cpu = meter.stop(f"report-usage, {events:,} events")
    summary = json.loads(out.strip().splitlines()[-1])
    waiting, unsent, listed = h.query(url, REPORTED)
    value = sum(expected.values())
    problems = []
    if (summary["claimed"], summary["events_reported"], summary["value_sent"]) != (
        events,
        events,
        value,
    ):
        problems.append(f"summary {summary}")
    if (waiting, unsent, listed) != (0, 0, events):
        problems.append(f"{waiting} left in the backlog, {unsent} batches unsent, {listed} listed")
    if received != expected:
        wrong = sum(
            1 for c in expected.keys() | received.keys() if expected.get(c) != received.get(c)
        )
        problems.append(f"the stand-in's totals differ for {wrong} customers")
    if problems:
        raise h.BenchError(f"report-usage on {events:,} events: " + "; ".join(problems))
    reported = Reported(summary, peak, cpu)
    h.log(f"report-usage: {events:,} events at {reported.rate:,.0f} events/s, {peak:,} kB")
    return reported


def run() -> h.Section:
    now = clock.now()
    anchor = now - timedelta(days=10)
    large = h.settings().report_events
    runs = {}
    with h.scratch_database("reporter") as url:
        accounts(url, anchor)
        for events in (SMALL, large):
            expected = backlog(url, events, now, anchor)
            h.settle()
            runs[events] = report(url, events, expected)
    small, big = runs[SMALL], runs[large]
    growth = big.peak_kb / small.peak_kb
    verdict = h.Verdict(
        f"`report-usage`, {large:,}-event backlog",
        f"≥ {GOAL_RATE:,} events/s; peak memory {large:,} vs {SMALL:,} ≤ {GOAL_MEMORY:g}×",
        f"{big.rate:,.0f} events/s; {big.peak_kb / 1024:,.0f} MB ({growth:.2f}×)",
        f"{SMALL:,} events: {small.peak_kb / 1024:,.0f} MB",
        big.rate >= GOAL_RATE and growth <= GOAL_MEMORY,
    )
    rows = [
        [
            f"{events:,}",
            run.summary["duration_s"],
            run.rate,
            run.summary["batches_sent"],
            run.peak_kb / 1024,
            f"{run.cpu.client:.1f} / {run.cpu.postgres:.1f} / {run.cpu.server:.1f}",
        ]
        for events, run in runs.items()
    ]
    header = ["Backlog (events)", "Run (s)", "Events/s", "Meter events sent", "Peak RSS (MB)"]
    figures = h.table([*header, "CPU s: reporter / PostgreSQL / stand-in"], rows)
    body = f"""`flask report-usage --json` (its defaults: claims of 10,000 events, 4 senders)
against `tests/stripe_standin/` run as a process, on backlogs of {SMALL:,} and {large:,}
events written set-based for {INDIVIDUALS} pro users and {ORGANIZATIONS} business
organizations of {MEMBERS} members ({CUSTOMERS:,} Stripe customers), all in the current
billing period.

{figures}

Events/s is the summary's `events_reported` over its `duration_s` (the run itself, without
the process's start-up). Peak RSS is `/usr/bin/time -v`'s "Maximum resident set size" of the
whole `flask` process: memory must not grow with the backlog, only with the claim size.
Checked after each run: the summary claimed and reported every event with its whole value,
nothing is left in the backlog or unsent in the outbox, the sent batches list each event
once, and the stand-in's totals per customer equal the backlog's.

Where the time goes (CPU seconds of each process, start-up included, from `/proc`): the
reporter sends one meter event per customer and period, {CUSTOMERS:,} here whatever the
backlog, each through the `stripe` library, so its own CPU hardly grows with the backlog;
each claim of 10,000 events is one SQL statement PostgreSQL runs (lock, delete, look up and
group the events, write the batches), so PostgreSQL's CPU grows with the backlog, and the
claims, one after another, set the pace of a large run.
{h.busy_note([run.cpu for run in runs.values()])}"""
    return h.Section("Reporting usage to Stripe", [verdict], body)

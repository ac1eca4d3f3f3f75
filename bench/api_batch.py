"""API batches: ``POST /api/v1/usage-events/batch``, 1,000 events a request, in events/s.

The goal is absolute (events/s on this machine): a batch is the way a busy
backend reports, and what it must keep up with is its own traffic. Every
answer must be 200 with all 1,000 events created, and the database must hold
exactly those events (``harness.post_events``).
"""

from __future__ import annotations

from bench import harness as h

GOAL = 50_000
EVENTS = 1_000
CONNECTIONS = 4
"""As many batches in flight as a few backends send; more only queue for the workers."""
PATH = "/api/v1/usage-events/batch"


def run() -> h.Section:
    with h.api_database("api_batch") as (url, auth):
        with h.gunicorn("wsgi:app", url) as server:
            options = {"events": EVENTS, "headers": auth, "connections": CONNECTIONS}
            h.warm_up(server, PATH, expect=200, **options)
            runs = [
                h.post_events(server, url, PATH, f"batches, round {index}", **options)
                for index in range(1, h.settings().rounds + 1)
            ]
            workers = server.workers
    rate = h.median([run.created / run.seconds for run in runs])
    verdict = h.Verdict(
        "API batches",
        f"≥ {GOAL:,} events/s",
        f"{rate:,.0f} events/s (median of {len(runs)} runs)",
        "—",
        rate >= GOAL,
    )
    rows = [
        [
            run.label,
            run.created / run.seconds,
            f"{run.p50_ms:.0f}",
            f"{run.p99_ms:.0f}",
            run.cpu.per(run.count),
        ]
        for run in runs
    ]
    figures = h.table(["Run", "Events/s", "p50 ms", "p99 ms", "CPU ms/request"], rows)
    body = f"""`POST {PATH}` with {EVENTS:,} events a request (each its own idempotency key,
for {h.API_USERS} pro users), `wrk -t {h.WRK_THREADS} -c {CONNECTIONS}` for
{h.settings().seconds} s a run, under the production server ({workers} `sync` workers).
Events/s counts the events the answers reported created.

{figures}

A request is 1,000 events: its CPU figures are per 1,000 events. {h.cpu_note(runs)}"""
    return h.Section("API batches", [verdict], body)

"""API single events: ``POST /api/v1/usage-events`` against a bare Flask route doing one INSERT.

Both run under the production command (``gunicorn --config gunicorn_config.py``,
its ``sync`` workers, as many of them) on one scratch database, and take
turns: baseline, portal, baseline, portal… Each round gives a ratio; the
verdict is on the median, so a machine whose speed drifts during the run
tilts no single ratio for long. Every answer must be 201 and the database
must hold exactly the events answered (``harness.post_events``).
"""

from __future__ import annotations

from bench import harness as h

GOAL = 0.70
TABLE = """CREATE TABLE baseline_events (
    id bigserial PRIMARY KEY,
    user_email text NOT NULL,
    idempotency_key text NOT NULL UNIQUE,
    quantity integer NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now()
)"""
"""What ``bench/baseline_app.py`` writes to: a unique key, as usage events have."""
PATH = "/api/v1/usage-events"
BASELINE_COUNTS = "SELECT count(*), count(*) FROM baseline_events"


def run() -> h.Section:
    with h.api_database("api_single") as (url, auth):
        h.execute(url, TABLE)
        with (
            h.gunicorn("wsgi:app", url) as portal,
            h.gunicorn("bench.baseline_app:app", url) as bare,
        ):
            h.warm_up(bare, "/events", expect=201, events=1)
            h.warm_up(portal, PATH, expect=201, events=1, headers=auth)
            rounds = []
            for index in range(1, h.settings().rounds + 1):
                baseline = h.post_events(
                    bare,
                    url,
                    "/events",
                    f"bare Flask, round {index}",
                    events=1,
                    counts=BASELINE_COUNTS,
                )
                target = h.post_events(
                    portal, url, PATH, f"single events, round {index}", events=1, headers=auth
                )
                rounds.append((baseline, target))
            workers = portal.workers
    ratio = h.median([target.per_second / base.per_second for base, target in rounds])
    middle = sorted(rounds, key=lambda pair: pair[1].per_second / pair[0].per_second)
    base, target = middle[len(middle) // 2]
    verdict = h.Verdict(
        "API single event",
        f"≥ {h.pct(GOAL)} of bare Flask + one INSERT",
        f"{target.per_second:,.0f} requests/s ({h.pct(ratio)}, median of {len(rounds)} rounds)",
        f"{base.per_second:,.0f} requests/s",
        ratio >= GOAL,
    )
    rows = [
        [
            f"{index}",
            base.per_second,
            target.per_second,
            h.pct(target.per_second / base.per_second),
            f"{base.p99_ms:.1f} / {target.p99_ms:.1f}",
            f"{base.cpu.per(base.count)} — {target.cpu.per(target.count)}",
        ]
        for index, (base, target) in enumerate(rounds, 1)
    ]
    header = ["Round", "Bare Flask (req/s)", "Portal (req/s)", "Ratio", "p99 ms (bare / portal)"]
    figures = h.table([*header, "CPU ms/request (bare — portal)"], rows)
    body = f"""`POST {PATH}` (one event, `Authorization: Bearer`, answered 201) against
`bench/baseline_app.py`: one Flask route that reads the JSON body and runs one `INSERT …
RETURNING` in autocommit. Both are served by `gunicorn --config gunicorn_config.py` ({workers}
`sync` workers each) on one scratch database and driven by `wrk -t {h.WRK_THREADS} -c
{h.WRK_CONNECTIONS}`, {h.settings().seconds} s a run. Events go to {h.API_USERS} pro users;
each wrk thread has its own, so no two requests in flight share a running total.

{figures}

The verdict is on the median of the rounds' ratios. The portal's request sends PostgreSQL three
statements where the baseline's sends one (the API key, the user's plan, then the event with
its running total and backlog row), and answers with the user's usage. With the load, wrk and
PostgreSQL sharing the CPUs, requests/s follow the CPU each request costs in all three: compare
the CPU columns of the two. {h.cpu_note([run for pair in rounds for run in pair])}"""
    return h.Section("API single events", [verdict], body)

"""The live region's poll, ``GET /usage/current``, against ``/healthz`` on the same server.

A user signs in through the real form; wrk then polls with the session
cookie, as every open dashboard does every few seconds. The target is the
revalidating poll: with ``If-None-Match`` of the current ETag, answered 304
without rendering, which is what a browser sends for ``Cache-Control:
private, no-cache``. The full render (200) is measured too. ``/healthz``
touches no database: it is the server's own ceiling.
"""

from __future__ import annotations

from datetime import timedelta

from bench import harness as h
from portal import clock

GOAL = 0.35
P99_GOAL = 2.0
PATH = "/usage/current"
EMAIL = "poller@bench.example"


def run() -> h.Section:
    now = clock.now()
    with h.scratch_database("poll") as url:
        with h.portal_session(url) as session:
            # Half the period gone and one event: the projection (part of the ETag) holds
            # still at 2 for days, so the ETag does not change during the run.
            h.add_users(session, [EMAIL], now - timedelta(days=16), password=h.PASSWORD)
            from portal.usage import record_usage

            record_usage(session, EMAIL, idempotency_key="bench-poll", now=now)
        with h.gunicorn("wsgi:app", url) as server:
            cookie = f"Cookie: session={h.sign_in(server, EMAIL)}"
            status, headers, body = h.request(server.port, "GET", PATH, {"Cookie": cookie[8:]})
            if status != 200 or not headers.get("ETag") or headers.get("Set-Cookie"):
                raise h.BenchError(f"GET {PATH} answered {status} {dict(headers)}")
            revalidate = [cookie, f"If-None-Match: {headers['ETag']}"]
            h.warm_up(server, PATH, expect=304, headers=revalidate)
            rounds = []
            for index in range(1, h.settings().rounds + 1):
                health = h.wrk(server, "/healthz", f"/healthz, round {index}")
                poll = h.wrk(
                    server, PATH, f"304 poll, round {index}", expect=304, headers=revalidate
                )
                render = h.wrk(server, PATH, f"200 poll, round {index}", headers=[cookie])
                rounds.append((health, poll, render))
            workers = server.workers
    ratio = h.median([poll.per_second / health.per_second for health, poll, _ in rounds])
    p99 = h.median([poll.p99_ms / health.p99_ms for health, poll, _ in rounds])
    render_ratio = h.median([render.per_second / health.per_second for health, _, render in rounds])
    health, poll, render = sorted(rounds, key=lambda r: r[1].per_second / r[0].per_second)[
        len(rounds) // 2
    ]
    verdict = h.Verdict(
        "`/usage/current` poll (304)",
        f"≥ {h.pct(GOAL)} of `/healthz`, p99 ≤ {P99_GOAL:g}× its p99",
        f"{poll.per_second:,.0f} requests/s ({h.pct(ratio)}), p99 {poll.p99_ms:.1f} ms "
        f"({p99:.1f}×; ratios are medians of {len(rounds)} rounds)",
        f"`/healthz` {health.per_second:,.0f} requests/s, p99 {health.p99_ms:.1f} ms",
        ratio >= GOAL and p99 <= P99_GOAL,
    )
    rows = [
        [
            f"{i} {run.label.split(',')[0]}",
            run.per_second,
            f"{run.p50_ms:.1f}",
            f"{run.p99_ms:.1f}",
            h.pct(run.per_second / r[0].per_second),
            run.cpu.per(run.count),
        ]
        for i, r in enumerate(rounds, 1)
        for run in r
    ]
    header = ["Round, run", "Requests/s", "p50 ms", "p99 ms", "of `/healthz`", "CPU ms/request"]
    figures = h.table(header, rows)
    body = f"""A pro user signs in through `/login` (its CSRF token, then the form), and wrk
(`-t {h.WRK_THREADS} -c {h.WRK_CONNECTIONS}`, {h.settings().seconds} s a run) sends the
session cookie to `GET {PATH}` under the production server ({workers} `sync` workers):

- **304 poll** (the target): with `If-None-Match` of the region's ETag, as a browser
  revalidates under `Cache-Control: private, no-cache`: answered from the ETag, no rendering;
- **200 poll**: no `If-None-Match`, so the region is rendered each time;
- **`/healthz`** (the baseline): no database, no session; what the server itself costs.

They take turns in each round; the verdict is on the median of the rounds' ratios to
`/healthz`, for throughput and for p99 latency (from wrk's latency distribution).

{figures}

A poll sends PostgreSQL two statements (the session's user, then the status), `/healthz`
none. The full render keeps {h.pct(render_ratio)} of `/healthz` (median): the difference to
the 304 is the rendering a revalidation saves. {h.cpu_note([run for r in rounds for run in r])}"""
    return h.Section("The live region's poll", [verdict], body)

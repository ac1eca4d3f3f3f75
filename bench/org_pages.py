"""The organization admin's member table and CSV export, at 10,000 members.

An organization on the business plan with 10,000 members, most of whom used
the pool this period; its admin signs in through the real form, and the page
(``/orgs/<slug>/usage``, 25 members a page, sorted by use) and the export
(``/orgs/<slug>/usage.csv``, every member) are fetched through the production
server, one request at a time as an admin would. The export must stream: its
first bytes arrive well before the whole file.
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import text

from bench import harness as h
from portal import clock

PAGE_GOAL = 0.100
CSV_GOAL = 1.0
STREAMED = 0.5
"""Streamed: the first bytes arrive within this share of the whole download's time."""
SLUG = "bench-org"
ADMIN = "admin@bench.example"
MEMBER_USAGE = """
INSERT INTO member_usage (organization_id, period_start, user_id, used, last_used_at)
SELECT :org, :start, user_id, 1 + floor(random() ^ 2 * 150), :start + random() * (:now - :start)
FROM memberships WHERE organization_id = :org AND random() < 0.8"""
POOL = """
INSERT INTO usage_records (organization_id, period_start, period_end, used, included, plan_id,
    updated_at)
SELECT :org, :start, :end, sum(used), :included, 'business', :now
FROM member_usage WHERE organization_id = :org"""


def seed(url: str, members: int) -> None:
    """The organization, its admin (who signs in) and ``members - 1`` others, with usage."""
    from portal.accounts import create_organization, create_user
    from portal.plans import BUSINESS

    now = clock.now()
    with h.portal_session(url) as session:
        org = create_organization(
            session,
            slug=SLUG,
            name="Bench Org",
            plan_id="business",
            seats=members,
            now=now - timedelta(days=10),
            stripe_customer_id="cus_benchorg",
        )
        create_user(
            session, email=ADMIN, password=h.PASSWORD, now=now, organization=org, role="admin"
        )
        ids = h.bulk_users(session.connection(), "m", members - 1, now)
        session.execute(
            text(
                "INSERT INTO memberships (user_id, organization_id, role, created_at) "
                "SELECT id, :org, 'member', :now FROM unnest(CAST(:ids AS integer[])) AS id"
            ),
            {"org": org.id, "now": now, "ids": ids},
        )
        from portal.usage.organizations import organization_period

        period = organization_period(org, now)
        values = {"org": org.id, "start": period.start, "end": period.end, "now": now}
        session.execute(text(MEMBER_USAGE), values)
        session.execute(text(POOL), {**values, "included": BUSINESS.included_for(members)})
        session.commit()
    h.vacuum(url)


def fetch(port: int, path: str, cookie: str, check: bytes, count: int) -> list[h.Timed]:
    """``path`` once to warm up, then ``BENCH_REPEATS`` timed fetches, each checked."""
    runs = []
    for _ in range(h.settings().repeats + 1):
        timed = h.timed_get(port, path, cookie)
        if timed.status != 200 or timed.body.count(check) != count:
            raise h.BenchError(f"GET {path}: {timed.status}, {timed.body.count(check)} rows")
        runs.append(timed)
    return runs[1:]


def run() -> h.Section:
    members = h.settings().org_members
    with h.scratch_database("orgs") as url:
        seed(url, members)
        with h.gunicorn("wsgi:app", url) as server:
            cookie = h.sign_in(server, ADMIN)
            h.settle()
            pages = fetch(server.port, f"/orgs/{SLUG}/usage", cookie, b"<tr data-member=", 25)
            exports = fetch(server.port, f"/orgs/{SLUG}/usage.csv", cookie, b"\n", members + 1)
    page = h.median([p.total for p in pages])
    export = h.median([e.total for e in exports])
    first = h.median([e.first_byte for e in exports])
    chunked = all(e.headers.get("Transfer-Encoding") == "chunked" for e in exports)
    streamed = chunked and first <= STREAMED * export
    verdicts = [
        h.Verdict(
            f"Org page, {members:,} members",
            f"< {PAGE_GOAL * 1000:.0f} ms",
            f"{page * 1000:.0f} ms median, {max(p.total for p in pages) * 1000:.0f} ms max",
            "—",
            page < PAGE_GOAL,
        ),
        h.Verdict(
            f"Org CSV, {members:,} members",
            f"< {CSV_GOAL:g} s, streamed",
            f"{export * 1000:.0f} ms median, {max(e.total for e in exports) * 1000:.0f} ms max; "
            f"first bytes at {first * 1000:.0f} ms",
            "—",
            export < CSV_GOAL and streamed,
        ),
    ]
    size = len(exports[0].body)
    rows = [
        [
            "page",
            page * 1000,
            max(p.total for p in pages) * 1000,
            h.median([p.first_byte for p in pages]) * 1000,
        ],
        ["CSV", export * 1000, max(e.total for e in exports) * 1000, first * 1000],
    ]
    figures = h.table(["Request", "Median ms", "Max ms", "First bytes (median ms)"], rows)
    body = f"""An organization on the business plan with {members:,} members (one admin), about
80% of whom used the pool this billing period (`member_usage`, and the pool's running total).
The admin signs in through `/login`; then, through the production server, one request at a
time after one unmeasured fetch each, {len(pages)} times each:

- `GET /orgs/{SLUG}/usage`: the pool, totals over all members and the first page of the
  table (25 rows, sorted by use), checked to hold 25 rows;
- `GET /orgs/{SLUG}/usage.csv`: every member ({size / 1024:,.0f} KiB), checked to hold
  {members:,} rows and a header.

{figures}

Times are the client's, from sending the request to the last byte, over loopback; the
verdicts are on the medians, the maximum is the slowest of the fetches. The CSV
counts as streamed when it comes chunked (no `Content-Length`: it is written as it is read)
and its first bytes arrive within {h.pct(STREAMED)} of the whole download's time; here
{"chunked" if chunked else "**not chunked**"}, first bytes after {h.pct(first / export)} of
it."""
    return h.Section("The organization admin's pages", verdicts, body)

"""``make bench``: run every benchmark in one run and rewrite ``docs/benchmarks.md``.

``python -m bench NAME …`` runs some of them (names of the scripts in
``bench/``) and prints their sections without touching the page. Any benchmark
error (a miscount, a failed request, a missing tool) stops the run with exit
code 1 and leaves the page as it was: its figures could not be trusted.
"""

from __future__ import annotations

import importlib
import os
import platform
import shutil
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import text

from bench import harness as h

BENCHMARKS = ("api_single", "poll", "api_batch", "record_usage", "reporter", "org_pages")
OUTPUT = h.ROOT / "docs" / "benchmarks.md"
SERVER_SETTINGS = (
    "server_version",
    "shared_buffers",
    "synchronous_commit",
    "fsync",
    "max_wal_size",
    "checkpoint_timeout",
    "autovacuum_naptime",
)


def machine(elapsed: float) -> str:
    with h.admin().connect() as conn:
        server = {name: conn.execute(text(f"SHOW {name}")).scalar_one() for name in SERVER_SETTINGS}
    version = server.pop("server_version")
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    workers = os.environ.get("WEB_CONCURRENCY") or f"{2 * (os.cpu_count() or 1) + 1}"
    rows = [
        ["Date", f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC"],
        ["CPUs (`nproc`)", f"{len(os.sched_getaffinity(0))}"],
        ["CPU model", model],
        ["PostgreSQL", f"{version}; " + ", ".join(f"`{k}={v}`" for k, v in server.items())],
        ["Python", platform.python_version()],
        ["gunicorn workers", f"{workers} (`gunicorn_config.py`: 2 per CPU + 1)"],
        ["`make bench` took", f"{elapsed / 60:.1f} min"],
    ]
    return h.table(["Machine", ""], rows, left=2)


def write(sections: list[h.Section], elapsed: float) -> None:
    rows = [
        [v.target, v.goal, v.measured, v.baseline, h.verdict_text(v.passed)]
        for section in sections
        for v in section.verdicts
    ]
    s = h.settings()
    parts = [
        "# Benchmarks",
        h.table(["Target", "Goal", "Measured", "Baseline", "Result"], rows, left=5),
        f"""`make bench` rewrites this page: it runs every script in `bench/` once, in one
run, against the PostgreSQL server at `BENCH_DATABASE_URL` (default
`{h.DEFAULT_DATABASE_URL}`), in scratch databases it creates and drops. Every ratio is to a
baseline measured in the same run on the same machine; raw figures move with the machine,
ratios much less.""",
        machine(elapsed),
        "## Method",
        f"""- **Production's server.** Everything over HTTP runs under `gunicorn --config
  gunicorn_config.py --bind 127.0.0.1:PORT APP` with `PORTAL_ENV=production`, a
  `SECRET_KEY` and `API_RATE_LIMIT={h.RATE_LIMIT}` (never throttles); wrk drives it over
  loopback.
- **Turns, rounds, medians.** A target and its baseline never share the CPU: they run in
  turn, {s.rounds} rounds (`BENCH_ROUNDS`) of {s.seconds} s each (`BENCH_SECONDS`), after
  a {s.warmup} s warm-up (`BENCH_WARMUP_SECONDS`). Each round gives a ratio; the verdict
  is on the median, so a drift in the machine's speed does not decide it.
- **Settling.** Before every measured run: `CHECKPOINT`, then a wait (at most
  {h.SETTLE_TIMEOUT:.0f} s) until no autovacuum worker is busy in the scratch databases.
  The previous run's dirty pages and dead rows would otherwise be cleaned up during the
  next one (after a pgbench run, that cut every server to about 1,000 requests/s).
- **Exactness.** After each load run the database must hold what the answers said: one
  `usage_events` row and one unit of `sum(usage_records.used)` per event answered created,
  plus at most the requests still in flight when wrk stopped. Any other status than the
  expected one, any socket error or miscount stops `make bench` with an error.
- **CPU accounting.** Each run's CPU time is read from `/proc`: the gunicorn processes,
  PostgreSQL's (backends and background work), the benchmark's own (wrk, pgbench, worker
  processes), and what is left for other programs. A run where others took more than
  {h.DISTURBED_SHARE:.0%} of the CPUs is flagged: the machine was busy, rerun.
- **Quick run:** `BENCH_SECONDS=2 BENCH_ROUNDS=1 BENCH_REPORT_EVENTS=100000 make bench`;
  `.venv/bin/python -m bench poll reporter` runs some scripts without rewriting this page.""",
    ]
    for section in sections:
        parts += [f"## {section.title}", section.body.strip()]
    if h.disturbed:
        runs = "; ".join(h.disturbed)
        parts += [
            "## Busy machine",
            f"Other programs took more than {h.DISTURBED_SHARE:.0%} of the CPUs during "
            f"{len(h.disturbed)} measured runs: {runs}. Such a run is slower by up to that "
            "share; a ratio moves when its target and baseline had different company, which "
            "the median of the rounds dampens.",
        ]
    OUTPUT.write_text("\n\n".join(parts) + "\n")


def main(names: list[str]) -> int:
    for tool in ("wrk", "pgbench", "/usr/bin/time"):
        if shutil.which(tool) is None:
            print(f"error: {tool} is not installed (Debian: wrk, postgresql-client, time)")
            return 1
    unknown = set(names) - set(BENCHMARKS)
    if unknown:
        print(f"error: no benchmark {', '.join(sorted(unknown))}; choose from {BENCHMARKS}")
        return 1
    started = time.monotonic()
    sections = []
    try:
        for name in names or BENCHMARKS:
            h.log(f"== {name}")
            section: h.Section = importlib.import_module(f"bench.{name}").run()
            sections.append(section)
            if names:  # a partial run leaves the page alone: show its sections here
                print(f"## {section.title}\n\n{section.body}\n", flush=True)
            for v in section.verdicts:
                h.log(
                    f"{v.target}: {v.measured} vs {v.baseline} ({v.goal}): "
                    f"{'PASS' if v.passed else 'FAIL'}"
                )
    except h.BenchError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    finally:
        h.drop_template()
    elapsed = time.monotonic() - started
    h.log(f"done in {elapsed / 60:.1f} min")
    if h.disturbed:
        h.log(f"warning: other programs were busy during {len(h.disturbed)} runs: rerun")
    if not names:
        write(sections, elapsed)
        h.log(f"wrote {OUTPUT.relative_to(h.ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

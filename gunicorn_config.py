"""How production runs the portal: ``gunicorn --config gunicorn_config.py --bind HOST:PORT``.

gunicorn's own ``sync`` workers, one request at a time each, behind a
buffering proxy (nginx, a cloud load balancer), as gunicorn advises: the
proxy holds slow clients and keep-alive connections, the workers only
compute. Options given on the command line override these;
``WEB_CONCURRENCY`` sets the number of workers.

Not named ``gunicorn.conf.py``, which gunicorn reads by itself from the
folder it starts in: ``gunicorn wsgi:app`` stays the plain set-up.
"""

import gc
import os
import sys

wsgi_app = "wsgi:app"
worker_class = "sync"
# Two workers per core keep a core busy while another worker waits on PostgreSQL.
if "WEB_CONCURRENCY" not in os.environ:
    workers = 2 * (os.cpu_count() or 1) + 1
# Headers spelled with underscores (X_Forwarded_For) are dropped, never read as
# their dashed twins: behind a proxy that passes them they would spoof the client.
header_map = "drop"
# A request line or header longer than this is refused with 400 before the app runs.
limit_request_line = 8190
limit_request_field_size = 8190


def on_starting(server: object) -> None:
    """Refuse to start without what serving pages needs (``SECRET_KEY``, ``DATABASE_URL``)."""
    from portal.config import ConfigError, check_serving, serving_warnings

    try:
        check_serving(os.environ)
    except ConfigError as error:
        print(f"configuration error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    for warning in serving_warnings(os.environ, server.cfg.workers):  # type: ignore[attr-defined]
        print(f"configuration warning: {warning}", file=sys.stderr)


def post_worker_init(worker: object) -> None:
    """Take what the worker loaded at start-up out of the garbage collector's sight.

    The app, its modules and SQLAlchemy's tables live as long as the worker,
    yet every full collection walked them all again: a 1,000-event batch
    allocates enough to set off collections costing about a fifth of its
    Python time. ``gc.freeze()`` moves them to a generation no collection
    visits; garbage made while answering requests is collected as before.
    """
    gc.freeze()

"""How production runs the portal: ``gunicorn --config gunicorn_config.py --bind HOST:PORT``.

gunicorn's asyncio worker runs the Flask app in its event loop's thread, one
request at a time per worker process (``portal.serving`` says why). Options
given on the command line override these; ``WEB_CONCURRENCY`` sets the
number of workers.

Not named ``gunicorn.conf.py``, which gunicorn reads by itself from the
folder it starts in: ``gunicorn wsgi:app`` stays the plain WSGI set-up.
"""

import gc
import os

wsgi_app = "wsgi:served"
worker_class = "asgi"
# gunicorn's own parser: with gunicorn_h1c (the C parser of gunicorn[fast] 26.2),
# a malformed Content-Length dropped the connection with a traceback in the log
# instead of answering 400, and interleaved runs measured no speed-up from it.
http_parser = "python"
# One request at a time per worker: two per core keeps a core busy while
# another worker waits on PostgreSQL. gunicorn itself reads WEB_CONCURRENCY.
if "WEB_CONCURRENCY" not in os.environ:
    workers = 2 * (os.cpu_count() or 1)


def post_worker_init(worker: object) -> None:
    """Take what the worker loaded at start-up out of the garbage collector's sight.

    The app, its modules and SQLAlchemy's tables live as long as the worker,
    yet every full collection walked them all again: a 1,000-event batch
    allocates enough to set off collections costing about 4 ms of its 20 ms
    of Python (measured in one process, 60 batches, on PostgreSQL).
    ``gc.freeze()`` moves them to a generation no collection visits; garbage
    made while answering requests is still collected as before.
    """
    gc.freeze()

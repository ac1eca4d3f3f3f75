"""Entry points: ``wsgi:app`` for any WSGI server, and ``wsgi:served`` for gunicorn's
asgi worker, as ``gunicorn --config gunicorn_config.py`` runs it (``portal.serving``).
Also found by ``flask`` in this folder."""

from __future__ import annotations

import sys

from portal import ConfigError, create_app
from portal.serving import EventLoopWSGI

try:
    app = create_app()
except ConfigError as error:
    print(f"configuration error: {error}", file=sys.stderr)
    raise SystemExit(2) from None

served = EventLoopWSGI(app, max_body=app.config["MAX_CONTENT_LENGTH"])

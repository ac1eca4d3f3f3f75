"""WSGI entry point: ``gunicorn wsgi:app``; also found by ``flask`` in this folder."""

from __future__ import annotations

import sys

from portal import ConfigError, create_app

try:
    app = create_app()
except ConfigError as error:
    print(f"configuration error: {error}", file=sys.stderr)
    raise SystemExit(2) from None

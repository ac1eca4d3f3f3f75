"""The portal as a WSGI app, ``wsgi:app``: what gunicorn serves and what ``flask`` finds here."""

from __future__ import annotations

import sys

from portal import ConfigError, create_app

try:
    app = create_app()
except ConfigError as error:
    print(f"configuration error: {error}", file=sys.stderr)
    raise SystemExit(2) from None

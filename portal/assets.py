"""Static asset URLs that change whenever the file does, so browsers may cache them for a year."""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

from flask import Flask, url_for

HTMX_VERSION = "2.0.11"
PICO_VERSION = "2.1.1"
VENDORED = {
    "htmx.js": f"vendor/htmx-{HTMX_VERSION}/htmx.min.js",
    "pico.css": f"vendor/pico-{PICO_VERSION}/pico.min.css",
}
ONE_YEAR = 365 * 24 * 3600


@functools.cache
def _fingerprint(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


def asset_url(name: str) -> str:
    """URL of a vendored asset (versioned by folder) or of our own (versioned by content hash)."""
    if name in VENDORED:
        return url_for("static", filename=VENDORED[name])
    from flask import current_app

    path = Path(current_app.static_folder or "static") / name
    return url_for("static", filename=name, v=_fingerprint(path))


def init_app(app: Flask) -> None:
    # Every asset URL changes with its content, so browsers may keep them a year.
    app.config["SEND_FILE_MAX_AGE_DEFAULT"] = ONE_YEAR
    app.jinja_env.globals["asset_url"] = asset_url

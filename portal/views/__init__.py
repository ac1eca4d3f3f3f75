"""HTTP views: thin layers that parse input, call the domain and render."""

from __future__ import annotations

from flask import Flask

from portal.views import auth


def init_app(app: Flask) -> None:
    app.register_blueprint(auth.blueprint)

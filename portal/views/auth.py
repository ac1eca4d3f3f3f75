"""Sign-in pages."""

from __future__ import annotations

from flask import Blueprint, redirect, render_template, url_for
from werkzeug.wrappers import Response

blueprint = Blueprint("auth", __name__)


@blueprint.get("/")
def index() -> Response:
    """Send visitors to the sign-in page."""
    return redirect(url_for("auth.login"))


@blueprint.get("/login")
def login() -> str:
    """Show the sign-in form."""
    return render_template("auth/login.html")

"""Who is signed in, and what signed-out visitors see."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from urllib.parse import urlsplit

from flask import Flask, Response, current_app, flash, g, redirect, request, session, url_for
from flask_login import AnonymousUserMixin, UserMixin, logout_user

from portal import clock
from portal.extensions import db, login_manager
from portal.sessions import SessionPolicy, live_session

MAX_TOKEN_LENGTH = 64


@dataclass(frozen=True)
class SignedInUser(UserMixin):
    """The signed-in user as pages see it (``current_user``): the id and the email.

    Flask-Login keeps what ``get_id`` returns in the cookie: the session's
    token, not the user's id, so the server can end the session
    (``portal.sessions``).
    """

    id: int
    email: str
    token: str

    def get_id(self) -> str:
        return self.token


def session_policy() -> SessionPolicy:
    config = current_app.config
    return SessionPolicy(
        idle_timeout=timedelta(hours=config["SESSION_IDLE_HOURS"]),
        lifetime=timedelta(days=config["SESSION_LIFETIME_DAYS"]),
    )


@login_manager.user_loader
def load_user(token: str) -> SignedInUser | None:
    """The session's user; ``None`` (signed out) once the session has ended."""
    if not token.isascii() or len(token) > MAX_TOKEN_LENGTH:
        return None
    signed_in = live_session(db.session(), token, clock.now(), session_policy())
    if signed_in is None:
        return None
    return SignedInUser(signed_in.user_id, signed_in.email, signed_in.token)


def without_reading_the_user() -> None:
    """Answer this request as if signed out, without asking the database who is signed in.

    For pages drawn while the database is down or in maintenance: Flask-Login
    reads the user for every template it renders. This sets the anonymous
    user where Flask-Login keeps the request's user (``g._login_user``); the
    session cookie is left as it is, so nobody is signed out.
    """
    g._login_user = login_manager.anonymous_user()


SESSION_ENDED = "Your session ended; sign in again."


def local_path(target: str | None) -> str | None:
    """``target`` if it is a path on this site, else None: never another site.

    ``//host`` and ``/\\host`` name another site to a browser, and a control
    character (a CR/LF would split a Location header) has no place in a path.
    """
    if not target or not target.isprintable() or "\\" in target:
        return None
    if not target.startswith("/") or target.startswith("//"):
        return None
    return target


def _polled_page() -> str | None:
    """The page an HTMX request came from (``HX-Current-URL``), as a local path."""
    try:
        page = urlsplit(request.headers.get("HX-Current-URL", ""))
    except ValueError:  # "http://[::1/usage": not a URL at all
        return None
    return local_path(page.path + (f"?{page.query}" if page.query else ""))


def unauthorized() -> Response:
    """Signed-out visitors go to /login, and come back to where they were once signed in.

    A browser whose cookie names a session that has ended (signed out
    elsewhere, timed out, disabled) is told so. An HTMX poll makes the whole
    page go there, and back to the page it polled from (``HX-Current-URL``).
    """
    if "_user_id" in session:  # a cookie that signed someone in, whose session is over
        logout_user()
        flash(SESSION_ENDED, "info")
    if request.headers.get("HX-Request"):
        response = Response(status=401)
        response.headers["HX-Redirect"] = url_for("auth.login", next=_polled_page())
        return response
    return redirect(url_for("auth.login", next=request.full_path.rstrip("?")))  # type: ignore[return-value]


# Registered without the (untyped) decorator so views can call it, typed, too.
login_manager.unauthorized_handler(unauthorized)


def init_app(app: Flask) -> None:
    login_manager.init_app(app)
    login_manager.anonymous_user = AnonymousUserMixin
    # Sessions end on the server (portal.sessions); binding them to the
    # client's address would only mark them "not fresh", which nothing uses,
    # and read an address a client can forge.
    login_manager.session_protection = None

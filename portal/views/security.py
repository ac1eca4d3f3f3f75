"""Who is signed in, and what signed-out visitors see."""

from __future__ import annotations

from dataclasses import dataclass

from flask import Flask, Response, redirect, request, url_for
from flask_login import AnonymousUserMixin, UserMixin

from portal.accounts import active_identity
from portal.extensions import db, login_manager


@dataclass(frozen=True)
class SignedInUser(UserMixin):
    """The signed-in user as pages see it (``current_user``): the id and the email.

    Loaded on every request, so it comes from one small statement instead of
    the ``User`` model; views that need more of the account load it themselves.
    """

    id: int
    email: str


@login_manager.user_loader
def load_user(user_id: str) -> SignedInUser | None:
    """The session's user; ``None`` (signed out) when the account is gone or disabled."""
    if not (user_id.isascii() and user_id.isdigit()) or len(user_id) > 18:
        return None
    identity = active_identity(db.session(), int(user_id))
    return SignedInUser(identity.id, identity.email) if identity is not None else None


def unauthorized() -> Response:
    """Signed-out visitors go to /login; an HTMX poll makes the whole page go there."""
    if request.headers.get("HX-Request"):
        response = Response(status=401)
        response.headers["HX-Redirect"] = url_for("auth.login")
        return response
    return redirect(url_for("auth.login", next=request.full_path.rstrip("?")))  # type: ignore[return-value]


# Registered without the (untyped) decorator so views can call it, typed, too.
login_manager.unauthorized_handler(unauthorized)


def init_app(app: Flask) -> None:
    login_manager.init_app(app)
    login_manager.anonymous_user = AnonymousUserMixin

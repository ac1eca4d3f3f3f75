"""Signing in and out."""

from __future__ import annotations

from urllib.parse import urlsplit

from flask import Blueprint, flash, redirect, render_template, request, url_for
from flask_login import current_user, login_user, logout_user
from flask_wtf import FlaskForm
from werkzeug.wrappers import Response
from wtforms import EmailField, PasswordField
from wtforms.validators import DataRequired, Length

from portal.accounts import authenticate_user
from portal.extensions import db, limiter

blueprint = Blueprint("auth", __name__)

# Per client address and per account: slows guessing one password from many
# machines, and many passwords from one.
LOGIN_LIMIT_PER_ADDRESS = "20 per minute"
LOGIN_LIMIT_PER_ACCOUNT = "5 per minute"
WRONG_CREDENTIALS = "That email and password don't match an account."


class LoginForm(FlaskForm):  # type: ignore[misc]
    email = EmailField("Email", validators=[DataRequired(), Length(max=254)])
    password = PasswordField("Password", validators=[DataRequired(), Length(max=1024)])


def _account_key() -> str:
    return "login-account:" + (request.form.get("email") or "").strip().lower()[:254]


def safe_next(target: str | None) -> str:
    """Where to go after signing in: a local path only, never another site."""
    if target:
        parts = urlsplit(target)
        if not parts.scheme and not parts.netloc and target.startswith("/") and "\\" not in target:
            return target if not target.startswith("//") else url_for("usage.dashboard")
    return url_for("usage.dashboard")


@blueprint.get("/")
def index() -> Response:
    """Send visitors to their dashboard, or to sign in."""
    return redirect(url_for("usage.dashboard"))


@blueprint.route("/login", methods=["GET", "POST"])
@limiter.limit(LOGIN_LIMIT_PER_ADDRESS, methods=["POST"])
@limiter.limit(LOGIN_LIMIT_PER_ACCOUNT, methods=["POST"], key_func=_account_key)
def login() -> Response | str:
    """Show the sign-in form and sign the user in."""
    if current_user.is_authenticated:
        return redirect(safe_next(request.args.get("next")))
    form = LoginForm()
    if form.validate_on_submit():
        user = authenticate_user(db.session(), form.email.data, form.password.data)
        if user is not None:
            login_user(user)
            return redirect(safe_next(request.args.get("next")))
        flash(WRONG_CREDENTIALS, "error")
    elif request.method == "POST":
        flash(WRONG_CREDENTIALS, "error")
    return render_template("auth/login.html", form=form)


@blueprint.post("/logout")
def logout() -> Response:
    """Sign out (a POST with the CSRF token, so other sites cannot sign users out)."""
    logout_user()
    flash("You are signed out.", "info")
    return redirect(url_for("auth.login"))

"""Signing in and out."""

from __future__ import annotations

from flask import (
    Blueprint,
    current_app,
    flash,
    redirect,
    render_template,
    request,
    url_for,
)
from flask_login import current_user, login_user, logout_user
from flask_wtf import FlaskForm
from werkzeug.wrappers import Response
from wtforms import EmailField, PasswordField
from wtforms.validators import DataRequired, Length

from portal import clock
from portal.accounts import authenticate_user, normalize_email
from portal.extensions import db
from portal.ratelimit import (
    SIGN_IN_FAILURES_PER_ACCOUNT,
    SIGN_IN_FAILURES_PER_ACCOUNT_AND_ADDRESS,
    SIGN_IN_FAILURES_PER_ADDRESS,
    Limit,
    RateLimits,
)
from portal.sessions import end_session, start_session
from portal.views.security import SignedInUser, local_path

blueprint = Blueprint("auth", __name__)

WRONG_CREDENTIALS = "That email and password don't match an account."
PER_ACCOUNT_AND_ADDRESS = Limit.parse("sign-in-failures", SIGN_IN_FAILURES_PER_ACCOUNT_AND_ADDRESS)
PER_ADDRESS = Limit.parse("sign-in-failures-address", SIGN_IN_FAILURES_PER_ADDRESS)
PER_ACCOUNT = Limit.parse("sign-in-failures-account", SIGN_IN_FAILURES_PER_ACCOUNT)


class LoginForm(FlaskForm):  # type: ignore[misc]
    email = EmailField("Email", validators=[DataRequired(), Length(max=254)])
    password = PasswordField("Password", validators=[DataRequired(), Length(max=1024)])


def safe_next(target: str | None) -> str:
    """Where to go after signing in: a local path, else the dashboard."""
    return local_path(target) or url_for("usage.dashboard")


def _failure_counters(account: str) -> list[tuple[Limit, tuple[str, ...]]]:
    address = request.remote_addr or "unknown"
    return [
        (PER_ACCOUNT_AND_ADDRESS, (account, address)),
        (PER_ADDRESS, (address,)),
        (PER_ACCOUNT, (account,)),
    ]


@blueprint.get("/")
def index() -> Response:
    """Send visitors to their dashboard, or to sign in."""
    return redirect(url_for("usage.dashboard"))


@blueprint.route("/login", methods=["GET", "POST"])
def login() -> Response | str | tuple[str, int, dict[str, str]]:
    """Show the sign-in form and sign the user in; failed attempts are limited."""
    if current_user.is_authenticated:
        return redirect(safe_next(request.args.get("next")))
    form = LoginForm()
    if request.method != "POST":
        return render_template("auth/login.html", form=form)
    rate_limits: RateLimits = current_app.extensions["rate_limits"]
    # The account as the form read it, whatever the body's format.
    account = normalize_email(str(form.email.data or ""))[:254]
    counters = _failure_counters(account)
    waits = [rate_limits.exceeded(limit, *ids) for limit, ids in counters]
    wait = max((w for w in waits if w is not None), default=None)
    if wait is not None:
        message = f"Too many failed attempts. Wait {wait} seconds, then try again."
        page = render_template("auth/login.html", form=form, refusal=message)
        return page, 429, {"Retry-After": str(wait)}
    if form.validate_on_submit():
        user = authenticate_user(db.session(), form.email.data, form.password.data)
        if user is not None:
            signed_in = start_session(db.session(), user, clock.now())
            db.session.commit()
            login_user(SignedInUser(signed_in.user_id, signed_in.email, signed_in.token))
            return redirect(safe_next(request.args.get("next")))
    for limit, ids in counters:
        rate_limits.hit(limit, *ids)
    flash(WRONG_CREDENTIALS, "error")
    return render_template("auth/login.html", form=form)


@blueprint.post("/logout")
def logout() -> Response:
    """Sign out (a POST with the CSRF token, so other sites cannot sign users out).

    The session ends on the server too: its cookie, saved and replayed, signs
    nobody in.
    """
    if current_user.is_authenticated:
        end_session(db.session(), current_user.token)
        db.session.commit()
    logout_user()
    flash("You are signed out.", "info")
    return redirect(url_for("auth.login"))

"""Notification settings, and the unsubscribe link of every usage email.

The unsubscribe link works signed out: its token, signed with ``SECRET_KEY``,
names the person. Opening it changes nothing (mail scanners open links);
its button, or a mail provider's one-click POST (RFC 8058, which carries no
cookie and no CSRF token), turns their email off.
"""

from __future__ import annotations

from flask import (
    Blueprint,
    Response,
    abort,
    current_app,
    flash,
    redirect,
    render_template,
    request,
    url_for,
)
from flask_login import current_user, login_required

from portal import clock
from portal.extensions import csrf, db
from portal.models import User
from portal.notify.preferences import (
    Preferences,
    pool_memberships,
    preferences_of,
    set_pool_alerts,
    set_preferences,
    turn_email_off,
    unsubscribing_user,
)
from portal.views.orgs import administered

blueprint = Blueprint("notifications", __name__)
SWITCHES = ("email", "webhook", "pool_alerts")


@blueprint.get("/settings/notifications")
@login_required
def settings() -> str:
    session = db.session()
    return render_template(
        "settings/notifications.html",
        preferences=preferences_of(session, current_user.id),
        memberships=pool_memberships(session, current_user.id),
    )


@blueprint.post("/settings/notifications")
@login_required
def save_settings() -> Response:
    """Each switch is on when its box is ticked; anything else a form cannot send is a 400."""
    unknown = set(request.form) - {"csrf_token", *SWITCHES}
    if unknown or any(request.form.get(name, "on") != "on" for name in SWITCHES):
        abort(400)
    session = db.session()
    wanted = Preferences(**{name: name in request.form for name in SWITCHES})
    set_preferences(session, current_user.id, wanted, clock.now())
    session.commit()
    flash("Notification settings saved.", "success")
    return redirect(url_for("notifications.settings"), 303)  # type: ignore[return-value]


def _unsubscribing(token: str) -> User | None:
    """The user the link's token names; ``None`` for a token this portal did not sign."""
    user_id = unsubscribing_user(current_app.config["SECRET_KEY"], token)
    return db.session().get(User, user_id) if user_id is not None else None


@blueprint.get("/notifications/unsubscribe/<token>")
def unsubscribe(token: str) -> tuple[str, int]:
    user = _unsubscribing(token)
    page = render_template("settings/unsubscribe.html", user=user, done=False)
    return page, 200 if user else 404


@blueprint.post("/notifications/unsubscribe/<token>")
@csrf.exempt
def unsubscribe_now(token: str) -> tuple[str, int]:
    session = db.session()
    user = _unsubscribing(token)
    if user is not None:
        turn_email_off(session, user.id, clock.now())
        session.commit()
    page = render_template("settings/unsubscribe.html", user=user, done=True)
    return page, 200 if user else 404


@blueprint.post("/orgs/<slug>/notifications")
@login_required
def organization_alerts(slug: str) -> Response:
    """An admin turns the pool's alerts on or off, for every admin and member."""
    org = administered(slug)
    wanted = request.form.get("pool_alerts")
    if wanted not in ("on", "off"):
        abort(400)
    set_pool_alerts(db.session(), org, wanted == "on")
    db.session.commit()
    flash(f"Pool alerts for {org.name} are {wanted}.", "success")
    return redirect(url_for("orgs.usage", slug=org.slug), 303)  # type: ignore[return-value]

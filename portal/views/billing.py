"""Upgrading and managing billing in Stripe, and Stripe's webhook.

Checkout and the Billing Portal are POST forms with the CSRF token: no
other site can send a user to them. Only an organization's admins may start
either for it. The webhook needs no session and no CSRF token: its
signature, checked against ``STRIPE_WEBHOOK_SECRET``, is what it proves.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from flask import (
    Blueprint,
    Response,
    abort,
    current_app,
    flash,
    jsonify,
    redirect,
    request,
    url_for,
)
from flask_login import current_user, login_required
from werkzeug.exceptions import ServiceUnavailable

from portal import clock
from portal.billing.checkout import PricesMissing, checkout_url
from portal.billing.settings import load_stripe_settings, load_webhook_secret, stripe_environ
from portal.billing.stripe_client import (
    WEBHOOK_FETCH_TIMEOUT_SECONDS,
    InvalidSignature,
    StripeBilling,
    StripeUnavailable,
    verified_event,
)
from portal.billing.subscriptions import SubjectRef, customer_of, organization_subscribed
from portal.billing.webhooks import OneRequest, handle_event
from portal.config import ConfigError
from portal.extensions import csrf, db
from portal.models import Organization
from portal.plans import PLANS, Plan, PlanKind
from portal.usage import SubjectKind, check_usage
from portal.views.orgs import administered

log = logging.getLogger(__name__)
blueprint = Blueprint("billing", __name__)

WEBHOOK_BODY_LIMIT = 512 * 1024
"""Bytes: Stripe's events are a few kilobytes; a subscription with many items, a few dozen."""


class BillingUnavailable(ServiceUnavailable):
    description = "Billing is unavailable just now: Stripe could not be reached. Try again soon."

    def __init__(self) -> None:
        super().__init__(retry_after=30)


def stripe_billing(*, for_webhook: bool = False) -> StripeBilling | None:
    """Stripe for the pages (or, with its short timeout, the webhook); ``None`` when
    ``STRIPE_API_KEY`` is not set (no billing)."""
    app = current_app
    name = "stripe_webhook" if for_webhook else "stripe_billing"
    if name not in app.extensions:
        try:
            settings = load_stripe_settings(stripe_environ(app.config))
        except ConfigError:
            app.extensions[name] = None
        else:
            timeout = {"timeout": WEBHOOK_FETCH_TIMEOUT_SECONDS} if for_webhook else {}
            app.extensions[name] = StripeBilling.from_settings(settings, **timeout)
    gateway: StripeBilling | None = app.extensions[name]
    return gateway


def billing_enabled() -> bool:
    """Whether the pages offer upgrades and the billing portal."""
    return stripe_billing() is not None and bool(current_app.config.get("PORTAL_BASE_URL"))


def _absolute(path: str) -> str:
    """A URL of the portal's own (``path`` from ``url_for``), as Stripe sends customers back."""
    return str(current_app.config["PORTAL_BASE_URL"]) + path


def _gateway() -> StripeBilling:
    gateway = stripe_billing()
    if gateway is None or not current_app.config.get("PORTAL_BASE_URL"):
        abort(404)
    return gateway


def _chosen_plan(kind: PlanKind) -> Plan:
    """The paid plan of ``kind`` the form names (CSRFProtect has checked its token); else 400."""
    plan = PLANS.get(request.form.get("plan", ""))
    if plan is None or plan.kind is not kind or not plan.is_paid:
        abort(400)
    return plan


def _go_to_stripe(start: Callable[[], str]) -> Response:
    """Redirect to the page Stripe made; 503 when Stripe could not make one."""
    try:
        url = start()
    except PricesMissing as missing:
        log.error("checkout cannot start: %s", missing)
        raise BillingUnavailable() from None
    except StripeUnavailable as error:
        log.error("Stripe could not be reached: %s", error)
        raise BillingUnavailable() from None
    return redirect(url, 303)  # type: ignore[return-value]


@blueprint.post("/billing/checkout")
@login_required
def checkout() -> Response:
    """Subscribe the signed-in user to a paid individual plan, through Stripe Checkout."""
    gateway = _gateway()
    plan = _chosen_plan(PlanKind.INDIVIDUAL)
    now = clock.now()
    status = check_usage(db.session(), current_user.id, now)
    if status.subject.kind is SubjectKind.USER and status.plan.is_paid:
        flash(f"You are on the {status.plan.name} plan: change it in Manage billing.", "info")
        return redirect(url_for("usage.dashboard"))  # type: ignore[return-value]
    subject = SubjectRef(SubjectKind.USER, current_user.id)
    return _go_to_stripe(
        lambda: checkout_url(
            gateway,
            subject=subject,
            plan=plan,
            seats=1,
            customer_id=customer_of(db.session(), subject),
            email=current_user.email,
            success_url=_absolute(url_for("usage.dashboard", upgrading=plan.id)),
            cancel_url=_absolute(url_for("usage.dashboard")),
        )
    )


@blueprint.post("/billing/manage")
@login_required
def manage() -> Response:
    """Open Stripe's Billing Portal for the signed-in user's own subscription."""
    gateway = _gateway()
    customer = customer_of(db.session(), SubjectRef(SubjectKind.USER, current_user.id))
    if customer is None:
        abort(404)
    return _go_to_stripe(
        lambda: gateway.billing_portal_url(customer, _absolute(url_for("usage.dashboard")))
    )


@blueprint.post("/orgs/<slug>/billing/checkout")
@login_required
def organization_checkout(slug: str) -> Response:
    """Subscribe an organization (its admins only) to a team or business plan."""
    gateway = _gateway()
    org = administered(slug)
    plan = _chosen_plan(PlanKind.ORGANIZATION)
    if organization_subscribed(org, clock.now()):
        # A second Checkout would start a second subscription, billed alongside the first.
        plan_name = PLANS[org.plan_id].name
        flash(f"{org.name} is on the {plan_name} plan: change it in Manage billing.", "info")
        return redirect(url_for("orgs.usage", slug=org.slug))  # type: ignore[return-value]
    subject = SubjectRef(SubjectKind.ORGANIZATION, org.id)
    return _go_to_stripe(
        lambda: checkout_url(
            gateway,
            subject=subject,
            plan=plan,
            seats=_seats_needed(org),
            customer_id=org.stripe_customer_id,
            email=current_user.email,
            success_url=_absolute(url_for("orgs.usage", slug=org.slug)),
            cancel_url=_absolute(url_for("orgs.usage", slug=org.slug)),
        )
    )


@blueprint.post("/orgs/<slug>/billing/manage")
@login_required
def organization_manage(slug: str) -> Response:
    """Open Stripe's Billing Portal for an organization (its admins only)."""
    gateway = _gateway()
    org = administered(slug)
    if org.stripe_customer_id is None:
        abort(404)
    customer = org.stripe_customer_id
    return _go_to_stripe(
        lambda: gateway.billing_portal_url(
            customer, _absolute(url_for("orgs.usage", slug=org.slug))
        )
    )


def _seats_needed(org: Organization) -> int:
    return max(org.seats, len(org.memberships))


@blueprint.app_template_global("organization_subscribed")
def organization_subscribed_now(organization_id: int) -> bool:
    """Whether the organization page offers Manage billing rather than Subscribe: the rule
    ``organization_checkout`` enforces."""
    org = db.session.get(Organization, organization_id)
    return org is not None and organization_subscribed(org, clock.now())


@blueprint.post("/stripe/webhook")
@csrf.exempt
def stripe_webhook() -> Response | tuple[Response, int]:
    """Stripe's events: verified, each handled once, in any order (``billing.webhooks``)."""
    secret = load_webhook_secret(stripe_environ(current_app.config))
    if secret is None:
        abort(404)
    request.max_content_length = WEBHOOK_BODY_LIMIT
    now = clock.now()
    try:
        event = verified_event(
            request.get_data(), request.headers.get("Stripe-Signature"), secret, now
        )
    except InvalidSignature as invalid:
        log.warning("refused a webhook delivery: %s", invalid)
        return jsonify(error="invalid signature"), 400
    gateway = stripe_billing(for_webhook=True)
    if gateway is None:
        log.error("a Stripe event arrived, but STRIPE_API_KEY is not set to look it up")
        raise BillingUnavailable()
    handled = handle_event(db.session(), event, OneRequest(gateway), now)
    db.session.commit()
    if handled.outcome == "pending":
        # Acknowledged all the same: sync-subscriptions --pending-only finishes it.
        log.warning("event %s left pending: %s", event.get("id"), handled.message)
    return jsonify(received=True, outcome=handled.outcome)

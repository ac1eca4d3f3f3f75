"""Creating organizations, users, memberships and subscriptions.

Shared by the CLI and the demo data; every check happens before anything is
written, and ``AccountError`` says what is wrong in one sentence.
"""

from __future__ import annotations

import re
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session
from werkzeug.security import check_password_hash, generate_password_hash

from portal.models import ROLES, Membership, Organization, User, UserSubscription
from portal.plans import FREE, INDIVIDUAL_PLAN_IDS, ORGANIZATION_PLAN_IDS
from portal.sessions import end_sessions_of

SLUG_PATTERN = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?$")
EMAIL_PATTERN = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
STRIPE_CUSTOMER_PATTERN = re.compile(r"^cus_[A-Za-z0-9]+$")
MIN_PASSWORD_LENGTH = 8
MAX_PASSWORD_LENGTH = 1024
"""The sign-in form's limit too: hashing a longer one only costs the server."""
MAX_SEATS = 100_000


def normalize_email(email: str) -> str:
    """Emails are compared and stored lower-cased, without surrounding spaces."""
    return email.strip().lower()


class AccountError(ValueError):
    """Input for a new account is invalid or clashes with an existing one."""


def _check_password(password: str) -> None:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise AccountError(f"password must be at least {MIN_PASSWORD_LENGTH} characters")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise AccountError(f"password must be at most {MAX_PASSWORD_LENGTH} characters")


def _check_stripe_customer(customer: str | None) -> None:
    if customer is not None and not STRIPE_CUSTOMER_PATTERN.match(customer):
        raise AccountError(f"Stripe customer id must look like cus_…, got {customer!r}")


def create_organization(
    session: Session,
    *,
    slug: str,
    name: str,
    plan_id: str,
    seats: int,
    now: datetime,
    stripe_customer_id: str | None = None,
    status: str = "active",
    billing_anchor: datetime | None = None,
) -> Organization:
    """A new organization whose subscription (and first billing period) starts at ``now``."""
    if not SLUG_PATTERN.match(slug):
        raise AccountError(
            f"slug must be lowercase letters, digits and inner hyphens (at most 64), got {slug!r}"
        )
    if not name.strip():
        raise AccountError("name must not be empty")
    if plan_id not in ORGANIZATION_PLAN_IDS:
        raise AccountError(
            f"plan must be one of {', '.join(ORGANIZATION_PLAN_IDS)}, got {plan_id!r}"
        )
    if not 1 <= seats <= MAX_SEATS:
        raise AccountError(f"seats must be from 1 to {MAX_SEATS}, got {seats}")
    _check_stripe_customer(stripe_customer_id)
    if session.scalar(select(Organization.id).where(Organization.slug == slug)) is not None:
        raise AccountError(f"an organization with slug {slug!r} already exists")
    org = Organization(
        slug=slug,
        name=name.strip(),
        plan_id=plan_id,
        seats=seats,
        subscription_status=status,
        stripe_customer_id=stripe_customer_id,
        billing_anchor=billing_anchor or now,
        created_at=now,
    )
    session.add(org)
    session.flush()
    return org


def create_user(
    session: Session,
    *,
    email: str,
    password: str | None,
    now: datetime,
    display_name: str | None = None,
    plan_id: str = FREE.id,
    stripe_customer_id: str | None = None,
    subscription_status: str = "active",
    billing_anchor: datetime | None = None,
    organization: Organization | None = None,
    role: str = "member",
) -> User:
    """A new user; a paid plan starts a subscription whose period starts at ``now``."""
    email = normalize_email(email)
    if not EMAIL_PATTERN.match(email) or len(email) > 254:
        raise AccountError(f"email {email!r} is not a valid address")
    if password is not None:
        _check_password(password)
    if plan_id not in INDIVIDUAL_PLAN_IDS:
        raise AccountError(f"plan must be one of {', '.join(INDIVIDUAL_PLAN_IDS)}, got {plan_id!r}")
    if stripe_customer_id is not None and plan_id == FREE.id:
        raise AccountError("a Stripe customer needs a paid plan (starter or pro)")
    _check_stripe_customer(stripe_customer_id)
    if role not in ROLES:
        raise AccountError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
    if session.scalar(select(func.count()).where(User.email == email)):
        raise AccountError(f"a user with email {email!r} already exists")
    user = User(
        email=email,
        display_name=(display_name or email.split("@")[0]).strip(),
        password_hash=generate_password_hash(password) if password else None,
        created_at=now,
    )
    session.add(user)
    if plan_id != FREE.id:
        user.subscription = UserSubscription(
            plan_id=plan_id,
            status=subscription_status,
            stripe_customer_id=stripe_customer_id,
            billing_anchor=billing_anchor or now,
            created_at=now,
        )
    if organization is not None:
        session.add(Membership(user=user, organization=organization, role=role, created_at=now))
    session.flush()
    return user


def add_member(
    session: Session, user: User, organization: Organization, role: str, now: datetime
) -> Membership:
    if role not in ROLES:
        raise AccountError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
    membership = Membership(user=user, organization=organization, role=role, created_at=now)
    session.add(membership)
    session.flush()
    return membership


class UnknownAccount(LookupError):
    """No user has this email."""


def find_user(session: Session, email: str) -> User:
    """The user with this email; ``UnknownAccount`` names it otherwise."""
    user = session.scalar(select(User).where(User.email == normalize_email(email)))
    if user is None:
        raise UnknownAccount(f"no user with email {normalize_email(email)!r}")
    return user


def set_disabled(session: Session, email: str, now: datetime | None) -> User:
    """Disable the user at ``now`` (``None``: enable again). The caller commits.

    A disabled user's sessions end (every cookie of theirs is refused from the
    next request on) and nothing more is recorded for them; their usage so
    far stays counted.
    """
    user = find_user(session, email)
    if now is None or user.disabled_at is None:
        user.disabled_at = now
    if now is not None:
        end_sessions_of(session, user.id)
    session.flush()
    return user


def set_password(session: Session, email: str, password: str) -> User:
    """Give the user a new password and end all their sessions. The caller commits."""
    _check_password(password)
    user = find_user(session, email)
    user.password_hash = generate_password_hash(password)
    end_sessions_of(session, user.id)
    session.flush()
    return user


# Checked against when the email is unknown, so a wrong email takes as long
# as a wrong password and timing does not reveal who has an account.
_UNKNOWN_USER_HASH = generate_password_hash("no account has this password")


def authenticate_user(session: Session, email: str, password: str) -> User | None:
    """The user with this email and password, or ``None`` (one answer for either mistake).

    A disabled user cannot sign in, and is told nothing more than a wrong password.
    """
    user = session.scalar(
        select(User).where(User.email == normalize_email(email), User.disabled_at.is_(None))
    )
    if user is None or not user.password_hash:
        check_password_hash(_UNKNOWN_USER_HASH, password)
        return None
    return user if check_password_hash(user.password_hash, password) else None

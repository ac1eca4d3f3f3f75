"""``flask`` commands: thin Click wrappers over the domain functions."""

from __future__ import annotations

import sys
from datetime import datetime

import click
from flask import Flask
from sqlalchemy import select
from sqlalchemy.orm import Session

from portal import clock
from portal.accounts import (
    AccountError,
    UnknownAccount,
    create_organization,
    create_user,
    find_user,
    set_disabled,
    set_password,
)
from portal.apikeys import ApiKeyError, create_api_key, list_api_keys, revoke_api_key
from portal.billing import cli as billing_cli
from portal.billing import subscription_cli
from portal.extensions import db
from portal.models import Organization
from portal.notify import cli as notify_cli
from portal.plans import INDIVIDUAL_PLAN_IDS, ORGANIZATION_PLAN_IDS
from portal.sessions import end_sessions_of
from portal.usage.organizations import organizations_over_seats


def _session() -> Session:
    """The request-scoped session itself, as the domain functions take it."""
    return db.session()


@click.command("create-org")
@click.option("--slug", required=True, help="URL name, e.g. acme.")
@click.option("--name", required=True, help="Display name.")
@click.option("--plan", "plan_id", required=True, type=click.Choice(ORGANIZATION_PLAN_IDS))
@click.option("--seats", required=True, type=click.IntRange(min=1))
@click.option("--stripe-customer", default=None, help="Stripe customer id (cus_…).")
def create_org_command(
    slug: str, name: str, plan_id: str, seats: int, stripe_customer: str | None
) -> None:
    """Create an organization on a team or business plan, its period starting now."""
    try:
        org = create_organization(
            _session(),
            slug=slug,
            name=name,
            plan_id=plan_id,
            seats=seats,
            stripe_customer_id=stripe_customer,
            now=clock.now(),
        )
    except AccountError as error:
        db.session.rollback()
        raise click.UsageError(str(error)) from error
    db.session.commit()
    click.echo(f"Created organization {org.slug} ({org.plan_id}, {org.seats} seats).")


@click.command("create-user")
@click.option("--email", required=True)
@click.option("--password", required=True, help="At least 8 characters.")
@click.option("--name", default=None, help="Display name (default: the email's local part).")
@click.option(
    "--plan", "plan_id", default="free", show_default=True, type=click.Choice(INDIVIDUAL_PLAN_IDS)
)
@click.option("--stripe-customer", default=None, help="Stripe customer id (cus_…), paid plans.")
@click.option("--org", "org_slug", default=None, help="Slug of an organization to join.")
@click.option("--role", default=None, type=click.Choice(["admin", "member"]), help="Role in --org.")
def create_user_command(
    email: str,
    password: str,
    name: str | None,
    plan_id: str,
    stripe_customer: str | None,
    org_slug: str | None,
    role: str | None,
) -> None:
    """Create a user; a paid plan starts an active subscription whose period starts now."""
    if role is not None and org_slug is None:
        raise click.UsageError("--role needs --org")
    organization = None
    if org_slug is not None:
        organization = db.session.scalar(select(Organization).where(Organization.slug == org_slug))
        if organization is None:
            raise click.UsageError(f"no organization with slug {org_slug!r}")
    try:
        user = create_user(
            _session(),
            email=email,
            password=password,
            display_name=name,
            plan_id=plan_id,
            stripe_customer_id=stripe_customer,
            organization=organization,
            role=role or "member",
            now=clock.now(),
        )
    except AccountError as error:
        db.session.rollback()
        raise click.UsageError(str(error)) from error
    db.session.commit()
    if org_slug is not None and plan_id == "free":
        # Their usage draws on the organization's pool, under its plan.
        click.echo(f"Created user {user.email} ({role or 'member'} of {org_slug}).")
    else:
        joined = f", {role or 'member'} of {org_slug}" if org_slug else ""
        click.echo(f"Created user {user.email} ({plan_id}{joined}).")
    for crowded in organizations_over_seats(_session(), org_slug) if org_slug else []:
        click.echo(
            f"Warning: {crowded}. Its pool does not grow with members: its seats "
            "follow the quantity of its Stripe subscription.",
            err=True,
        )


@click.command("disable-user")
@click.option("--email", required=True)
def disable_user_command(email: str) -> None:
    """Disable a user: signed out everywhere at their next request, nothing more recorded."""
    try:
        user = set_disabled(_session(), email, clock.now())
    except UnknownAccount as error:
        db.session.rollback()
        raise click.UsageError(str(error)) from error
    db.session.commit()
    assert user.disabled_at is not None
    click.echo(
        f"Disabled {user.email} (since {user.disabled_at:%Y-%m-%d %H:%M} UTC): signed out at "
        "the next request; the API refuses to record for them. Usage so far stays counted."
    )


@click.command("enable-user")
@click.option("--email", required=True)
def enable_user_command(email: str) -> None:
    """Enable a disabled user again: they may sign in, and their usage is recorded."""
    try:
        user = set_disabled(_session(), email, None)
    except UnknownAccount as error:
        db.session.rollback()
        raise click.UsageError(str(error)) from error
    db.session.commit()
    click.echo(f"Enabled {user.email}.")


@click.command("sign-out-user")
@click.option("--email", required=True)
def sign_out_user_command(email: str) -> None:
    """End every session of a user: each open browser is signed out at its next request."""
    try:
        user = find_user(_session(), email)
    except UnknownAccount as error:
        raise click.UsageError(str(error)) from error
    ended = end_sessions_of(_session(), user.id)
    db.session.commit()
    click.echo(f"Signed {user.email} out of {ended} session{'' if ended == 1 else 's'}.")


@click.command("set-password")
@click.option("--email", required=True)
def set_password_command(email: str) -> None:
    """Set a user's password, read from a prompt (or stdin), never the command line.

    Every session of the user ends: browsers signed in with the old password
    must sign in again.
    """
    if sys.stdin.isatty():
        password = click.prompt("New password", hide_input=True, confirmation_prompt=True)
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    try:
        user = set_password(_session(), email, password)
    except (UnknownAccount, AccountError) as error:
        db.session.rollback()
        raise click.UsageError(str(error)) from error
    db.session.commit()
    click.echo(f"Set a new password for {user.email}; all their sessions have ended.")


@click.command("seed-demo")
def seed_demo_command() -> None:
    """Load the demo data set into an empty database (does nothing otherwise)."""
    from portal.demo import DEMO_PASSWORD, seed_demo

    result = seed_demo(_session(), clock.now())
    db.session.commit()
    if result.loaded:
        click.echo(f"Loaded demo data: {result.users} users, {result.events} usage events.")
    else:
        click.echo("The database already has users; demo data not loaded.")
    if result.sign_ins:
        click.echo(f"Demo sign-ins (password for all: {DEMO_PASSWORD}):")
        for email, what in result.sign_ins:
            click.echo(f"  {email:<28} {what}")


@click.command("create-api-key")
@click.option("--name", required=True, help="Who uses the key, e.g. slack-backend.")
def create_api_key_command(name: str) -> None:
    """Create a service key for the usage API; the key is shown once, on the last line."""
    try:
        info, key = create_api_key(_session(), name, clock.now())
    except ApiKeyError as error:
        db.session.rollback()
        raise click.UsageError(str(error)) from error
    db.session.commit()
    click.echo(f"Created API key {info.name!r}. Store it now: it cannot be shown again.")
    click.echo(key)


@click.command("revoke-api-key")
@click.argument("name")
def revoke_api_key_command(name: str) -> None:
    """Revoke the API key called NAME; requests with it get 401 at once."""
    try:
        info = revoke_api_key(_session(), name, clock.now())
    except ApiKeyError as error:
        db.session.rollback()
        raise click.UsageError(str(error)) from error
    db.session.commit()
    assert info.revoked_at is not None
    click.echo(f"Revoked API key {info.name!r} ({info.revoked_at:%Y-%m-%d %H:%M} UTC).")


@click.command("list-api-keys")
def list_api_keys_command() -> None:
    """List API keys: name, prefix, created, last used, revoked."""
    keys = list_api_keys(_session())
    if not keys:
        click.echo("No API keys. Create one with: flask create-api-key --name NAME")
        return

    def when(moment: datetime | None) -> str:
        return f"{moment:%Y-%m-%d %H:%M}" if moment else "-"

    click.echo(f"{'name':<24} {'key':<12} {'created':<16} {'last used':<16} revoked")
    for k in keys:
        click.echo(
            f"{k.name:<24} {k.prefix + '…':<12} {when(k.created_at):<16} "
            f"{when(k.last_used_at):<16} {when(k.revoked_at)}"
        )


def init_app(app: Flask) -> None:
    for command in (
        create_org_command,
        create_user_command,
        seed_demo_command,
        disable_user_command,
        enable_user_command,
        sign_out_user_command,
        set_password_command,
        create_api_key_command,
        revoke_api_key_command,
        list_api_keys_command,
    ):
        app.cli.add_command(command)
    billing_cli.init_app(app)
    subscription_cli.init_app(app)
    notify_cli.init_app(app)

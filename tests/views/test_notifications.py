"""The notification settings page, the unsubscribe link, and an organization's pool alerts."""

from __future__ import annotations

from collections.abc import Callable

from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy.orm import Session

from portal.models import Organization
from portal.notify.preferences import Preferences, preferences_of, unsubscribe_token
from tests.factories import make_org, make_user
from tests.views.conftest import PASSWORD, csrf_token

SignIn = Callable[[str], FlaskClient]


def save(client: FlaskClient, **fields: str) -> tuple[int, str]:
    token = csrf_token(client.get("/settings/notifications").get_data(as_text=True))
    answer = client.post("/settings/notifications", data={"csrf_token": token, **fields})
    return answer.status_code, client.get("/settings/notifications").get_data(as_text=True)


def stored(session: Session, user_id: int) -> Preferences:
    session.expire_all()
    return preferences_of(session, user_id)


def test_a_user_turns_email_off_and_sees_it_kept(session: Session, signed_in: SignIn) -> None:
    user = make_user(session, password=PASSWORD)
    session.commit()
    browser = signed_in(user.email)
    page = browser.get("/settings/notifications").get_data(as_text=True)
    assert 'name="email" checked' in page and 'name="webhook" checked' in page

    status, page = save(browser, webhook="on")

    assert status == 303
    assert "Notification settings saved." in page
    assert 'name="email" >' in page and 'name="webhook" checked' in page
    assert stored(session, user.id) == Preferences(email=False, webhook=True)


def test_a_form_without_its_csrf_token_or_with_odd_values_changes_nothing(
    session: Session, signed_in: SignIn
) -> None:
    user = make_user(session, password=PASSWORD)
    session.commit()
    browser = signed_in(user.email)

    assert browser.post("/settings/notifications", data={"webhook": "on"}).status_code == 400
    assert save(browser, email="yes", webhook="on")[0] == 400
    assert save(browser, email="on", admin="on")[0] == 400
    assert stored(session, user.id) == Preferences()


def test_a_member_asks_to_hear_about_the_pool(session: Session, signed_in: SignIn) -> None:
    org = make_org(session)
    member = make_user(session, org=org, password=PASSWORD)
    session.commit()
    browser = signed_in(member.email)
    assert f"Tell me when {org.name}'s pooled usage reaches" in browser.get(
        "/settings/notifications"
    ).get_data(as_text=True)

    save(browser, email="on", webhook="on", pool_alerts="on")

    assert stored(session, member.id).pool_alerts is True


def test_the_unsubscribe_link_asks_first_and_one_click_works_signed_out(
    app: Flask, session: Session
) -> None:
    user = make_user(session)
    session.commit()
    path = f"/notifications/unsubscribe/{unsubscribe_token(app.config['SECRET_KEY'], user.id)}"
    stranger = app.test_client()

    opened = stranger.get(path)  # what a mail scanner does
    assert opened.status_code == 200
    assert f"Stop usage emails for {user.email}" in opened.get_data(as_text=True)
    assert stored(session, user.id) == Preferences()

    # RFC 8058: the provider's POST, with no cookie and no CSRF token.
    clicked = stranger.post(path, data={"List-Unsubscribe": "One-Click"})
    assert clicked.status_code == 200
    assert f"no more usage emails at {user.email}" in clicked.get_data(as_text=True)
    assert stored(session, user.id) == Preferences(email=False, webhook=True)
    assert stranger.post(path).status_code == 200  # again: still off, no error


def test_a_tampered_unsubscribe_link_is_not_found_and_changes_nothing(
    app: Flask, session: Session
) -> None:
    user = make_user(session)
    other = make_user(session)
    session.commit()
    token = unsubscribe_token(app.config["SECRET_KEY"], user.id)
    forged = unsubscribe_token("another portal's secret key", other.id)
    client = app.test_client()

    for bad in (token[:-2] + "xx", forged, "not-a-token", token.replace(".", "")):
        assert client.get(f"/notifications/unsubscribe/{bad}").status_code == 404
        answer = client.post(f"/notifications/unsubscribe/{bad}")
        assert answer.status_code == 404
        assert "This link is not valid" in answer.get_data(as_text=True)
    assert stored(session, user.id) == stored(session, other.id) == Preferences()


def test_only_admins_turn_an_organizations_pool_alerts_off(
    session: Session, signed_in: SignIn
) -> None:
    org = make_org(session)
    admin = make_user(session, org=org, role="admin", password=PASSWORD)
    member = make_user(session, org=org, password=PASSWORD)
    stranger = make_user(session, password=PASSWORD)
    session.commit()
    path = f"/orgs/{org.slug}/notifications"

    def post(client: FlaskClient, value: str) -> int:
        token = csrf_token(client.get("/settings/notifications").get_data(as_text=True))
        return client.post(path, data={"csrf_token": token, "pool_alerts": value}).status_code

    assert post(signed_in(member.email), "off") == 403
    assert post(signed_in(stranger.email), "off") == 404
    browser = signed_in(admin.email)
    assert post(browser, "maybe") == 400
    assert "Pool alerts" in browser.get(f"/orgs/{org.slug}/usage").get_data(as_text=True)
    session.expire_all()
    assert session.get(Organization, org.id).pool_alerts is True

    assert post(browser, "off") == 303
    page = browser.get(f"/orgs/{org.slug}/usage").get_data(as_text=True)
    assert f"Pool alerts for {org.name} are off." in page
    assert "Off: nobody is told when the pool reaches" in page
    session.expire_all()
    assert session.get(Organization, org.id).pool_alerts is False

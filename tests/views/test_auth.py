from __future__ import annotations

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy.orm import Session

from tests.factories import make_user
from tests.views.conftest import PASSWORD, csrf_token, sign_in


def test_sign_in_and_out(app: Flask, session: Session) -> None:
    make_user(session, email="ada@example.com", password=PASSWORD)
    session.commit()
    client = app.test_client()
    response = sign_in(client, "ADA@example.com")
    assert response.status_code == 302 and response.headers["Location"] == "/usage"
    assert "ada@example.com" in client.get("/usage").get_data(as_text=True)

    token = csrf_token(client.get("/usage").get_data(as_text=True))
    out = client.post("/logout", data={"csrf_token": token})
    assert out.headers["Location"] == "/login"
    assert client.get("/usage").status_code == 302


@pytest.mark.parametrize(
    "email,password", [("ada@example.com", "wrong"), ("nobody@example.com", PASSWORD)]
)
def test_wrong_email_or_password_get_one_generic_message(
    app: Flask, session: Session, email: str, password: str
) -> None:
    make_user(session, email="ada@example.com", password=PASSWORD)
    session.commit()
    response = sign_in(app.test_client(), email, password)
    assert response.status_code == 200
    assert "That email and password don&#39;t match an account." in response.get_data(as_text=True)


@pytest.mark.parametrize(
    "target,expected",
    [
        ("/usage/history", "/usage/history"),
        ("https://evil.example/steal", "/usage"),
        ("//evil.example", "/usage"),
        ("/\\evil.example", "/usage"),
        ("//[::1/usage", "/usage"),  # not even a URL
    ],
)
def test_next_redirects_only_to_local_paths(
    app: Flask, session: Session, target: str, expected: str
) -> None:
    make_user(session, email="ada@example.com", password=PASSWORD)
    session.commit()
    response = sign_in(app.test_client(), "ada@example.com", next_url=target)
    assert response.headers["Location"] == expected


def test_signed_out_visitors_are_sent_to_login(app: Flask) -> None:
    client = app.test_client()
    for path in ("/usage", "/usage/history", "/orgs/acme/usage", "/orgs/acme/usage.csv"):
        response = client.get(path)
        assert response.status_code == 302
        assert response.headers["Location"].startswith("/login?next=")


def test_expired_session_makes_an_htmx_poll_redirect_the_page(app: Flask) -> None:
    response = app.test_client().get("/usage/current", headers={"HX-Request": "true"})
    assert response.status_code == 401
    assert response.headers["HX-Redirect"] == "/login"
    assert b"<form" not in response.data


def test_a_poll_from_a_page_that_is_not_a_url_here_still_goes_to_sign_in(app: Flask) -> None:
    client = app.test_client()
    for current in ("http://[::1/usage", "http://localhost//evil.example/x"):
        response = client.get(
            "/usage/current", headers={"HX-Request": "true", "HX-Current-URL": current}
        )
        assert response.status_code == 401
        assert response.headers["HX-Redirect"] == "/login"


def test_forms_without_csrf_token_are_refused(app: Flask, session: Session) -> None:
    make_user(session, email="ada@example.com", password=PASSWORD)
    session.commit()
    client = app.test_client()
    response = client.post("/login", data={"email": "ada@example.com", "password": PASSWORD})
    assert response.status_code == 400
    assert "form expired" in response.get_data(as_text=True)
    assert client.get("/usage").status_code == 302  # not signed in


def test_sign_out_needs_the_csrf_token(app: Flask, session: Session, signed_in) -> None:  # type: ignore[no-untyped-def]
    make_user(session, email="ada@example.com", password=PASSWORD)
    session.commit()
    client = signed_in("ada@example.com")
    assert client.post("/logout").status_code == 400
    assert client.get("/usage").status_code == 200


def from_address(app: Flask, address: str) -> FlaskClient:
    client = app.test_client()
    client.environ_base["REMOTE_ADDR"] = address
    return client


def test_failed_sign_ins_are_limited_per_account_and_address(app: Flask, session: Session) -> None:
    make_user(session, email="ada@example.com", password=PASSWORD)
    session.commit()
    attacker = from_address(app, "203.0.113.66")
    failures = [sign_in(attacker, "ada@example.com", "wrong").status_code for _ in range(5)]
    refused = sign_in(attacker, "ada@example.com")  # even the right password, from there
    assert failures == [200] * 5 and refused.status_code == 429
    page = refused.get_data(as_text=True)
    assert "Too many failed attempts. Wait " in page and 'name="password"' in page
    assert 0 < int(refused.headers["Retry-After"]) <= 60
    # The owner, elsewhere, is not locked out by someone else's guesses.
    assert sign_in(from_address(app, "198.51.100.7"), "ada@example.com").status_code == 302


def test_successful_sign_ins_do_not_count(app: Flask, session: Session) -> None:
    make_user(session, email="ada@example.com", password=PASSWORD)
    session.commit()
    statuses = [sign_in(from_address(app, "198.51.100.7"), "ada@example.com").status_code]
    statuses += [
        sign_in(from_address(app, "198.51.100.7"), "ada@example.com").status_code for _ in range(6)
    ]
    assert statuses == [302] * 7


def test_failures_are_limited_per_address_across_accounts(app: Flask, session: Session) -> None:
    make_user(session, email="ada@example.com", password=PASSWORD)
    session.commit()
    guesser = from_address(app, "203.0.113.66")
    failures = [sign_in(guesser, f"user{n}@example.com", "wrong").status_code for n in range(20)]
    assert failures == [200] * 20
    assert sign_in(guesser, "ada@example.com").status_code == 429


def test_a_json_body_meets_the_same_limits(app: Flask, session: Session) -> None:
    make_user(session, email="ada@example.com", password=PASSWORD)
    session.commit()
    client = from_address(app, "203.0.113.66")
    token = csrf_token(client.get("/login").get_data(as_text=True))

    def attempt(password: str) -> int:
        body = {"email": "ada@example.com", "password": password}
        headers = {"X-CSRFToken": token}
        return client.post("/login", json=body, headers=headers).status_code

    assert [attempt("wrong") for _ in range(5)] + [attempt(PASSWORD)] == [200] * 5 + [429]


def test_passwords_are_hashed_with_a_current_algorithm(session: Session) -> None:
    user = make_user(session, email="ada@example.com", password=PASSWORD)
    assert user.password_hash and user.password_hash.startswith(("scrypt:", "pbkdf2:"))
    assert PASSWORD not in user.password_hash


def test_security_headers_and_cookie_flags(app: Flask, session: Session) -> None:
    make_user(session, email="ada@example.com", password=PASSWORD)
    session.commit()
    client = app.test_client()
    page = client.get("/login")
    csp = page.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert page.headers["X-Content-Type-Options"] == "nosniff"
    response = sign_in(client, "ada@example.com")
    cookie = response.headers["Set-Cookie"]  # type: ignore[attr-defined]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie
    assert "<script>" not in page.get_data(as_text=True)

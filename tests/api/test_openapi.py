"""The OpenAPI document matches the implementation: schemathesis finds no 5xx and no
response that breaks the schema."""

from __future__ import annotations

from datetime import timedelta

import pytest
import schemathesis
from flask import Flask
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from sqlalchemy.orm import Session

from portal import clock
from tests.factories import make_org, make_user


def seed_users(session: Session) -> None:
    """A few real users, so generated requests reach the recording code too."""
    start = clock.now() - timedelta(days=2)
    make_user(session, email="free@example.com", anchor=start)
    make_user(session, plan="pro", email="pro@example.com", anchor=start)
    make_user(session, org=make_org(session, anchor=start), email="member@example.com")
    session.commit()


SEEDED_EMAILS = ["free@example.com", "pro@example.com", "member@example.com"]


def with_user(case: schemathesis.Case, email: str | None) -> schemathesis.Case:
    if email is None:
        return case
    if case.path_parameters and "email" in case.path_parameters:
        case.path_parameters["email"] = email
    body = case.body
    if isinstance(body, dict) and "user_email" in body:
        body["user_email"] = email
    if isinstance(body, dict) and isinstance(body.get("events"), list):
        for event in body["events"]:
            if isinstance(event, dict):
                event["user_email"] = email
    return case


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
    negative_data_rejection,
    ignored_auth,
]


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_api_conforms_to_its_openapi_document(
    app: Flask, session: Session, api_key: str, mode: GenerationMode
) -> None:
    # Driven through Hypothesis directly: schemathesis' pytest plugin does not
    # run under pytest 9 yet.
    seed_users(session)
    schema = schemathesis.openapi.from_wsgi("/api/v1/openapi.json", app)
    headers = {"Authorization": f"Bearer {api_key}"}

    cases = schema.as_strategy(generation_mode=mode)
    if mode is GenerationMode.POSITIVE:
        # Random emails never name a real user; point half the cases at one so
        # the recording paths and their responses are exercised too.
        cases = cases.flatmap(
            lambda case: st.sampled_from([None, *SEEDED_EMAILS]).map(
                lambda email: with_user(case, email)
            )
        )

    @given(case=cases)
    @settings(
        max_examples=150,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def check(case: schemathesis.Case) -> None:
        # Each case starts with fresh limits: the checks send bad keys on
        # purpose, and failed authentication is limited per address (a 429
        # after 30, which tests/test_config.py checks).
        app.extensions["rate_limits"].reset()
        case.call_and_validate(headers=headers, checks=CHECKS)

    check()

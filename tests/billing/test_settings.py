from __future__ import annotations

import pytest

from portal.billing.settings import DEFAULT_METER_EVENT_NAME, load_stripe_settings
from portal.config import ConfigError

KEY = "sk_test_0123456789abcdef"


def test_a_secret_or_restricted_key_is_enough_and_the_meter_has_a_default() -> None:
    for key in (KEY, "sk_live_0123456789abcdef", "rk_test_0123456789abcdef"):
        settings = load_stripe_settings({"STRIPE_API_KEY": key})
        assert settings.api_key == key
        assert settings.meter_event_name == DEFAULT_METER_EVENT_NAME == "ai_suggestion"
        assert settings.api_base is None


def test_the_key_never_appears_in_the_settings_repr() -> None:
    settings = load_stripe_settings({"STRIPE_API_KEY": KEY})
    assert KEY not in repr(settings) and "test key" in repr(settings)


@pytest.mark.parametrize(
    "key", ["", "   ", "pk_test_0123456789abcdef", "whsec_0123456789", "sk_test_", "sk_0123456789"]
)
def test_a_missing_or_malformed_key_names_stripe_api_key(key: str) -> None:
    with pytest.raises(ConfigError, match="STRIPE_API_KEY") as raised:
        load_stripe_settings({"STRIPE_API_KEY": key})
    if len(key) > 8:
        assert key not in str(raised.value)


@pytest.mark.parametrize(
    "base,ok",
    [
        ("http://127.0.0.1:12111", True),
        ("http://localhost:12111/", True),
        ("https://stripe-proxy.internal.example", True),
        ("http://stripe-proxy.internal.example", False),
        ("ftp://127.0.0.1", False),
        ("127.0.0.1:12111", False),
    ],
)
def test_api_base_is_https_or_loopback(base: str, ok: bool) -> None:
    environ = {"STRIPE_API_KEY": KEY, "STRIPE_API_BASE": base}
    if ok:
        assert load_stripe_settings(environ).api_base == base.rstrip("/")
    else:
        with pytest.raises(ConfigError, match="STRIPE_API_BASE"):
            load_stripe_settings(environ)


@pytest.mark.parametrize("name", ["two words", "x" * 101])
def test_a_bad_meter_event_name_is_refused(name: str) -> None:
    with pytest.raises(ConfigError, match="STRIPE_METER_EVENT_NAME"):
        load_stripe_settings({"STRIPE_API_KEY": KEY, "STRIPE_METER_EVENT_NAME": name})

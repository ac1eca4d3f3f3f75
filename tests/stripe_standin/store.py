"""The stand-in's Billing state, and the ids and times Stripe writes on its objects."""

from __future__ import annotations

import secrets
import threading
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar, overload

from tests.stripe_standin.errors import ApiError

if TYPE_CHECKING:
    from tests.stripe_standin.subscriptions import Subscription

T = TypeVar("T")
LineItems = list[tuple[dict[str, Any], int | None]]
"""Each price with its quantity (``None`` for a metered price)."""


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


@overload
def unix(moment: datetime) -> int: ...
@overload
def unix(moment: datetime | None) -> int | None: ...
def unix(moment: datetime | None) -> int | None:
    """Unix seconds, as Stripe writes every time."""
    return None if moment is None else int(moment.timestamp())


@dataclass
class CheckoutRecord:
    """A Checkout Session and what it will subscribe the customer to."""

    session: dict[str, Any]
    line_items: LineItems
    subscription_metadata: dict[str, str]
    trial_period_days: int | None


@dataclass
class Store:
    lock: threading.RLock = field(default_factory=threading.RLock)
    # Insertion order is creation order: lists answer newest first from it.
    prices: dict[str, dict[str, Any]] = field(default_factory=dict)
    customers: dict[str, dict[str, Any]] = field(default_factory=dict)
    checkouts: dict[str, CheckoutRecord] = field(default_factory=dict)
    subscriptions: dict[str, Subscription] = field(default_factory=dict)
    events: dict[str, dict[str, Any]] = field(default_factory=dict)
    meter: str = field(default_factory=lambda: new_id("mtr"))
    """The meter behind metered prices that name none."""


def find(objects: dict[str, T], key: str, noun: str, *, param: str = "id", status: int = 404) -> T:
    """The object with this id, or Stripe's ``resource_missing`` answer."""
    try:
        return objects[key]
    except KeyError:
        raise ApiError(
            status, f"No such {noun}: '{key}'", code="resource_missing", param=param
        ) from None


def missing_param(param: str) -> ApiError:
    return ApiError(400, f"Missing required param: {param}.", code="parameter_missing", param=param)

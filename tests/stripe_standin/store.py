"""The stand-in's Billing state, and the ids and times Stripe writes on its objects."""

from __future__ import annotations

import secrets
import threading
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar, overload

from tests.stripe_standin.errors import ApiError

T = TypeVar("T")


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
class Store:
    lock: threading.RLock = field(default_factory=threading.RLock)
    # Insertion order is creation order: lists answer newest first from it.
    prices: dict[str, dict[str, Any]] = field(default_factory=dict)
    customers: dict[str, dict[str, Any]] = field(default_factory=dict)
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

"""The catalogue: prices (set up by tests, read over HTTP) and customers."""

from __future__ import annotations

import copy
from collections.abc import Callable
from datetime import datetime
from typing import Any

from portal.plans import PLANS, PlanKind
from tests.stripe_standin import forms
from tests.stripe_standin.forms import Params
from tests.stripe_standin.store import Store, find, new_id, unix

INTERVALS = ("day", "week", "month", "year")


def price_view(price: dict[str, Any], expand: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """A price as the API answers it: ``tiers`` only when expanded, as Stripe does."""
    if any(path.split(".")[-1] == "tiers" for path in expand):
        return copy.deepcopy(price)
    return {name: copy.deepcopy(value) for name, value in price.items() if name != "tiers"}


class Catalogue:
    """Prices and customers; the base of the stand-in's Billing behaviour."""

    clock: Callable[[], datetime]

    def __init__(self) -> None:
        self._store = Store()

    def add_price(
        self,
        lookup_key: str,
        *,
        unit_amount: int | None,
        usage_type: str = "licensed",
        interval: str = "month",
        meter: str | None = None,
        tiers: list[dict[str, Any]] | None = None,
        active: bool = True,
        metadata: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """Add a recurring euro price; ``tiers`` (``{"up_to": n | "inf", "unit_amount": c}``,
        graduated) replace ``unit_amount``, as in Stripe. The answer shows the tiers, as
        the API does with ``expand[]=tiers``."""
        if usage_type not in ("licensed", "metered") or interval not in INTERVALS:
            raise ValueError(f"no such price: usage_type={usage_type!r}, interval={interval!r}")
        if (unit_amount is None) == (tiers is None):
            raise ValueError("a price has a unit_amount or tiers, not both and not neither")
        with self._store.lock:
            if self._price_by_lookup_key(lookup_key, active_only=False) is not None:
                raise ValueError(f"a price already has the lookup key {lookup_key!r}")
            price: dict[str, Any] = {
                "id": new_id("price"),
                "object": "price",
                "active": active,
                "billing_scheme": "per_unit" if tiers is None else "tiered",
                "created": unix(self.clock()),
                "currency": "eur",
                "custom_unit_amount": None,
                "livemode": False,
                "lookup_key": lookup_key,
                "metadata": dict(metadata or {}),
                "nickname": None,
                "product": new_id("prod"),
                "recurring": {
                    "interval": interval,
                    "interval_count": 1,
                    # Since the basil API versions a metered price bills a meter.
                    "meter": (meter or self._store.meter) if usage_type == "metered" else None,
                    "trial_period_days": None,
                    "usage_type": usage_type,
                },
                "tax_behavior": "unspecified",
                "tiers_mode": None if tiers is None else "graduated",
                "transform_quantity": None,
                "type": "recurring",
                "unit_amount": unit_amount,
                "unit_amount_decimal": None if unit_amount is None else str(unit_amount),
            }
            if tiers is not None:
                price["tiers"] = [_tier(tier) for tier in tiers]
            self._store.prices[price["id"]] = price
            return price_view(price, ["tiers"])

    def add_portal_catalogue(self) -> dict[str, dict[str, Any]]:
        """The portal's paid plans as Stripe prices, by lookup key.

        Each plan gets a licensed price (its lookup key is the plan id) and a
        metered one (``<plan>_usage``). An individual plan's metered price is
        graduated: the included suggestions at 0, then the overage rate. An
        organization's inclusion grows with its seats, which tiers cannot say,
        so its metered price is per unit at the overage rate and its metadata
        records the inclusion per seat; the stand-in bills nothing either way.
        """
        prices: dict[str, dict[str, Any]] = {}
        for plan in PLANS.values():
            if not plan.is_paid or plan.overage_rate_cents is None:
                continue
            prices[plan.id] = self.add_price(plan.id, unit_amount=plan.price_cents)
            usage_key = f"{plan.id}_usage"
            if plan.kind is PlanKind.INDIVIDUAL:
                tiers: list[dict[str, Any]] = [
                    {"up_to": plan.included_per_seat, "unit_amount": 0},
                    {"up_to": "inf", "unit_amount": plan.overage_rate_cents},
                ]
                prices[usage_key] = self.add_price(
                    usage_key, unit_amount=None, usage_type="metered", tiers=tiers
                )
            else:
                prices[usage_key] = self.add_price(
                    usage_key,
                    unit_amount=plan.overage_rate_cents,
                    usage_type="metered",
                    metadata={"included_per_seat": str(plan.included_per_seat)},
                )
        return prices

    def add_customer(
        self,
        *,
        email: str | None = None,
        name: str | None = None,
        metadata: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """A new customer, as ``POST /v1/customers`` makes it."""
        customer: dict[str, Any] = {
            "id": new_id("cus"),
            "object": "customer",
            "address": None,
            "balance": 0,
            "created": unix(self.clock()),
            "currency": None,
            "default_source": None,
            "delinquent": False,
            "description": None,
            "email": email,
            "invoice_prefix": new_id("x")[2:10].upper(),
            "invoice_settings": {
                "custom_fields": None,
                "default_payment_method": None,
                "footer": None,
                "rendering_options": None,
            },
            "livemode": False,
            "metadata": dict(metadata or {}),
            "name": name,
            "phone": None,
            "preferred_locales": [],
            "shipping": None,
            "tax_exempt": "none",
            "test_clock": None,
        }
        with self._store.lock:
            self._store.customers[customer["id"]] = customer
        return copy.deepcopy(customer)

    def _price_by_lookup_key(
        self, lookup_key: str, *, active_only: bool = True
    ) -> dict[str, Any] | None:
        return next(
            (
                price
                for price in self._store.prices.values()
                if price["lookup_key"] == lookup_key and (price["active"] or not active_only)
            ),
            None,
        )

    # -- HTTP ------------------------------------------------------------

    def _list_prices(self, params: Params) -> dict[str, Any]:
        lookup_keys = forms.strings(params, "lookup_keys")
        active = forms.boolean(params, "active")

        def keep(price: dict[str, Any]) -> bool:
            return (not lookup_keys or price["lookup_key"] in lookup_keys) and (
                active is None or price["active"] is active
            )

        with self._store.lock:
            newest_first = list(reversed(self._store.prices.values()))
        expand = forms.strings(params, "expand")
        return forms.page(
            newest_first,
            params,
            url="/v1/prices",
            noun="price",
            keep=keep,
            view=lambda price: price_view(price, expand),
        )

    def _get_price(self, params: Params, price_id: str) -> dict[str, Any]:
        with self._store.lock:
            price = find(self._store.prices, price_id, "price")
        return price_view(price, forms.strings(params, "expand"))

    def _create_customer(self, params: Params) -> dict[str, Any]:
        return self.add_customer(
            email=forms.text(params, "email"),
            name=forms.text(params, "name"),
            metadata=forms.metadata(params),
        )

    def _get_customer(self, params: Params, customer_id: str) -> dict[str, Any]:
        with self._store.lock:
            return copy.deepcopy(find(self._store.customers, customer_id, "customer"))


def _tier(tier: dict[str, Any]) -> dict[str, Any]:
    """A graduated tier as Stripe shows it; ``up_to`` is ``None`` for the last ("inf")."""
    unit_amount = tier.get("unit_amount")
    flat_amount = tier.get("flat_amount")
    return {
        "flat_amount": flat_amount,
        "flat_amount_decimal": None if flat_amount is None else str(flat_amount),
        "unit_amount": unit_amount,
        "unit_amount_decimal": None if unit_amount is None else str(unit_amount),
        "up_to": None if tier["up_to"] == "inf" else int(tier["up_to"]),
    }

"""Checkout Sessions (and paying them) and Billing Portal sessions."""

from __future__ import annotations

import copy
from datetime import timedelta
from typing import Any

from stripe.params import checkout as checkout_params

from tests.stripe_standin import forms
from tests.stripe_standin.errors import ApiError
from tests.stripe_standin.events import new_event
from tests.stripe_standin.forms import Params
from tests.stripe_standin.lifecycle import Lifecycle
from tests.stripe_standin.store import CheckoutRecord, LineItems, find, missing_param, new_id, unix

CHECKOUT_LIFETIME = timedelta(hours=24)


class Checkout(Lifecycle):
    """Checkout in subscription mode, and the Billing Portal's sessions."""

    @property
    def url(self) -> str:
        """Where the hosted pages live: the server's address."""
        raise NotImplementedError

    def complete_checkout(
        self, session_id: str, *, trial_days: int | None = None
    ) -> list[dict[str, Any]]:
        """The customer pays: a customer (unless the session named one) and a subscription.

        ``trial_days`` overrides the session's ``subscription_data[trial_period_days]``.
        Returns ``checkout.session.completed`` and ``customer.subscription.created``.
        """
        with self._store.lock:
            checkout = find(self._store.checkouts, session_id, "checkout.session")
            session = checkout.session
            if session["status"] != "open":
                raise ValueError(f"{session_id} is {session['status']}, not open")
            now = self.clock()
            customer_id = (
                session["customer"] or self.add_customer(email=session["customer_email"])["id"]
            )
            customer = self._store.customers[customer_id]
            trial = trial_days if trial_days is not None else checkout.trial_period_days
            subscription = self._subscribe(
                customer_id, checkout.line_items, checkout.subscription_metadata, trial, now
            )
            session.update(
                customer=customer_id,
                customer_details={
                    "address": None,
                    "email": customer["email"],
                    "name": customer["name"],
                    "phone": None,
                    "tax_exempt": "none",
                    "tax_ids": [],
                },
                payment_status="no_payment_required" if trial else "paid",
                status="complete",
                subscription=subscription.id,
                # A completed session has no page to pay on any more.
                url=None,
            )
            return [
                self._emit(new_event("checkout.session.completed", session, now)),
                self._emit(
                    new_event("customer.subscription.created", subscription.to_stripe(), now)
                ),
            ]

    def checkout_session(self, session_id: str) -> dict[str, Any]:
        with self._store.lock:
            checkout = find(self._store.checkouts, session_id, "checkout.session")
            return copy.deepcopy(checkout.session)

    # -- HTTP ------------------------------------------------------------

    def _create_checkout(self, params: Params) -> dict[str, Any]:
        mode = forms.text(params, "mode")
        if mode is None:
            raise missing_param("mode")
        if mode not in ("payment", "setup", "subscription"):
            raise ApiError(
                400, "Invalid mode: must be one of payment, setup, or subscription", param="mode"
            )
        customer = forms.text(params, "customer")
        email = forms.text(params, "customer_email")
        if customer and email:
            raise ApiError(
                400,
                "You may only specify one of these parameters: customer, customer_email.",
                param="customer_email",
            )
        client_reference_id = forms.text(params, "client_reference_id")
        if client_reference_id is not None and len(client_reference_id) > 200:
            raise ApiError(
                400,
                "Invalid client_reference_id: must be at most 200 characters",
                code="string_length_exceeds_maximum",
                param="client_reference_id",
            )
        subscription_data = forms.mapping(params, "subscription_data")
        forms.check_known(
            subscription_data,
            checkout_params.SessionCreateParamsSubscriptionData,
            "subscription_data",
        )
        trial = forms.integer(
            subscription_data,
            "trial_period_days",
            minimum=1,
            maximum=730,
            param="subscription_data[trial_period_days]",
        )
        subscription_metadata = forms.metadata(
            subscription_data, param="subscription_data[metadata]"
        )
        with self._store.lock:
            if customer is not None:
                find(self._store.customers, customer, "customer", param="customer", status=400)
            line_items = self._line_items(params.get("line_items"), mode)
            now = self.clock()
            session_id = new_id("cs_test")
            first_invoice = 0 if trial else _licensed_total(line_items)
            session: dict[str, Any] = {
                "id": session_id,
                "object": "checkout.session",
                "amount_subtotal": first_invoice,
                "amount_total": first_invoice,
                "cancel_url": forms.text(params, "cancel_url"),
                "client_reference_id": client_reference_id,
                "created": unix(now),
                "currency": "eur",
                "customer": customer,
                "customer_details": None,
                "customer_email": email,
                "expires_at": unix(now + CHECKOUT_LIFETIME),
                "livemode": False,
                "metadata": forms.metadata(params),
                "mode": mode,
                "payment_status": "unpaid",
                "status": "open",
                "subscription": None,
                "success_url": _with_session_id(forms.text(params, "success_url"), session_id),
                "url": f"{self.url}/pay/{session_id}",
            }
            self._store.checkouts[session_id] = CheckoutRecord(
                session, line_items, subscription_metadata, trial
            )
            return copy.deepcopy(session)

    def _line_items(self, raw: Any, mode: str) -> LineItems:
        """The prices and quantities of ``line_items``, refused as Stripe refuses them."""
        if raw is not None and not isinstance(raw, list):
            raise ApiError(400, "Invalid array", param="line_items")
        if mode == "setup":
            if raw:
                raise ApiError(
                    400, "You cannot pass `line_items` in `setup` mode.", param="line_items"
                )
            raise ApiError(400, "The stand-in models Checkout in subscription mode only.")
        if not raw:
            raise ApiError(
                400,
                "You must provide at least one recurring price in `subscription` mode when "
                "using prices.",
                param="line_items",
            )
        items: LineItems = []
        for n, entry in enumerate(raw):
            where = f"line_items[{n}]"
            if not isinstance(entry, dict):
                raise ApiError(400, f"Invalid hash: {where}", param=where)
            forms.check_known(entry, checkout_params.SessionCreateParamsLineItem, where)
            price_id = forms.text(entry, "price", param=f"{where}[price]")
            if price_id is None:
                raise ApiError(
                    400,
                    f"You must specify either `price` or `price_data` in `{where}`; the "
                    "stand-in knows only catalogue prices.",
                    param=f"{where}[price]",
                )
            price = self._store.prices.get(price_id)
            if price is None or not price["active"]:
                raise ApiError(
                    400,
                    f"No such price: '{price_id}'"
                    if price is None
                    else "The price specified is inactive. This field only accepts active prices.",
                    code="resource_missing",
                    param=f"{where}[price]",
                )
            quantity = forms.integer(entry, "quantity", minimum=1, param=f"{where}[quantity]")
            metered = price["recurring"]["usage_type"] == "metered"
            if metered and quantity is not None:
                raise ApiError(
                    400,
                    "Quantity should not be specified where usage_type is `metered`. Remove "
                    f"quantity from `{where}`.",
                    param=f"{where}[quantity]",
                )
            if not metered and quantity is None:
                raise ApiError(
                    400,
                    f"Quantity is required. Add `quantity` to `{where}`",
                    code="parameter_missing",
                    param=f"{where}[quantity]",
                )
            items.append((price, quantity))
        if mode == "payment":
            raise ApiError(
                400,
                "You specified `payment` mode but passed a recurring price. Either switch to "
                "`subscription` mode or use only one-time prices.",
                param="mode",
            )
        if len({price["recurring"]["interval"] for price, _ in items}) > 1:
            raise ApiError(
                400,
                "Checkout does not support multiple prices with different billing intervals.",
                param="line_items",
            )
        return items

    def _get_checkout(self, params: Params, session_id: str) -> dict[str, Any]:
        return self._expanded(self.checkout_session(session_id), params)

    def _create_portal_session(self, params: Params) -> dict[str, Any]:
        customer = forms.text(params, "customer")
        if customer is None:
            raise missing_param("customer")
        with self._store.lock:
            find(self._store.customers, customer, "customer", param="customer", status=400)
        session_id = new_id("bps")
        return {
            "id": session_id,
            "object": "billing_portal.session",
            "configuration": new_id("bpc"),
            "created": unix(self.clock()),
            "customer": customer,
            "flow": None,
            "livemode": False,
            "locale": forms.text(params, "locale"),
            "on_behalf_of": None,
            "return_url": forms.text(params, "return_url"),
            "url": f"{self.url}/p/session/{session_id}",
        }


def _licensed_total(line_items: LineItems) -> int:
    return sum((price["unit_amount"] or 0) * (quantity or 0) for price, quantity in line_items)


def _with_session_id(url: str | None, session_id: str) -> str | None:
    # Stripe fills in this template variable so the success page can look the session up.
    return None if url is None else url.replace("{CHECKOUT_SESSION_ID}", session_id)

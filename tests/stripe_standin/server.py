"""The stand-in's HTTP server: routing, authentication and Stripe's answer headers."""

from __future__ import annotations

import functools
import json
import re
import secrets
import signal
import socket
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

from stripe import params as stripe_params

from portal import clock as portal_clock
from tests.stripe_standin.checkout import Checkout
from tests.stripe_standin.errors import ApiError, error_body
from tests.stripe_standin.forms import Params, check_known, decode_form
from tests.stripe_standin.meters import (
    METER_EVENTS_PATH,
    Fault,
    FaultKind,
    ReceivedRequest,
    RecordedEvent,
    fault_error,
    meter_event_body,
    validate_meter_event,
)

# Each Billing endpoint: its method, its path (an id in brackets), the method of
# ``StripeStandIn`` that answers it, and stripe-python's params type for it,
# which says which parameters exist.
ROUTES: list[tuple[str, str, str, type]] = [
    ("GET", "/v1/prices", "_list_prices", stripe_params.PriceListParams),
    ("GET", "/v1/prices/{id}", "_get_price", stripe_params.PriceRetrieveParams),
    ("POST", "/v1/customers", "_create_customer", stripe_params.CustomerCreateParams),
    ("GET", "/v1/customers/{id}", "_get_customer", stripe_params.CustomerRetrieveParams),
    (
        "POST",
        "/v1/checkout/sessions",
        "_create_checkout",
        stripe_params.checkout.SessionCreateParams,
    ),
    (
        "GET",
        "/v1/checkout/sessions/{id}",
        "_get_checkout",
        stripe_params.checkout.SessionRetrieveParams,
    ),
    ("GET", "/v1/subscriptions", "_list_subscriptions", stripe_params.SubscriptionListParams),
    (
        "GET",
        "/v1/subscriptions/{id}",
        "_get_subscription",
        stripe_params.SubscriptionRetrieveParams,
    ),
    (
        "POST",
        "/v1/billing_portal/sessions",
        "_create_portal_session",
        stripe_params.billing_portal.SessionCreateParams,
    ),
    ("GET", "/v1/events/{id}", "_get_event", stripe_params.EventRetrieveParams),
]
Handler = Callable[[Params], dict[str, Any]]


@dataclass
class _State:
    lock: threading.Lock = field(default_factory=threading.Lock)
    events: dict[str, RecordedEvent] = field(default_factory=dict)
    requests: list[ReceivedRequest] = field(default_factory=list)
    faults: deque[Fault] = field(default_factory=deque)
    billing_delays: deque[float] = field(default_factory=deque)
    in_flight: Counter[tuple[str, str]] = field(default_factory=Counter)
    max_in_flight: int = 0


class StripeStandIn(Checkout):
    """The stand-in server on a loopback port; ``url`` goes to ``STRIPE_API_BASE``."""

    def __init__(
        self,
        *,
        api_key: str | None = None,
        clock: Callable[[], datetime] | None = None,
        record_requests: bool = True,
        processing_delay: float = 0.001,
        port: int = 0,
    ) -> None:
        super().__init__()
        self.api_key = api_key
        """When set, other keys get 401; otherwise any sk_/rk_ key is accepted."""
        # Stripe's own time: by default the portal's clock, which tests set.
        self.clock: Callable[[], datetime] = clock or (lambda: portal_clock.now())
        self.missing_customers: set[str] = set()
        """Customers Stripe does not know: their events get 400 resource_missing."""
        self.record_requests = record_requests
        self.processing_delay = processing_delay
        """Seconds each accepted event takes to process: concurrent requests overlap."""
        self.held = threading.Event()
        """Set when a ``held_after_record`` fault has recorded its event and is holding."""
        self._release = threading.Event()
        self._state = _State()
        self._server = ThreadingHTTPServer(("127.0.0.1", port), _Handler)
        self._server.daemon_threads = True
        self._server.standin = self  # type: ignore[attr-defined]
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> StripeStandIn:
        # stop() waits for the loop's next poll: a short one keeps each test
        # that starts a stand-in from waiting half a second to end.
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="stripe-standin",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self.release()
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)

    @contextmanager
    def running(self) -> Iterator[StripeStandIn]:
        self.start()
        try:
            yield self
        finally:
            self.stop()

    # -- scripting -------------------------------------------------------

    def add_faults(self, *faults: Fault) -> None:
        with self._state.lock:
            self._state.faults.extend(faults)

    def delay_billing(self, *seconds: float) -> None:
        """Answer the next Billing requests (not meter events) that many seconds late, one
        delay each, in order: a Stripe slower than the client's timeout."""
        with self._state.lock:
            self._state.billing_delays.extend(seconds)

    def clear_faults(self) -> None:
        """Drop the faults not triggered yet: Stripe behaves normally again."""
        with self._state.lock:
            self._state.faults.clear()

    def release(self) -> None:
        """Let a held reply go (the connection is then dropped)."""
        self._release.set()

    # -- inspection ------------------------------------------------------

    @property
    def events(self) -> list[RecordedEvent]:
        with self._state.lock:
            return list(self._state.events.values())

    @property
    def requests(self) -> list[ReceivedRequest]:
        with self._state.lock:
            return list(self._state.requests)

    @property
    def pending_faults(self) -> int:
        with self._state.lock:
            return len(self._state.faults)

    @property
    def max_in_flight_per_customer(self) -> int:
        """The most requests ever processed at once for one customer and meter."""
        with self._state.lock:
            return self._state.max_in_flight

    def totals(self) -> dict[str, int]:
        """The sum of recorded values per customer, as the meter would aggregate it."""
        totals: Counter[str] = Counter()
        for event in self.events:
            totals[event.stripe_customer_id] += event.value
        return dict(totals)

    # -- request handling (called from the handler threads) -------------

    def route(self, method: str, path: str) -> Handler | None:
        """What answers ``method path`` on Billing, or ``None`` for a URL Stripe does not have."""
        for route_method, template, name, spec in ROUTES:
            pattern = re.escape(template).replace(r"\{id\}", "([^/]+)")
            match = re.fullmatch(pattern, path)
            if route_method == method and match:
                handler = getattr(self, name)
                return functools.partial(_checked, handler, spec, match.groups())
        return None

    def _take_fault(self, customer: str | None) -> Fault | None:
        with self._state.lock:
            for fault in self._state.faults:
                if fault.customer is None or fault.customer == customer:
                    self._state.faults.remove(fault)
                    return fault
        return None

    def _billing_delay(self) -> None:
        with self._state.lock:
            delay = self._state.billing_delays.popleft() if self._state.billing_delays else 0.0
        if delay:
            time.sleep(delay)

    def _log(self, request: ReceivedRequest) -> None:
        if self.record_requests:
            with self._state.lock:
                self._state.requests.append(request)

    def _check_key(self, authorization: str | None) -> None:
        key = (authorization or "").removeprefix("Bearer ").strip()
        valid = key == self.api_key if self.api_key else key.startswith(("sk_", "rk_"))
        if not valid:
            shown = f"{key[:8]}****{key[-4:]}" if len(key) > 12 else "****"
            raise ApiError(401, f"Invalid API Key provided: {shown}")

    def _validate(self, form: dict[str, str]) -> RecordedEvent:
        return validate_meter_event(form, self.clock(), self.missing_customers)

    def _record(self, event: RecordedEvent) -> None:
        with self._state.lock:
            if event.identifier in self._state.events:
                raise ApiError(
                    400,
                    f"An event already exists with identifier {event.identifier}.",
                    headers={"Stripe-Should-Retry": "false"},
                )
            self._state.events[event.identifier] = event

    @contextmanager
    def _one_at_a_time(self, customer: str, event_name: str) -> Iterator[None]:
        key = (customer, event_name)
        with self._state.lock:
            self._state.in_flight[key] += 1
            busy = self._state.in_flight[key] > 1
            self._state.max_in_flight = max(self._state.max_in_flight, self._state.in_flight[key])
        try:
            if busy:
                raise ApiError(
                    429,
                    "This request conflicts with another in flight for the same customer and "
                    "meter; retry after it completes.",
                    code="rate_limit",
                    headers={"Retry-After": "1"},
                )
            if self.processing_delay:
                time.sleep(self.processing_delay)
            yield
        finally:
            with self._state.lock:
                self._state.in_flight[key] -= 1


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "stripe-standin"
    # Headers and body leave in one segment: otherwise Nagle's algorithm and
    # the client's delayed ACK add 40 ms to every call.
    disable_nagle_algorithm = True
    wbufsize = 64 * 1024

    @property
    def standin(self) -> StripeStandIn:
        return self.server.standin  # type: ignore[attr-defined,no-any-return]

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's name
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._billing_request("GET", self.path.partition("?")[2])

    def do_DELETE(self) -> None:  # noqa: N802 - http.server's naming
        self._billing_request("DELETE", self.path.partition("?")[2])

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode("utf-8") if length else ""
        if self.path.split("?")[0] != METER_EVENTS_PATH:
            self._billing_request("POST", body)
            return
        form = {name: values[-1] for name, values in parse_qs(body, keep_blank_values=True).items()}
        identifier = form.get("identifier")
        customer = form.get("payload[stripe_customer_id]")
        standin = self.standin
        fault: Fault | None = None
        recorded = False
        try:
            standin._check_key(self.headers.get("Authorization"))
            fault = standin._take_fault(customer)
            if fault is not None and fault.kind is FaultKind.ERROR:
                raise fault_error(fault)
            if fault is not None and fault.kind is FaultKind.RATE_LIMITED:
                raise ApiError(
                    429,
                    "Request rate limit exceeded. Learn more about rate limits here "
                    "https://stripe.com/docs/rate-limits.",
                    code="rate_limit",
                    headers={"Retry-After": f"{fault.retry_after or 1:g}"},
                )
            event = standin._validate(form)
            with standin._one_at_a_time(event.stripe_customer_id, event.event_name):
                standin._record(event)
            recorded = True
        except ApiError as error:
            standin._log(ReceivedRequest(identifier, customer, error.status, _kind(fault), False))
            self._answer(error.status, error_body(error), error.headers)
            return

        kind = _kind(fault)
        if fault is not None and fault.kind is FaultKind.ERROR_AFTER_RECORD:
            standin._log(ReceivedRequest(identifier, customer, fault.status, kind, recorded))
            self._answer(fault.status, error_body(fault_error(fault)))
            return
        if fault is not None and fault.kind in (
            FaultKind.DROP_AFTER_RECORD,
            FaultKind.HOLD_AFTER_RECORD,
        ):
            standin._log(ReceivedRequest(identifier, customer, None, kind, recorded))
            if fault.kind is FaultKind.HOLD_AFTER_RECORD:
                standin.held.set()
                standin._release.wait(timeout=120)
            self._drop()
            return
        if fault is not None and fault.kind is FaultKind.SLOW_AFTER_RECORD:
            time.sleep(fault.delay)
        standin._log(ReceivedRequest(identifier, customer, 200, kind, recorded))
        self._answer(200, meter_event_body(event))

    def _billing_request(self, method: str, encoded: str) -> None:
        """Everything but meter events: Billing objects, which faults leave alone."""
        standin = self.standin
        try:
            handler = standin.route(method, self.path.split("?")[0])
            if handler is None:
                raise ApiError(404, f"Unrecognized request URL ({method}: {self.path}).")
            standin._check_key(self.headers.get("Authorization"))
            answer = handler(decode_form(encoded))
            standin._billing_delay()
        except ApiError as error:
            self._answer(error.status, error_body(error), error.headers)
            return
        except Exception as error:
            # A bug in the stand-in answers 500 with its cause rather than dropping
            # the connection, so the test shows the cause, not a network error.
            failure = ApiError(500, f"The stand-in failed: {error!r}", type_="api_error")
            self._answer(500, error_body(failure))
            return
        self._answer(200, answer)

    def _answer(
        self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None
    ) -> None:
        payload = json.dumps(body).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.send_header("Request-Id", f"req_{secrets.token_hex(7)}")
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(payload)
            self.wfile.flush()
        except OSError:
            # The client gave up (its timeout) before the answer: as at Stripe,
            # the event stays recorded.
            self.close_connection = True

    def _drop(self) -> None:
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def _checked(
    handler: Callable[..., dict[str, Any]], spec: type, ids: tuple[str, ...], params: Params
) -> dict[str, Any]:
    check_known(params, spec)
    return handler(params, *ids)


def _kind(fault: Fault | None) -> FaultKind | None:
    return fault.kind if fault is not None else None


def main() -> None:
    """Serve the stand-in until interrupted: ``python -m tests.stripe_standin [--port N]``."""
    import argparse

    parser = argparse.ArgumentParser(
        description="A local stand-in for Stripe's API, for tests and benchmarks."
    )
    parser.add_argument("--port", type=int, default=12111)
    arguments = parser.parse_args()
    # SIGTERM (kill, a service manager) stops it as cleanly as Ctrl-C.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    standin = StripeStandIn(port=arguments.port).start()
    print(f"Stripe stand-in on {standin.url} (STRIPE_API_BASE={standin.url}); Ctrl-C stops it.")
    try:
        while True:
            time.sleep(3600)
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        standin.stop()
        print(f"Received {len(standin.events)} meter events; totals: {standin.totals()}")

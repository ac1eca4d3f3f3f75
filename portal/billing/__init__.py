"""Billing: reporting usage to Stripe Billing Meters (``flask report-usage``)."""

from __future__ import annotations

from portal.billing.gateway import Delivery, DeliveryStatus, MeterEvent, MeterEventGateway
from portal.billing.reporter import ReportOptions, ReportSummary, report_usage
from portal.billing.status import ReportingStatus, reporting_status

__all__ = [
    "Delivery",
    "DeliveryStatus",
    "MeterEvent",
    "MeterEventGateway",
    "ReportOptions",
    "ReportSummary",
    "ReportingStatus",
    "report_usage",
    "reporting_status",
]

"""Geometry for the server-rendered SVG history chart (presentation only)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from portal.periods import BillingPeriod
from portal.plans import WarningLevel

WIDTH, HEIGHT = 720, 260
TOP, BOTTOM, LEFT, RIGHT = 16, 36, 44, 8


class PeriodFigure(Protocol):
    @property
    def period(self) -> BillingPeriod: ...
    @property
    def used(self) -> int: ...
    @property
    def warning_level(self) -> WarningLevel: ...


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    limit_y: float
    label: str
    used: int
    limit: int
    level: WarningLevel


@dataclass(frozen=True)
class Chart:
    width: int
    height: int
    bars: list[Bar]
    axis_y: float
    ticks: list[tuple[float, int]]


TICK_STEPS = (1, 2, 2.5, 5)
"""Axis steps are one of these times a power of ten: ticks read 0/25/50/75/100, never 0/37/75."""


def nice_ticks(top: int, intervals: int = 4) -> list[int]:
    """Round tick values from 0 to at least ``top``, about ``intervals`` of them apart.

    The smallest round step that covers ``top`` in ``intervals`` steps; whole numbers
    only (suggestions are counted), so a tiny axis counts 0, 1, 2, …
    """
    wanted = max(top, 1) / intervals
    magnitude = 10 ** max(0, math.floor(math.log10(wanted)))
    step = next(
        (m * magnitude for m in TICK_STEPS if m * magnitude >= wanted and m * magnitude % 1 == 0),
        10 * magnitude,
    )
    step = max(1, int(step))
    count = max(1, math.ceil(max(top, 1) / step))
    return [step * n for n in range(count + 1)]


def history_chart(rows: Sequence[PeriodFigure], limits: Sequence[int]) -> Chart:
    """Bars oldest to newest, left to right, each with its period's limit as a line."""
    ordered = list(zip(rows, limits, strict=True))[::-1]
    top = max([1, *(row.used for row, _ in ordered), *limits])
    plot_height = HEIGHT - TOP - BOTTOM
    slot = (WIDTH - LEFT - RIGHT) / max(1, len(ordered))

    def y_of(value: int) -> float:
        return round(TOP + plot_height * (1 - value / top), 1)

    bars = [
        Bar(
            x=round(LEFT + index * slot + slot * 0.15, 1),
            y=y_of(row.used),
            width=round(slot * 0.7, 1),
            height=round(HEIGHT - BOTTOM - y_of(row.used), 1),
            limit_y=y_of(limit),
            label=f"{row.period.start:%b}",
            used=row.used,
            limit=limit,
            level=row.warning_level,
        )
        for index, (row, limit) in enumerate(ordered)
    ]
    ticks = [(y_of(value), value) for value in sorted({0, top // 2, top})]
    return Chart(WIDTH, HEIGHT, bars, HEIGHT - BOTTOM, ticks)

"""Geometry for the server-rendered SVG charts: history and the daily chart (presentation only)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Protocol

from portal.periods import BillingPeriod
from portal.plans import WarningLevel, warning_level
from portal.usage.daily import DailyUsage, UsageDay
from portal.views.formatting import number

WIDTH, HEIGHT = 400, 240
TOP, BOTTOM, LEFT, RIGHT = 20, 44, 52, 8


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
    month: str
    year: str | None
    """The year under the month where it changes (and on the first bar): "Jan" / "2027"."""
    used: int
    limit: int
    level: WarningLevel
    limit_label: str | None
    """"Included 75" where the limit starts or changes, so the line is named where it is."""
    part_y: float | None = None
    part_height: float = 0.0
    part: int | None = None
    """The signed-in member's own part of a pool's bar."""

    @property
    def label(self) -> str:
        return f"{self.month} {self.year}" if self.year else self.month


@dataclass(frozen=True)
class Chart:
    width: int
    height: int
    bars: list[Bar]
    axis_y: float
    ticks: list[tuple[float, int]]

    @property
    def levels(self) -> list[WarningLevel]:
        """The colours the bars use, in the plans' order: the legend names each one."""
        return [level for level in WarningLevel if any(bar.level is level for bar in self.bars)]

    @property
    def has_parts(self) -> bool:
        return any(bar.part is not None for bar in self.bars)


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


def vertical_scale(top: int, height: int) -> Callable[[int], float]:
    """Where a value sits on a chart ``height`` tall whose highest tick is ``top``."""
    plot_height = height - TOP - BOTTOM

    def y_of(value: int) -> float:
        return round(TOP + plot_height * (1 - value / top), 1)

    return y_of


def history_chart(
    rows: Sequence[PeriodFigure],
    limits: Sequence[int],
    parts: Sequence[int | None] | None = None,
) -> Chart:
    """Bars oldest to newest, left to right, each with its period's limit as a line.

    ``parts`` (newest first, like ``rows``) draws a member's own part inside each
    bar of their pool.
    """
    own = list(parts) if parts is not None else [None] * len(rows)
    ordered = list(zip(rows, limits, own, strict=True))[::-1]
    ticks = nice_ticks(max([0, *(row.used for row, _, _ in ordered), *limits]))
    y_of = vertical_scale(ticks[-1], HEIGHT)
    slot = (WIDTH - LEFT - RIGHT) / max(1, len(ordered))

    bars = []
    for index, (row, limit, part) in enumerate(ordered):
        start = row.period.start
        earlier = ordered[index - 1] if index else None
        new_year = earlier is None or earlier[0].period.start.year != start.year
        bars.append(
            Bar(
                x=round(LEFT + index * slot + slot * 0.15, 1),
                y=y_of(row.used),
                width=round(slot * 0.7, 1),
                height=round(HEIGHT - BOTTOM - y_of(row.used), 1),
                limit_y=y_of(limit),
                month=f"{start:%b}",
                year=str(start.year) if new_year else None,
                used=row.used,
                limit=limit,
                level=row.warning_level,
                limit_label=None
                if earlier and earlier[1] == limit
                else f"Included {number(limit)}",
                part_y=None if part is None else y_of(part),
                part_height=0.0 if part is None else round(HEIGHT - BOTTOM - y_of(part), 1),
                part=part,
            )
        )
    return Chart(WIDTH, HEIGHT, bars, HEIGHT - BOTTOM, [(y_of(v), v) for v in ticks])


DAILY_HEIGHT = 220
DAILY_LABEL_EVERY = 7
"""A date under every week's first bar (and the last day): a month of dates would overlap."""
DAILY_LABEL_GAP = 5
"""Days between a weekly date and the last day's, at least."""


@dataclass(frozen=True)
class DayBar:
    x: float
    y: float
    width: float
    height: float
    usage: UsageDay
    level: WarningLevel
    """The running total's level against the period's included amount."""


@dataclass(frozen=True)
class Projection:
    """The dashed line from today's running total to the projected total on the last day."""

    x1: float
    y1: float
    x2: float
    y2: float
    total: int
    by: date


@dataclass(frozen=True)
class DailyChart:
    width: int
    height: int
    axis_y: float
    ticks: list[tuple[float, int]]
    bars: list[DayBar]
    """One per day so far; the period's other days are empty slots to the right."""
    dates: list[tuple[float, date]]
    """Where the x axis names a day."""
    included_y: float
    included: int
    projection: Projection | None
    plot_left: int = LEFT
    plot_right: int = WIDTH - RIGHT

    @property
    def levels(self) -> list[WarningLevel]:
        return [level for level in WarningLevel if any(bar.level is level for bar in self.bars)]


def daily_chart(daily: DailyUsage) -> DailyChart:
    """A bar per day so far, as the running total at its end, against the included line.

    Every day of the period has a slot, so the bars fill the period as it passes
    and the projection runs on to the last day.
    """
    days = daily.period.days
    projected = daily.projected_used if daily.projected_used is not None else 0
    ticks = nice_ticks(max(daily.used, daily.included, projected))
    y_of = vertical_scale(ticks[-1], DAILY_HEIGHT)
    axis_y = DAILY_HEIGHT - BOTTOM
    slot = (WIDTH - LEFT - RIGHT) / max(1, len(days))

    def middle(index: int) -> float:
        return round(LEFT + index * slot + slot / 2, 1)

    bars = [
        DayBar(
            x=round(LEFT + index * slot + slot * 0.15, 1),
            y=y_of(usage.running_total),
            width=round(slot * 0.7, 1),
            height=round(axis_y - y_of(usage.running_total), 1),
            usage=usage,
            level=warning_level(usage.running_total, daily.included),
        )
        for index, usage in enumerate(daily.days)
    ]
    last = len(days) - 1
    # A date is about four days wide on a phone: a weekly one too close to the last
    # day's would overlap it. The last is drawn ending at the plot's edge, not past it.
    weekly = [i for i in range(0, last, DAILY_LABEL_EVERY) if last - i >= DAILY_LABEL_GAP]
    dates = [(middle(i), days[i]) for i in weekly]
    dates.append((middle(last) if last == 0 else float(WIDTH - RIGHT), days[last]))
    projection = None
    if daily.projected_used is not None and daily.days:
        today = len(daily.days) - 1
        projection = Projection(
            middle(today),
            y_of(daily.used),
            middle(last),
            y_of(projected),
            projected,
            daily.period.end.date(),  # the reset day, as the dashboard's "Projected by"
        )
    return DailyChart(
        width=WIDTH,
        height=DAILY_HEIGHT,
        axis_y=axis_y,
        ticks=[(y_of(v), v) for v in ticks],
        bars=bars,
        dates=dates,
        included_y=y_of(daily.included),
        included=daily.included,
        projection=projection,
    )

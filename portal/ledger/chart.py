"""Geometry of the dashboard's balance chart, drawn as server-side SVG.

No JavaScript and no colour needed to read it: the line has a text summary and the
numbers are in a table beside it.
"""

from dataclasses import dataclass
from datetime import date

WIDTH = 640
HEIGHT = 200
PAD_LEFT = 56
PAD_RIGHT = 12
PAD_TOP = 12
PAD_BOTTOM = 28


@dataclass(frozen=True)
class Tick:
    position: float
    label: str
    anchor: str = "end"


@dataclass(frozen=True)
class BalanceChart:
    width: int
    height: int
    line: str
    area: str
    y_ticks: list[Tick]
    x_ticks: list[Tick]
    baseline: float
    left: int
    right: int
    start_balance: int
    end_balance: int
    highest: int
    lowest: int


def _nice_ceiling(value: int) -> int:
    """Round up to 1, 2 or 5 times a power of ten, so axis labels read well."""
    if value <= 0:
        return 10
    magnitude = 1
    while magnitude * 10 <= value:
        magnitude *= 10
    for step in (1, 2, 5, 10):
        if value <= step * magnitude:
            return step * magnitude
    return 10 * magnitude


def balance_chart(series: list[tuple[date, int]]) -> BalanceChart:
    """Lay out `series` (day, closing balance), oldest first, as an SVG line and area."""
    balances = [balance for _, balance in series]
    top = _nice_ceiling(max(balances, default=0))
    plot_width = WIDTH - PAD_LEFT - PAD_RIGHT
    plot_height = HEIGHT - PAD_TOP - PAD_BOTTOM
    baseline = PAD_TOP + plot_height
    steps = max(len(series) - 1, 1)

    def x(index: int) -> float:
        return round(PAD_LEFT + plot_width * index / steps, 1)

    def y(balance: int) -> float:
        return round(baseline - plot_height * balance / top, 1)

    points = [f"{x(i)},{y(balance)}" for i, balance in enumerate(balances)]
    line = " ".join(points)
    area = f"M{x(0)},{baseline} L" + " L".join(points) + f" L{x(len(points) - 1)},{baseline} Z"
    y_ticks = [Tick(y(top * part // 4), f"{top * part // 4:,}") for part in range(5)]
    last = len(series) - 1
    x_ticks = []
    for i in sorted({0, last // 3, 2 * last // 3, last}) if series else []:
        anchor = "start" if i == 0 else "end" if i == last else "middle"
        x_ticks.append(Tick(x(i), series[i][0].strftime("%b %-d"), anchor))
    return BalanceChart(
        width=WIDTH,
        height=HEIGHT,
        line=line,
        area=area if points else "",
        y_ticks=y_ticks,
        x_ticks=x_ticks,
        baseline=baseline,
        left=PAD_LEFT,
        right=WIDTH - PAD_RIGHT,
        start_balance=balances[0] if balances else 0,
        end_balance=balances[-1] if balances else 0,
        highest=max(balances, default=0),
        lowest=min(balances, default=0),
    )

"""Charts of the last hour as inline SVG, drawn on the server.

No script library: the CSP allows none inline, and a line per series needs none. Colours and
dash patterns come from classes in console.css (style attributes are forbidden too); the dash
patterns tell series apart without colour. Each chart carries its figures in words (the image's
label) and by minute in a table, for people who do not see it. Every text part goes through
``Markup.format``, which escapes it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from markupsafe import Markup

from mlfleet.metrics import MINUTES, MinuteFigures

# The plot area inside the SVG's 640 x 240 view box; the margins hold the axis labels.
WIDTH, HEIGHT = 640, 240
LEFT, RIGHT, TOP, BOTTOM = 60, 628, 12, 206


@dataclass(frozen=True)
class Series:
    name: str
    # One value a minute, oldest first; None where there is nothing to show (no latency
    # without requests).
    values: Sequence[float | None]


def server_charts(window: Sequence[MinuteFigures]) -> list[Markup]:
    """A tracking server's requests, throttled requests and errors a minute, and its latency."""
    return [
        _count_chart(
            "Requests per minute",
            window,
            [
                Series("Requests", [m.requests for m in window]),
                Series("Throttled", [m.throttled for m in window]),
                Series("Errors (5xx)", [m.errors for m in window]),
            ],
        ),
        _latency_chart(window),
    ]


def endpoint_charts(window: Sequence[MinuteFigures]) -> list[Markup]:
    """An endpoint's latency, and its invocations and errors a minute."""
    return [
        _latency_chart(window),
        _count_chart(
            "Invocations per minute",
            window,
            [
                Series("Invocations", [m.requests for m in window]),
                Series("Errors (5xx)", [m.errors for m in window]),
            ],
        ),
    ]


def _count_chart(title: str, window: Sequence[MinuteFigures], series: list[Series]) -> Markup:
    def summary(one: Series) -> str:
        total = int(sum(v or 0 for v in one.values))
        return (
            f"{one.name}: {total} in all, at most {_number(_peak(one))} in a minute, "
            f"{_number(one.values[-1] or 0)} in the current minute."
        )

    return chart(title, window, series, summary)


def _latency_chart(window: Sequence[MinuteFigures]) -> Markup:
    def summary(one: Series) -> str:
        seen = [v for v in one.values if v is not None]
        if not seen:
            return f"{one.name}: no requests."
        return (
            f"{one.name}: highest {_number(max(seen))} ms, "
            f"{_number(seen[-1])} ms in the latest minute with requests."
        )

    def ms(seconds: float | None) -> float | None:
        return None if seconds is None else seconds * 1000

    series = [
        Series("p50", [ms(m.p50) for m in window]),
        Series("p99", [ms(m.p99) for m in window]),
    ]
    return chart("Latency (ms)", window, series, summary)


def chart(
    title: str,
    window: Sequence[MinuteFigures],
    series: Sequence[Series],
    summary: Callable[[Series], str],
) -> Markup:
    """A line per series over the minutes of ``window``, with its figures as text and table."""
    label = f"{title}, last {MINUTES} minutes. " + " ".join(summary(s) for s in series)
    top = _nice_ceiling(max((_peak(s) for s in series), default=0))
    parts = [
        Markup(
            '<figure class="chart"><figcaption>{}</figcaption>'
            '<svg viewBox="0 0 {} {}" role="img" aria-label="{}">'
            "<title>{}</title><desc>{}</desc>"
        ).format(title, WIDTH, HEIGHT, label, title, label),
        _axes(top),
        *(_line(s.values, top, f"series-{i}") for i, s in enumerate(series, 1)),
        Markup("</svg>"),
        _legend(series),
        _table(title, window, series),
        Markup("</figure>"),
    ]
    return Markup("").join(parts)


def _axes(top: float) -> Markup:
    parts = []
    for fraction in (0, 0.5, 1):
        y = _y(top * fraction, top)
        parts.append(
            Markup(
                '<line class="grid" x1="{}" y1="{}" x2="{}" y2="{}"/>'
                '<text class="y-label" x="{}" y="{}">{}</text>'
            ).format(LEFT, y, RIGHT, y, LEFT - 6, y + 4, _number(top * fraction))
        )
    ago = MINUTES - 1
    for minute, anchor, text in (
        (0, "start", f"{ago} min ago"),
        (ago // 2, "middle", f"{ago - ago // 2} min ago"),
        (ago, "end", "now"),
    ):
        parts.append(
            Markup('<text class="x-label {}" x="{}" y="{}">{}</text>').format(
                anchor, _x(minute), BOTTOM + 20, text
            )
        )
    parts.append(
        Markup('<line class="axis" x1="{}" y1="{}" x2="{}" y2="{}"/>').format(
            LEFT, BOTTOM, RIGHT, BOTTOM
        )
    )
    return Markup("").join(parts)


def _line(values: Sequence[float | None], top: float, css: str) -> Markup:
    """Polylines through consecutive known values; a lone value between gaps is a dot."""
    segments: list[list[tuple[float, float]]] = [[]]
    for minute, value in enumerate(values):
        if value is None:
            segments.append([])
        else:
            segments[-1].append((_x(minute), _y(value, top)))
    parts = []
    for points in segments:
        if len(points) == 1:
            parts.append(
                Markup('<circle class="{}" cx="{}" cy="{}" r="3"/>').format(css, *points[0])
            )
        elif points:
            coordinates = " ".join(f"{x},{y}" for x, y in points)
            parts.append(Markup('<polyline class="line {}" points="{}"/>').format(css, coordinates))
    return Markup("").join(parts)


def _legend(series: Sequence[Series]) -> Markup:
    items = (
        Markup(
            '<li><svg viewBox="0 0 24 8" aria-hidden="true" focusable="false">'
            '<line class="line series-{}" x1="0" y1="4" x2="24" y2="4"/></svg>{}</li>'
        ).format(i, s.name)
        for i, s in enumerate(series, 1)
    )
    return Markup('<ul class="legend">{}</ul>').format(Markup("").join(items))


def _table(title: str, window: Sequence[MinuteFigures], series: Sequence[Series]) -> Markup:
    """The figures of the minutes that had any, for reading rather than looking."""
    rows = []
    for minute, figures in enumerate(window):
        values = [s.values[minute] for s in series]
        if not any(values):
            continue
        cells = Markup("").join(
            Markup("<td>{}</td>").format("—" if v is None else _number(v)) for v in values
        )
        started = time.strftime("%H:%M", time.gmtime(figures.start))
        rows.append(Markup('<tr><th scope="row">{}</th>{}</tr>').format(started, cells))
    if not rows:
        return Markup('<p class="help">Nothing in the last {} minutes.</p>').format(MINUTES)
    headers = Markup("").join(Markup('<th scope="col">{}</th>').format(s.name) for s in series)
    return Markup(
        "<details><summary>Table: {}</summary>"
        '<div class="table-wrap"><table><caption class="sr-only">{}, minutes with any</caption>'
        '<thead><tr><th scope="col">Minute (UTC)</th>{}</tr></thead><tbody>{}</tbody>'
        "</table></div></details>"
    ).format(title, title, headers, Markup("").join(rows))


def _peak(series: Series) -> float:
    return max((v for v in series.values if v is not None), default=0)


def _nice_ceiling(value: float) -> float:
    """The smallest 1, 2 or 5 times a power of ten at or above ``value`` (1 for nothing)."""
    if value <= 0:
        return 1
    power: float = 10 ** math.floor(math.log10(value))
    return next(step * power for step in (1, 2, 5, 10) if step * power >= value)


def _x(minute: int) -> float:
    return round(LEFT + minute * (RIGHT - LEFT) / (MINUTES - 1), 1)


def _y(value: float, top: float) -> float:
    return round(BOTTOM - value / top * (BOTTOM - TOP), 1)


def _number(value: float) -> str:
    return f"{value:.1f}" if value < 10 and value != int(value) else f"{value:.0f}"

"""SVG charts of the statistics, rendered by pygal (never drawn by hand).

Charts are served as images (``<img src=…svg>``): scripts inside an SVG image never run, and the
response carries its own CSP that forbids them when the SVG is opened directly.
"""

from __future__ import annotations

from collections.abc import Sequence

import pygal
from pygal.style import Style

STYLE = Style(
    background="white",
    plot_background="white",
    foreground="#1f2933",
    foreground_strong="#1f2933",
    foreground_subtle="#7b8794",
    colors=("#b42318", "#1d4ed8", "#047857", "#a16207", "#6d28d9"),
    font_family="sans-serif",
)


def bar_chart(title: str, items: Sequence[tuple[str, int]], *, horizontal: bool = True) -> bytes:
    """One series of labelled counts, largest first as given."""
    kind = pygal.HorizontalBar if horizontal else pygal.Bar
    chart = kind(
        style=STYLE,
        js=[],
        show_legend=False,
        title=title,
        width=800,
        height=max(300, 28 * len(items) + 120) if horizontal else 400,
        print_values=True,
        truncate_label=-1,
        margin=10,
    )
    labels = [label for label, _ in items]
    if horizontal:  # pygal draws the first label at the bottom
        labels.reverse()
    chart.x_labels = labels
    values = [value for _, value in items]
    chart.add(title, list(reversed(values)) if horizontal else values)
    rendered: bytes = chart.render()
    return rendered


def line_chart(
    title: str, x_labels: Sequence[str], lines: Sequence[tuple[str, Sequence[int]]]
) -> bytes:
    """Several series over the same months (the 24-month trends)."""
    chart = pygal.Line(
        style=STYLE,
        js=[],
        title=title,
        width=900,
        height=420,
        x_label_rotation=45,
        show_minor_x_labels=True,
        legend_at_bottom=True,
        truncate_label=-1,
        margin=10,
        dots_size=2,
    )
    chart.x_labels = list(x_labels)
    for name, values in lines or [("—", [0] * len(x_labels))]:
        chart.add(name, list(values))
    rendered: bytes = chart.render()
    return rendered

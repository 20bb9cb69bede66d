"""Server-rendered SVG charts (pygal) for admin center pages.

Charts are inline SVG documents: every bar or slice can link to the device list behind it (``href``), and they
render without JavaScript. pygal styles a chart with a ``<style>`` element inside the SVG; the page that shows
charts allows exactly those elements through a per-response CSP nonce (:func:`csp_with_nonce`), so the
admin center's policy still refuses every other inline style and all inline script.
"""

from __future__ import annotations

import copy
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

import pygal
from markupsafe import Markup
from pygal.style import Style

from corral.kit.middleware import CSP

# The admin center's palette (static/css): blue first, then the status colours.
STYLE = Style(
    background="transparent",
    plot_background="transparent",
    foreground="#1f2937",
    foreground_strong="#111827",
    foreground_subtle="#6b7280",
    font_family="system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif",
    label_font_size=12,
    major_label_font_size=12,
    value_font_size=12,
    legend_font_size=12,
    tooltip_font_size=12,
    colors=("#2563eb", "#16a34a", "#dc2626", "#d97706", "#7c3aed", "#0891b2", "#6b7280"),
)

#: Colours that carry meaning (compliance states).
STATE_COLOURS = {
    "compliant": "#16a34a",
    "noncompliant": "#dc2626",
    "in_grace_period": "#d97706",
    "error": "#7c3aed",
    "not_evaluated": "#6b7280",
    "unknown": "#9ca3af",
}

_COMMENT = re.compile(r"<!--.*?-->", re.S)
# pygal writes its configuration for its (unused) tooltip script even without scripts: never shipped.
_SCRIPT = re.compile(r"<script\b[^>]*>.*?</script>", re.S)
# ...and hides that tooltip with a style attribute, which the CSP refuses (it stays empty without the script).
_STYLE_ATTRIBUTE = re.compile(r' style="[^"]*"')


@dataclass(frozen=True)
class Point:
    label: str
    value: int
    href: str | None = None
    colour: str | None = None


def new_nonce() -> str:
    return secrets.token_urlsafe(16)


def csp_with_nonce(nonce: str) -> str:
    """The admin center's CSP, with ``<style nonce=…>`` elements of this response allowed."""
    return CSP.replace("style-src 'self'", f"style-src 'self' 'nonce-{nonce}'")


def _value(point: Point) -> dict[str, object]:
    value: dict[str, object] = {"value": point.value, "label": point.label}
    if point.href:
        value["xlink"] = {"href": point.href, "target": "_top"}
    return value


def _render(chart: pygal.graph.graph.Graph, nonce: str, title: str) -> Markup:
    svg = chart.render(is_unicode=True)
    svg = _STYLE_ATTRIBUTE.sub("", _SCRIPT.sub("", _COMMENT.sub("", svg)))
    svg = svg.replace('<style type="text/css">', f'<style type="text/css" nonce="{nonce}">')
    # A title for assistive technology (pygal's own title is not drawn: the card has the heading).
    svg = svg.replace("<defs>", f"<title>{Markup.escape(title)}</title><defs>", 1)
    return Markup(svg)  # noqa: S704 - pygal's SVG, labels escaped by its XML writer


def _config(**extra: object) -> dict[str, object]:
    return {
        "style": STYLE,
        "js": [],
        "disable_xml_declaration": True,
        "width": 640,
        "height": 300,
        "margin": 8,
        "margin_right": 24,
        "truncate_legend": -1,
        "truncate_label": -1,
        "legend_box_size": 12,
        "print_values": True,
        "print_zeroes": False,
        "explicit_size": False,
        **extra,
    }


def _count_axis(points: Sequence[Point]) -> dict[str, object]:
    """Whole-number ticks for counts (pygal would draw 0.2 steps for small ones)."""
    top = max((p.value for p in points), default=0)
    step = max(1, -(-top // 5))
    return {"range": (0, max(top, 1)), "y_labels": list(range(0, max(top, 1) + step, step))}


def bar_chart(points: Sequence[Point], *, nonce: str, title: str, horizontal: bool = False) -> Markup:
    """One bar per point, labelled on the axis."""
    kind = pygal.HorizontalBar if horizontal else pygal.Bar
    chart = kind(
        **_config(
            show_legend=False, show_y_guides=not horizontal, show_x_guides=horizontal, **_count_axis(points)
        )
    )
    chart.x_labels = [p.label for p in points]
    chart.add(title, [_value(p) for p in points])
    return _render(chart, nonce, title)


def pie_chart(points: Sequence[Point], *, nonce: str, title: str) -> Markup:
    """A donut, one slice per point with a value (a legend names them)."""
    shown = [p for p in points if p.value]
    # Series colours come from the chart's style (a colour per value would be an inline style attribute,
    # which the admin center's CSP refuses).
    colours = tuple(p.colour or STYLE.colors[i % len(STYLE.colors)] for i, p in enumerate(shown))
    style = copy.copy(STYLE)
    style.colors = colours or STYLE.colors
    chart = pygal.Pie(**_config(style=style, inner_radius=0.55, legend_at_bottom=False))
    for point in shown:
        if point.value:
            chart.add(point.label, [_value(point)])
    return _render(chart, nonce, title)


def line_chart(points: Sequence[Point], *, nonce: str, title: str) -> Markup:
    """Values over time (points in order), each dot linking where ``href`` says."""
    chart = pygal.Line(
        **_config(show_legend=False, fill=True, dots_size=4, show_minor_x_labels=True, **_count_axis(points))
    )
    chart.x_labels = [p.label for p in points]
    chart.add(title, [_value(p) for p in points])
    return _render(chart, nonce, title)

"""Charts as inline SVG drawn on the server: no chart library, nothing fetched by the browser."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

from markupsafe import Markup

# One colour per series (a line chart's arms), in order; colour-blind safe (Okabe-Ito).
COLOURS = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#D55E00", "#56B4E9", "#000000")


def sparkline(values: Sequence[float], width: int = 160, height: int = 32) -> Markup:
    """A polyline of `values` scaled to the box; a flat line at the bottom when all are equal,
    a dash when there are fewer than two points."""
    if len(values) < 2:
        return Markup('<svg class="sparkline empty" width="{}" height="{}"></svg>').format(
            width, height
        )
    top = max(values) or 1.0
    step = width / (len(values) - 1)
    points = " ".join(
        f"{i * step:.1f},{height - 2 - (v / top) * (height - 4):.1f}" for i, v in enumerate(values)
    )
    return Markup(
        f'<svg class="sparkline" width="{width}" height="{height}" viewBox="0 0 {width} {height}">'
        f'<polyline fill="none" stroke="#0072B2" stroke-width="1.5" points="{points}"/></svg>'
    )


@dataclass(frozen=True)
class Series:
    name: str
    points: list[tuple[float, float]]  # (x, y)


def line_chart(
    title: str, series: Sequence[Series], x_label: str, width: int = 420, height: int = 220
) -> Markup:
    """Lines over a shared x axis with a legend; axis ticks at the data's min and max."""
    pad_left, pad_right, pad_top, pad_bottom = 48, 10, 24, 36
    xs = [x for s in series for x, _ in s.points]
    ys = [y for s in series for _, y in s.points]
    if not xs:
        return Markup('<p class="empty">{}: no data</p>').format(title)
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(0.0, min(ys)), max(ys)
    x1, y1 = (x1 if x1 > x0 else x0 + 1), (y1 if y1 > y0 else y0 + 1)
    inner_w, inner_h = width - pad_left - pad_right, height - pad_top - pad_bottom

    def at(x: float, y: float) -> str:
        px = pad_left + (x - x0) / (x1 - x0) * inner_w
        py = pad_top + inner_h - (y - y0) / (y1 - y0) * inner_h
        return f"{px:.1f},{py:.1f}"

    parts = [
        f'<svg class="chart" role="img" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" data-series="{len(series)}">',
        f'<text x="{pad_left}" y="14" class="chart-title">{escape(title)}</text>',
        f'<line x1="{pad_left}" y1="{pad_top + inner_h}" x2="{width - pad_right}" '
        f'y2="{pad_top + inner_h}" stroke="#888"/>',
        f'<line x1="{pad_left}" y1="{pad_top}" x2="{pad_left}" y2="{pad_top + inner_h}" '
        'stroke="#888"/>',
        f'<text x="{pad_left - 4}" y="{pad_top + 4}" text-anchor="end" class="tick">'
        f"{y1:.3g}</text>",
        f'<text x="{pad_left - 4}" y="{pad_top + inner_h}" text-anchor="end" class="tick">'
        f"{y0:.3g}</text>",
        f'<text x="{pad_left}" y="{height - 20}" class="tick">{x0:g}</text>',
        f'<text x="{width - pad_right}" y="{height - 20}" text-anchor="end" class="tick">'
        f"{x1:g}</text>",
        f'<text x="{pad_left + inner_w / 2:.0f}" y="{height - 20}" text-anchor="middle" '
        f'class="tick">{escape(x_label)}</text>',
    ]
    for i, line in enumerate(series):
        colour = COLOURS[i % len(COLOURS)]
        points = " ".join(at(x, y) for x, y in sorted(line.points))
        parts.append(
            f'<polyline class="series" fill="none" stroke="{colour}" stroke-width="2" '
            f'points="{points}"><title>{escape(line.name)}</title></polyline>'
        )
        legend_x = pad_left + (i % 5) * (inner_w / 5)
        legend_y = height - 4
        parts.append(
            f'<text x="{legend_x:.0f}" y="{legend_y}" fill="{colour}" class="legend">'
            f"{escape(line.name)}</text>"
        )
    parts.append("</svg>")
    return Markup("".join(parts))

"""Charts drawn on the server as SVG text: no script, no CDN, nothing the
Content-Security-Policy has to allow. Colours are SVG attributes, not styles."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from xml.sax.saxutils import escape, quoteattr

__all__ = ["COLOURS", "line_chart"]

COLOURS = {"queries": "#2563eb", "blocked": "#dc2626", "held": "#d97706", "masked": "#7c3aed"}


def line_chart(
    title: str,
    labels: Sequence[str],
    series: Mapping[str, Sequence[int]],
    width: int = 560,
    height: int = 180,
) -> str:
    """One chart: a polyline per series over ``labels``, with axes and a legend."""
    left, right, top, bottom = 40, 10, 40, 28
    plot_w, plot_h = width - left - right, height - top - bottom
    peak = max([1, *(v for values in series.values() for v in values)])
    n = max(len(labels), 2)

    def x(i: int) -> float:
        return left + plot_w * i / (n - 1)

    def y(v: int) -> float:
        return top + plot_h * (1 - v / peak)

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" role="img" aria-label={quoteattr(title)}>',
        f"<title>{escape(title)}</title>",
        f'<text x="{left}" y="14" font-size="12" font-weight="bold">{escape(title)}</text>',
        f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" '
        'stroke="#999"/>',
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + plot_h}" stroke="#999"/>',
        f'<text x="{left - 4}" y="{top + 4}" font-size="10" text-anchor="end">{peak}</text>',
        f'<text x="{left - 4}" y="{top + plot_h}" font-size="10" text-anchor="end">0</text>',
    ]
    if labels:
        out.append(
            f'<text x="{left}" y="{height - 8}" font-size="10">{escape(labels[0])}</text>'
            f'<text x="{left + plot_w}" y="{height - 8}" font-size="10" text-anchor="end">'
            f"{escape(labels[-1])}</text>"
        )
    legend_x = left
    for name, values in series.items():
        colour = COLOURS.get(name, "#444")
        points = " ".join(f"{x(i):.1f},{y(v):.1f}" for i, v in enumerate(values))
        out.append(
            f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{points}">'
            f"<title>{escape(name)}: {sum(values)}</title></polyline>"
        )
        out.append(
            f'<rect x="{legend_x}" y="20" width="10" height="10" fill="{colour}"/>'
            f'<text x="{legend_x + 14}" y="29" font-size="11">{escape(name)}</text>'
        )
        legend_x += 80
    out.append("</svg>")
    return "".join(out)

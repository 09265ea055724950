"""Small bar charts drawn on the server as SVG: no script, no external file, readable without
colour (each series has its own pattern of position: sent, failed, rejected side by side)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from xml.sax.saxutils import escape

SERIES = (("sent", "#2e7d32"), ("failed", "#c62828"), ("rejected", "#ef6c00"))


def bars(
    points: Sequence[dict[str, Any]],
    labels: dict[str, str],
    title: str,
    *,
    width: int = 720,
    height: int = 160,
    tick_every: int = 5,
) -> str:
    """An SVG of grouped bars, one group per point (``key`` and one count per series)."""
    top = max([1] + [int(p[name]) for p in points for name, _ in SERIES])
    left, bottom, legend = 36, 20, 18
    plot_w, plot_h = width - left - 4, height - bottom - legend - 4
    group = plot_w / max(len(points), 1)
    bar = max(group / (len(SERIES) + 1), 1.0)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}">',
        f"<title>{escape(title)}</title>",
        f'<text x="{left - 4}" y="{legend + 10}" text-anchor="end" font-size="10">{top}</text>',
        f'<text x="{left - 4}" y="{legend + plot_h}" text-anchor="end" font-size="10">0</text>',
        f'<line x1="{left}" y1="{legend + plot_h}" x2="{width - 4}" y2="{legend + plot_h}" '
        'stroke="#888"/>',
    ]
    for index, (name, colour) in enumerate(SERIES):
        x = left + index * 110
        parts.append(f'<rect x="{x}" y="2" width="10" height="10" fill="{colour}"/>')
        parts.append(f'<text x="{x + 14}" y="11" font-size="11">{escape(labels[name])}</text>')
    for i, point in enumerate(points):
        x0 = left + i * group + bar / 2
        for j, (name, colour) in enumerate(SERIES):
            value = int(point[name])
            if not value:
                continue
            h = max(plot_h * value / top, 1.0)
            parts.append(
                f'<rect x="{x0 + j * bar:.1f}" y="{legend + plot_h - h:.1f}" '
                f'width="{bar:.1f}" height="{h:.1f}" fill="{colour}">'
                f"<title>{escape(str(point['key']))}: {value} {escape(labels[name])}</title>"
                "</rect>"
            )
        if i % tick_every == 0:
            parts.append(
                f'<text x="{left + i * group:.1f}" y="{height - 4}" font-size="10">'
                f"{escape(str(point['key'])[-5:])}</text>"
            )
    parts.append("</svg>")
    return "".join(parts)

"""The throughput chart of a batch report: an inline SVG bar chart.

Inline SVG, because the report is one self-contained file that must render the same in a
browser years from now, offline, with no script and no external asset; the numbers behind
each bar are in its ``<title>`` (shown on hover) and the totals are stated in the text.
"""

from __future__ import annotations

from datetime import timedelta
from html import escape

from provisioner.reports.batch import Throughput

WIDTH, HEIGHT = 720, 240
_LEFT, _RIGHT, _TOP, _BOTTOM = 48, 12, 12, 36  # margins for the axis labels


def _nice_max(value: int) -> int:
    """The smallest of 1, 2, 5 x 10^n at or above ``value`` (an easy axis to read)."""
    step = 1
    while True:
        for m in (1, 2, 5):
            if m * step >= value:
                return m * step
        step *= 10


def throughput_svg(t: Throughput) -> str:
    """The chart as an ``<svg>`` element, or a sentence when nothing was verified."""
    if t.start is None or not t.counts:
        return '<p class="muted">No device was verified on its chip in this batch.</p>'
    plot_w, plot_h = WIDTH - _LEFT - _RIGHT, HEIGHT - _TOP - _BOTTOM
    top = _nice_max(max(t.counts))
    slot = plot_w / len(t.counts)
    bar_w = max(slot * 0.8, 1.0)
    label = f"Devices verified per {t.bucket_name}, UTC"
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{escape(label)}">',
        f"<title>{escape(label)}</title>",
    ]
    for frac in (0, 0.5, 1):
        y = _TOP + plot_h * (1 - frac)
        parts.append(
            f'<line x1="{_LEFT}" y1="{y:.1f}" x2="{WIDTH - _RIGHT}" y2="{y:.1f}" '
            'stroke="#ccc" stroke-width="1"/>'
            f'<text x="{_LEFT - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="11">'
            f"{top * frac:g}</text>"
        )
    for i, n in enumerate(t.counts):
        h = plot_h * n / top
        x = _LEFT + i * slot + (slot - bar_w) / 2
        when = t.start + timedelta(seconds=i * t.bucket_s)
        parts.append(
            f'<rect x="{x:.1f}" y="{_TOP + plot_h - h:.1f}" width="{bar_w:.1f}" '
            f'height="{h:.1f}" fill="#2b6cb0"><title>{when:%Y-%m-%d %H:%M} UTC: {n}'
            "</title></rect>"
        )
    end = t.start + timedelta(seconds=len(t.counts) * t.bucket_s)
    base = HEIGHT - _BOTTOM
    parts.append(
        f'<line x1="{_LEFT}" y1="{base}" x2="{WIDTH - _RIGHT}" y2="{base}" stroke="#333"/>'
        f'<text x="{_LEFT}" y="{base + 16}" font-size="11">{t.start:%Y-%m-%d %H:%M}</text>'
        f'<text x="{WIDTH - _RIGHT}" y="{base + 16}" text-anchor="end" font-size="11">'
        f"{end:%Y-%m-%d %H:%M}</text>"
        f'<text x="{_LEFT + plot_w / 2:.1f}" y="{base + 30}" text-anchor="middle" '
        f'font-size="11">{escape(label)}</text>'
    )
    parts.append("</svg>")
    return "\n".join(parts)

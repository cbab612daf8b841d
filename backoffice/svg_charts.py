"""Bar charts drawn on the server as SVG, inline in the page: no script, no outside origin, no
style attribute (the strict CSP forbids inline styles; colours and fonts come from bureau.css by
class). Each bar's label sits on its own line above the bar, so a chart stays legible when a
phone scales it down. Plain Python, no I/O: the page gives the numbers, the chart only draws."""

from __future__ import annotations

from dataclasses import dataclass

from markupsafe import Markup, escape

VIEW_WIDTH = 360                  # user units; the chart scales to its box (width: 100%)
LABEL_LINE = 20                   # the label's line above each bar
BAR_HEIGHT = 16
ROW_GAP = 10
VALUE_ROOM = 96                   # right of the longest bar, for its value's text
MAX_BARS = 40                     # a chart is a summary: the page bounds what it draws


@dataclass(frozen=True)
class Bar:
    label: str
    value: int                    # cents or a count: only its size against the others matters
    text: str                     # the value as the reader reads it ("12,50 €", "3")
    kind: str = "bar"             # a CSS class: its colour


def bar_chart(chart_id: str, title: str, bars: list[Bar]) -> Markup:
    """An accessible image (role img, its title as name) of horizontal bars, longest = widest."""
    bars = bars[:MAX_BARS]
    row = LABEL_LINE + BAR_HEIGHT + ROW_GAP
    height = max(row * len(bars), row)
    top = max((bar.value for bar in bars), default=0)
    room = VIEW_WIDTH - VALUE_ROOM
    parts = [f'<svg class="chart" viewBox="0 0 {VIEW_WIDTH} {height}" role="img"'
             f' aria-labelledby="{escape(chart_id)}-title" preserveAspectRatio="xMinYMin meet">',
             f'<title id="{escape(chart_id)}-title">{escape(title)}</title>']
    if not bars:
        parts.append(f'<text class="empty" x="0" y="{LABEL_LINE}">Rien à montrer</text>')
    for index, bar in enumerate(bars):
        y = index * row
        width = 0 if top <= 0 else max(1, room * max(bar.value, 0) // top)
        parts.append(f'<text class="label" x="0" y="{y + LABEL_LINE - 4}">{escape(bar.label)}</text>')
        parts.append(f'<rect class="{escape(bar.kind)}" x="0" y="{y + LABEL_LINE}"'
                     f' width="{width}" height="{BAR_HEIGHT}"/>')
        parts.append(f'<text class="value" x="{width + 6}" y="{y + LABEL_LINE + BAR_HEIGHT - 3}">'
                     f'{escape(bar.text)}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))

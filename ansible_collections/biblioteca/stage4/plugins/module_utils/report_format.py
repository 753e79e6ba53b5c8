# -*- coding: utf-8 -*-
"""How the HTML report writes a figure: escaped text, milliseconds, QPS, percentages, sizes, verdict chips.

None and anything not a number read as n/a.
"""
from __future__ import annotations

import html


VERDICT_CLASS = {
    "better": "v-faster",
    "unchanged": "v-nsd",
    "inconclusive": "v-slower",
    "worse": "v-bad",
    "result changed": "v-bad",
    "missing from one side": "v-bad",
}


# Short labels where space is tight (the per-query matrix); the note above it spells them out.
VERDICT_SHORT = {
    "better": "better",
    "unchanged": "unchanged",
    "inconclusive": "inconclusive",
    "worse": "WORSE",
    "result changed": "RESULT CHANGED",
    "missing from one side": "MISSING",
}


def text(value):
    """Escaped text; None reads as n/a."""
    return html.escape("n/a" if value is None else str(value), quote=True)


def breakable(value):
    """Escaped, with a break opportunity after each underscore: long query ids stay inside their column on paper."""
    return text(value).replace("_", "_<wbr>")


def is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def ms(value):
    """Milliseconds with about three significant figures (0.209, 1.55, 45.3, 8,356)."""
    if not is_number(value):
        return "n/a"
    size = abs(value)
    if size >= 100:
        return f"{value:,.0f}"
    if size >= 10:
        return f"{value:.1f}"
    if size >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def qps(value):
    if not is_number(value):
        return "n/a"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.2f}"


def delta_ms(value):
    return f"{value:+.3f}" if is_number(value) else "n/a"


def p_value(value):
    """The gate rounds p to five places: 0.0 means below 0.000005."""
    if not is_number(value):
        return "n/a"
    return "< 0.00001" if value == 0 else f"{value:.5f}".rstrip("0").rstrip(".")


def interval(query):
    """'+0.120 [+0.080, +0.170]' from the gate's shift and its interval."""
    if not is_number(query.get("shift_ms")):
        return "n/a"
    bounds = [query.get("shift_low_ms"), query.get("shift_high_ms")]
    inside = ", ".join(f"{b:+.3f}" if is_number(b) else "?" for b in bounds)
    return f'{query["shift_ms"]:+.3f} [{inside}]'


def pct(value):
    return f"{value:+.1f}%" if is_number(value) else "n/a"


def ratio_pct(value):
    """A cache-hit ratio as a percentage, with enough digits to tell 99.58% from 99.998%."""
    if not is_number(value):
        return "n/a (no blocks touched)"
    return f"{value * 100:.3f}%" if value >= 0.99 else f"{value * 100:.1f}%"


def byte_size(value):
    if not is_number(value):
        return "n/a"
    size, unit = float(value), "bytes"
    for next_unit in ("KiB", "MiB", "GiB", "TiB"):
        if size < 1024:
            break
        size, unit = size / 1024, next_unit
    return f"{int(value):,} bytes" if unit == "bytes" else f"{size:.1f} {unit} ({int(value):,} bytes)"


def basename(path):
    return str(path).replace("\\", "/").rsplit("/", 1)[-1]


def chip(verdict, short=False):
    label = VERDICT_SHORT.get(verdict, verdict) if short else verdict
    return f'<span class="chip {VERDICT_CLASS.get(verdict, "v-other")}">{text(label)}</span>'

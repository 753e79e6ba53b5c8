# -*- coding: utf-8 -*-
"""The HTML report's inline SVG charts: the geometry of the latency chart per query and of the per-stage
bar charts, their ticks, colours and legend."""
from __future__ import annotations

import math

from ansible_collections.biblioteca.stage4.plugins.module_utils import report_format as fmt


# Okabe-Ito, colour-blind safe; the baseline is neutral grey.
PALETTE = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#8C6D31", "#1B9E77"]

BASELINE_COLOUR = "#6E6E6E"


def stage_colours(stages):
    colours, index = {}, 0
    for stage in stages:
        if stage == "baseline":
            colours[stage] = BASELINE_COLOUR
        else:
            colours[stage] = PALETTE[index % len(PALETTE)]
            index += 1
    return colours


def stage_label(stage, reverted):
    if stage.endswith("_after_restart"):
        return f"{stage} (re-measured after a restart)"
    if stage in reverted:
        return f"{stage} (reverted: gate failed)"
    return stage


def legend(stages, colours, reverted):
    items = "".join(f'<span><span class="sw" style="background:{colours[s]}"></span>'
                    f'{fmt.text(stage_label(s, reverted))}</span>' for s in stages)
    return f'<div class="legend">{items}</div>'


def latency_chart(report, stages, colours, reverted):
    """Grouped horizontal bars, one group per query, one bar per stage, on a log axis."""
    queries = report.get("queries") or []
    values = [q["stages"][s]["p50_ms"] for q in queries for s in stages
              if fmt.is_number((q.get("stages") or {}).get(s, {}).get("p50_ms")) and q["stages"][s]["p50_ms"] > 0]
    if not values:
        return "<p>No latency was measured.</p>"
    # from the decade below the fastest query to the first 1, 2 or 5 x 10^n above the slowest
    low_exp = math.floor(math.log10(min(values)))
    high = next(f * 10 ** e for e in range(low_exp, low_exp + 20) for f in (1, 2, 5)
                if f * 10 ** e >= max(values) and e + math.log10(f) > low_exp)
    low_log, high_log = low_exp, math.log10(high)
    width, label_w, right_w, top, bottom = 1040, 250, 56, 34, 52
    plot_w = width - label_w - right_w
    bar_h, bar_gap, pad = 9, 2, 8
    group_h = len(stages) * (bar_h + bar_gap) - bar_gap + 2 * pad
    height = top + len(queries) * group_h + bottom

    def x_of(value):
        return label_w + (math.log10(value) - low_log) / (high_log - low_log) * plot_w

    out = [f'<svg class="chart latency" viewBox="0 0 {width} {height}" role="img" '
           f'aria-label="Median latency per query per stage, logarithmic scale">']
    for index in range(len(queries)):
        if index % 2:
            out.append(f'<rect x="0" y="{top + index * group_h}" width="{width}" height="{group_h}" fill="#f5f6f8"/>')
    for exp in range(low_exp, math.ceil(high_log) + 1):
        for factor in (1, 2, 5):
            value = factor * 10 ** exp
            if value > high * 1.0001:
                break
            x = x_of(value)
            major = factor == 1
            out.append(f'<line x1="{x:.1f}" y1="{top - 4}" x2="{x:.1f}" y2="{height - bottom + 4}" '
                       f'stroke="{"#9aa1ab" if major else "#dde0e5"}" stroke-width="{1 if major else 0.7}"/>')
            if major or high_log - low_log <= 4:
                text = f"{value:g}" if exp < 0 else f"{value:,}"
                weight = ' font-weight="bold"' if major else ""
                for y in (top - 10, height - bottom + 18):
                    out.append(f'<text x="{x:.1f}" y="{y}" font-size="11" text-anchor="middle" '
                               f'fill="{"#333" if major else "#888"}"{weight}>{fmt.text(text)}</text>')
    for index, query in enumerate(queries):
        y0 = top + index * group_h
        per_stage = query.get("stages") or {}
        first = per_stage.get(stages[0], {}) if stages else {}
        out.append(f'<text x="8" y="{y0 + group_h / 2 - 2:.1f}" font-size="12.5" fill="#1d1d1f">'
                   f'{fmt.text(query.get("query"))}</text>')
        rows = first.get("rows")
        if fmt.is_number(rows):
            out.append(f'<text x="8" y="{y0 + group_h / 2 + 13:.1f}" font-size="11" fill="#777">'
                       f'{rows:,} row{"" if rows == 1 else "s"}</text>')
        for row, stage in enumerate(stages):
            y = y0 + pad + row * (bar_h + bar_gap)
            figures = per_stage.get(stage) or {}
            value = figures.get("p50_ms")
            if not fmt.is_number(value) or value <= 0:
                out.append(f'<text x="{label_w + 4}" y="{y + bar_h - 1}" font-size="10" fill="#777">n/a</text>')
                continue
            end = x_of(value)
            style = ' fill-opacity="0.45" stroke="#b3261e" stroke-dasharray="3 2"' if stage in reverted else ""
            tip = f'{query.get("query")} at {stage}: p50 {fmt.ms(value)} ms, p95 {fmt.ms(figures.get("p95_ms"))} ms'
            out.append(f'<rect class="bar" data-query="{fmt.text(query.get("query"))}" data-stage="{fmt.text(stage)}" '
                       f'x="{label_w}" y="{y}" width="{max(end - label_w, 1.5):.1f}" height="{bar_h}" '
                       f'fill="{colours[stage]}"{style}><title>{fmt.text(tip)}</title></rect>')
            out.append(f'<text x="{end + 4:.1f}" y="{y + bar_h - 1}" font-size="10" fill="#333">'
                       f'{fmt.text(fmt.ms(value))}</text>')
    out.append(f'<line x1="{label_w}" y1="{top - 4}" x2="{label_w}" y2="{height - bottom + 4}" stroke="#555"/>')
    out.append(f'<text x="{label_w + plot_w / 2:.0f}" y="{height - 10}" font-size="12" text-anchor="middle" '
               'fill="#333">'
               'p50 latency in ms, LOGARITHMIC scale: each bold gridline is 10 times the one before</text>')
    out.append("</svg>")
    return "".join(out)


def stage_chart(stage_rows, colours, reverted, key, css_class, label, maximum, ticks, tick_text, value_text):
    """Horizontal bars, one per stage, on a linear axis from zero to maximum (the last tick)."""
    width, label_w, right_w, top, bottom = 520, 150, 120, 22, 40
    plot_w = width - label_w - right_w
    bar_h, gap = 18, 8
    height = top + len(stage_rows) * (bar_h + gap) - gap + bottom
    out = [f'<svg class="chart {css_class}" viewBox="0 0 {width} {height}" role="img" aria-label="{fmt.text(label)}">']
    for tick in ticks:
        x = label_w + tick / maximum * plot_w
        out.append(f'<line x1="{x:.1f}" y1="{top - 4}" x2="{x:.1f}" y2="{height - bottom + 4}" stroke="#dde0e5"/>')
        out.append(f'<text x="{x:.1f}" y="{height - bottom + 18}" font-size="11" text-anchor="middle" fill="#555">'
                   f'{fmt.text(tick_text(tick))}</text>')
    for row, stage_row in enumerate(stage_rows):
        stage = stage_row.get("stage")
        y = top + row * (bar_h + gap)
        name = stage if len(stage) <= 20 else stage[:19] + "…"
        out.append(f'<text x="{label_w - 6}" y="{y + 13}" font-size="12" text-anchor="end" fill="#1d1d1f">'
                   f'{fmt.text(name)}</text>')
        value = stage_row.get(key)
        if fmt.is_number(value):
            style = ' fill-opacity="0.45" stroke="#b3261e" stroke-dasharray="3 2"' if stage in reverted else ""
            bar_w = max(value / maximum * plot_w, 1.5)
            out.append(f'<rect class="{css_class}-bar" data-stage="{fmt.text(stage)}" x="{label_w}" y="{y}" '
                       f'width="{bar_w:.1f}" '
                       f'height="{bar_h}" fill="{colours[stage]}"{style}><title>{fmt.text(stage)}: '
                       f'{fmt.text(value_text(stage_row))}</title></rect>')
            text_x = label_w + bar_w + 5
        else:
            text_x = label_w + 5
        out.append(f'<text x="{text_x:.1f}" y="{y + 13}" font-size="11" fill="#333">{fmt.text(value_text(stage_row))}</text>')
    out.append(f'<line x1="{label_w}" y1="{top - 4}" x2="{label_w}" y2="{height - bottom + 4}" stroke="#555"/>')
    out.append(f'<text x="{label_w + plot_w / 2:.0f}" y="{height - 6}" font-size="12" text-anchor="middle" '
               f'fill="#333">{fmt.text(label)}</text></svg>')
    return "".join(out)


def nice_ticks(maximum):
    """Round ticks from zero to above maximum (about five of them)."""
    if maximum <= 0:
        return [0, 1]
    step = 10 ** math.floor(math.log10(maximum / 5))
    for factor in (1, 2, 2.5, 5, 10):
        if maximum / (step * factor) <= 6:
            step *= factor
            break
    count = math.ceil(maximum / step)
    return [round(i * step, 10) for i in range(count + 1)]

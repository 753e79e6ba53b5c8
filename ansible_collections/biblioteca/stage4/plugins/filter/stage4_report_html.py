# -*- coding: utf-8 -*-
"""The run's report as one HTML page, its timeline and the end-of-run summary.

stage4_report_html(report_data) renders the report a DBA reads, prints and signs off: one file
with inline CSS and inline SVG charts, no script and nothing fetched from anywhere, so it opens
the same on an air-gapped workstation years later. Every value from the report is escaped.
stage4_report_timeline(audit_text, run_id) turns the run's audit.jsonl into the report's
timeline; stage4_report_summary(report_data, output_dir) gives the lines printed at the end.
Only figures found in report_data are shown; nothing is computed beyond ratios of them.
"""
from __future__ import annotations

import datetime
import json

from ansible_collections.biblioteca.stage4.plugins.module_utils import report_charts as charts
from ansible_collections.biblioteca.stage4.plugins.module_utils import report_format as fmt

DOCUMENTATION = r"""
name: stage4_report_html
short_description: Render a stage4 report as a self-contained HTML page
description:
  - Header, latency chart (log scale), QPS and cache-hit charts, gate decisions, backup and timeline.
  - Inline CSS and SVG only; no script, no external resource. Every value is HTML-escaped.
  - The same file provides stage4_report_timeline (audit.jsonl text to the report's timeline) and
    stage4_report_summary (the end-of-run console lines).
options:
  _input:
    description: The report as data (report.json of the stage4_report role).
    type: dict
    required: true
"""


# The gate's summary counts and the verdict each one counts, in the order they are told.
_SUMMARY_VERDICTS = [("better", "better"), ("unchanged", "unchanged"), ("inconclusive", "inconclusive"),
                     ("worse", "worse")]

_CSS = """
*{box-sizing:border-box;-webkit-print-color-adjust:exact;print-color-adjust:exact}
body{margin:0;background:#fff;color:#1d1d1f;font:14px/1.45 "DejaVu Sans","Liberation Sans",Arial,sans-serif}
main{max-width:1100px;margin:0 auto;padding:24px 28px 40px}
h1{font-size:24px;margin:0 0 4px}
h2{font-size:18px;margin:30px 0 8px;padding-bottom:4px;border-bottom:2px solid #d0d4da}
h3{font-size:15px;margin:18px 0 6px}
p{margin:6px 0}
.key{font-size:15px;margin:0 0 14px}
.outcome{display:block;padding:10px 14px;border-radius:6px;font-size:17px;font-weight:bold;margin:10px 0 14px;
 border-left:6px solid}
.o-ok{background:#e8f5ec;border-color:#1e7d3c;color:#155d2c}
.o-bad{background:#fdecea;border-color:#b3261e;color:#8c1d18}
.o-info{background:#eef3fb;border-color:#2f5fa7;color:#23467c}
table{border-collapse:collapse;width:100%;margin:6px 0 10px;font-size:13px}
th,td{border:1px solid #d0d4da;padding:4px 7px;text-align:left;vertical-align:top}
th{background:#f1f3f5;font-weight:bold}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
td.n{white-space:nowrap}
table.facts th{width:150px}
.facts-pair{display:flex;gap:18px;flex-wrap:wrap}
.facts-pair table{flex:1 1 420px;width:auto}
table.compact td,table.compact th{padding:2px 7px;font-size:12.5px}
table.matrix{table-layout:fixed}
table.matrix td{font-size:12.5px;padding:4px 6px}
table.matrix th:first-child{width:210px}
.chips{margin:3px 0}
.chips .chip{margin:0 3px 3px 0}
span.sw{display:inline-block;width:12px;height:12px;border-radius:2px;margin-right:6px;vertical-align:-1px}
tr{break-inside:avoid}
thead{display:table-header-group}
.mono{font-family:"DejaVu Sans Mono","Liberation Mono",monospace;font-size:12px;word-break:break-all}
.nowrap{white-space:nowrap}
.muted{color:#666}
.small{font-size:12px}
.chip{display:inline-block;padding:1px 7px;border-radius:10px;font-size:12px;white-space:nowrap;border:1px solid}
.v-faster{background:#e3f4e8;border-color:#3c9a5a;color:#1b5e31}
.v-nsd{background:#f0f0f0;border-color:#9a9a9a;color:#444}
.v-slower{background:#fff4d6;border-color:#c99a1b;color:#6b4e00}
.v-bad{background:#fdecea;border-color:#b3261e;color:#8c1d18;font-weight:bold}
.v-other{background:#f0f0f0;border-color:#9a9a9a;color:#444}
.pass{color:#1e7d3c;font-weight:bold}
.fail{color:#b3261e;font-weight:bold}
.note{background:#f7f7f9;border:1px solid #e1e3e8;border-radius:6px;padding:8px 12px;margin:8px 0;font-size:13px}
figure{margin:8px 0 16px;break-inside:avoid}
figcaption{font-size:13px;color:#444;margin:2px 0 6px}
svg{display:block;width:100%;height:auto}
svg text{font-family:"DejaVu Sans","Liberation Sans",Arial,sans-serif}
.legend{display:flex;flex-wrap:wrap;gap:4px 16px;font-size:12px;margin:4px 0 6px}
.pair{display:flex;gap:24px;flex-wrap:wrap}
.pair figure{flex:1 1 460px}
.signoff h2{margin-top:0}
.signoff{margin-top:28px;border:1px solid #9aa1ab;border-radius:6px;padding:12px 16px;break-inside:avoid}
.signoff table td{height:34px}
footer{margin-top:24px;font-size:12px;color:#666}
@page{size:A4;margin:12mm}
@media print{body{font-size:10pt}main{max-width:none;padding:0}h2{break-after:avoid}
 table{font-size:8.5pt}.mono{font-size:7.5pt}.chip{font-size:8pt}
 .pair figure{flex:1 1 0}table.matrix th:first-child{width:150px}.chip{white-space:normal}}
"""


def _reverted_stages(report):
    return {o.get("id") for o in report.get("optimizations") or []
            if str(o.get("status", "")).startswith("reverted: gate")}


def _stage_means(report):
    return {s.get("stage"): s for s in report.get("stages") or []}


def _overall(report):
    """Mean latency and QPS, baseline against the last stage measured (named, and flagged when it was reverted)."""
    stages = report.get("stages") or []
    if not stages:
        return "No benchmark ran."
    # The baseline, not the A/A control measured before it (baseline_control).
    first = next((s for s in stages if s.get("stage") == "baseline"), stages[0])
    last = stages[-1]
    if last is first or first.get("stage") != "baseline":
        return f'Mean latency at {first.get("stage")}: {fmt.ms(first.get("mean_ms"))} ms; QPS {fmt.qps(first.get("qps"))}'
    reverted = " (reverted)" if last.get("stage") in _reverted_stages(report) else ""
    return (f'Mean latency: baseline {fmt.ms(first.get("mean_ms"))} ms -> {last.get("stage")}{reverted} '
            f'{fmt.ms(last.get("mean_ms"))} ms ({fmt.pct(last.get("mean_ms_vs_baseline_pct"))}); '
            f'QPS {fmt.qps(first.get("qps"))} -> {fmt.qps(last.get("qps"))} ({fmt.pct(last.get("qps_vs_baseline_pct"))})')


def _overall_gate(overall):
    """'Overall opt5 vs baseline: geometric-mean speedup x12.3, 10 queries: 9 better, ...; no query worse'"""
    worse = (overall.get("summary") or {}).get("worse") or 0
    return (f'Overall {overall.get("stage")} vs baseline: geometric-mean speedup '
            f'x{(overall.get("summary") or {}).get("speedup_geomean")}, {_gate_counts(overall)}; '
            + ("no query slower than at baseline beyond its tolerance" if not worse
               else f"{worse} slower than at baseline beyond tolerance"))


def _results_statement(report):
    """Whether every query returned the same rows at every stage (the benchmark's result fingerprints)."""
    queries = report.get("queries") or []
    if not queries:
        return ""
    differing = [q.get("query") for q in queries
                 if len({(f or {}).get("fingerprint") for f in (q.get("stages") or {}).values()}) > 1]
    if differing:
        return "Result fingerprints differ between stages for: " + ", ".join(str(q) for q in differing) + "."
    return "Every query returned the same result at every stage (identical result fingerprints)."


def _verdict_counts(gate):
    """[(count, verdict, label)] of the verdicts the gate gave, from its own summary."""
    summary = gate.get("summary") or {}
    counts = []
    for key, verdict in _SUMMARY_VERDICTS:
        if summary.get(key):
            label = verdict
            if verdict == "unchanged" and summary.get("slower_within_tolerance"):
                label = f'unchanged ({summary["slower_within_tolerance"]} of them slower within tolerance)'
            if verdict == "worse" and (gate.get("settings") or {}).get("judge_latency") is False:
                label = "worse (latency not judged)"
            counts.append((summary[key], verdict, label))
    changed = sum(1 for q in gate.get("queries") or [] if q.get("fingerprint_changed"))
    if changed:
        counts.append((changed, "result changed", "result changed"))
    return counts


def _gate_counts(gate):
    """'10 queries: 4 better, 6 unchanged (3 of them slower within tolerance), ...'"""
    parts = [f"{count} {label}" for count, _, label in _verdict_counts(gate)]
    return f'{len(gate.get("queries") or [])} queries: ' + (", ".join(parts) or "no verdict")


def _gate_statement(gate):
    """One honest sentence about what the gate found: no gain is claimed where there is none."""
    queries = gate.get("queries") or []
    total = len(queries)
    summary = gate.get("summary") or {}
    better = summary.get("better") or 0
    unchanged = summary.get("unchanged") or 0
    sentences = []
    if total and unchanged == total:
        sentences.append("Unchanged on every query: the benchmark could not tell this stage from the one before "
                         "it beyond the tolerance, so no gain is claimed.")
    elif total and better == 0:
        sentences.append("No query got significantly faster; no gain is claimed.")
    elif unchanged:
        sentences.append(f"Unchanged on {unchanged} of {total} queries (no gain claimed for them).")
    workload = gate.get("workload") or {}
    if workload.get("explanation"):
        sentences.append("The " + workload["explanation"] + ".")
    if (gate.get("settings") or {}).get("judge_latency") is False:
        sentences.append("Latency was measured but not judged: only a changed result could fail this gate.")
    return " ".join(sentences)


# ---------------------------------------------------------------- charts (inline SVG)


# ---------------------------------------------------------------- sections

def _header(report):
    database = report.get("database") or {}
    outcome = str(report.get("outcome", ""))
    outcome_class = ("o-bad" if outcome.startswith("stopped") else
                     "o-ok" if outcome.startswith("completed") else "o-info")
    settings = report.get("benchmark_settings") or {}
    benchmark = ("not run" if not report.get("stages") or settings.get("iterations") is None else
                 f'{settings.get("iterations")} timed executions per query after {settings.get("warmup")} '
                 f'warm-up runs, {settings.get("concurrency")} concurrent client(s)')
    run = [
        ("Run id", f'<span class="mono">{fmt.text(report.get("run_id"))}</span>'),
        ("Environment", fmt.text(report.get("environment"))),
        ("Kind", fmt.text(report.get("kind", "rollout"))
         + (" (check mode: nothing was changed)" if report.get("check_mode") else "")),
        ("Benchmark", fmt.text(benchmark)),
        ("Report written", fmt.text(report.get("written_at"))),
    ]
    server = [
        ("Database", fmt.text(database.get("name"))),
        ("PostgreSQL", fmt.text(database.get("server_version"))),
        ("PostGIS", fmt.text(database.get("postgis_version"))),
        ("Features", fmt.text(f'{database["features"]:,}' if fmt.is_number(database.get("features")) else None)),
        ("Database size", fmt.text(fmt.byte_size(database.get("bytes")))),
    ]
    tables = "".join('<table class="facts">' + "".join(f"<tr><th>{name}</th><td>{value}</td></tr>"
                                                       for name, value in facts) + "</table>"
                     for facts in (run, server))
    return (f'<header><h1>Stage 4 {fmt.text(report.get("kind", "rollout"))} report: {fmt.text(report.get("environment"))}, '
            f'{fmt.text(database.get("name"))}</h1>'
            f'<div class="outcome {outcome_class}" id="outcome">Outcome: {fmt.text(outcome)}</div>'
            f'<p class="key" id="key-figures">{fmt.text(_overall(report)).replace("-&gt;", "&rarr;")}<br>'
            + (f'<span id="overall-gate">{fmt.text(_overall_gate(report["overall"]))}</span><br>' if report.get("overall") else "")
            + f'{fmt.text(_results_statement(report))}</p>'
            f'<div class="facts-pair" id="facts">{tables}</div></header>')


def _count_chips(gate):
    """The gate's verdict counts as coloured chips."""
    return " ".join(f'<span class="chip {fmt.VERDICT_CLASS[verdict]}">{fmt.text(count)} {fmt.text(label)}</span>'
                    for count, verdict, label in _verdict_counts(gate))


def _gate_verdict(gate):
    return '<span class="pass">PASSED</span>' if gate.get("passed") else '<span class="fail">FAILED</span>'


def _optimizations_section(report):
    means = _stage_means(report)
    rows = []
    for opt in report.get("optimizations") or []:
        gate = opt.get("gate")
        if gate:
            reference = gate.get("reference")
            before = (means.get(reference) or {}).get("mean_ms")
            after = (means.get(opt.get("id")) or {}).get("mean_ms")
            mean = f"{fmt.text(fmt.ms(before))} &rarr; {fmt.text(fmt.ms(after))} ms" if fmt.is_number(before) and fmt.is_number(after) else "n/a"
            statement = _gate_statement(gate)
            gate_cell = (f'{_gate_verdict(gate)} vs {fmt.text(reference)} <span class="small muted">'
                         f'({len(gate.get("queries") or [])} queries)</span>'
                         f'<div class="chips">{_count_chips(gate)}</div>'
                         + (f'<div class="small">{fmt.text(statement)}</div>' if statement else "")
                         + ("" if gate.get("passed") else f'<div class="small fail">{fmt.text(gate.get("reason"))}</div>'))
        elif opt.get("declined"):
            mean = "n/a"
            gate_cell = f'<span class="muted">not applied: {fmt.text(opt.get("declined"))}</span>'
        else:
            mean = "n/a"
            gate_cell = '<span class="muted">not measured in this run</span>'
        rows.append(f'<tr class="opt-row" data-opt="{fmt.text(opt.get("id"))}">'
                    f'<td class="nowrap"><b>{fmt.text(opt.get("id"))}</b></td><td>{fmt.text(opt.get("title"))}</td>'
                    f'<td>{fmt.text(opt.get("status"))}</td><td>{gate_cell}</td><td class="n">{mean}</td></tr>')
    if not rows:
        return '<section id="optimizations"><h2>Optimizations</h2><p>No optimization in this run.</p></section>'
    return ('<section id="optimizations"><h2>Optimizations</h2><table><thead><tr><th>Step</th>'
            '<th style="width:30%">What</th><th>Status</th><th style="width:36%">Gate (verdicts per query)</th>'
            '<th class="n">Mean latency<br>before &rarr; after</th>'
            f'</tr></thead><tbody>{"".join(rows)}</tbody></table></section>')


def _benchmark_section(report):
    stage_rows = report.get("stages") or []
    if not stage_rows:
        return ('<section id="benchmark"><h2>Benchmark</h2><p id="no-benchmark">No benchmark ran in this run, '
                'so there is no latency, QPS or cache-hit figure to show.</p></section>')
    stages = [s.get("stage") for s in stage_rows]
    colours = charts.stage_colours(stages)
    reverted = _reverted_stages(report)
    settings = report.get("benchmark_settings") or {}

    def versus(stage, value):
        return "&mdash;" if stage == "baseline" else fmt.text(fmt.pct(value))

    def qps_text(stage_row):
        change = "" if stage_row.get("stage") == "baseline" else f' ({fmt.pct(stage_row.get("qps_vs_baseline_pct"))})'
        return f'{fmt.qps(stage_row.get("qps"))} QPS{change}'

    qps_ticks = charts.nice_ticks(max([s.get("qps") for s in stage_rows if fmt.is_number(s.get("qps"))] or [0]))
    qps_chart = charts.stage_chart(stage_rows, colours, reverted, "qps", "qps", "queries per second (linear, from zero)",
                             qps_ticks[-1], qps_ticks, lambda t: f"{t:,.0f}" if t >= 10 else f"{t:g}", qps_text)
    cache_chart = charts.stage_chart(stage_rows, colours, reverted, "cache_hit_ratio", "cache",
                               "shared-buffer cache-hit ratio (linear, 0 to 100%)", 1.0, [0, 0.25, 0.5, 0.75, 1.0],
                               lambda t: f"{t * 100:.0f}%", lambda s: fmt.ratio_pct(s.get("cache_hit_ratio")))
    table_rows = "".join(
        f'<tr><td><span class="sw" style="background:{colours[s.get("stage")]}"></span>'
        f'{fmt.text(charts.stage_label(s.get("stage"), reverted))}</td><td class="n">{fmt.text(fmt.ms(s.get("mean_ms")))}</td>'
        f'<td class="n">{versus(s.get("stage"), s.get("mean_ms_vs_baseline_pct"))}</td>'
        f'<td class="n">{fmt.text(fmt.qps(s.get("qps")))}</td>'
        f'<td class="n">{versus(s.get("stage"), s.get("qps_vs_baseline_pct"))}</td>'
        f'<td class="n">{fmt.text(fmt.ratio_pct(s.get("cache_hit_ratio")))}</td>'
        f'<td class="n">{fmt.text(s.get("executions"))}</td></tr>'
        for s in stage_rows)
    return (
        '<section id="benchmark"><h2>Benchmark by stage</h2>'
        f'<p>{fmt.text(settings.get("iterations"))} timed executions per query after {fmt.text(settings.get("warmup"))} '
        f'warm-up runs, {fmt.text(settings.get("concurrency"))} concurrent client(s). The stages were measured one after '
        'the other, each right after its change, so cache state and other load on the server move the figures a '
        'little: the gate, not a single bar, decides whether a difference is real.</p>'
        '<table id="stages"><thead><tr><th>Stage</th><th class="n">Mean latency (ms)</th><th class="n">vs baseline</th>'
        '<th class="n">QPS</th><th class="n">vs baseline</th><th class="n">Cache-hit ratio</th>'
        f'<th class="n">Executions</th></tr></thead><tbody>{table_rows}</tbody></table>'
        '<figure id="latency-chart"><figcaption><b>Median (p50) latency per query and stage, logarithmic scale.</b> '
        'Shorter is faster; from one bold gridline to the next is ten times slower.</figcaption>'
        f'{charts.legend(stages, colours, reverted)}{charts.latency_chart(report, stages, colours, reverted)}</figure>'
        '<div class="pair"><figure id="qps-chart"><figcaption><b>Throughput per stage</b>, all queries '
        f'(longer is better)</figcaption>{qps_chart}</figure>'
        '<figure id="cache-chart"><figcaption><b>Cache-hit ratio per stage</b> (longer is better)</figcaption>'
        f'{cache_chart}</figure></div></section>')


def _gated(report):
    return [o for o in report.get("optimizations") or [] if o.get("gate")]


def _gates_section(report):
    gated = _gated(report)
    if not gated:
        return ('<section id="gates"><h2>Gate decisions</h2><p>No gate ran in this run: no optimization was applied '
                'and measured.</p></section>')
    settings = gated[0]["gate"].get("settings") or {}
    confidence = settings.get("confidence")
    explain = (
        '<div class="note">For each query the latency samples of a stage are compared with those of the last '
        'accepted stage (named under each column head): the Hodges-Lehmann shift and its confidence interval, '
        f'Bonferroni-corrected so that the ten intervals and the workload\'s hold together at '
        f'{fmt.text(round(confidence * 100, 1) if fmt.is_number(confidence) else None)}%. A query is <b>worse</b> when the whole '
        f'interval lies beyond its tolerance, the larger of {fmt.text(settings.get("max_slowdown_ms"))} ms and '
        f'{fmt.text(settings.get("max_slowdown_pct"))}% of its median; <b>better</b> when the whole interval is below zero; '
        '<b>inconclusive</b> when the interval straddles the tolerance (the stage is then measured again, longer); '
        'otherwise <b>unchanged</b>, which may be slower within tolerance. A changed result fingerprint always '
        'fails. <b>No gain is claimed for an unchanged query.</b> Each cell gives the verdict, the change of the '
        'median and the two medians in ms.</div>')
    query_ids = []
    for opt in gated:
        for q in opt["gate"].get("queries") or []:
            if q.get("query") not in query_ids:
                query_ids.append(q.get("query"))
    head = "".join(f'<th>{fmt.text(o.get("id"))}<br><span class="small muted">vs {fmt.text(o["gate"].get("reference"))}</span>'
                   '</th>' for o in gated)
    matrix_rows = []
    for query_id in query_ids:
        cells = []
        for opt in gated:
            q = next((q for q in opt["gate"].get("queries") or [] if q.get("query") == query_id), None)
            if q is None:
                cells.append('<td class="muted">n/a</td>')
                continue
            figures = (f'<br><b>{fmt.text(fmt.pct(q.get("delta_pct")))}</b> <span class="muted">'
                       f'{fmt.text(fmt.ms(q.get("reference_p50_ms")))}&rarr;{fmt.text(fmt.ms(q.get("p50_ms")))}</span>'
                       if fmt.is_number(q.get("delta_pct")) else "")
            cells.append(f'<td class="gate-cell" data-opt="{fmt.text(opt.get("id"))}" data-query="{fmt.text(query_id)}">'
                         f'{fmt.chip(q.get("verdict"), short=True)}{figures}</td>')
        matrix_rows.append(f'<tr class="matrix-row"><td>{fmt.breakable(query_id)}</td>{"".join(cells)}</tr>')
    gate_row = "".join(f'<td>{_gate_verdict(o["gate"])}</td>' for o in gated)
    return ('<section id="gates"><h2>Gate decisions per optimization and query</h2>'
            f'{explain}<table id="gate-matrix" class="matrix"><thead><tr><th>Query</th>{head}</tr></thead>'
            f'<tbody>{"".join(matrix_rows)}<tr class="gate-total"><th>Gate</th>{gate_row}</tr></tbody></table>'
            '<p class="small muted">Each optimization\'s figures in full (p-values, result fingerprints) are in the '
            'appendix.</p></section>')


def _gate_details_section(report):
    details = []
    for opt in _gated(report):
        gate = opt["gate"]
        rows = "".join(
            f'<tr class="gate-row" data-opt="{fmt.text(opt.get("id"))}"><td>{fmt.breakable(q.get("query"))}</td>'
            f'<td class="n">{fmt.text(fmt.ms(q.get("reference_p50_ms")))}</td><td class="n">{fmt.text(fmt.ms(q.get("p50_ms")))}</td>'
            f'<td class="n">{fmt.text(fmt.delta_ms(q.get("delta_ms")))}</td><td class="n">{fmt.text(fmt.pct(q.get("delta_pct")))}</td>'
            f'<td class="n">{fmt.text(fmt.interval(q))}</td><td class="n">{fmt.text(fmt.ms(q.get("tolerance_ms")))}</td>'
            f'<td class="n">{fmt.text(fmt.p_value(q.get("p_value")))}</td>'
            f'<td>{"<b>changed</b>" if q.get("fingerprint_changed") else "unchanged"}</td>'
            f'<td>{fmt.chip(q.get("verdict"))}</td></tr>'
            for q in gate.get("queries") or [])
        lines = "".join(f'<li>{fmt.text(q.get("explanation"))}</li>' for q in gate.get("queries") or [] if q.get("explanation"))
        statement = _gate_statement(gate)
        details.append(
            f'<div class="gate-detail" id="gate-{fmt.text(opt.get("id"))}">'
            f'<h3>{fmt.text(opt.get("id"))}: {fmt.text(opt.get("title"))}</h3>'
            f'<p>Gate {_gate_verdict(gate)} against <b>{fmt.text(gate.get("reference"))}</b>: {fmt.text(gate.get("reason"))}. '
            f'Status: {fmt.text(opt.get("status"))}. Verdicts on {fmt.text(_gate_counts(gate))}.'
            + (f' <b>{fmt.text(statement)}</b>' if statement else "") + '</p>'
            f'<table class="compact"><thead><tr><th>Query</th><th class="n">{fmt.text(gate.get("reference"))} p50 (ms)</th>'
            f'<th class="n">{fmt.text(opt.get("id"))} p50 (ms)</th><th class="n">&Delta; ms</th><th class="n">&Delta; %</th>'
            '<th class="n">shift [interval] (ms)</th><th class="n">tolerance (ms)</th>'
            '<th class="n">p</th><th>Result</th><th>Verdict</th></tr></thead>'
            f'<tbody>{rows}</tbody></table><ol class="small mono explanations">{lines}</ol></div>')
    if not details:
        return ""
    return ('<section id="gate-details"><h2>Appendix: gate figures per optimization</h2><p class="small">The shift is '
            'the Hodges-Lehmann estimate of the latency change with its corrected interval; p is the two-sided '
            'Mann-Whitney p-value before correction. &ldquo;Result&rdquo; compares the fingerprint of the rows each '
            f'query returned. Under each table, the gate\'s one line per query.</p>{"".join(details)}</section>')


def _backup_section(report):
    backup = report.get("backup")
    if not backup:
        reason = ("check mode changes nothing" if report.get("check_mode")
                  else "nothing was pending, so nothing was changed")
        return f'<section id="backup"><h2>Backup</h2><p>No backup was taken: {fmt.text(reason)}.</p></section>'
    file_path = str(backup.get("file", ""))
    rows = [
        ("File", f'<span class="mono">{fmt.text(fmt.basename(file_path))}</span><br>'
                 f'<span class="small muted">{fmt.text(file_path)}</span>'),
        ("Size", fmt.text(fmt.byte_size(backup.get("bytes")))),
        ("SHA-256", f'<span class="mono" id="backup-sha256">{fmt.text(backup.get("sha256"))}</span>'),
        ("TOC entries", f'{fmt.text(backup.get("toc_entries"))} (listed by pg_restore --list: the archive is readable)'),
    ]
    body = "".join(f"<tr><th>{name}</th><td>{value}</td></tr>" for name, value in rows)
    return ('<section id="backup"><h2>Backup taken before any change</h2><p>pg_dump custom format; the SHA-256 is '
            f'also written next to the file.</p><table class="facts">{body}</table></section>')


def _timeline_section(report):
    timeline = report.get("timeline") or []
    if not timeline:
        return '<section id="timeline"><h2>Timeline</h2><p>No audit entry was recorded.</p></section>'
    rows = []
    for entry in timeline:
        gate = entry.get("gate")
        evidence = [f'gate {_gate_verdict(gate)}: {fmt.text(gate.get("reason"))}'] if gate else []
        for script, key in (("deploy.sql", "sql_sha256"), ("revert.sql", "revert_sha256")):
            if entry.get(key):
                evidence.append(f'<span class="small muted">{script}</span> <span class="mono">{fmt.text(entry[key])}</span>')
        time = str(entry.get("time", ""))
        took = entry.get("seconds")
        rows.append(f'<tr class="timeline-row"><td class="nowrap">{fmt.text(time[:10])} {fmt.text(time[11:19])}</td>'
                    f'<td class="n">{fmt.text(f"{took:.1f}" if fmt.is_number(took) else "")}</td>'
                    f'<td>{fmt.text(entry.get("step"))}</td><td>{fmt.text(entry.get("outcome"))}</td>'
                    f'<td>{"<br>".join(evidence)}</td></tr>')
    return ('<section id="timeline"><h2>Timeline</h2><p>Every step of this run as recorded in '
            '<span class="mono">audit.jsonl</span>: each SQL change with the SHA-256 of the script it ran, each gate '
            'with its decision, and the seconds since the step before it (where the time went).</p>'
            '<table class="compact"><thead><tr><th>Time (UTC)</th><th class="n">Took (s)</th><th>Step</th><th>Outcome</th>'
            f'<th>SQL file SHA-256 / gate decision</th></tr></thead><tbody>{"".join(rows)}</tbody></table></section>')


def _signoff_section(report):
    kind = report.get("kind", "rollout")
    alternative = ('re-apply the rollout (<span class="mono">ansible-playbook stage4.yml</span>)' if kind == "rollback"
                   else 'roll back (<span class="mono">ansible-playbook playbooks/rollback.yml</span>)')
    return ('<section class="signoff" id="signoff"><h2>Sign-off</h2>'
            '<table><tbody><tr><th style="width:190px">Reviewed by (DBA)</th><td></td></tr>'
            '<tr><th>Date</th><td></td></tr>'
            '<tr><th>Decision</th>'
            f'<td>&#9744; accept the {fmt.text(kind)} &nbsp;&nbsp; &#9744; {alternative}</td></tr>'
            '<tr><th>Signature</th><td></td></tr></tbody></table></section>')


def stage4_report_html(report):
    """The whole page as one string."""
    title = f'Stage 4 {report.get("kind", "rollout")} report: {report.get("environment")} {report.get("run_id")}'
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<title>{fmt.text(title)}</title><style>{_CSS}</style></head><body><main>'
        + _header(report) + _optimizations_section(report) + _benchmark_section(report) + _gates_section(report)
        + _backup_section(report) + _timeline_section(report) + _gate_details_section(report) + _signoff_section(report)
        + '<footer>Written by the stage4_report role from this run\'s report.json (same folder: report.md, '
        'metrics_&lt;stage&gt;.json, audit.jsonl). Every figure comes from the gis_benchmark module; this page runs no '
        'script and loads nothing from the network.</footer></main></body></html>\n')


# ---------------------------------------------------------------- timeline and console summary

def stage4_report_timeline(audit_text, run_id=None):
    """audit.jsonl (one JSON object a line) as [{time, seconds, step, outcome, sql_sha256, revert_sha256, gate}].

    seconds is the time since the entry before it: an entry is written when its step ends, so it is
    about how long that step took (None for the first).
    """
    timeline = []
    previous = None
    for number, line in enumerate(str(audit_text or "").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except ValueError as error:
            raise ValueError(f"audit.jsonl line {number} is not JSON: {error}") from error
        if run_id and entry.get("run_id") != run_id:
            continue
        files = entry.get("sql_files") or {}
        step = str(entry.get("step", ""))
        details = entry.get("details") or {}
        outcome = entry.get("outcome")
        gate = {"optimization": step[len("gate_"):], "passed": outcome == "passed", "reason": details.get("reason"),
                "summary": details.get("summary")}
        moment = _parse_time(entry.get("time"))
        timeline.append({
            "time": entry.get("time"),
            "seconds": round((moment - previous).total_seconds(), 1) if moment and previous else None,
            "step": step,
            "outcome": outcome,
            "sql_sha256": (files.get("deploy") or {}).get("sha256"),
            # a revert runs revert.sql, not deploy.sql: name the script that ran
            "revert_sha256": ((files.get("revert") or {}).get("sha256")
                              if outcome in ("reverted", "would_revert") else None),
            "gate": gate if step.startswith("gate_") else None,
        })
        previous = moment or previous
    return timeline


def _parse_time(text):
    try:
        return datetime.datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        return None


def stage4_report_summary(report, output_dir):
    """The end-of-run lines: outcome, one line per optimization, baseline vs last stage, where the files are."""
    lines = [f'Stage 4 {report.get("kind", "rollout")} on {report.get("environment")}, run {report.get("run_id")}: '
             f'{report.get("outcome")}']
    means = _stage_means(report)
    optimizations = report.get("optimizations") or []
    id_width = max([len(str(o.get("id"))) for o in optimizations] or [0])
    status_width = max([len(str(o.get("status"))) for o in optimizations] or [0])
    for opt in optimizations:
        gate = opt.get("gate")
        line = f'{str(opt.get("id")):<{id_width}}  {str(opt.get("status")):<{status_width}}  '
        if gate:
            before = (means.get(gate.get("reference")) or {}).get("mean_ms")
            after = (means.get(opt.get("id")) or {}).get("mean_ms")
            if fmt.is_number(before) and fmt.is_number(after) and after > 0:
                # speed as a factor of the reference stage's: above 1 is faster, below 1 slower
                line += (f'mean {fmt.ms(before)} -> {fmt.ms(after)} ms vs {gate.get("reference")} '
                         f'(speed x{before / after:.2f}), ')
            line += _gate_counts(gate)
            if not gate.get("passed"):
                line += f'; gate failed: {gate.get("reason")}'
        elif opt.get("declined"):
            line += opt.get("declined")
        else:
            line += "not measured in this run"
        lines.append(line.rstrip())
    lines.append(_overall(report))
    if report.get("overall"):
        lines.append(_overall_gate(report["overall"]))
    directory = str(output_dir).rstrip("/")
    lines += [f"HTML:     {directory}/report.html", f"Markdown: {directory}/report.md",
              f"JSON:     {directory}/report.json", f"Audit:    {directory}/audit.jsonl"]
    return lines


class FilterModule:
    def filters(self):
        return {
            "stage4_report_html": stage4_report_html,
            "stage4_report_timeline": stage4_report_timeline,
            "stage4_report_summary": stage4_report_summary,
        }

# -*- coding: utf-8 -*-
"""stage4_report_data: the run's report as data (report.json), from what the roles left.

report.md.j2 and the stage4_report_html filter render it. Every figure comes from the benchmark module;
the overall judgement is the gate's, with the settings the run's gates used; the timeline is this run's
audit trail so far.
"""
from __future__ import annotations

import datetime

from ansible_collections.biblioteca.stage4.plugins.filter.stage4_gate import stage4_gate
from ansible_collections.biblioteca.stage4.plugins.filter.stage4_report_html import stage4_report_timeline

DOCUMENTATION = r"""
name: stage4_report_data
short_description: Assemble a stage4 run's report (report.json) from the run's facts
description:
  - The status of each optimization, each stage's workload figures against the baseline, each query's
    figures per stage, the last accepted stage judged against the baseline by the gate, the outcome, the
    backup, the timeline from audit.jsonl, the A/A control and the provenance.
options:
  _input:
    description:
      - The run's facts, by the names the roles gave them without their C(stage4_) prefix
        (C(benchmark_metrics), C(optimization_gates), C(common_change_actions), C(optimizations), ...), with
        C(audit_text) (the run's audit.jsonl) and C(check_mode).
    type: dict
    required: true
"""

EXAMPLES = r"""
- name: Assemble the report
  ansible.builtin.set_fact:
    stage4_report_data: "{{ stage4_report_inputs | biblioteca.stage4.stage4_report_data }}"
"""

RETURN = r"""
_value:
  description: The report, as report.json holds it.
  type: dict
"""

# An optimization's status from what its change did in this run (stage4_change's action).
STATUS_BY_ACTION = {
    "deployed": "applied: gate passed",
    "unchanged": "already applied (ledger)",
    "declined": "declined",
    "would_deploy": "would be applied (check mode)",
    "reverted": "reverted (rollback)",
    "would_revert": "would be reverted (check mode)",
}
APPLIED = STATUS_BY_ACTION["deployed"]
ALREADY = STATUS_BY_ACTION["unchanged"]
DECLINED = STATUS_BY_ACTION["declined"]


def optimization_status(opt, run):
    if opt["id"] in (run.get("optimization_refused") or {}):
        return "reverted: gate failed"
    if (run.get("optimization_failed") or {}).get("id") == opt["id"]:
        return "failed, not applied"
    action = run["common_change_actions"].get(opt["change"])
    if action in STATUS_BY_ACTION:
        return STATUS_BY_ACTION[action]
    if opt["change"] in run["preflight_applied_changes"]:
        return "applied earlier, left as is"
    return "not applied"


def optimizations(run):
    declined = run.get("common_change_declined") or {}
    return [dict(id=opt["id"], change=opt["change"], title=opt["title"], status=optimization_status(opt, run),
                 gate=run["optimization_gates"].get(opt["id"]), declined=declined.get(opt["change"]))
            for opt in run["optimizations"]]


def percent_change(value, reference):
    return round((value / reference - 1) * 100, 1) if reference else None


def stage_summaries(metrics):
    """Each stage's workload figures, in the order measured, against the baseline."""
    summaries = []
    for stage, measured in metrics.items():
        baseline = metrics.get("baseline", measured)
        summaries.append(dict(stage=stage, mean_ms=measured["mean_ms"], qps=measured["qps"],
                              cache_hit_ratio=measured["cache_hit_ratio"], executions=measured["executions"],
                              mean_ms_vs_baseline_pct=percent_change(measured["mean_ms"], baseline["mean_ms"]),
                              qps_vs_baseline_pct=percent_change(measured["qps"], baseline["qps"])
                              if measured["qps"] is not None else None))
    return summaries


def query_figures(query):
    plan = query.get("plan")
    return dict(p50_ms=query["p50_ms"], p95_ms=query["p95_ms"], p99_ms=query["p99_ms"], mean_ms=query["mean_ms"],
                rows=query["result_rows"], fingerprint=query["fingerprint"], shared_hit=query["shared_hit"],
                shared_read=query["shared_read"], qps=query.get("qps"), p50_ci_ms=query.get("p50_ci_ms"),
                statements=query.get("statements"), plan=plan["shape"] if plan else None)


def queries(metrics):
    stages = list(metrics)
    if not stages:
        return []
    return [dict(query=query_id, stages={stage: query_figures(metrics[stage]["queries"][query_id]) for stage in stages})
            for query_id in sorted(metrics[stages[0]]["queries"])]


def overall(run):
    """The last accepted stage against the baseline, judged by the same gate with the same settings."""
    metrics, gates = run["benchmark_metrics"], run["optimization_gates"]
    last = run.get("optimization_gate_reference") or "baseline"
    if not gates or last == "baseline" or last not in metrics or "baseline" not in metrics:
        return None
    settings = next(iter(gates.values()))["settings"]
    judged = stage4_gate(metrics[last], metrics["baseline"], max_slowdown_ms=settings["max_slowdown_ms"],
                         max_slowdown_pct=settings["max_slowdown_pct"],
                         max_workload_slowdown_pct=settings["max_workload_slowdown_pct"],
                         confidence=settings["confidence"], inconclusive_passes=True,
                         noise=run.get("optimization_gate_noise") or {})
    return dict(judged, stage=last, reference="baseline")


def outcome(run, opts):
    if run.get("optimization_rolled_back"):
        return "stopped: %s failed its gate and was reverted" % run["optimization_rolled_back"]
    failed = run.get("optimization_failed") or {}
    if failed:
        return "stopped: %s failed and was not applied: %s" % (failed["id"], failed["reason"])
    if run["check_mode"]:
        return "check mode: nothing was changed"
    if run["run_kind"] == "rollback":
        # in the order they were reverted, newest first
        ids = {opt["change"]: opt["id"] for opt in run["optimizations"]}
        reverted = [ids[change] for change in run["preflight_pending_changes"]
                    if run["common_change_actions"].get(change) == "reverted"]
        return "rollback: " + ("reverted " + ", ".join(reverted) if reverted else "nothing to revert")
    counts = {status: sum(1 for opt in opts if opt["status"] == status) for status in (APPLIED, ALREADY, DECLINED)}
    refused = list(run.get("optimization_refused") or {})
    text = ("completed, %s reverted (gate failed): " % ", ".join(refused)) if refused else "completed: "
    text += "%d applied, %d already applied" % (counts[APPLIED], counts[ALREADY])
    return text + (", %d declined" % counts[DECLINED] if counts[DECLINED] else "")


def control(run):
    noise = run.get("optimization_gate_noise") or {}
    if not noise:
        return None
    verdict = run.get("optimization_gate_control_verdict") or {}
    return dict(noise, stages=["baseline_control", "baseline"], reason=verdict.get("reason", ""))


def stage4_report_data(run, now=None):
    """The report of a run; `run` holds the run's facts without their stage4_ prefix (see DOCUMENTATION)."""
    metrics = run["benchmark_metrics"]
    baseline = metrics.get("baseline")
    first = metrics[next(iter(metrics))] if metrics else None
    opts = optimizations(run)
    database = run["preflight_database"]
    now = now or datetime.datetime.now(datetime.timezone.utc)
    return dict(
        run_id=run["run_id"], environment=run["environment"], kind=run["run_kind"], outcome=outcome(run, opts),
        written_at=now.replace(tzinfo=None).isoformat() + "Z", check_mode=run["check_mode"],
        database=dict(name=run["db_name"], server_version=database["server_version"],
                      postgis_version=database["postgis_version"], features=database["feature_count"],
                      bytes=database["database_bytes"]),
        backup=run.get("backup_result"),
        timeline=stage4_report_timeline(run["audit_text"], run["run_id"]),
        changes=run["common_change_actions"], sql_files=run["common_change_files"],
        optimizations=opts, stages=stage_summaries(metrics), queries=queries(metrics), overall=overall(run),
        control=control(run),
        provenance=(baseline or first).get("provenance") if first else None,
        benchmark_settings=dict(iterations=baseline["iterations"] if baseline else None,
                                warmup=baseline["warmup"] if baseline else None,
                                concurrency=baseline["concurrency"] if baseline else None),
    )


class FilterModule:
    def filters(self):
        return {"stage4_report_data": stage4_report_data}

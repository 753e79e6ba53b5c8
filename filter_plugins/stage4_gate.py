# -*- coding: utf-8 -*-
"""The metric gate: judges a stage's benchmark against the stage it builds on.

Per query, a one-sided Mann-Whitney U test on the latency samples (normal approximation with tie
correction, as Kayenta's canary judge) decides whether it got significantly slower or faster at
`confidence`. A significantly slower query fails the gate only when its median also rose by more
than `max_slowdown_ms` AND by more than `max_slowdown_pct` percent: below either it is reported
as "slower, within tolerance", so a sub-millisecond query that grows by a fraction of a
millisecond is reported honestly without stopping the rollout. A changed result fingerprint
always fails: the optimization changed what the API returns.
"""
from __future__ import annotations

import math

DOCUMENTATION = r"""
name: stage4_gate
short_description: Judge a stage4 benchmark against a reference benchmark
description:
  - Compares per-query medians, a one-sided Mann-Whitney U test on the latency samples, and result fingerprints.
options:
  _input:
    description: The benchmark of the stage being judged (the gis_benchmark module's C(benchmark) result).
    type: dict
    required: true
  reference:
    description: The benchmark of the stage it builds on.
    type: dict
    required: true
  max_slowdown_ms:
    description: Median increase in milliseconds tolerated as noise.
    type: float
  max_slowdown_pct:
    description: Median increase in percent tolerated as noise.
    type: float
  confidence:
    description: Confidence required before calling a slowdown real.
    type: float
  force_fail:
    description: Fail the gate whatever the numbers (a rollback drill).
    type: bool
  judge_latency:
    description: When false, latency is measured and reported but only result fingerprints can fail the gate.
    type: bool
"""


def mann_whitney_slower_p(reference, current):
    """One-sided p-value of "current is not slower than reference" (normal approximation)."""
    n1, n2 = len(reference), len(current)
    if n1 == 0 or n2 == 0:
        return 1.0
    ranked = sorted([(v, 0) for v in reference] + [(v, 1) for v in current])
    ranks = [0.0] * len(ranked)
    tie_term = 0.0
    i = 0
    while i < len(ranked):
        j = i
        while j + 1 < len(ranked) and ranked[j + 1][0] == ranked[i][0]:
            j += 1
        for k in range(i, j + 1):
            ranks[k] = (i + j) / 2.0 + 1
        tied = j - i + 1
        tie_term += tied ** 3 - tied
        i = j + 1
    rank_sum_current = sum(r for r, (_, group) in zip(ranks, ranked) if group == 1)
    u_current = rank_sum_current - n2 * (n2 + 1) / 2.0
    n = n1 + n2
    variance = n1 * n2 / 12.0 * ((n + 1) - tie_term / (n * (n - 1))) if n > 1 else 0.0
    if variance <= 0:
        return 1.0
    z = (u_current - n1 * n2 / 2.0 - 0.5) / math.sqrt(variance)
    return 0.5 * math.erfc(z / math.sqrt(2))


def judge_query(query_id, current, reference, max_slowdown_ms, max_slowdown_pct, confidence):
    base = reference["p50_ms"]
    now = current["p50_ms"]
    delta_ms = now - base
    delta_pct = (delta_ms / base * 100.0) if base > 0 else 0.0
    reference_samples = reference.get("samples_ms") or []
    current_samples = current.get("samples_ms") or []
    p_slower = mann_whitney_slower_p(reference_samples, current_samples)
    p_faster = mann_whitney_slower_p(current_samples, reference_samples)
    if current.get("fingerprint") != reference.get("fingerprint"):
        verdict = "result changed"
    elif p_slower < 1 - confidence and delta_ms > 0:
        beyond = delta_ms > max_slowdown_ms and delta_pct > max_slowdown_pct
        verdict = "regressed" if beyond else "slower, within tolerance"
    elif p_faster < 1 - confidence and delta_ms < 0:
        verdict = "faster"
    else:
        verdict = "no significant difference"
    return {
        "query": query_id, "verdict": verdict,
        "reference_p50_ms": round(base, 4), "p50_ms": round(now, 4),
        "delta_ms": round(delta_ms, 4), "delta_pct": round(delta_pct, 1), "p_value": round(p_slower, 5),
        "reference_mean_ms": round(reference["mean_ms"], 4), "mean_ms": round(current["mean_ms"], 4),
        "fingerprint_changed": verdict == "result changed",
    }


def stage4_gate(current, reference, max_slowdown_ms=2.0, max_slowdown_pct=25.0, confidence=0.98,
                force_fail=False, judge_latency=True):
    """Returns {"passed", "reason", "queries": [...], "regressions": [...], "summary"}."""
    queries = []
    for query_id in sorted(set(current["queries"]) | set(reference["queries"])):
        if query_id not in current["queries"] or query_id not in reference["queries"]:
            queries.append({"query": query_id, "verdict": "missing from one side", "fingerprint_changed": True})
            continue
        queries.append(judge_query(query_id, current["queries"][query_id], reference["queries"][query_id],
                                   float(max_slowdown_ms), float(max_slowdown_pct), float(confidence)))
    failing_verdicts = ("regressed", "result changed", "missing from one side") if judge_latency \
        else ("result changed", "missing from one side")
    failing = [q for q in queries if q["verdict"] in failing_verdicts]
    reasons = []
    for q in failing:
        if q["verdict"] == "regressed":
            reasons.append("{query} regressed: median {reference_p50_ms} ms -> {p50_ms} ms "
                           "(+{delta_ms} ms, +{delta_pct}%, p={p_value})".format(**q))
        else:
            reasons.append("{0}: {1}".format(q["query"], q["verdict"]))
    if force_fail:
        measured = [q for q in queries if "delta_ms" in q]
        worst = max(measured, key=lambda q: abs(q["delta_ms"]), default=None)
        reasons.insert(0, "gate forced to fail (rollback drill){0}".format(
            "; largest median change: {query} {delta_ms:+} ms ({delta_pct:+}%)".format(**worst) if worst else ""))
    counts = {verdict: sum(1 for q in queries if q["verdict"] == verdict)
              for verdict in ("faster", "no significant difference", "slower, within tolerance", "regressed")}
    return {
        "passed": not reasons,
        "reason": "; ".join(reasons) if reasons else "no query regressed and every result is unchanged",
        "queries": queries,
        "regressions": failing,
        "summary": {"faster": counts["faster"], "no_significant_difference": counts["no significant difference"],
                    "slower_within_tolerance": counts["slower, within tolerance"], "regressed": counts["regressed"],
                    "failing": len(failing),
                    "mean_ms_delta": round(current["mean_ms"] - reference["mean_ms"], 4),
                    "qps_delta_pct": round((current["qps"] / reference["qps"] - 1) * 100.0, 1)
                    if reference.get("qps") else None},
    }


class FilterModule:
    def filters(self):
        return {"stage4_gate": stage4_gate}

# -*- coding: utf-8 -*-
"""The metric gate: judges a stage's benchmark against the stage it builds on.

Per query it estimates the latency shift (current minus reference) with the Hodges-Lehmann
estimator, the median of every pairwise difference of samples, and its distribution-free
confidence interval (the one that inverts the Mann-Whitney U test). The intervals that can fail a
stage or claim a gain, one per query and the workload mean's, are Bonferroni-corrected so that
together they hold at `confidence`. Each query is then:

- better: the whole interval is below minus the noise (zero without an A/A control);
- worse: the whole interval is above the tolerance, max(`max_slowdown_ms`, `max_slowdown_pct` of
  the reference median, the noise): a real slowdown an API user can feel;
- unchanged: the one-sided bound at `confidence` of "not slower beyond the tolerance" holds (it may
  be slower by less, or faster within the noise: the line says so). The stage passes only when it
  holds for every query, so a truly slower query passes with at most 1 - `confidence` whatever the
  number of queries (an intersection-union test): no correction, and ten samples of a slow RPC are
  enough to tell, where the corrected interval straddled the tolerance at every size;
- inconclusive: neither; more samples are needed to tell.

The noise comes from the A/A control (`stage4_noise`): the unchanged database measured twice in a
row before any change. Each query's shift between those two measurements, as a fraction of its
median, is what a measurement moves with nothing changed (a shared machine's speed wanders by
several percent between stages); a gain smaller than that is not claimed. The point estimate, not
the interval's bound: the interval of every later comparison already holds its own sampling error.

A changed result fingerprint always fails: a faster wrong answer is not an optimization. The
stage fails on a worse query, a changed result or a worse workload mean; it is marginal (measure
again, longer) when something is inconclusive and nothing failed; otherwise it passes.
"""
from __future__ import annotations

import math
from statistics import NormalDist, fmean, median, variance

from ansible_collections.biblioteca.stage4.plugins.module_utils.stats import hodges_lehmann, mann_whitney_slower_p, summarize

DOCUMENTATION = r"""
name: stage4_gate
short_description: Judge a stage4 benchmark against a reference benchmark
description:
  - Per query, the Hodges-Lehmann latency shift with its Bonferroni-corrected confidence interval,
    classified as better, unchanged, worse or inconclusive; the result fingerprints; and the
    workload's mean latency. Decides pass, marginal (measure longer) or fail.
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
    description: Latency increase in milliseconds always tolerated (the noise floor of sub-millisecond queries).
    type: float
  max_slowdown_pct:
    description: Increase of a query's median latency tolerated, in percent of the reference median.
    type: float
  max_workload_slowdown_pct:
    description: Increase of the workload's mean latency (mean over the queries of their mean) tolerated, in percent.
    type: float
  confidence:
    description: Family-wise confidence of the intervals of all the queries and the workload together.
    type: float
  force_fail:
    description: Fail the gate whatever the numbers (a rollback drill).
    type: bool
  judge_latency:
    description: When false, latency is measured and reported but only result fingerprints can fail the gate.
    type: bool
  may_measure_again:
    description:
      - Whether the caller can measure the stage again, longer, when the gate is inconclusive.
      - When false, an inconclusive gate is decided by O(inconclusive_passes).
    type: bool
  inconclusive_passes:
    description: What an inconclusive gate decides when it cannot measure again. False (the default) fails it.
    type: bool
  noise:
    description:
      - The A/A control (the C(stage4_noise) filter's result). Per query, a shift within its noise is not
        called better, and a slowdown must exceed it too to be worse.
      - Omitted or empty, no noise is assumed.
    type: dict
  requires_improvement:
    description:
      - When true, the stage fails unless at least one query is better, beyond the noise, so that the
        table owner keeps only what pays (C(stage4_optimization_gate_requires=improvement)).
    type: bool
"""

# The first measurement's intervals do not describe pooled samples: dropped, not shown beside them.
NO_INTERVALS = dict(mean_ci_ms=None, p50_ci_ms=None, p95_ci_ms=None, p99_ci_ms=None)

# Fewest samples per query, on each side, for the workload's interval to have bounds.
WORKLOAD_MIN_SAMPLES = 5

VERDICTS = ("better", "unchanged", "worse", "inconclusive", "result changed", "missing from one side")


def mean_difference_interval(reference_sets, current_sets, level):
    """Difference of the workload mean (mean over queries of each query's mean) and its interval.

    Normal approximation: each query's mean has variance s^2/n, the workload mean is their
    average, so its variance is the sum of theirs divided by the number of queries squared. With
    fewer than WORKLOAD_MIN_SAMPLES samples of some query the variance estimate means nothing (two
    samples can agree by chance), so the bounds are None, as hodges_lehmann's are.
    """
    queries = len(reference_sets)
    difference = (sum(fmean(c) for c in current_sets) - sum(fmean(r) for r in reference_sets)) / queries
    if min(len(samples) for samples in reference_sets + current_sets) < WORKLOAD_MIN_SAMPLES:
        return difference, None, None
    spread = sum(variance(r) / len(r) + variance(c) / len(c)
                 for r, c in zip(reference_sets, current_sets)) / queries ** 2
    half_width = NormalDist().inv_cdf(1 - (1 - level) / 2) * math.sqrt(spread)
    return difference, difference - half_width, difference + half_width


def classify(low, high, tolerance, noise=0.0, upper=None):
    """The verdict of a shift: worse when the whole (Bonferroni) interval is above the tolerance and the
    noise, better when it is below minus the noise, unchanged when `upper`, the one-sided bound of the
    claim "not slower beyond the tolerance" (the interval's high end without it), is within them."""
    limit = max(tolerance, noise)
    if low is not None and low > limit:
        return "worse"
    if high is not None and high < -noise:
        return "better"
    bound = upper if upper is not None else high
    if bound is not None and bound <= limit:
        return "unchanged"
    return "inconclusive"


def _ms(value):
    return "{0:+.3f}".format(value) if value is not None else "?"


def explain(query_id, verdict, figures):
    """One line a DBA reads: verdict, medians, shift with its interval, and why."""
    shift = "shift {0} ms [{1}, {2}]".format(_ms(figures["shift_ms"]), _ms(figures["shift_low_ms"]),
                                             _ms(figures["shift_high_ms"]))
    medians = "median {reference_p50_ms:.3f} -> {p50_ms:.3f} ms ({delta_pct:+.1f}%)".format(**figures)
    tolerance = "the tolerance of {0:.3f} ms".format(figures["tolerance_ms"])
    noise = figures.get("noise_ms") or 0.0
    if verdict == "unchanged" and noise and figures["shift_low_ms"] is not None \
            and figures["shift_low_ms"] > figures["tolerance_ms"]:
        unchanged = ("slower beyond " + tolerance + ", but within the noise of {0:.3f} ms the A/A control measured: "
                     "not attributed to this change; measure on a quieter server to tell").format(noise)
    elif verdict == "unchanged" and figures["shift_low_ms"] is not None and figures["shift_low_ms"] > 0:
        unchanged = "slower, but within " + tolerance
    elif verdict == "unchanged" and noise and figures["shift_high_ms"] is not None and figures["shift_high_ms"] < 0:
        unchanged = "faster, but within the noise of {0:.3f} ms the A/A control measured: no gain claimed".format(noise)
    else:
        unchanged = "no difference beyond " + tolerance
    upper = figures.get("shift_upper_bound_ms")
    if verdict == "unchanged" and upper is not None:
        unchanged += " (one-sided bound {0} ms)".format(_ms(upper))
    why = {
        "better": "faster: the whole interval is below " + ("minus the noise of {0:.3f} ms".format(noise) if noise else "zero"),
        "worse": "slower beyond " + tolerance + " with the whole interval",
        "inconclusive": "the interval straddles " + tolerance + ("" if upper is None else
                        ", its one-sided bound {0} ms above it".format(_ms(upper))) + "; more samples are needed",
        "unchanged": unchanged,
    }[verdict]
    return "{0}: {1}: {2}, {3}; {4}".format(query_id, verdict, medians, shift, why)


def judge_query(query_id, current, reference, tolerance_ms, tolerance_pct, level, noise_fraction=0.0, bound_level=None):
    reference_samples = reference.get("samples_ms") or []
    current_samples = current.get("samples_ms") or []
    reference_p50 = median(reference_samples) if reference_samples else reference["p50_ms"]
    current_p50 = median(current_samples) if current_samples else current["p50_ms"]
    shift, low, high = hodges_lehmann(reference_samples, current_samples, level)
    # The one-sided bound at bound_level: the high end of the two-sided interval at 2 * bound_level - 1.
    upper = hodges_lehmann(reference_samples, current_samples, 2 * bound_level - 1)[2] if bound_level else None
    tolerance = max(tolerance_ms, tolerance_pct / 100.0 * reference_p50)
    noise = noise_fraction * reference_p50
    p_slower = mann_whitney_slower_p(reference_samples, current_samples)
    p_faster = mann_whitney_slower_p(current_samples, reference_samples)
    figures = {
        "reference_p50_ms": round(reference_p50, 4), "p50_ms": round(current_p50, 4),
        "delta_ms": round(current_p50 - reference_p50, 4),
        "delta_pct": round((current_p50 - reference_p50) / reference_p50 * 100.0, 1) if reference_p50 > 0 else 0.0,
        "shift_ms": round(shift, 4) if shift is not None else None,
        "shift_low_ms": round(low, 4) if low is not None else None,
        "shift_high_ms": round(high, 4) if high is not None else None,
        "shift_upper_bound_ms": round(upper, 4) if upper is not None else None,
        "tolerance_ms": round(tolerance, 4),
        "noise_ms": round(noise, 4),
        "p_value": round(min(1.0, 2 * min(p_slower, p_faster)), 6),
        "reference_samples": len(reference_samples), "samples": len(current_samples),
        "reference_mean_ms": round(reference["mean_ms"], 4), "mean_ms": round(current["mean_ms"], 4),
    }
    if current.get("fingerprint") != reference.get("fingerprint"):
        verdict = "result changed"
        line = "{0}: result changed: the query returns different rows than at the reference stage".format(query_id)
    else:
        verdict = classify(low, high, tolerance, noise, upper)
        line = explain(query_id, verdict, figures)
    return dict(figures, query=query_id, verdict=verdict, explanation=line,
                fingerprint_changed=verdict == "result changed")


def judge_workload(current, reference, query_ids, tolerance_ms, tolerance_pct, level, bound_level=None):
    reference_sets = [reference["queries"][q].get("samples_ms") or [reference["queries"][q]["mean_ms"]] for q in query_ids]
    current_sets = [current["queries"][q].get("samples_ms") or [current["queries"][q]["mean_ms"]] for q in query_ids]
    reference_mean = sum(fmean(r) for r in reference_sets) / len(query_ids)
    difference, low, high = mean_difference_interval(reference_sets, current_sets, level)
    upper = mean_difference_interval(reference_sets, current_sets, 2 * bound_level - 1)[2] if bound_level else None
    tolerance = max(tolerance_ms, tolerance_pct / 100.0 * reference_mean)
    verdict = classify(low, high, tolerance, upper=upper)
    line = ("workload mean latency {0:.3f} -> {1:.3f} ms: {2}, change {3} ms [{4}, {5}], tolerance {6:.3f} ms"
            .format(reference_mean, reference_mean + difference, verdict, _ms(difference), _ms(low), _ms(high),
                    tolerance))
    return {"verdict": verdict, "reference_mean_ms": round(reference_mean, 4),
            "mean_ms": round(reference_mean + difference, 4), "change_ms": round(difference, 4),
            "change_low_ms": None if low is None else round(low, 4),
            "change_high_ms": None if high is None else round(high, 4), "tolerance_ms": round(tolerance, 4),
            "explanation": line}


def geometric_mean_speedup(queries):
    """Geometric mean over the queries of reference median / current median (above 1: faster)."""
    ratios = [q["reference_p50_ms"] / q["p50_ms"] for q in queries
              if (q.get("reference_p50_ms") or 0) > 0 and (q.get("p50_ms") or 0) > 0]
    return round(math.exp(fmean(math.log(r) for r in ratios)), 3) if ratios else None


def stage4_gate(current, reference, max_slowdown_ms=2.0, max_slowdown_pct=25.0, max_workload_slowdown_pct=10.0,
                confidence=0.95, force_fail=False, judge_latency=True, may_measure_again=False,
                inconclusive_passes=False, noise=None, requires_improvement=False):
    """Returns {"decision", "passed", "reason", "queries", "workload", "regressions", "summary", "level"}."""
    noise_fractions = {q: figures["fraction"] for q, figures in ((noise or {}).get("queries") or {}).items()}
    common = sorted(set(current["queries"]) & set(reference["queries"]))
    # One interval per query plus the workload's, together at `confidence` (Bonferroni): what says a
    # query is worse (a failure) or better (a gain claimed). "Not slower beyond the tolerance" needs the
    # one-sided bound of each at `confidence` alone: the stage passes only when every query's claim
    # holds, so a truly slower query passes with at most 1 - confidence (an intersection-union test,
    # which needs no correction).
    level = 1 - (1 - float(confidence)) / (len(common) + 1)
    queries = []
    for query_id in sorted(set(current["queries"]) | set(reference["queries"])):
        if query_id not in common:
            queries.append({"query": query_id, "verdict": "missing from one side", "fingerprint_changed": True,
                            "explanation": "{0}: measured in only one of the two stages".format(query_id)})
            continue
        queries.append(judge_query(query_id, current["queries"][query_id], reference["queries"][query_id],
                                   float(max_slowdown_ms), float(max_slowdown_pct), level,
                                   noise_fractions.get(query_id, 0.0), float(confidence)))
    workload = judge_workload(current, reference, common, float(max_slowdown_ms), float(max_workload_slowdown_pct),
                              level, float(confidence)) if common else None

    always_failing = ("result changed", "missing from one side")
    failing = [q for q in queries if q["verdict"] in always_failing or (judge_latency and q["verdict"] == "worse")]
    reasons = [q["explanation"] for q in failing]
    if judge_latency and workload and workload["verdict"] == "worse":
        reasons.append(workload["explanation"])
    if force_fail:
        measured = [q for q in queries if q.get("delta_ms") is not None]
        worst = max(measured, key=lambda q: abs(q["delta_ms"]), default=None)
        reasons.insert(0, "gate forced to fail (rollback drill){0}".format(
            "; largest median change: {query} {delta_ms:+} ms ({delta_pct:+}%)".format(**worst) if worst else ""))
    undecided = []
    if judge_latency:
        undecided = [q for q in queries if q["verdict"] == "inconclusive"]
        undecided += [workload] if workload and workload["verdict"] == "inconclusive" else []

    if reasons:
        decision = "fail"
    elif undecided and may_measure_again:
        decision = "marginal"
        reasons = ["inconclusive, measuring again: " + "; ".join(u["explanation"] for u in undecided)]
    elif undecided and not inconclusive_passes:
        decision = "fail"
        reasons = ["still inconclusive with every allowed sample: " + "; ".join(u["explanation"] for u in undecided)]
    elif judge_latency and requires_improvement and not any(q["verdict"] == "better" for q in queries):
        decision = "fail"
        reasons = ["no measurable gain: no query is faster beyond {0}, and the gate requires an improvement".format(
            "the noise the A/A control measured" if noise_fractions else "its interval")]
    else:
        decision = "pass"

    counts = {verdict: sum(1 for q in queries if q["verdict"] == verdict) for verdict in VERDICTS}
    slower_within = sum(1 for q in queries if q["verdict"] == "unchanged" and (q.get("shift_low_ms") or 0) > 0)
    return {
        "decision": decision,
        "passed": decision == "pass",
        "reason": "; ".join(reasons) if reasons else "no query is worse, the workload is not worse and every result is unchanged",
        "queries": queries,
        "workload": workload,
        "level": round(level, 6),
        "regressions": failing,
        "summary": {"better": counts["better"], "unchanged": counts["unchanged"],
                    "slower_within_tolerance": slower_within, "worse": counts["worse"],
                    "inconclusive": counts["inconclusive"],
                    "result_changed": counts["result changed"] + counts["missing from one side"],
                    "failing": len(failing),
                    "samples": min((q.get("samples") or 0 for q in queries), default=0),
                    "speedup_geomean": geometric_mean_speedup(queries),
                    "mean_ms_delta": round(current["mean_ms"] - reference["mean_ms"], 4),
                    "qps_delta_pct": round((current["qps"] / reference["qps"] - 1) * 100.0, 1)
                    if reference.get("qps") and current.get("qps") else None},
    }


def stage4_noise(control, baseline, confidence=0.95):
    """The A/A control: what each query's latency moved between two measurements of the unchanged database.

    Per query, the Hodges-Lehmann shift of `control` over `baseline` with its interval (Bonferroni-corrected
    as the gate's), `own_fraction`: the shift's size over the baseline median, and `fraction`: the larger of
    that and the median of every query's own fraction. The machine's speed moves every query at once, and
    one query's shift can be near zero by chance (0.001 ms on a 0.19 ms query while the median moved 12%,
    then 17% faster at the next stage, nothing changed). The gate scales `fraction` by the median of
    whatever stage it compares with, so the noise follows a query that an optimization made ten times faster.
    """
    common = sorted(set(control["queries"]) & set(baseline["queries"]))
    level = 1 - (1 - float(confidence)) / (len(common) + 1)
    queries = {}
    for query_id in common:
        reference_samples = baseline["queries"][query_id].get("samples_ms") or []
        control_samples = control["queries"][query_id].get("samples_ms") or []
        shift, low, high = hodges_lehmann(reference_samples, control_samples, level)
        reference_p50 = median(reference_samples) if reference_samples else baseline["queries"][query_id]["p50_ms"]
        bound = abs(shift) if shift is not None else 0.0
        queries[query_id] = {"reference_p50_ms": round(reference_p50, 4),
                             "shift_ms": None if shift is None else round(shift, 4),
                             "shift_low_ms": None if low is None else round(low, 4),
                             "shift_high_ms": None if high is None else round(high, 4),
                             "own_fraction": round(bound / reference_p50, 4) if reference_p50 > 0 else 0.0}
    fractions = sorted(q["own_fraction"] for q in queries.values())
    common = median(fractions) if fractions else 0.0
    for figures in queries.values():
        figures["fraction"] = max(figures["own_fraction"], common)
    return {"queries": queries, "level": round(level, 6),
            "median_fraction": common if fractions else None,
            "max_fraction": fractions[-1] if fractions else None}


def stage4_pooled(benchmark, more):
    """benchmark with the samples of `more` (the same stage measured again) added to each query's.

    The latency figures (mean, percentiles as gis_benchmark computes them, min, max, standard deviation)
    are recomputed from the pooled samples, and the first measurement's confidence intervals are dropped
    (None) rather than shown beside figures they do not describe; the gate's own interval is computed from
    the samples. The rest (fingerprint, plan, stage figures) stays that of the first measurement, so a
    changed result cannot hide.
    """
    pooled = dict(benchmark, queries={}, executions=benchmark["executions"] + more["executions"])
    for query_id, first in benchmark["queries"].items():
        samples = list(first.get("samples_ms") or []) + list((more["queries"].get(query_id) or {}).get("samples_ms") or [])
        pooled["queries"][query_id] = dict(first, **summarize(samples), **NO_INTERVALS)
        if more["queries"].get(query_id, {}).get("fingerprint") not in (None, first.get("fingerprint")):
            pooled["queries"][query_id]["fingerprint"] = "unstable: " + more["queries"][query_id]["fingerprint"]
    all_samples = [s for q in pooled["queries"].values() for s in q["samples_ms"]]
    pooled["mean_ms"] = round(fmean(all_samples), 3) if all_samples else benchmark["mean_ms"]
    return pooled


def stage4_open_queries(verdict):
    """The queries a "measure again" measures: those still inconclusive, or every one (an empty list)
    when the workload's mean is, since it is judged over all of them. A query already decided is
    not measured again: its verdict stands, as in a group-sequential design, and gets no further
    look in which to fail by chance."""
    if (verdict.get("workload") or {}).get("verdict") == "inconclusive":
        return []
    return [q["query"] for q in verdict["queries"] if q["verdict"] == "inconclusive"]


class FilterModule:
    def filters(self):
        return {"stage4_gate": stage4_gate, "stage4_pooled": stage4_pooled, "stage4_noise": stage4_noise,
                "stage4_open_queries": stage4_open_queries}

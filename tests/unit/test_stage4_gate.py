"""plugins/filter/stage4_gate.py: the metric gate's statistics, verdicts and decisions."""
import random
import statistics

import pytest
from ansible_collections.biblioteca.stage4.plugins.filter.stage4_gate import (FilterModule, hodges_lehmann, mann_whitney_slower_p, stage4_gate,
                                                                      stage4_noise, stage4_open_queries, stage4_pooled)


def query(samples, fingerprint="f"):
    return {"p50_ms": statistics.median(samples), "mean_ms": statistics.fmean(samples),
            "samples_ms": samples, "fingerprint": fingerprint}


def bench(queries):
    samples = [s for q in queries.values() for s in q["samples_ms"]]
    return {"queries": queries, "mean_ms": statistics.fmean(samples) if samples else 0.0, "qps": 100.0,
            "executions": len(samples)}


def noisy(center, seed, n=60, spread=0.05):
    rng = random.Random(seed)
    return [rng.gauss(center, spread) for _ in range(n)]


def ten_queries(center, seed, n=60, spread=0.05):
    return bench({"q%02d" % i: query(noisy(center, seed * 100 + i, n, spread)) for i in range(10)})


def test_mann_whitney_direction():
    low, high = noisy(1.0, 1), noisy(2.0, 2)
    assert mann_whitney_slower_p(low, high) < 1e-6
    assert mann_whitney_slower_p(high, low) > 0.999
    assert mann_whitney_slower_p(low, noisy(1.0, 3)) > 0.02  # same distribution: not significant
    assert mann_whitney_slower_p([], high) == 1.0
    assert mann_whitney_slower_p([1.0] * 5, [1.0] * 5) == 1.0  # all tied: no evidence


def test_hodges_lehmann_is_the_median_pairwise_difference():
    shift, low, high = hodges_lehmann([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], [3, 4, 5, 6, 7, 8, 9, 10, 11, 12], 0.95)
    assert shift == 2
    assert low < 2 < high
    # With 3 samples a side no interval reaches 95%: the bounds are unknown, not made up.
    assert hodges_lehmann([1, 2, 3], [2, 3, 4], 0.95) == (1, None, None)


def test_hodges_lehmann_interval_covers_the_true_shift():
    """About 95% of the intervals at 95% contain the true shift (0.3), on skewed samples."""
    covered = 0
    for seed in range(200):
        rng = random.Random(seed)
        reference = [rng.lognormvariate(0, 0.5) for _ in range(40)]
        current = [rng.lognormvariate(0, 0.5) + 0.3 for _ in range(40)]
        _, low, high = hodges_lehmann(reference, current, 0.95)
        covered += low <= 0.3 <= high
    assert 0.91 <= covered / 200 <= 0.99


def test_identical_stages_pass_unchanged_over_many_runs():
    """No false failure: 100 pairs of benchmarks of the same distribution all pass."""
    decisions = [stage4_gate(ten_queries(1.0, seed), ten_queries(1.0, seed + 1000)) for seed in range(100)]
    assert all(d["decision"] == "pass" for d in decisions)
    # Family-wise 95%: "better" by chance in at most about 5% of the runs.
    assert sum(1 for d in decisions if d["summary"]["better"]) <= 10


def test_slower_within_tolerance_passes_and_is_told():
    verdict = stage4_gate(bench({"q": query(noisy(1.5, 6))}), bench({"q": query(noisy(1.0, 7))}),
                          max_slowdown_ms=2.0, max_slowdown_pct=25.0)
    assert verdict["decision"] == "pass"
    line = verdict["queries"][0]
    assert line["verdict"] == "unchanged" and verdict["summary"]["slower_within_tolerance"] == 1
    assert "slower, but within the tolerance of 2.000 ms" in line["explanation"]


def test_regression_beyond_the_tolerance_fails_and_names_the_query():
    verdict = stage4_gate(bench({"q07": query(noisy(5.0, 8))}), bench({"q07": query(noisy(1.0, 9))}),
                          max_slowdown_ms=2.0, max_slowdown_pct=25.0)
    assert verdict["decision"] == "fail" and not verdict["passed"]
    assert verdict["reason"].startswith("q07: worse: median 1.")
    assert "-> 5." in verdict["reason"] and "shift +4." in verdict["reason"]


def test_relative_tolerance_decides_for_slow_queries():
    # 100 ms -> 140 ms: beyond 25% and beyond 2 ms.
    verdict = stage4_gate(bench({"q": query(noisy(140, 30, spread=2))}), bench({"q": query(noisy(100, 31, spread=2))}))
    assert verdict["queries"][0]["verdict"] == "worse"
    assert verdict["queries"][0]["tolerance_ms"] == pytest.approx(25, abs=0.5)


def test_large_relative_but_tiny_absolute_slowdown_is_not_a_regression():
    verdict = stage4_gate(bench({"q": query(noisy(0.3, 10, spread=0.01))}),
                          bench({"q": query(noisy(0.1, 11, spread=0.01))}), max_slowdown_ms=0.5)
    assert verdict["passed"] and verdict["queries"][0]["delta_pct"] > 100


def test_faster_is_better():
    verdict = stage4_gate(bench({"q": query(noisy(0.5, 12))}), bench({"q": query(noisy(1.0, 13))}))
    assert verdict["passed"] and verdict["queries"][0]["verdict"] == "better"


def test_speedup_is_the_geometric_mean_of_the_median_ratios():
    # 100x faster and 1x: the geometric mean is 10x, where the arithmetic mean of the ratios would say 50.5x.
    current = bench({"a": query([1.0] * 5), "b": query([10.0] * 5)})
    reference = bench({"a": query([100.0] * 5), "b": query([10.0] * 5)})
    assert stage4_gate(current, reference)["summary"]["speedup_geomean"] == 10.0


def test_straddling_the_tolerance_is_inconclusive_then_measured_again():
    # Median +2 ms on a 2 ms tolerance with a wide spread: cannot tell.
    current, reference = bench({"q": query(noisy(3.0, 40, n=15, spread=1.0))}), bench({"q": query(noisy(1.0, 41, n=15, spread=1.0))})
    marginal = stage4_gate(current, reference, may_measure_again=True)
    assert marginal["queries"][0]["verdict"] == "inconclusive"
    assert marginal["decision"] == "marginal" and not marginal["passed"]
    assert marginal["reason"].startswith("inconclusive, measuring again: q: inconclusive")
    final = stage4_gate(current, reference, may_measure_again=False)
    assert final["decision"] == "fail" and final["reason"].startswith("still inconclusive")
    assert stage4_gate(current, reference, inconclusive_passes=True)["decision"] == "pass"


def test_only_the_open_verdicts_are_measured_again():
    reference = bench({"open": query(noisy(1.0, 41, n=15, spread=1.0)), "faster": query(noisy(50.0, 42, n=15, spread=0.1)),
                       "same": query(noisy(5.0, 43, n=15, spread=0.1))})
    current = bench({"open": query(noisy(3.0, 40, n=15, spread=1.0)), "faster": query(noisy(5.0, 44, n=15, spread=0.1)),
                     "same": query(noisy(5.0, 45, n=15, spread=0.1))})
    verdict = stage4_gate(current, reference, may_measure_again=True)
    assert {q["query"]: q["verdict"] for q in verdict["queries"]} == {"faster": "better", "open": "inconclusive",
                                                                      "same": "unchanged"}
    assert verdict["workload"]["verdict"] != "inconclusive"
    assert stage4_open_queries(verdict) == ["open"]
    # The workload's mean is judged over every query: all of them, then.
    assert stage4_open_queries(dict(verdict, workload=dict(verdict["workload"], verdict="inconclusive"))) == []


def test_not_slower_is_the_one_sided_bound_of_each_query_without_correction():
    # Ten samples a side of a 250 ms query with a 20% spread, the same on both sides, as a slow RPC at
    # 1,000,000 features: the corrected interval of 31 comparisons straddles the 25% tolerance, the
    # one-sided bound at 95% does not.
    rnd = random.Random(7)
    ten = {"q%02d" % i: query([250.0 * rnd.lognormvariate(0, 0.2) for _ in range(10)]) for i in range(30)}
    again = {"q%02d" % i: query([250.0 * rnd.lognormvariate(0, 0.2) for _ in range(10)]) for i in range(30)}
    verdict = stage4_gate(bench(again), bench(ten))
    assert all(q["shift_upper_bound_ms"] < q["shift_high_ms"] for q in verdict["queries"])
    decided_by_the_bound = [q for q in verdict["queries"]
                            if q["verdict"] == "unchanged" and q["shift_high_ms"] > q["tolerance_ms"]]
    assert len(decided_by_the_bound) >= 15 and verdict["summary"]["worse"] == 0
    assert "one-sided bound" in next(q["explanation"] for q in verdict["queries"] if q["verdict"] == "unchanged")
    # A query truly 40% slower is not passed by the bound.
    slower = dict(again, q00=query([1.4 * x for x in ten["q00"]["samples_ms"]]))
    assert stage4_gate(bench(slower), bench(ten))["queries"][0]["verdict"] in ("worse", "inconclusive")


def test_workload_regression_fails_when_no_single_query_does():
    # Every query 15% slower: within the 25% per query, beyond the 10% of the workload.
    current, reference = ten_queries(115, 50, spread=1), ten_queries(100, 51, spread=1)
    verdict = stage4_gate(current, reference)
    assert verdict["summary"]["unchanged"] == 10
    assert verdict["workload"]["verdict"] == "worse" and verdict["decision"] == "fail"
    assert verdict["reason"].startswith("workload mean latency 99.9")


def test_workload_with_a_few_samples_is_inconclusive_not_worse():
    # Two samples a query that happen to agree: their variance says nothing, whatever the shift.
    reference = bench({"q%02d" % i: query([1.0, 1.001]) for i in range(10)})
    current = bench(dict(reference["queries"], q02=query([21.0, 21.001])))
    verdict = stage4_gate(current, reference, may_measure_again=True)
    assert verdict["workload"]["verdict"] == "inconclusive"
    assert verdict["workload"]["change_low_ms"] is None and "[?, ?]" in verdict["workload"]["explanation"]
    assert verdict["decision"] == "marginal"


def test_changed_result_always_fails_even_unjudged():
    verdict = stage4_gate(bench({"q": query(noisy(1.0, 14), "new")}), bench({"q": query(noisy(1.0, 15), "old")}),
                          judge_latency=False)
    assert verdict["decision"] == "fail"
    assert verdict["reason"] == "q: result changed: the query returns different rows than at the reference stage"


def test_missing_query_fails():
    verdict = stage4_gate(bench({}), bench({"q": query(noisy(1.0, 16))}))
    assert not verdict["passed"] and "measured in only one of the two stages" in verdict["reason"]


def test_forced_failure_names_the_largest_change():
    verdict = stage4_gate(bench({"a": query(noisy(1.0, 17)), "b": query(noisy(1.3, 18))}),
                          bench({"a": query(noisy(1.0, 19)), "b": query(noisy(1.0, 20))}), force_fail=True)
    assert verdict["decision"] == "fail"
    assert verdict["reason"].startswith("gate forced to fail (rollback drill); largest median change: b +0.")


def test_unjudged_latency_only_reports():
    verdict = stage4_gate(bench({"q": query(noisy(5.0, 21))}), bench({"q": query(noisy(1.0, 22))}),
                          judge_latency=False)
    assert verdict["passed"] and verdict["queries"][0]["verdict"] == "worse"
    assert verdict["summary"]["worse"] == 1 and verdict["summary"]["failing"] == 0


def test_pooled_adds_the_samples_of_a_second_measurement():
    first, second = bench({"q": query([1.0, 2.0, 3.0])}), bench({"q": query([4.0, 5.0])})
    pooled = stage4_pooled(first, second)
    assert pooled["queries"]["q"]["samples_ms"] == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert (pooled["queries"]["q"]["p50_ms"], pooled["queries"]["q"]["calls"], pooled["executions"]) == (3.0, 5, 5)
    assert first["queries"]["q"]["samples_ms"] == [1.0, 2.0, 3.0]  # inputs untouched


def test_pooled_figures_are_those_of_the_pooled_samples():
    """The benchmark module's own summary of the pooled samples; no interval of the first measurement left."""
    from ansible_collections.biblioteca.stage4.plugins.module_utils import stats  # what computed the first figures

    first_samples, more_samples = noisy(1.0, 3, n=20), noisy(1.2, 4, n=20)
    first = bench({"q": dict(query(first_samples), **stats.summarize(first_samples),
                             **stats.confidence_intervals(first_samples, 0.95))})
    pooled = stage4_pooled(first, bench({"q": query(more_samples)}))["queries"]["q"]
    expected = stats.summarize(first_samples + more_samples)
    for name in ("mean_ms", "p50_ms", "p95_ms", "p99_ms", "min_ms", "max_ms", "stddev_ms", "calls"):
        assert pooled[name] == pytest.approx(expected[name], abs=1e-3), name
    assert [pooled[name] for name in ("mean_ci_ms", "p50_ci_ms", "p95_ci_ms", "p99_ci_ms")] == [None] * 4


def test_pooled_keeps_a_changed_result_visible():
    pooled = stage4_pooled(bench({"q": query([1.0], "a")}), bench({"q": query([1.0], "b")}))
    verdict = stage4_gate(pooled, bench({"q": query([1.0], "a")}))
    assert verdict["queries"][0]["verdict"] == "result changed"


def test_registered_as_filters():
    assert FilterModule().filters() == {"stage4_gate": stage4_gate, "stage4_pooled": stage4_pooled,
                                        "stage4_noise": stage4_noise, "stage4_open_queries": stage4_open_queries}


def test_noise_is_the_aa_shift_as_a_fraction_of_the_median():
    baseline, control = ten_queries(1.0, 1), ten_queries(1.06, 2)  # the server 6% slower, nothing changed
    noise = stage4_noise(control, baseline)
    assert set(noise["queries"]) == {"q%02d" % i for i in range(10)}
    for figures in noise["queries"].values():
        assert figures["shift_low_ms"] < figures["shift_ms"] < figures["shift_high_ms"]
        assert figures["own_fraction"] == pytest.approx(abs(figures["shift_ms"]) / figures["reference_p50_ms"], abs=1e-3)
        assert 0.03 < figures["own_fraction"] < 0.09
        # the machine moves every query: none gets less noise than the median query
        assert figures["fraction"] == max(figures["own_fraction"], noise["median_fraction"])
    assert noise["median_fraction"] <= noise["max_fraction"]


def test_a_gain_within_the_noise_is_not_claimed():
    """A wander of 6% between two measurements of the unchanged database: a later 6% gain is noise."""
    baseline, control = ten_queries(1.0, 1), ten_queries(1.06, 2)
    noise = stage4_noise(control, baseline)
    drifted = ten_queries(0.94, 3)
    without = stage4_gate(drifted, baseline)
    assert without["summary"]["better"] == 10  # what the gate claimed before the control
    verdict = stage4_gate(drifted, baseline, noise=noise)
    assert verdict["passed"] and verdict["summary"]["better"] == 0
    assert all("within the noise" in q["explanation"] for q in verdict["queries"])
    # A real gain, twice the noise and more, is still claimed; the noise scales with the reference median.
    faster = stage4_gate(ten_queries(0.5, 4, spread=0.025), baseline, noise=noise)
    assert faster["summary"]["better"] == 10
    assert all(q["noise_ms"] == pytest.approx(noise["queries"][q["query"]]["fraction"] * q["reference_p50_ms"], abs=1e-3)
               for q in faster["queries"])


def test_a_slowdown_must_exceed_the_noise_as_well_as_the_tolerance():
    baseline = ten_queries(10.0, 1, spread=0.1)
    loud = {"queries": {"q%02d" % i: {"fraction": 0.5} for i in range(10)}}  # a server that wanders by 50%
    slower = ten_queries(13.0, 2, spread=0.1)  # 30% slower: beyond the 25% tolerance, within that noise
    assert stage4_gate(slower, baseline)["decision"] == "fail"
    judged = stage4_gate(slower, baseline, noise=loud)
    assert judged["summary"]["worse"] == 0
    assert all("slower beyond the tolerance of" in q["explanation"] and "not attributed to this change" in q["explanation"]
               for q in judged["queries"])


def test_improvement_policy_refuses_what_pays_nothing():
    baseline = ten_queries(1.0, 1)
    same = stage4_gate(ten_queries(1.0, 2), baseline, requires_improvement=True)
    assert same["decision"] == "fail" and same["reason"].startswith("no measurable gain")
    one_better = ten_queries(1.0, 2)
    one_better["queries"]["q03"] = query(noisy(0.5, 7))
    assert stage4_gate(one_better, baseline, requires_improvement=True)["passed"]
    # The default keeps what does no harm; latency not judged, the policy does not apply either.
    assert stage4_gate(ten_queries(1.0, 2), baseline)["passed"]
    assert stage4_gate(ten_queries(1.0, 2), baseline, requires_improvement=True, judge_latency=False)["passed"]

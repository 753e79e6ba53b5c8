"""filter_plugins/stage4_gate.py: the metric gate's verdicts."""
import random

from stage4_gate import FilterModule, mann_whitney_slower_p, stage4_gate


def query(samples, fingerprint="f"):
    ordered = sorted(samples)
    return {"p50_ms": ordered[len(ordered) // 2], "mean_ms": sum(samples) / len(samples),
            "samples_ms": samples, "fingerprint": fingerprint}


def bench(queries):
    return {"queries": queries, "mean_ms": 1.0, "qps": 100.0}


def noisy(center, seed, n=60, spread=0.05):
    rng = random.Random(seed)
    return [rng.gauss(center, spread) for _ in range(n)]


def test_mann_whitney_direction():
    low, high = noisy(1.0, 1), noisy(2.0, 2)
    assert mann_whitney_slower_p(low, high) < 1e-6
    assert mann_whitney_slower_p(high, low) > 0.999
    assert mann_whitney_slower_p(low, noisy(1.0, 3)) > 0.02  # same distribution: not significant
    assert mann_whitney_slower_p([], high) == 1.0
    assert mann_whitney_slower_p([1.0] * 5, [1.0] * 5) == 1.0  # all tied: no evidence


def test_same_distribution_passes():
    verdict = stage4_gate(bench({"q": query(noisy(1.0, 4))}), bench({"q": query(noisy(1.0, 5))}))
    assert verdict["passed"] and verdict["queries"][0]["verdict"] == "no significant difference"


def test_slower_within_tolerance_passes_and_is_reported():
    verdict = stage4_gate(bench({"q": query(noisy(1.5, 6))}), bench({"q": query(noisy(1.0, 7))}),
                          max_slowdown_ms=2.0, max_slowdown_pct=25.0)
    assert verdict["passed"]
    assert verdict["queries"][0]["verdict"] == "slower, within tolerance"
    assert verdict["summary"]["slower_within_tolerance"] == 1


def test_regression_beyond_both_thresholds_fails_and_names_the_query():
    verdict = stage4_gate(bench({"q07": query(noisy(5.0, 8))}), bench({"q07": query(noisy(1.0, 9))}),
                          max_slowdown_ms=2.0, max_slowdown_pct=25.0)
    assert not verdict["passed"]
    assert verdict["reason"].startswith("q07 regressed: median 1.")
    assert "ms -> 5." in verdict["reason"] and "+4" in verdict["reason"]


def test_large_relative_but_tiny_absolute_slowdown_is_not_a_regression():
    verdict = stage4_gate(bench({"q": query(noisy(0.3, 10, spread=0.01))}),
                          bench({"q": query(noisy(0.1, 11, spread=0.01))}), max_slowdown_ms=0.5)
    assert verdict["passed"] and verdict["queries"][0]["delta_pct"] > 100


def test_faster_is_reported():
    verdict = stage4_gate(bench({"q": query(noisy(0.5, 12))}), bench({"q": query(noisy(1.0, 13))}))
    assert verdict["passed"] and verdict["queries"][0]["verdict"] == "faster"


def test_changed_result_always_fails():
    verdict = stage4_gate(bench({"q": query(noisy(1.0, 14), "new")}), bench({"q": query(noisy(1.0, 15), "old")}))
    assert not verdict["passed"] and verdict["reason"] == "q: result changed"


def test_missing_query_fails():
    verdict = stage4_gate(bench({}), bench({"q": query(noisy(1.0, 16))}))
    assert not verdict["passed"] and "missing from one side" in verdict["reason"]


def test_forced_failure_names_the_largest_change():
    verdict = stage4_gate(bench({"a": query(noisy(1.0, 17)), "b": query(noisy(1.3, 18))}),
                          bench({"a": query(noisy(1.0, 19)), "b": query(noisy(1.0, 20))}), force_fail=True)
    assert not verdict["passed"]
    assert verdict["reason"].startswith("gate forced to fail (rollback drill); largest median change: b +0.")


def test_registered_as_a_filter():
    assert FilterModule().filters()["stage4_gate"] is stage4_gate


def test_unjudged_latency_only_reports():
    verdict = stage4_gate(bench({"q": query(noisy(5.0, 21))}), bench({"q": query(noisy(1.0, 22))}),
                          judge_latency=False)
    assert verdict["passed"] and verdict["queries"][0]["verdict"] == "regressed"
    assert verdict["summary"]["regressed"] == 1 and verdict["summary"]["failing"] == 0

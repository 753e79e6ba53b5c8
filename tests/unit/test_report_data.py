"""plugins/filter/stage4_report_data.py: report.json from the run's facts, without a database."""
import datetime
import random

import pytest

from ansible_collections.biblioteca.stage4.plugins.filter.stage4_report_data import FilterModule, stage4_report_data
from ansible_collections.biblioteca.stage4.plugins.module_utils.stats import summarize
from report_samples import audit_text

OPTIMIZATIONS = [dict(id="opt%d" % n, change="change%d" % n, title="Optimization %d" % n) for n in range(1, 6)]
GATE_SETTINGS = dict(max_slowdown_ms=2.0, max_slowdown_pct=25.0, max_workload_slowdown_pct=10.0, confidence=0.95)
NOW = datetime.datetime(2026, 12, 7, 23, 0, 0, tzinfo=datetime.timezone.utc)


def stage(medians, seed, qps=100.0):
    """A benchmark stage as gis_benchmark returns it: per query its samples' summary, rows and plan."""
    rng = random.Random(seed)
    queries = {}
    for query_id, median in medians.items():
        samples = [round(median * rng.uniform(0.95, 1.05), 3) for _ in range(30)]
        queries[query_id] = dict(summarize(samples), result_rows=3, fingerprint="f-" + query_id, shared_hit=10,
                                 shared_read=0, qps=qps, p50_ci_ms=None, statements=None,
                                 plan=dict(shape="Seq Scan:public.geometrias"))
    all_samples = [s for q in queries.values() for s in q["samples_ms"]]
    return dict(queries=queries, mean_ms=round(sum(all_samples) / len(all_samples), 3), qps=qps,
                cache_hit_ratio=1.0, executions=len(all_samples), iterations=30, warmup=3, concurrency=1,
                provenance=dict(seed=seed))


def run_facts(**overrides):
    """The facts of a run that applied opt1 (gate passed) and declined opt2, in the roles' names."""
    facts = dict(
        run_id="20261127T000718Z-rollout-8d3c21", environment="local", run_kind="rollout", db_name="BIBLIOTECA",
        check_mode=False, optimizations=OPTIMIZATIONS,
        benchmark_metrics={"baseline": stage({"q01": 10.0, "q02": 4.0}, 1),
                           "opt1": stage({"q01": 2.0, "q02": 4.0}, 2, qps=150.0)},
        optimization_gates={"opt1": dict(passed=True, decision="pass", settings=GATE_SETTINGS)},
        optimization_refused={}, optimization_rolled_back="", optimization_gate_reference="opt1",
        optimization_gate_noise={}, optimization_gate_control_verdict={},
        common_change_actions={"change1": "deployed", "change2": "declined"},
        common_change_declined={"change2": "too small"}, common_change_files={},
        preflight_database=dict(server_version="15.18", postgis_version="3.3.2", feature_count=251,
                                database_bytes=18046311),
        preflight_applied_changes=[], preflight_pending_changes=[c["change"] for c in OPTIMIZATIONS],
        backup_result=dict(path="/backups/x.dump"), audit_text=audit_text())
    facts.update(overrides)
    return facts


def test_registered_as_a_filter():
    assert FilterModule().filters() == {"stage4_report_data": stage4_report_data}


def test_each_optimization_says_what_happened_to_it():
    report = stage4_report_data(run_facts(
        common_change_actions={"change1": "deployed", "change2": "declined", "change3": "unchanged"},
        preflight_applied_changes=["change4"], optimization_refused={"opt5": "gate failed"}), now=NOW)
    assert [(o["id"], o["status"]) for o in report["optimizations"]] == [
        ("opt1", "applied: gate passed"), ("opt2", "declined"), ("opt3", "already applied (ledger)"),
        ("opt4", "applied earlier, left as is"), ("opt5", "reverted: gate failed")]
    assert report["optimizations"][1]["declined"] == "too small"
    assert report["optimizations"][0]["gate"]["decision"] == "pass"


@pytest.mark.parametrize("overrides, outcome", [
    (dict(), "completed: 1 applied, 0 already applied, 1 declined"),
    (dict(common_change_actions={"change1": "deployed"}), "completed: 1 applied, 0 already applied"),
    (dict(optimization_refused={"opt3": "x"}), "completed, opt3 reverted (gate failed): 1 applied, 0 already applied, 1 declined"),
    (dict(optimization_rolled_back="opt1"), "stopped: opt1 failed its gate and was reverted"),
    (dict(optimization_failed={"id": "opt2", "reason": "deploy.sql failed: canceling statement due to statement timeout"}),
     "stopped: opt2 failed and was not applied: deploy.sql failed: canceling statement due to statement timeout"),
    (dict(check_mode=True), "check mode: nothing was changed"),
    (dict(run_kind="rollback", common_change_actions={"change5": "reverted", "change1": "reverted"},
          preflight_pending_changes=["change5", "change1"]), "rollback: reverted opt5, opt1"),
    (dict(run_kind="rollback", common_change_actions={}), "rollback: nothing to revert"),
])
def test_the_outcome_in_one_line(overrides, outcome):
    assert stage4_report_data(run_facts(**overrides), now=NOW)["outcome"] == outcome


def test_the_optimization_whose_change_failed_says_so():
    report = stage4_report_data(run_facts(optimization_failed={"id": "opt2", "reason": "cutover timed out"}), now=NOW)
    assert [o["status"] for o in report["optimizations"]][:2] == ["applied: gate passed", "failed, not applied"]


def test_stages_in_the_order_measured_against_the_baseline():
    report = stage4_report_data(run_facts(), now=NOW)
    baseline, opt1 = report["stages"]
    assert (baseline["stage"], baseline["mean_ms_vs_baseline_pct"], baseline["qps_vs_baseline_pct"]) == ("baseline", 0.0, 0.0)
    metrics = run_facts()["benchmark_metrics"]
    assert opt1["mean_ms_vs_baseline_pct"] == round((metrics["opt1"]["mean_ms"] / metrics["baseline"]["mean_ms"] - 1) * 100, 1)
    assert opt1["qps_vs_baseline_pct"] == 50.0


def test_every_query_with_its_figures_per_stage():
    report = stage4_report_data(run_facts(), now=NOW)
    assert [q["query"] for q in report["queries"]] == ["q01", "q02"]
    q01 = report["queries"][0]["stages"]
    assert set(q01) == {"baseline", "opt1"}
    assert q01["opt1"]["plan"] == "Seq Scan:public.geometrias" and q01["opt1"]["rows"] == 3
    assert q01["opt1"]["p50_ms"] < q01["baseline"]["p50_ms"]


def test_the_last_accepted_stage_is_judged_against_the_baseline():
    overall = stage4_report_data(run_facts(), now=NOW)["overall"]
    assert (overall["stage"], overall["reference"]) == ("opt1", "baseline")
    verdicts = {query["query"]: query["verdict"] for query in overall["queries"]}
    assert verdicts["q01"] == "better" and verdicts["q02"] != "worse"
    assert overall["decision"] == "pass"


@pytest.mark.parametrize("overrides", [dict(optimization_gate_reference="baseline"), dict(optimization_gates={})])
def test_no_overall_judgement_without_an_accepted_stage(overrides):
    assert stage4_report_data(run_facts(**overrides), now=NOW)["overall"] is None


def test_the_aa_control_is_reported_with_its_stages():
    noise = {"queries": {"q01": {"fraction": 0.02}}, "median_fraction": 0.02}
    report = stage4_report_data(run_facts(optimization_gate_noise=noise,
                                          optimization_gate_control_verdict={"reason": "unchanged"}), now=NOW)
    assert report["control"] == dict(noise, stages=["baseline_control", "baseline"], reason="unchanged")
    assert stage4_report_data(run_facts(), now=NOW)["control"] is None


def test_header_backup_timeline_and_provenance():
    report = stage4_report_data(run_facts(), now=NOW)
    assert report["written_at"] == "2026-12-07T23:00:00Z"
    assert report["database"] == dict(name="BIBLIOTECA", server_version="15.18", postgis_version="3.3.2",
                                      features=251, bytes=18046311)
    assert report["backup"] == dict(path="/backups/x.dump")
    assert report["timeline"] and all("step" in entry or "time" in entry for entry in report["timeline"])
    assert report["provenance"] == dict(seed=1)
    assert report["benchmark_settings"] == dict(iterations=30, warmup=3, concurrency=1)


def test_a_check_mode_run_without_measurements():
    report = stage4_report_data(run_facts(check_mode=True, benchmark_metrics={}, optimization_gates={},
                                          common_change_actions={"change1": "would_deploy"}), now=NOW)
    assert (report["stages"], report["queries"], report["overall"], report["provenance"]) == ([], [], None, None)
    assert report["benchmark_settings"] == dict(iterations=None, warmup=None, concurrency=None)
    assert report["optimizations"][0]["status"] == "would be applied (check mode)"

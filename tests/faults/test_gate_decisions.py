"""The gate on real measurements: a slowdown injected by a change is found and reverted by the rollout.

The injected change (tests/fixtures/sql/injected_slowdown) makes the radius RPC behind q02 sleep
20 ms and return the same rows: only latency can tell. The run judges latency, as production does.
Another (tests/fixtures/sql/injected_no_gain) changes nothing a query reads: kept by default, it is
refused when the table owner asks for an improvement. A third (tests/fixtures/sql/injected_failure)
never verifies: the run stops at it, with its report.
"""
import json
import os

from stage4_runs import REPO, assert_untouched, clone, ledger, run_dirs, run_stage4, sql, state

FIXTURES = os.path.join(REPO, "tests", "fixtures", "sql")


def sql_root_with_injected_change(tmp_path, change="injected_slowdown"):
    """The project's SQL changes plus the injected one, as a folder stage4_sql_root can name."""
    root = tmp_path / "sql"
    root.mkdir()
    source = os.path.join(REPO, "files", "sql")
    for name in os.listdir(source):
        os.symlink(os.path.join(source, name), root / name)
    os.symlink(os.path.join(FIXTURES, change), root / change)
    return root


def test_injected_slowdown_is_worse_reverted_and_stops_the_run(cluster, tmp_path):
    dbname = clone(cluster, "injected_slowdown")
    before = state(cluster, dbname)
    rc, output = run_stage4(
        cluster, dbname,
        "-e", "stage4_sql_root=%s" % sql_root_with_injected_change(tmp_path),
        "-e", '{"stage4_optimizations": [{"id": "slow", "change": "injected_slowdown", '
              '"title": "A change that makes the radius RPC sleep 20 ms"}]}',
        "-e", "stage4_benchmark_iterations=30", "-e", "stage4_optimization_gate_judge_latency=true")
    assert rc != 0, output
    print(output[output.find("Gate failed for slow"):][:600])  # the gate's line, shown with pytest -s
    assert "Gate failed for slow against baseline: q02_radius: worse: median" in output
    assert "slower beyond the tolerance of 2.000 ms with the whole interval" in output
    assert "slow was reverted and verified; later optimizations were not applied" in output
    # Reverted: the original function is back, nothing else changed, and the ledger forgot the change.
    assert_untouched(cluster, dbname, before)
    events = sql(cluster, dbname, "SELECT action FROM stage4.ledger_events WHERE change = 'injected_slowdown' ORDER BY id")
    assert [e[0] for e in events] == ["deploy", "revert"]
    assert "injected_slowdown" not in [change for change, _ in ledger(cluster, dbname)]


def test_an_inconclusive_stage_is_measured_again_longer_then_fails(cluster, tmp_path):
    """Two samples per query decide nothing: the gate measures the stage again twice, each time with
    stage4_optimization_gate_more_iterations executions (even though -e fixes stage4_benchmark_iterations),
    then fails it as still inconclusive and the rollout reverts it."""
    dbname = clone(cluster, "inconclusive")
    before = state(cluster, dbname)
    runs = run_dirs(cluster)
    rc, output = run_stage4(
        cluster, dbname,
        "-e", "stage4_sql_root=%s" % sql_root_with_injected_change(tmp_path),
        "-e", '{"stage4_optimizations": [{"id": "slow", "change": "injected_slowdown", '
              '"title": "A change that makes the radius RPC sleep 20 ms"}]}',
        "-e", "stage4_benchmark_iterations=2", "-e", "stage4_optimization_gate_more_iterations=3",
        "-e", "stage4_optimization_gate_judge_latency=true")
    assert rc != 0, output
    assert output.count("slow: marginal - inconclusive, measuring again") == 2
    assert "Gate failed for slow against baseline: still inconclusive with every allowed sample" in output
    (run_dir,) = run_dirs(cluster) - runs
    executions = {}
    for stage in ("slow", "slow_more1", "slow_more2"):
        with open(os.path.join(run_dir, "metrics_%s.json" % stage), encoding="utf-8") as handle:
            executions[stage] = json.load(handle)["iterations"]
    assert executions == {"slow": 2, "slow_more1": 3, "slow_more2": 3}
    assert_untouched(cluster, dbname, before)


def test_a_change_with_no_gain_is_refused_when_improvement_is_required(cluster, tmp_path):
    dbname = clone(cluster, "injected_no_gain")
    before, runs = state(cluster, dbname), run_dirs(cluster)
    rc, output = run_stage4(
        cluster, dbname,
        "-e", "stage4_sql_root=%s" % sql_root_with_injected_change(tmp_path, "injected_no_gain"),
        "-e", '{"stage4_optimizations": [{"id": "nogain", "change": "injected_no_gain", '
              '"title": "A change no query reads"}]}',
        # Two samples a query give no interval, so no query can be better, whatever the machine does meanwhile;
        # the inconclusive verdicts pass, and the policy decides. Timing cannot make this case flaky.
        "-e", "stage4_benchmark_iterations=2", "-e", "stage4_optimization_gate_measure_again=0",
        "-e", "stage4_optimization_gate_inconclusive_passes=true", "-e", "stage4_optimization_gate_judge_latency=true",
        "-e", "stage4_optimization_gate_requires=improvement")
    assert rc != 0, output
    print(output[output.find("Gate failed for nogain"):][:600])
    assert ("Gate failed for nogain against baseline: no measurable gain: no query is faster beyond the noise "
            "the A/A control measured, and the gate requires an improvement") in output
    assert "nogain was reverted and verified" in output
    assert_untouched(cluster, dbname, before)
    assert "injected_no_gain" not in [change for change, _ in ledger(cluster, dbname)]
    (run_dir,) = run_dirs(cluster) - runs
    with open(os.path.join(run_dir, "report.json"), encoding="utf-8") as handle:
        report = json.load(handle)
    assert report["control"]["stages"] == ["baseline_control", "baseline"]
    assert report["optimizations"][0]["gate"]["settings"]["requires"] == "improvement"


def test_a_bad_gate_policy_is_refused_before_any_change(cluster):
    dbname = clone(cluster, "bad_gate_policy")
    before = state(cluster, dbname)
    rc, output = run_stage4(cluster, dbname, "-e", "stage4_optimization_gate_requires=faster")
    assert rc != 0, output
    assert ("Bad variables: stage4_optimization_gate_requires is 'faster' (use no_regression or improvement). "
            "Nothing was changed.") in output
    assert_untouched(cluster, dbname, before)


def test_skip_dependents_goes_on_with_what_does_not_require_the_refused_one(cluster):
    """OPT1's gate fails (a drill); OPT2 and OPT4, which require it, are declined; OPT3 and OPT5 are applied.
    The run fails at the end, after its report, and the next run, without the drill, applies the rest."""
    dbname = clone(cluster, "skip_dependents")
    runs = run_dirs(cluster)
    rc, output = run_stage4(cluster, dbname, "-e", "stage4_on_gate_failure=skip_dependents",
                            "-e", '{"stage4_optimization_gate_force_fail": ["opt1"]}')
    assert rc != 0, output
    assert "the run goes on with the optimizations that do not require it (stage4_on_gate_failure: skip_dependents)" in output
    assert "opt2 declined: requires opt1, whose gate failed in this run (reverted)" in output
    assert "Gate failed for opt1, reverted and verified: opt1: gate forced to fail (rollback drill)" in output
    (run_dir,) = run_dirs(cluster) - runs
    with open(os.path.join(run_dir, "report.json"), encoding="utf-8") as handle:
        report = json.load(handle)
    status = {o["id"]: o["status"] for o in report["optimizations"]}
    assert status == {"opt1": "reverted: gate failed", "opt2": "declined", "opt3": "applied: gate passed",
                      "opt4": "declined", "opt5": "applied: gate passed"}
    assert report["outcome"] == "completed, opt1 reverted (gate failed): 2 applied, 0 already applied, 2 declined"
    assert [change for change, _ in ledger(cluster, dbname)][-2:] == ["opt3_search_matview", "opt5_dashboard_matviews"]
    assert sql(cluster, dbname, "SELECT relkind FROM pg_class WHERE oid = 'public.geometrias'::regclass") == [("r",)]
    rc, output = run_stage4(cluster, dbname, "-e", "stage4_on_gate_failure=skip_dependents")
    assert rc == 0, output[-2000:]
    assert [change for change, _ in ledger(cluster, dbname)][-3:] == [
        "opt1_temporal_partitioning", "opt2_storage_layout", "opt4_future_partitions"]


def test_a_requirement_listed_after_its_dependent_is_refused_before_any_change(cluster):
    dbname = clone(cluster, "bad_requires")
    before = state(cluster, dbname)
    rc, output = run_stage4(cluster, dbname, "-e", '{"stage4_optimizations": [{"id": "a", "change": "opt3_search_matview", '
                                                   '"title": "A", "requires": ["b"]}, {"id": "b", "change": "opt5_dashboard_matviews", '
                                                   '"title": "B"}]}')
    assert rc != 0, output
    assert ("Bad variables: a requires b, which is not an optimization listed before it in stage4_optimizations. "
            "Nothing was changed.") in output
    assert_untouched(cluster, dbname, before)


def test_a_change_that_fails_stops_the_run_with_its_report(cluster, tmp_path):
    dbname = clone(cluster, "injected_failure")
    before, runs = state(cluster, dbname), run_dirs(cluster)
    rc, output = run_stage4(
        cluster, dbname,
        "-e", "stage4_sql_root=%s" % sql_root_with_injected_change(tmp_path, "injected_failure"),
        "-e", '{"stage4_optimizations": [{"id": "broken", "change": "injected_failure", '
              '"title": "A change that never verifies"}, {"id": "opt3", "change": "opt3_search_matview", '
              '"title": "Search RPC on an indexed materialized view"}]}',
        "-e", "stage4_benchmark_iterations=2")
    assert rc != 0, output
    assert "broken failed and was not applied: " in output and "this change never verifies" in output
    assert "Later optimizations were not applied" in output
    assert_untouched(cluster, dbname, before)
    (run_dir,) = run_dirs(cluster) - runs
    with open(os.path.join(run_dir, "report.json"), encoding="utf-8") as handle:
        report = json.load(handle)
    assert report["outcome"].startswith("stopped: broken failed and was not applied: ")
    assert [(o["id"], o["status"]) for o in report["optimizations"]] == [("broken", "failed, not applied"),
                                                                         ("opt3", "not applied")]
    assert os.path.isfile(os.path.join(run_dir, "report.html"))

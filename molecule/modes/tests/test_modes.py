"""The ways to run, as run by molecule/modes/converge.yml on a terminal: dry run, mode C, mode A
again, promotion, mode B and the canary."""
import json
import os
import re

from stage4_testlib import CLUSTER_DIR, TOOLING, load_report, query, run_dirs

PROMPT = "Type yes to apply"


ANSI = re.compile(r"\x1b\[[0-9;]*m")  # a terminal gets colours


def log(name):
    with open(os.path.join(CLUSTER_DIR, name + ".log"), encoding="utf-8", errors="replace") as handle:
        return " ".join(ANSI.sub("", handle.read()).split())


def run_id(name):
    return re.search(r"Run (\S+) on local:", log(name)).group(1)


def audit(name):
    with open(os.path.join(CLUSTER_DIR, "reports", "local", run_id(name), "audit.jsonl"), encoding="utf-8") as handle:
        return [(entry["step"], entry["outcome"]) for entry in map(json.loads, handle)]


def ledger(dbname):
    return [row[0] for row in query("SELECT change FROM stage4.ledger ORDER BY seq", dbname=dbname)]


def test_dry_run_shows_each_change_and_its_sql():
    output = log("dry_run")
    for change in ("opt1_temporal_partitioning", "opt2_storage_layout", "opt3_search_matview",
                   "opt4_future_partitions", "opt5_dashboard_matviews"):
        assert change + ": would deploy" in output
    assert "-- ===== deploy.sql sha256 " in output and "LOCK TABLE public.geometrias IN ACCESS EXCLUSIVE MODE" in output
    assert PROMPT not in output and "Dump the database" not in output
    report = load_report(os.path.join(CLUSTER_DIR, "reports", "local", run_id("dry_run")))
    assert report["outcome"] == "check mode: nothing was changed"


def test_mode_c_declined_changes_nothing_for_opt1():
    output = log("mode_c_declined")
    assert output.count(PROMPT) == 1
    assert "opt1 was not applied: the operator answered 'no', not yes" in output
    steps = audit("mode_c_declined")
    assert ("confirm_opt1", "declined") in steps
    assert not any(step == "opt1_temporal_partitioning" for step, _ in steps)


def test_mode_c_asks_for_opt1_only_and_applies_everything():
    output = log("mode_c")
    assert output.count(PROMPT) == 1 and "Type yes to apply opt1" in output
    # The prompt shows what will run and the metrics it will be judged against.
    assert "files/sql/opt1_temporal_partitioning/deploy.sql" in output and "Judged against baseline: mean" in output
    assert "completed: 5 applied" in output
    assert ("confirm_opt1", "confirmed") in audit("mode_c")
    assert [change for change in ledger("BIBLIOTECA") if change.startswith("opt")] == [
        "opt1_temporal_partitioning", "opt2_storage_layout", "opt3_search_matview", "opt4_future_partitions",
        "opt5_dashboard_matviews"]


def test_mode_a_again_finds_nothing_to_do():
    output = log("mode_a_again")
    assert "nothing to do: the ledger already says so" in output
    assert re.search(r"biblioteca_local : ok=\d+ changed=0 ", output)


def test_promotion_needs_another_environment_and_the_same_sql():
    assert "Promotion refused, nothing was changed" in log("promote_same_environment")
    tampered = log("promote_tampered")
    assert "Promotion refused, nothing was changed" in tampered
    for differing in ("opt2_storage_layout/deploy.sql", "stage4_toolkit/deploy.sql", "opt1_temporal_partitioning/settle.sql"):
        assert differing in tampered
    assert "Promoting staging run" in log("promote")


def test_mode_b_applies_one_optimization_per_run():
    day1 = log("mode_b_day1")
    assert day1.count(PROMPT) == 1 and "Type yes to apply opt1" in day1 and "completed: 1 applied" in day1
    dry_run = log("mode_b_dry_run")
    assert "opt2_storage_layout: would deploy" in dry_run and "precheck passed" in dry_run
    assert "opt3_search_matview: would deploy" not in dry_run
    gap = log("mode_b_gap")
    assert "would apply opt3 without opt2, which is neither applied nor selected" in gap and "Nothing was changed" in gap
    day2 = log("mode_b_day2")
    assert day2.count(PROMPT) == 1 and "Type yes to apply opt2" in day2
    assert ledger("BIBLIOTECA_B") == TOOLING + ["opt1_temporal_partitioning", "opt2_storage_layout"]


def test_canary_goes_first_and_a_failed_gate_spares_the_others():
    failed = log("canary_gate_failure")
    assert "Gate failed for opt1" in failed and "other_c2" not in failed
    events = ("SELECT change || ':' || action FROM stage4.ledger_events WHERE change LIKE 'opt%' "
              "AND action IN ('deploy', 'revert') ORDER BY id")
    assert [r[0] for r in query(events, dbname="BIBLIOTECA_C1")] == [
        "opt1_temporal_partitioning:deploy", "opt1_temporal_partitioning:revert", "opt1_temporal_partitioning:deploy"]
    assert [r[0] for r in query(events, dbname="BIBLIOTECA_C2")] == ["opt1_temporal_partitioning:deploy"]
    applied_at = "SELECT applied_at FROM stage4.ledger WHERE change = 'opt1_temporal_partitioning'"
    assert query(applied_at, dbname="BIBLIOTECA_C1")[0][0] < query(applied_at, dbname="BIBLIOTECA_C2")[0][0]
    assert "canary_c1" in log("canary") and "other_c2" in log("canary")

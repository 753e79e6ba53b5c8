"""--check changes nothing; a failed gate reverts OPT1 and stops; a failed gate of OPT3 leaves OPT1 and OPT2.
(Each bad input is tested in tests/faults/test_faults.py.)"""
import json
import os

from stage4_testlib import CLUSTER_DIR, TOOLING, connect, load_report, password, query, recorded_state, run_dirs, scalar


def log(name):
    with open(os.path.join(CLUSTER_DIR, name + ".log"), encoding="utf-8") as handle:
        return handle.read()


def test_no_secret_in_any_output():
    for case in ("check_mode", "gate_failure", "gate_failure_opt3"):
        assert password() not in log(case)


def test_gate_failure_says_which_query_and_reverts():
    output = " ".join(log("gate_failure").split())
    assert "Gate failed for opt1 against baseline" in output
    assert "largest median change: q" in output
    assert "opt1 was reverted and verified" in output


def test_database_is_as_it_was():
    """After the check run and the failed gate of OPT1: schema, rows and identity as before."""
    assert recorded_state("after_failures") == recorded_state("before")


def test_failed_opt1_gate_is_recorded():
    # (OPT1's online copy also records a 'prepare' event before each deploy, 'prepare_revert' before each revert.)
    events = [r[0] for r in query("SELECT action FROM stage4.ledger_events WHERE change = 'opt1_temporal_partitioning' "
                                  "AND action IN ('deploy', 'revert') ORDER BY id")]
    assert events[:2] == ["deploy", "revert"]
    report = next(load_report(d) for d in run_dirs() if "stopped: opt1" in load_report(d)["outcome"])
    assert report["optimizations"][0]["status"] == "reverted: gate failed"


def test_failed_opt3_gate_leaves_opt1_and_opt2_applied():
    output = " ".join(log("gate_failure_opt3").split())
    assert "Gate failed for opt3 against opt2" in output and "opt3 was reverted and verified" in output
    assert [r[0] for r in query("SELECT change FROM stage4.ledger ORDER BY seq")] == TOOLING + [
        "opt1_temporal_partitioning", "opt2_storage_layout"]
    # (OPT3's revert also records a 'prepare_revert' event: its functions go back first.)
    assert [r[0] for r in query("SELECT action FROM stage4.ledger_events WHERE change = 'opt3_search_matview' "
                                "AND action IN ('deploy', 'revert') ORDER BY id")] == ["deploy", "revert"]
    assert scalar("SELECT relkind FROM pg_class WHERE oid = 'public.geometrias'::regclass") == "p"
    assert scalar("SELECT to_regnamespace('stage4_search') IS NULL")
    report = load_report(run_dirs()[-1])
    assert report["outcome"] == "stopped: opt3 failed its gate and was reverted"
    assert [o["status"] for o in report["optimizations"]] == [
        "applied: gate passed", "applied: gate passed", "reverted: gate failed", "not applied", "not applied"]
    with open(os.path.join(run_dirs()[-1], "audit.jsonl"), encoding="utf-8") as handle:
        outcomes = [(e["step"], e["outcome"]) for e in map(json.loads, handle)]
    assert ("gate_opt3", "failed") in outcomes and ("opt3_search_matview", "reverted") in outcomes


def test_search_functions_restored_after_opt3_revert():
    with connect() as conn, conn.cursor() as cur:
        cur.execute("SET search_path = pg_catalog")  # as the snapshot was taken: fully qualified names
        cur.execute("SELECT s.function, s.definition = pg_get_functiondef(s.function::regprocedure) "
                    "FROM stage4.function_snapshots s WHERE s.change LIKE 'opt3_search_matview%' ORDER BY 1")
        assert cur.fetchall() == [("public.geometrias_no_raio(double precision,double precision,double precision)", True),
                                  ("public.search_geometrias(text,extensions.geometry,integer)", True)]


def test_check_mode_changes_nothing():
    with open(os.path.join(CLUSTER_DIR, "check_mode_untouched.txt"), encoding="utf-8") as handle:
        assert handle.read().strip() == "True"
    output = log("check_mode")
    assert "Dump the database" not in output  # no backup in check mode
    assert "Checkpoint before measuring" not in output and "Benchmark stage" not in output  # no heavy work
    check_run = next(load_report(d) for d in run_dirs() if load_report(d)["check_mode"])
    assert check_run["outcome"] == "check mode: nothing was changed"
    assert {o["status"] for o in check_run["optimizations"]} == {"would be applied (check mode)"}

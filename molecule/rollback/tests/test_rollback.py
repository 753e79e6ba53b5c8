"""Apply-all then rollback-all leaves BIBLIOTECA as it was: schema, rows and identity."""
import json
import os

from stage4_testlib import TOOLING, live_state, load_report, query, recorded_state, run_dirs


def test_database_is_as_it_was():
    assert live_state() == recorded_state("before")


def test_only_the_tooling_remains_in_the_ledger():
    assert [r[0] for r in query("SELECT change FROM stage4.ledger ORDER BY seq")] == TOOLING


def test_each_revert_was_verified_and_audited():
    rollout, rollback, second_rollback = [load_report(d) for d in run_dirs()[-3:]]
    assert rollout["kind"] == "rollout" and rollout["outcome"].startswith("completed")
    applied = [o["id"] for o in rollout["optimizations"] if o["status"] == "applied: gate passed"]
    assert applied
    assert rollback["kind"] == "rollback" and rollback["outcome"] == "rollback: reverted " + ", ".join(reversed(applied))
    assert second_rollback["outcome"] == "rollback: nothing to revert" and second_rollback["backup"] is None
    with open(os.path.join(run_dirs()[-2], "audit.jsonl"), encoding="utf-8") as handle:
        entries = [json.loads(line) for line in handle]
    reverts = [e for e in entries if e["outcome"] == "reverted"]
    assert [e["step"] for e in reverts] == [o["change"] for o in reversed(rollout["optimizations"])
                                            if o["id"] in applied]
    # OPT1's, OPT3's and OPT5's reverts run prepare_revert.sql first, outside the transaction; OPT1's
    # settle.sql after it.
    assert all(e["details"]["executed"] == ["prepare_revert"] * ("prepare_revert" in e["sql_files"]) + ["revert", "verify_reverted"]
               + ["settle"] * ("settle" in e["sql_files"]) for e in reverts)
    assert any("prepare_revert" in e["details"]["executed"] for e in reverts)
    assert all(len(e["sql_files"]["revert"]["sha256"]) == 64 for e in reverts)

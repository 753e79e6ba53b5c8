"""At the size the DBA team's table has today, partitioning and materialized aggregates cannot pay (issue 22,
item 3): OPT1 and OPT5 decline with their reasons, OPT2 and OPT4, which work on OPT1's partitions, decline with
it, OPT3 still applies, and the report says why. Nothing of the declined ones is changed or recorded, and a
second run changes nothing."""
import json
import os

import pgcluster
import stage4_runs
from stage4_runs import run_stage4, sql

# As prod and staging run: OPT1 decides from the data, every query is measured as the owner, anon and an
# authenticated user (what inventories/local leaves out to stay quick).
DECIDE_FROM_THE_DATA = ("-e", "stage4_min_table_bytes=auto", "-e", json.dumps({"stage4_benchmark_roles": [
    {"label": "", "role": ""}, {"label": "anon", "role": "anon"},
    {"label": "authenticated", "role": "authenticated", "claims": "{{ stage4_benchmark_authenticated_claims }}"}]}))


def report_of(cluster, output):
    reports = os.path.join(cluster.folder, "reports", "local")
    latest = sorted(os.listdir(reports))[-1]
    with open(os.path.join(reports, latest, "report.json"), encoding="utf-8") as handle:
        return json.load(handle)


def test_a_table_too_small_to_partition_is_left_unpartitioned_and_the_report_says_why(cluster):
    db = stage4_runs.clone(cluster, "SMALL")
    rc, output = run_stage4(cluster, db, *DECIDE_FROM_THE_DATA)
    assert rc == 0, output[-2000:]
    assert "opt1 declined: public.geometrias holds %d rows in" % stage4_runs.FEATURES in output
    report = report_of(cluster, output)
    status = {o["id"]: o["status"] for o in report["optimizations"]}
    assert status == {"opt1": "declined", "opt2": "declined", "opt3": "applied: gate passed",
                      "opt4": "declined", "opt5": "declined"}
    assert report["outcome"] == "completed: 1 applied, 0 already applied, 4 declined"
    declined = {o["id"]: o["declined"] for o in report["optimizations"] if o["declined"]}
    assert "below 8192 kB (min_parallel_table_scan_size)" in declined["opt1"]
    assert declined["opt5"].startswith("public.geometrias holds %d rows in" % stage4_runs.FEATURES)
    assert "materialized groups" in declined["opt5"]
    # measured as each caller: every query three times, the API roles' under their own names
    measured = report["queries"]
    assert {q["query"] for q in measured} >= {"q01_bbox_intersects", "q01_bbox_intersects@anon",
                                              "q01_bbox_intersects@authenticated"}
    assert declined["opt2"].startswith("public.geometrias is not partitioned (OPT1 declined")
    assert sql(cluster, db, "SELECT relkind FROM pg_class WHERE oid = 'public.geometrias'::regclass") == [("r",)]
    assert sql(cluster, db, "SELECT change FROM stage4.ledger ORDER BY seq") == [
        (change,) for change in pgcluster.TOOLING + ["opt3_search_matview"]]
    ledger = sql(cluster, db, "SELECT change, applied_at FROM stage4.ledger ORDER BY seq")
    rc, output = run_stage4(cluster, db, *DECIDE_FROM_THE_DATA)
    assert rc == 0, output[-2000:]
    assert sql(cluster, db, "SELECT change, applied_at FROM stage4.ledger ORDER BY seq") == ledger
    status = {o["id"]: o["status"] for o in report_of(cluster, output)["optimizations"]}
    assert status == {"opt1": "declined", "opt2": "declined", "opt3": "already applied (ledger)",
                      "opt4": "declined", "opt5": "declined"}


def test_prod_declines_what_the_promoted_staging_run_declined(cluster, tmp_path):
    """A staging run that declined optimizations can be promoted; prod declines them too, even where its own
    decline.sql would apply them (here: prod partitions any size), since staging never judged them."""
    staging = stage4_runs.clone(cluster, "STAGING")
    rc, output = run_stage4(cluster, staging, "-e", "stage4_min_table_bytes=auto")
    assert rc == 0, output[-2000:]
    report = dict(report_of(cluster, output), environment="staging")
    staged = tmp_path / "staging_report.json"
    staged.write_text(json.dumps(report), encoding="utf-8")
    prod = stage4_runs.clone(cluster, "PROD")
    rc, output = run_stage4(cluster, prod, "-e", "stage4_min_table_bytes=0", "-e", "stage4_promote_from=%s" % staged)
    assert rc == 0, output[-2000:]
    assert "but opt1, opt2, opt4, opt5 declined, and declined here too" in output
    promoted = report_of(cluster, output)
    assert {o["id"]: o["status"] for o in promoted["optimizations"]} == {
        "opt1": "declined", "opt2": "declined", "opt3": "applied: gate passed", "opt4": "declined", "opt5": "declined"}
    declined = {o["id"]: o["declined"] for o in promoted["optimizations"] if o["declined"]}
    assert declined["opt1"] == "declined in the promoted staging run %s: %s" % (
        report["run_id"], [o["declined"] for o in report["optimizations"] if o["id"] == "opt1"][0])
    assert sql(cluster, prod, "SELECT relkind FROM pg_class WHERE oid = 'public.geometrias'::regclass") == [("r",)]

"""scripts/workload.py against a real throwaway cluster: the harness runs while OPT1 is applied and
reverted, loses no committed write, reports every field and leaves the data as it found it; its
lost-write check is real; its rows change none of the benchmark's results as anon."""
import datetime
import importlib.util
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
from ansible.module_utils.testing import patch_module_args

import pgcluster
from ansible_collections.biblioteca.stage4.plugins.modules import stage4_change

REPO = Path(pgcluster.REPO)
WORKLOAD = REPO / "scripts" / "workload.py"
QUERIES = REPO / "files" / "benchmark" / "queries"
DB = "BIBLIOTECA"
FEATURES = 251

_spec = importlib.util.spec_from_file_location("workload", WORKLOAD)
workload = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(workload)


@pytest.fixture(scope="module")
def cluster():
    with pgcluster.running_cluster() as running:
        running.preload_pg_cron(DB)  # OPT5 schedules its refreshes
        running.build_reference_db(DB, features=FEATURES)
        conn = running.connect(DB)
        try:
            with conn.cursor() as cur:
                cur.execute("CREATE EXTENSION pg_cron")  # what the stage4_pg_cron role does
        finally:
            conn.close()
        yield running


def reference_fingerprint(cluster):
    """(features, checksum) as scripts/reference_db.py reports them for the built database."""
    done = subprocess.run([sys.executable, pgcluster.REFERENCE_DB, "--host", cluster.host, "--port", str(cluster.port),
                           "--user", cluster.user, "--dbname", DB, "--features", str(FEATURES)],
                          env=dict(os.environ, DB_PASSWORD=cluster.password), capture_output=True, text=True,
                          check=True)
    report = json.loads(done.stdout)
    return report["features"], report["checksum"]


def harness(cluster, *options):
    env = dict(os.environ, DB_HOST=cluster.host, DB_PORT=str(cluster.port), DB_NAME=DB, DB_USER=cluster.user,
               DB_PASSWORD=cluster.password)
    return subprocess.Popen([sys.executable, str(WORKLOAD), *options], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def change(capsys, cluster, name, state="applied", **extra):
    """One change through the stage4_change module, as the playbooks run it."""
    capsys.readouterr()
    args = dict(cluster.login_args(DB), sql_root=str(REPO / "files" / "sql"), change=name, state=state, **extra)
    with patch_module_args(args), pytest.raises(SystemExit):
        stage4_change.main()
    result = json.loads(capsys.readouterr().out)
    assert not result.get("failed"), result.get("msg")
    return result


def workload_rows(cluster, tag):
    conn = cluster.connect(DB)
    try:
        with conn.cursor() as cur:
            marker = workload.MARKER.format(tag=tag)
            cur.execute("SELECT count(*) FROM public.geometrias WHERE left(nome, %s) = %s", (len(marker), marker))
            return cur.fetchone()[0]
    finally:
        conn.close()


def wait_for_new_rows(cluster, tag, timeout=20):
    """Returns once the harness has committed more features than now: it kept writing."""
    start = workload_rows(cluster, tag)
    deadline = time.monotonic() + timeout
    while workload_rows(cluster, tag) <= start:
        assert time.monotonic() < deadline, "the harness wrote nothing for %d s" % timeout
        time.sleep(0.1)


def under_harness(cluster, tmp_path, tag, steps, readers=2, writers=2):
    """Runs each step while the harness plays the application, after seeing it commit new features
    (and once more after the last step); returns its stdout, stderr and report file."""
    stop_file, report_file = tmp_path / "playbook.done", tmp_path / "report.json"
    proc = harness(cluster, "--readers", str(readers), "--writers", str(writers), "--until-file", str(stop_file),
                   "--duration", "120", "--report", str(report_file), "--tag", tag)
    try:
        for step in steps:
            wait_for_new_rows(cluster, tag)
            step()
        wait_for_new_rows(cluster, tag)
        assert proc.poll() is None, "the harness ended before the changes did"
        stop_file.touch()
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, stdout + stderr
    return stdout, stderr, report_file


def test_no_write_lost_while_opt1_is_applied_and_reverted(cluster, capsys, tmp_path):
    before = reference_fingerprint(cluster)
    for tool in pgcluster.TOOLKIT:
        change(capsys, cluster, tool)

    def apply_opt1():
        assert change(capsys, cluster, "opt1_temporal_partitioning",
                      variables={"partition_through_year": "2028"})["action"] == "deployed"

    def revert_opt1():  # the writes went on into the partitioned table meanwhile
        assert change(capsys, cluster, "opt1_temporal_partitioning", state="reverted")["action"] == "reverted"

    stdout, stderr, report_file = under_harness(cluster, tmp_path, "opt1-round-trip", [apply_opt1, revert_opt1])

    report = json.loads(report_file.read_text())
    assert set(report) == {"tag", "marker", "workload_user", "started_at", "duration_s", "settings", "database",
                           "writes", "reads", "errors", "reconnects", "latency_ms", "longest", "timeline",
                           "lock_waits", "verification", "cleanup"}
    writes = report["writes"]
    assert set(writes) == {"attempted", "committed", "failed", "inserts_committed", "updates_committed",
                           "in_doubt", "lost"}
    assert writes["lost"] == 0 and writes["committed"] > 0
    assert writes["attempted"] == writes["committed"] + writes["failed"]
    assert set(report["reads"]) == {"attempted", "succeeded", "failed"} and report["reads"]["attempted"] > 0
    assert set(report["errors"]) == {"by_kind", "by_sqlstate_class", "examples"}
    assert set(report["errors"]["by_kind"]) == set(workload.ERROR_KINDS)
    for kind in ("read", "write"):
        assert set(report["latency_ms"][kind]) == {"count", "p50_ms", "p99_ms", "max_ms"}
    # The longest wait is reported (tests assert correctness; the figure goes into reports).
    assert set(report["longest"]) == {"kind", "operation", "ms", "started_at_s", "error"}
    assert isinstance(report["longest"]["ms"], float) and report["longest"]["kind"] in ("read", "write")
    assert report["timeline"] and set(report["timeline"][0]) == {"second", "calls", "errors", "max_ms"}
    assert sum(second["calls"] for second in report["timeline"]) == writes["attempted"] + report["reads"]["attempted"]
    verification = report["verification"]
    assert verification["features_checked"] == verification["found"] == writes["inserts_committed"] > 0
    assert report["cleanup"] == {"enabled": True, "deleted": verification["found"]}
    assert "0 lost" in stdout and "longest call" in stdout
    assert cluster.password not in stdout + stderr + report_file.read_text()
    assert reference_fingerprint(cluster) == before


def test_lock_waits_name_who_blocked_the_application(cluster, tmp_path):
    """A session holding public.geometrias for 1.5 s: the watcher sees the harness's calls wait behind
    it, about that long, and names it."""
    holder = cluster.connect(DB)
    holder.autocommit = False

    def hold_the_table():
        with holder.cursor() as cur:
            cur.execute("SET application_name = 'test-lock-holder'")
            cur.execute("LOCK TABLE public.geometrias IN ACCESS EXCLUSIVE MODE")
            time.sleep(1.5)
        holder.rollback()

    _, _, report_file = under_harness(cluster, tmp_path, "lock-waits", [hold_the_table])
    holder.close()
    waits = json.loads(report_file.read_text())["lock_waits"]
    assert waits["samples"] > 0 and waits["calls_seen_waiting"] > 0 and waits["over_target"] == 0
    longest = waits["longest"][0]
    assert 1000 <= longest["ms"] < 2000 and longest["blocked_by"] == ["test-lock-holder"]


def test_every_optimization_deploys_and_reverts_while_the_application_writes(cluster, capsys, tmp_path):
    """Each change's verify compares the table (rows, materialized copies, functions) with what it was:
    while the harness inserts and updates features, OPT1 to OPT5 still deploy and revert at the first
    attempt (OPT3 and OPT5 in repeatable read, declared in deploy.sql; OPT4 counts the rows under its
    lock), and nothing the harness committed is lost."""
    for tool in pgcluster.TOOLKIT:
        change(capsys, cluster, tool)
    variables = {"opt1_temporal_partitioning": {"partition_through_year": "2028"},
                 "opt5_dashboard_matviews": {"refresh_schedule": "*/15 * * * *"}}
    names = ["opt1_temporal_partitioning", "opt2_storage_layout", "opt3_search_matview", "opt4_future_partitions",
             "opt5_dashboard_matviews"]

    def step(name, state):
        def run():
            done = change(capsys, cluster, name, state=state, variables=variables.get(name, {}))
            assert (done["action"], done["attempts"]) == ({"applied": "deployed"}.get(state, "reverted"), 1), name
            if state == "reverted" and name in ("opt1_temporal_partitioning", "opt3_search_matview",
                                                "opt5_dashboard_matviews"):
                assert done["executed"][0] == "prepare_revert", (name, done["executed"])
        return run

    steps = [step(n, "applied") for n in names] + [step(n, "reverted") for n in reversed(names)]
    _, _, report_file = under_harness(cluster, tmp_path, "every-change", steps, readers=1, writers=3)
    report = json.loads(report_file.read_text())
    assert report["writes"]["lost"] == 0 and report["writes"]["committed"] > 0


def test_verification_reports_deleted_and_changed_writes_as_lost(cluster):
    settings = workload.Settings(host=cluster.host, port=cluster.port, dbname=DB, user=cluster.user,
                                 password=cluster.password, tag="lost-check")
    conn = workload.connect(settings)
    try:
        ledger, rng, today = workload.Ledger(), random.Random(7), datetime.date.today()
        contents = {}
        for name in ("deleted", "updated-then-deleted", "changed", "kept"):
            content = workload.new_feature(settings, name, rng, today)
            contents[name] = workload.insert_feature(conn, ledger, content), content
        for name in ("updated-then-deleted", "kept"):
            feature_id, content = contents[name]
            workload.update_feature(conn, ledger, feature_id, workload.next_revision(content))
        assert workload.verify_writes(conn, ledger)["lost"] == 0

        ids = {name: feature_id for name, (feature_id, _) in contents.items()}
        with conn, conn.cursor() as cur:
            cur.execute("DELETE FROM public.geometrias WHERE id IN (%s, %s)",
                        (ids["deleted"], ids["updated-then-deleted"]))
            cur.execute("UPDATE public.geometrias SET descricao = 'altered' WHERE id = %s", (ids["changed"],))
        result = workload.verify_writes(conn, ledger)
        assert (result["lost"], result["missing"], result["changed"]) == (4, 2, 1)
        assert result["lost_features"] == [
            {"id": ids["deleted"], "reason": "missing", "lost_writes": 1},
            {"id": ids["updated-then-deleted"], "reason": "missing", "lost_writes": 2},
            {"id": ids["changed"], "reason": "changed", "lost_writes": 1}]
        assert workload.cleanup(conn, settings) == 2
    finally:
        conn.close()
    assert reference_fingerprint(cluster)[0] == FEATURES


def benchmark_results(cluster, role):
    """Every benchmark query's rows, as role (None: as the login user, postgres)."""
    conn = cluster.connect(DB, autocommit=False)
    try:
        results = {}
        for path in sorted(QUERIES.glob("*.sql")):
            with conn.cursor() as cur:
                if role:
                    cur.execute("SET LOCAL ROLE " + role)
                cur.execute(path.read_text())
                results[path.stem] = cur.fetchall()
            conn.rollback()
        return results
    finally:
        conn.close()


def test_workload_rows_change_no_benchmark_result_as_anon(cluster, tmp_path):
    as_anon, as_postgres = benchmark_results(cluster, "anon"), benchmark_results(cluster, None)
    proc = harness(cluster, "--readers", "0", "--writers", "1", "--duration", "2", "--no-cleanup",
                   "--tag", "invisible")
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stdout + stderr
    assert workload_rows(cluster, "invisible") > 0
    assert benchmark_results(cluster, "anon") == as_anon
    # As postgres (RLS bypassed) only the two whole-table aggregates can see them: the reason
    # the docstring asks for stage4_benchmark_as_role: anon while writers run.
    now = benchmark_results(cluster, None)
    assert sorted(name for name in now if now[name] != as_postgres[name]) == \
        ["q07_rpc_extensao_por_categoria", "q08_rpc_resumo_anual"]
    settings = workload.Settings(host=cluster.host, port=cluster.port, dbname=DB, user=cluster.user,
                                 password=cluster.password, tag="invisible")
    conn = workload.connect(settings)
    try:
        workload.cleanup(conn, settings)
    finally:
        conn.close()
    assert benchmark_results(cluster, None) == as_postgres

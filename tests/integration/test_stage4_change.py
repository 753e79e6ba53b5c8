"""plugins/modules/stage4_change.py against a real throwaway cluster: ledger, drift, order, check mode,
rollback on failure, and the real OPT1 change applied and reverted on the reference database."""
import json
import os
import subprocess
import sys
import threading
import time

import pytest

import pgcluster
from ansible_collections.biblioteca.stage4.plugins.modules import stage4_change
from ansible_collections.biblioteca.stage4.plugins.module_utils import change_files
from ansible_collections.biblioteca.stage4.plugins.module_utils import postgres as stage4_postgres

REPO = pgcluster.REPO
SQL_ROOT = os.path.join(REPO, "files", "sql")


def run(capsys, args, check_mode=False, diff=False):
    return pgcluster.run_module(capsys, stage4_change.main, args, check_mode, diff)


@pytest.fixture(scope="module")
def cluster():
    with pgcluster.running_cluster() as running:
        running.build_reference_db("BIBLIOTECA")
        running.create_database("scratch")
        yield running


def write_change(root, name, deploy, verify="SELECT 1;", revert="SELECT 1;", precheck=None):
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    for script, text in (("deploy", deploy), ("verify", verify), ("revert", revert), ("precheck", precheck)):
        if text is not None:
            (folder / (script + ".sql")).write_text(text)
    return str(root)


def scalar(cluster, sql, db="scratch"):
    conn = cluster.connect(db)
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
            return cur.fetchone()[0]
    finally:
        conn.close()


def test_apply_is_recorded_then_unchanged(cluster, capsys, tmp_path):
    root = write_change(tmp_path, "c1", "CREATE TABLE t1 (id int);",
                        verify="DO $$ BEGIN PERFORM 't1'::regclass; END $$;", revert="DROP TABLE t1;")
    args = dict(cluster.login_args("scratch"), change="c1", sql_root=root, run_id="r1")
    first = run(capsys, args)
    assert first["changed"] and first["action"] == "deployed"
    assert first["executed"] == ["deploy", "verify"]
    assert 0 <= first["commit_s"] <= first["duration_s"]  # the COMMIT is timed, within the transaction's time
    again = run(capsys, args)
    assert not again["changed"] and again["action"] == "unchanged"
    assert scalar(cluster, "SELECT files->'deploy'->>'sha256' FROM stage4.ledger WHERE change = 'c1'") \
        == first["files"]["deploy"]["sha256"]


def test_failed_verify_rolls_everything_back(cluster, capsys, tmp_path):
    root = write_change(tmp_path, "c2", "CREATE TABLE t2 (id int);",
                        verify="DO $$ BEGIN RAISE EXCEPTION 'verify says no'; END $$;")
    result = run(capsys, dict(cluster.login_args("scratch"), change="c2", sql_root=root))
    assert result["failed"]
    assert "verify.sql failed: verify says no" in result["msg"] and "rolled back" in result["msg"]
    assert scalar(cluster, "SELECT to_regclass('t2') IS NULL")
    assert scalar(cluster, "SELECT count(*) FROM stage4.ledger WHERE change = 'c2'") == 0


def test_precheck_refusal_changes_nothing(cluster, capsys, tmp_path):
    root = write_change(tmp_path, "c3", "CREATE TABLE t3 (id int);",
                        precheck="DO $$ BEGIN RAISE EXCEPTION 'not safe here'; END $$;")
    result = run(capsys, dict(cluster.login_args("scratch"), change="c3", sql_root=root))
    assert result["failed"] and "precheck.sql failed: not safe here" in result["msg"]
    assert scalar(cluster, "SELECT to_regclass('t3') IS NULL")


def test_a_declined_change_changes_and_records_nothing_until_its_reason_is_gone(cluster, capsys, tmp_path):
    root = write_change(tmp_path, "c20", "CREATE TABLE t20 (id int);", revert="DROP TABLE t20;")
    (tmp_path / "c20" / "decline.sql").write_text(
        "SELECT CASE WHEN to_regclass('big_enough') IS NULL THEN 'no table big_enough yet ('"
        " || current_setting('stage4.why') || ')' END")
    args = dict(cluster.login_args("scratch"), change="c20", sql_root=root, variables={"why": "small"})
    # check mode asks only for the first pending change (dry_run_precheck): a later one depends on it
    assert run(capsys, args, check_mode=True)["action"] == "would_deploy"
    for check_mode in (True, False):
        declined = run(capsys, dict(args, dry_run_precheck=check_mode), check_mode=check_mode)
        assert declined["action"] == "declined" and not declined["changed"] and not declined["applied"]
        assert declined["declined"] == "no table big_enough yet (small)" and declined["executed"] == []
    decided = run(capsys, dict(args, decide_only=True))  # asked before preparing the server: same answer
    assert decided["action"] == "declined" and decided["declined"] == "no table big_enough yet (small)"
    assert scalar(cluster, "SELECT to_regclass('t20') IS NULL")
    assert (scalar(cluster, "SELECT to_regclass('stage4.ledger') IS NULL")
            or scalar(cluster, "SELECT count(*) FROM stage4.ledger WHERE change = 'c20'") == 0)
    scalar(cluster, "CREATE TABLE big_enough (); SELECT 1")
    # a caller's reason (a promoted staging run declined it) declines it without asking decline.sql
    forced = run(capsys, dict(args, decline="declined in the promoted staging run r1: small"))
    assert forced["action"] == "declined" and forced["declined"] == "declined in the promoted staging run r1: small"
    assert scalar(cluster, "SELECT to_regclass('t20') IS NULL")
    decided = run(capsys, dict(args, decide_only=True))
    assert decided["action"] == "would_deploy" and not decided["changed"] and decided["executed"] == []
    assert scalar(cluster, "SELECT to_regclass('t20') IS NULL")
    assert run(capsys, args)["action"] == "deployed"
    assert run(capsys, dict(args, decide_only=True))["action"] == "unchanged"
    assert run(capsys, args)["action"] == "unchanged"  # applied: no longer asked
    assert run(capsys, dict(args, decline="anything"))["action"] == "unchanged"  # an applied change is left as it is


def test_a_revert_does_not_wait_for_tooling_installed_after_it(cluster, capsys, tmp_path):
    """A newer checkout installs a tooling change after the optimizations were applied: a rollback still works."""
    root = write_change(tmp_path, "c30", "CREATE TABLE t30 (id int);", revert="DROP TABLE t30;")
    write_change(tmp_path, "tool31", "CREATE OR REPLACE FUNCTION f31() RETURNS int LANGUAGE sql AS 'SELECT 1';")
    base = dict(cluster.login_args("scratch"), sql_root=root)
    run(capsys, dict(base, change="c30"))
    run(capsys, dict(base, change="tool31", repeatable=True))
    assert "revert tool31 first" in run(capsys, dict(base, change="c30", state="reverted"))["msg"]
    reverted = run(capsys, dict(base, change="c30", state="reverted", tooling=["tool31"]))
    assert reverted["action"] == "reverted" and scalar(cluster, "SELECT to_regclass('t30') IS NULL")


def test_drift_is_refused_and_repeatable_redeploys(cluster, capsys, tmp_path):
    root = write_change(tmp_path, "c4", "CREATE OR REPLACE FUNCTION f4() RETURNS int LANGUAGE sql AS 'SELECT 1';")
    args = dict(cluster.login_args("scratch"), change="c4", sql_root=root)
    run(capsys, args)
    write_change(tmp_path, "c4", "CREATE OR REPLACE FUNCTION f4() RETURNS int LANGUAGE sql AS 'SELECT 2';")
    drift = run(capsys, args)
    assert drift["failed"] and "drift" in drift["msg"]
    redeployed = run(capsys, dict(args, repeatable=True))
    assert redeployed["action"] == "redeployed" and scalar(cluster, "SELECT f4()") == 2
    assert not run(capsys, dict(args, repeatable=True))["changed"]


def test_revert_order_is_enforced(cluster, capsys, tmp_path):
    root = write_change(tmp_path, "c5", "CREATE TABLE t5 (id int);", revert="DROP TABLE t5;")
    write_change(tmp_path, "c6", "CREATE TABLE t6 (id int);", revert="DROP TABLE t6;")
    base = cluster.login_args("scratch")
    run(capsys, dict(base, change="c5", sql_root=root))
    run(capsys, dict(base, change="c6", sql_root=root))
    refused = run(capsys, dict(base, change="c5", sql_root=root, state="reverted"))
    assert refused["failed"] and "revert c6 first" in refused["msg"]
    assert run(capsys, dict(base, change="c6", sql_root=root, state="reverted"))["action"] == "reverted"
    assert run(capsys, dict(base, change="c5", sql_root=root, state="reverted"))["action"] == "reverted"
    assert scalar(cluster, "SELECT to_regclass('t5') IS NULL AND to_regclass('t6') IS NULL")
    events = scalar(cluster, "SELECT string_agg(change || ':' || action, ',' ORDER BY id) FROM stage4.ledger_events "
                             "WHERE change IN ('c5', 'c6')")
    assert events == "c5:deploy,c6:deploy,c6:revert,c5:revert"


def test_check_mode_runs_nothing(cluster, capsys, tmp_path):
    root = write_change(tmp_path, "c7", "CREATE TABLE t7 (id int);")
    result = run(capsys, dict(cluster.login_args("scratch"), change="c7", sql_root=root), check_mode=True)
    assert result["changed"] and result["action"] == "would_deploy" and result["executed"] == []
    assert scalar(cluster, "SELECT to_regclass('t7') IS NULL")


def test_dry_run_shows_the_sql_and_runs_the_precheck_read_only(cluster, capsys, tmp_path):
    precheck = ("DO $$ BEGIN IF current_setting('stage4.allowed') <> 'yes' THEN RAISE EXCEPTION 'not allowed'; END IF; "
                "END $$; CREATE TEMP TABLE scratch_pad (id int);")
    root = write_change(tmp_path, "c9", "CREATE TABLE t9 (id int);", precheck=precheck)
    args = dict(cluster.login_args("scratch"), change="c9", sql_root=root, dry_run_precheck=True)
    refused = run(capsys, dict(args, variables={"allowed": "no"}), check_mode=True)
    assert refused["failed"] and "dry run: precheck.sql refuses: not allowed" in refused["msg"]
    # A precheck that writes (even a temp table) fails under READ ONLY: the dry run cannot change anything.
    read_only = run(capsys, dict(args, variables={"allowed": "yes"}), check_mode=True)
    assert read_only["failed"] and "read-only transaction" in read_only["msg"]
    root = write_change(tmp_path, "c9", "CREATE TABLE t9 (id int);",
                        precheck=precheck.replace(" CREATE TEMP TABLE scratch_pad (id int);", ""))
    passed = run(capsys, dict(args, variables={"allowed": "yes"}), check_mode=True, diff=True)
    assert passed["action"] == "would_deploy" and passed["precheck"] == "passed"
    assert passed["diff"]["before_header"] == "c9: not applied"
    assert passed["diff"]["after_header"] == "c9: deploy (precheck, deploy, verify)"
    assert "-- ===== deploy.sql  sha256 " + passed["files"]["deploy"]["sha256"] in passed["diff"]["after"]
    assert "CREATE TABLE t9" in passed["diff"]["after"]
    assert scalar(cluster, "SELECT to_regclass('t9') IS NULL")
    assert scalar(cluster, "SELECT count(*) FROM stage4.ledger WHERE change = 'c9'") == 0


def test_variables_reach_the_sql(cluster, capsys, tmp_path):
    root = write_change(tmp_path, "c8", "CREATE TABLE t8 AS SELECT current_setting('stage4.answer') AS v;")
    run(capsys, dict(cluster.login_args("scratch"), change="c8", sql_root=root, variables={"answer": "42"}))
    assert scalar(cluster, "SELECT v FROM t8") == "42"


def test_deploy_runs_in_the_isolation_its_file_declares(cluster, capsys, tmp_path):
    record = "CREATE TABLE {0} AS SELECT current_setting('transaction_isolation') AS level;"
    root = write_change(tmp_path, "c10", "-- stage4:isolation repeatable read\n" + record.format("t10"),
                        revert=record.format("t10_reverted"))
    write_change(tmp_path, "c11", record.format("t11"))
    args = dict(cluster.login_args("scratch"), change="c10", sql_root=root, variables={"answer": "42"})
    assert run(capsys, args)["action"] == "deployed"
    assert run(capsys, dict(args, state="reverted"))["action"] == "reverted"
    assert run(capsys, dict(args, change="c11"))["action"] == "deployed"
    assert [scalar(cluster, "SELECT level FROM " + t) for t in ("t10", "t10_reverted", "t11")] == [
        "repeatable read", "read committed", "read committed"]
    assert change_files.deploy_isolation(change_files.read_change(root, "c10")) == "REPEATABLE READ"


def test_bad_input_is_clear(cluster, capsys, tmp_path):
    missing = run(capsys, dict(cluster.login_args("scratch"), change="nope", sql_root=str(tmp_path)))
    assert missing["failed"] and "does not exist" in missing["msg"]
    (tmp_path / "incomplete").mkdir()
    (tmp_path / "incomplete" / "deploy.sql").write_text("SELECT 1;")
    incomplete = run(capsys, dict(cluster.login_args("scratch"), change="incomplete", sql_root=str(tmp_path)))
    assert "lacks verify.sql, revert.sql" in incomplete["msg"]
    secret = "N0t-The-Password-Stage4-Test"
    root = write_change(tmp_path, "c9", "SELECT 1;")
    wrong = run(capsys, dict(cluster.login_args("scratch"), login_password=secret, change="c9", sql_root=root))
    assert wrong["failed"] and "cannot connect to postgres@127.0.0.1" in wrong["msg"]
    assert secret not in json.dumps(wrong)


def test_a_transaction_past_its_timeout_is_cancelled_retried_and_lets_the_application_go(cluster, capsys, tmp_path):
    """The transaction holds ACCESS EXCLUSIVE on the application's table longer than transaction_timeout:
    cancelled each time, nothing applied, and a reader queued behind it never waited much past the timeout."""
    scalar(cluster, "CREATE TABLE budget_app (id int); SELECT 1")
    root = write_change(tmp_path, "c_budget", "CREATE TABLE budget_t (id int); LOCK TABLE budget_app; "
                        "SELECT pg_sleep(current_setting('stage4.hold_s')::float);", revert="DROP TABLE budget_t;")
    args = dict(cluster.login_args("scratch"), change="c_budget", sql_root=root, transaction_timeout=1.0,
                lock_retries=1, lock_retry_delay=0.2)
    waits, done = [], threading.Event()

    def application():
        conn = cluster.connect("scratch")
        with conn.cursor() as cur:
            while not done.is_set():
                began = time.monotonic()
                cur.execute("SELECT count(*) FROM budget_app")
                waits.append(time.monotonic() - began)
                time.sleep(0.05)
        conn.close()
    reader = threading.Thread(target=application)
    reader.start()
    try:
        over = run(capsys, dict(args, variables=dict(hold_s=5)))
    finally:
        done.set()
        reader.join()
    assert over["failed"] and over["attempts"] == 2
    assert "ran past its transaction_timeout of 1 s and was cancelled" in over["msg"]
    assert "rolled back, nothing changed (in each of 2 attempts)" in over["msg"]
    assert scalar(cluster, "SELECT to_regclass('budget_t') IS NULL")
    assert scalar(cluster, "SELECT count(*) FROM stage4.ledger WHERE change = 'c_budget'") == 0
    # The reader did queue behind the transaction, and got through once it was cancelled.
    assert any(wait > 0.5 for wait in waits) and max(waits) < 1.0 + 0.5, waits
    within = run(capsys, dict(args, variables=dict(hold_s=0)))
    assert within["action"] == "deployed" and within["attempts"] == 1


def schema_dump(cluster):
    done = subprocess.run(["pg_dump", "--schema-only", "-N", "stage4", "-h", cluster.host, "-p", str(cluster.port),
                           "-U", "postgres", "BIBLIOTECA"], check=True, capture_output=True, text=True,
                          env=dict(os.environ, PGPASSWORD=cluster.password))
    return [line for line in done.stdout.splitlines() if not line.startswith(("\\restrict", "\\unrestrict"))]


def test_opt1_round_trip_restores_the_original(cluster, capsys):
    args = dict(cluster.login_args("BIBLIOTECA"), sql_root=SQL_ROOT)
    checksum = "SELECT stage4.table_checksum('public.geometrias')"
    before = schema_dump(cluster)
    for tool in pgcluster.TOOLKIT:
        run(capsys, dict(args, change=tool))
    rows_before = scalar(cluster, checksum, "BIBLIOTECA")
    applied = run(capsys, dict(args, change="opt1_temporal_partitioning", variables={"partition_through_year": "2028"}))
    assert applied["action"] == "deployed", applied.get("msg")
    assert applied["settled"] == "retired objects dropped"  # the plain table and its RPCs, after the swap
    assert scalar(cluster, "SELECT relkind FROM pg_class WHERE oid = 'public.geometrias'::regclass", "BIBLIOTECA") == "p"
    reverted = run(capsys, dict(args, change="opt1_temporal_partitioning", state="reverted"))
    assert reverted["action"] == "reverted", reverted.get("msg")
    assert reverted["executed"] == ["prepare_revert", "revert", "verify_reverted", "settle"]
    assert scalar(cluster, checksum, "BIBLIOTECA") == rows_before
    for tool in reversed(pgcluster.TOOLKIT):
        assert run(capsys, dict(args, change=tool, state="reverted"))["action"] == "reverted"
    assert scalar(cluster, "SELECT count(*) FROM pg_proc WHERE pronamespace = 'stage4'::regnamespace", "BIBLIOTECA") == 0
    assert schema_dump(cluster) == before


# A control node that dies mid-statement: it holds ACCESS EXCLUSIVE on the table, then waits in a statement.
DYING_CLIENT = """
import json, sys
sys.path.insert(0, sys.argv[1])
import project_modules
project_modules.register()
from ansible_collections.biblioteca.stage4.plugins.module_utils.postgres import open_connection
conn = open_connection(dict(json.loads(sys.argv[2]), connect_timeout=10, ssl_mode="disable"))
cur = conn.cursor()
cur.execute("LOCK TABLE public.geometrias IN ACCESS EXCLUSIVE MODE")
cur.execute("SELECT pg_backend_pid()")
print(cur.fetchone()[0], flush=True)
cur.execute("SELECT pg_sleep(600)")
"""


def test_a_statement_whose_client_was_killed_stops_and_lets_go_of_its_locks(cluster):
    """kill -9 of the control node: the server notices within the connection check interval, rolls back and
    releases the table; without it the statement would run on, holding the lock."""
    client = subprocess.Popen([sys.executable, "-c", DYING_CLIENT, os.path.join(REPO, "scripts"),
                               json.dumps(cluster.login_args("BIBLIOTECA"))], stdout=subprocess.PIPE, text=True)
    pid = int(client.stdout.readline())
    time.sleep(0.5)  # in pg_sleep
    client.kill()
    client.wait()
    killed_at = time.monotonic()
    conn = cluster.connect("BIBLIOTECA")
    with conn.cursor() as cur:
        cur.execute("SET lock_timeout = '10s'")
        cur.execute("SELECT count(*) FROM public.geometrias")
        waited = time.monotonic() - killed_at
        cur.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (pid,))
        assert cur.fetchone()[0] == 0
    conn.close()
    assert waited < stage4_postgres.CLIENT_CONNECTION_CHECK_MS / 1000 + 1.5

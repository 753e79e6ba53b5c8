"""The fault suite: `ansible-playbook stage4.yml -i local` against a throwaway cluster, with bad input,
a full or failing backup disk, two runs at once, a lost run lock, and runs killed with kill -9 at a
step and started again. Every case asserts that nothing was lost and that the database ends as an
uninterrupted run leaves it.

`make test` runs the fast cases; `make faults` runs all of them, a kill at every step included
(tests marked `every_step`).
"""
import glob
import itertools
import os
import re
import signal
import subprocess
import tempfile
import time

import pytest

import pgcluster
from stage4_runs import (FEATURES, REPO, audit_steps, clone, ledger, run_dirs, run_env, run_stage4, sql,
                         stage4_argv, state)

CANARY_PASSWORD = "Canary-Secret-4-Faults"


# ---------------------------------------------------------------- bad input: stops before any change

def make_broken(cluster, name, statements):
    clone(cluster, name)
    for statement in statements:
        sql(cluster, name, statement)
    return name


BAD_INPUT = {
    # name: (database setup, extra arguments, environment, expected message)
    "wrong_database": (None, [], {"DB_NAME": "BIBLIOTEKA"}, 'database "BIBLIOTEKA" does not exist'),
    "wrong_password": (None, [], {"DB_PASSWORD": CANARY_PASSWORD}, "password authentication failed"),
    "missing_password": (None, [], {"DB_PASSWORD": ""}, "stage4_db_password is empty: export DB_PASSWORD"),
    "bad_port_variable": (None, [], {"DB_PORT": "not-a-port"}, "Bad variables: stage4_db_port must be 1-65535"),
    "unreachable_host": (None, [], {"DB_PORT": "1"}, "Preflight could not inspect postgres@127.0.0.1:1/"),
    "missing_postgis": (["DROP VIEW public.geometrias_publicas", "DROP EXTENSION postgis CASCADE"], [], {},
                        "PostGIS not installed"),
    "missing_column": (["ALTER TABLE public.geometrias DROP COLUMN descricao CASCADE"], [], {},
                       "descricao: expected text, found no such column"),
    "wrong_geometry_type": (["DROP VIEW public.geometrias_publicas",
                             "ALTER TABLE public.geometrias ALTER COLUMN geom TYPE extensions.geometry(Geometry, 4326)"],
                            [], {}, "geom: expected geometry(MultiPolygon,4326), found geometry(Geometry,4326)"),
    "referencing_foreign_key": (["CREATE TABLE public.anexos (id int PRIMARY KEY, "
                                 "geometria_id bigint REFERENCES public.geometrias (id))"], [], {},
                                "Foreign keys reference public.geometrias: anexos (anexos_geometria_id_fkey)"),
    "wrong_feature_count": (["DELETE FROM public.geometrias WHERE id = (SELECT max(id) FROM public.geometrias)"],
                            [], {}, "with %d features (expected %d)" % (FEATURES - 1, FEATURES)),
    "unknown_variable": (None, ["-e", "stage4_optimizaton_gate_force_fail=[opt1]"], {},
                         "stage4_optimizaton_gate_force_fail (did you mean stage4_optimization_gate_force_fail?)"),
    "selection_gap": (None, ["-e", "stage4_select=opt2"], {},
                      "would apply opt2 without opt1, which is neither applied nor selected"),
    "managed_server_without_pg_cron": (None, ["-e", "stage4_managed_server=true"], {}, "pg_cron"),
    "backup_folder_unusable": (None, ["-e", "stage4_backup_dir=/proc/stage4-backups"], {}, "/proc/stage4-backups"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUT))
def test_bad_input_stops_before_any_change(cluster, case):
    setup, extra, env, message = BAD_INPUT[case]
    dbname = make_broken(cluster, "bad_" + case, setup) if setup else clone(cluster, "bad_" + case)
    before = state(cluster, dbname) if case != "missing_postgis" else None
    rc, output = run_stage4(cluster, dbname, *extra, env=dict(env, DB_NAME=env.get("DB_NAME", dbname)))
    assert rc != 0
    assert message in output, output[-3000:]  # the end of the run: the task that failed and why
    assert "othing was changed" in output
    assert CANARY_PASSWORD not in output and cluster.password not in output
    assert ledger(cluster, dbname) == []  # not even the tooling
    if before:
        assert state(cluster, dbname) == before


def test_malformed_benchmark_query_stops_before_any_change(cluster, tmp_path):
    dbname = clone(cluster, "bad_query")
    for path in glob.glob(os.path.join(REPO, "files", "benchmark", "queries", "*.sql")):
        (tmp_path / os.path.basename(path)).write_text(open(path, encoding="utf-8").read())
    (tmp_path / "q03_knn.sql").write_text("SELEC id FROM public.geometrias")
    rc, output = run_stage4(cluster, dbname, "-e", "stage4_benchmark_queries_dir=%s" % tmp_path)
    assert rc != 0 and "Benchmark query %s/q03_knn.sql cannot run here" % tmp_path in output
    assert 'syntax error at or near "SELEC"' in output and ledger(cluster, dbname) == []


def test_user_without_privileges_is_told_which(cluster):
    dbname = clone(cluster, "bad_privileges")
    sql(cluster, "postgres", "DROP ROLE IF EXISTS analista")
    sql(cluster, "postgres", "CREATE ROLE analista LOGIN PASSWORD %s", (CANARY_PASSWORD,))
    sql(cluster, dbname, "GRANT SELECT ON public.geometrias TO analista")
    rc, output = run_stage4(cluster, dbname, env={"DB_USER": "analista", "DB_PASSWORD": CANARY_PASSWORD})
    assert rc != 0 and CANARY_PASSWORD not in output
    assert "Missing privileges: analista does not own public.geometrias (its owner is postgres)" in output
    assert "analista may not create schemas in bad_privileges (CREATE on the database)" in output
    assert "analista does not own database bad_privileges (its owner is postgres)" in output


@pytest.fixture()
def tiny_disk():
    """A 64 KiB tmpfs: less than the reference database's dump (about 120 KiB)."""
    folder = tempfile.mkdtemp(prefix="stage4-tiny-disk-")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", folder], check=True)
    try:
        yield folder
    finally:
        subprocess.run(["umount", folder], check=True)
        os.rmdir(folder)


def test_full_disk_stops_before_the_backup(cluster, tiny_disk):
    dbname = clone(cluster, "full_disk")
    rc, output = run_stage4(cluster, dbname, "-e", "stage4_backup_dir=%s" % tiny_disk)
    assert rc != 0 and "the backup of a" in output and "needs more. Nothing was changed." in output
    assert ledger(cluster, dbname) == []


def test_backup_that_fails_midway_stops_before_any_change(cluster, tiny_disk):
    """The space check is fooled (factor 0): pg_dump runs out of room while writing."""
    dbname = clone(cluster, "dump_fails")
    before = state(cluster, dbname)
    rc, output = run_stage4(cluster, dbname, "-e", "stage4_backup_dir=%s" % tiny_disk,
                            "-e", "stage4_preflight_backup_space_factor=0")
    assert rc != 0 and "No space left on device" in output
    assert "Install the rollout's tooling" not in output
    assert ledger(cluster, dbname) == [] and state(cluster, dbname) == before


# ---------------------------------------------------------------- two runs, a lost lock, kill -9

def start_stage4(cluster, dbname, *extra):
    """A run in its own process group (kill -9 takes the whole run, workers and modules included)."""
    log = tempfile.NamedTemporaryFile(prefix="stage4-run-", suffix=".log", delete=False)
    process = subprocess.Popen(stage4_argv(cluster, *extra), cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                               env=run_env(cluster, dbname), start_new_session=True)
    return process, log.name


def wait_for(predicate, timeout=300, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = predicate()
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError("timed out waiting for " + what)


def new_run_dir(cluster, before):
    return wait_for(lambda: next(iter(run_dirs(cluster) - before), None), what="the run's report folder")


def output_of(log):
    with open(log, encoding="utf-8", errors="replace") as handle:
        return " ".join(handle.read().split())


def test_second_run_is_refused_while_the_first_goes_on(cluster):
    dbname = clone(cluster, "two_runs")
    before = run_dirs(cluster)
    first, log = start_stage4(cluster, dbname, "-e", "stage4_select=opt1")
    run_dir = new_run_dir(cluster, before)
    wait_for(lambda: os.path.exists(os.path.join(run_dir, "run_lock.json")) and
             '"held"' in open(os.path.join(run_dir, "run_lock.json"), encoding="utf-8").read(), what="the lock")
    rc, output = run_stage4(cluster, dbname, "-e", "stage4_select=opt1")
    assert rc != 0
    assert re.search(r"Another Stage 4 run holds the run lock on two_runs: run \S+-rollout-\w+, connected since", output)
    assert first.wait(timeout=900) == 0, output_of(log)
    assert [change for change, accepted in ledger(cluster, dbname) if accepted] == pgcluster.TOOLING + [
        "opt1_temporal_partitioning"]


def test_lost_run_lock_stops_before_the_next_change_and_a_rerun_converges(cluster):
    dbname = clone(cluster, "lost_lock")
    original = state(cluster, dbname)[1]
    before = run_dirs(cluster)
    process, log = start_stage4(cluster, dbname, "-e", "stage4_select=opt1")
    run_dir = new_run_dir(cluster, before)
    wait_for(lambda: ("preflight", "ok") in audit_steps(run_dir), what="preflight")
    # The connection that holds the lock is cut (a network blip, a pooler restart...).
    sql(cluster, "postgres", "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                             "WHERE datname = %s AND application_name LIKE 'stage4 run %%'", (dbname,))
    assert process.wait(timeout=900) != 0
    assert "The run lock on lost_lock was lost" in output_of(log)
    rc, output = run_stage4(cluster, dbname, "-e", "stage4_select=opt1")
    assert rc == 0, output
    assert [change for change, accepted in ledger(cluster, dbname) if accepted][-1] == "opt1_temporal_partitioning"
    assert state(cluster, dbname)[1] == original


def kill_at(cluster, dbname, step, *extra):
    """Runs Stage 4, kill -9 its whole process group once the audit trail shows `step`."""
    before = run_dirs(cluster)
    process, log = start_stage4(cluster, dbname, *extra)
    run_dir = new_run_dir(cluster, before)
    wait_for(lambda: any(s == step for s, _ in audit_steps(run_dir)) or process.poll() is not None,
             timeout=600, what=step)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    time.sleep(1.5)  # the lock holder notices its run is gone
    return output_of(log)


@pytest.fixture(scope="module")
def uninterrupted(cluster):
    """The state an uninterrupted run of OPT1 and OPT2 leaves: what every killed run must converge to."""
    dbname = clone(cluster, "uninterrupted")
    original = state(cluster, dbname)
    rc, output = run_stage4(cluster, dbname, "-e", "stage4_select=opt1,opt2")
    assert rc == 0, output
    return original, state(cluster, dbname), ledger(cluster, dbname)


def converge_after_kill(cluster, uninterrupted, step):
    original, expected, expected_ledger = uninterrupted
    dbname = clone(cluster, "killed_at_" + re.sub(r"\W", "_", step))
    kill_at(cluster, dbname, step, "-e", "stage4_select=opt1,opt2")
    assert state(cluster, dbname)[1] == original[1]  # every row, whatever the moment
    rc, output = run_stage4(cluster, dbname, "-e", "stage4_select=opt1,opt2")
    assert rc == 0, output
    assert state(cluster, dbname) == expected
    assert ledger(cluster, dbname) == expected_ledger
    return output


def test_killed_between_deploy_and_gate_is_reverted_and_judged_again(cluster, uninterrupted):
    """kill -9 right after OPT1 committed, before its gate: the ledger says applied but unjudged."""
    output = converge_after_kill(cluster, uninterrupted, "opt1_temporal_partitioning")
    assert "First it reverts opt1_temporal_partitioning: applied by a run that ended before its gate" in output
    events = sql(cluster, "killed_at_opt1_temporal_partitioning",
                 "SELECT action FROM stage4.ledger_events WHERE change = 'opt1_temporal_partitioning' ORDER BY id")
    # OPT1 copies online both ways: a prepare (outside the transaction) comes before each deploy and revert.
    # A prepare retried after its lock wait timed out logs each attempt (at 1,000,000 features the revert's
    # waited once, behind what the killed run's backend was still doing).
    assert [action for action, _ in itertools.groupby(e[0] for e in events)] == [
        "prepare", "deploy", "prepare_revert", "revert", "prepare", "deploy"]


EVERY_STEP = ["preflight", "backup", "stage4_toolkit", "benchmark_schema", "benchmark_provenance", "benchmark_baseline",
              "benchmark_opt1", "gate_opt1", "opt2_storage_layout", "benchmark_opt2", "gate_opt2", "report"]


@pytest.mark.every_step
@pytest.mark.parametrize("step", EVERY_STEP)
def test_killed_at_every_step_converges(cluster, uninterrupted, step):
    converge_after_kill(cluster, uninterrupted, step)


def test_no_produced_file_holds_the_password(cluster, uninterrupted):
    """Reports, metrics, audit trails, run-lock files and backups of every run of this module so far."""
    password = cluster.password.encode()
    produced = [os.path.join(folder, name)
                for top in ("reports", "backups") for folder, _, names in os.walk(os.path.join(cluster.folder, top))
                for name in names]
    assert len(produced) > 10
    for path in produced:
        with open(path, "rb") as handle:
            assert password not in handle.read(), path

"""Tests of the packaging: docs/variables.md is current, the execution environment's build context is
complete, and the Supabase migrations exported from files/sql apply and revert on a real PostgreSQL.

The migrations run the way `supabase db push` runs them, one transaction per file
(psql --single-transaction -v ON_ERROR_STOP=1 -f), on a throwaway cluster (tests/pgcluster.py) that
preloads pg_cron (OPT4 and OPT5 need it) holding the reference database at 251 features.
"""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent.parent
REPO = TESTS.parent
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

import pgcluster  # noqa: E402
from ansible_collections.biblioteca.stage4.plugins.module_utils import change_files  # noqa: E402  (importable once tests/conftest.py ran)

BIN = Path(sys.executable).parent
PSQL = "/usr/lib/postgresql/15/bin/psql"
DB = "BIBLIOTECA"  # pg_cron runs its jobs in cron.database_name, set to this name
OPTIMIZATIONS = ["opt1_temporal_partitioning", "opt2_storage_layout", "opt3_search_matview",
                 "opt4_future_partitions", "opt5_dashboard_matviews"]
CHANGES = pgcluster.TOOLKIT + OPTIMIZATIONS
OPT1, OPT3 = CHANGES.index("opt1_temporal_partitioning"), CHANGES.index("opt3_search_matview")
# Row count and order-independent content checksum, without the toolkit (its revert removes it).
TABLE_STATE = """
    SELECT count(*), md5(coalesce(string_agg(h, '' ORDER BY h), ''))
    FROM (SELECT md5(g::text) AS h FROM public.geometrias g) rows"""


def run(argv, **kwargs):
    kwargs.setdefault("cwd", REPO)
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True, check=False, **kwargs)


def pins(path):
    return {line.split("==")[0].lower(): line for line in path.read_text().splitlines() if "==" in line}


# --------------------------------------------------------------------------
# docs/variables.md
# --------------------------------------------------------------------------

def test_variables_doc_is_current():
    done = run([sys.executable, "scripts/gen_variables_doc.py", "--check"])
    assert done.returncode == 0, done.stderr


def test_variables_doc_check_notices_a_stale_file(tmp_path):
    stale = tmp_path / "variables.md"
    stale.write_text("# Variables\n")
    done = run([sys.executable, "scripts/gen_variables_doc.py", "--check", "--output", stale])
    assert done.returncode == 1
    assert "out of date" in done.stderr
    assert run([sys.executable, "scripts/gen_variables_doc.py", "--output", stale]).returncode == 0
    text = stale.read_text()
    for name in ("stage4_optimizations", "stage4_managed_server", "stage4_benchmark_iterations",
                 "stage4_common_change_state", "stage4_pg_cron_restart_allowed"):
        assert "`%s`" % name in text, name


# --------------------------------------------------------------------------
# execution-environment.yml
# --------------------------------------------------------------------------

def test_execution_environment_context_holds_the_requirements(tmp_path):
    done = run([BIN / "ansible-builder", "create", "--file", "execution-environment.yml", "--context", tmp_path])
    assert done.returncode == 0, done.stdout + done.stderr
    build = tmp_path / "_build"
    assert (build / "requirements.txt").read_text() == (REPO / "requirements-ee.txt").read_text()
    assert (build / "requirements.yml").read_text() == (REPO / "requirements.yml").read_text()
    assert (build / "bindep.txt").read_text() == (REPO / "bindep.txt").read_text()
    containerfile = next(p for p in (tmp_path / "Containerfile", tmp_path / "Dockerfile") if p.is_file()).read_text()
    assert "ansible-core==2.19.14" in containerfile
    assert "postgresql:15" in containerfile


def test_execution_environment_pins_agree_with_requirements():
    project, ee = pins(REPO / "requirements.txt"), pins(REPO / "requirements-ee.txt")
    assert set(ee) == {"ansible-core", "psycopg[binary]", "jinja2"}
    assert all(ee[name] == project[name] for name in ee)
    assert "ansible-builder" in project
    definition = (REPO / "execution-environment.yml").read_text()
    assert "package_pip: " + project["ansible-core"] in definition


# --------------------------------------------------------------------------
# Supabase migrations
# --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cluster():
    """A cluster preloading pg_cron, holding the reference database."""
    running = pgcluster.start_cluster()
    try:
        running.preload_pg_cron(DB)
        running.build_reference_db(DB)
        yield running
    finally:
        running.destroy()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = tmp_path_factory.mktemp("migrations")
    done = run([sys.executable, "scripts/export_supabase_migrations.py", "--out", out, "--timestamp", "20261201120000"])
    assert done.returncode == 0, done.stderr
    return out


def psql(cluster, path):
    """One file in one transaction, stopping at the first error, as `supabase db push` applies it."""
    return run([PSQL, "-X", "-q", "-h", cluster.host, "-p", cluster.port, "-U", cluster.user, "-d", DB,
                "-v", "ON_ERROR_STOP=1", "--single-transaction", "-f", path],
               env=dict(os.environ, PGPASSWORD=cluster.password))


def query(cluster, sql):
    conn = cluster.connect(DB)
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
            return cur.fetchall()
    finally:
        conn.close()


def test_export_names_files_and_records_sources(exported):
    migrations = sorted(p.name for p in exported.glob("*.sql"))
    assert migrations == ["202612011200%02d_%s.sql" % (i, c if c.startswith("stage4_") else "stage4_" + c)
                          for i, c in enumerate(CHANGES)]
    reverts = sorted(p.name for p in (exported / "rollbacks").glob("*.sql"))
    assert reverts == ["revert_" + name for name in migrations]
    assert "ls -r" in (exported / "rollbacks" / "README.md").read_text()
    opt1 = (exported / migrations[OPT1]).read_text()
    deploy = REPO / "files/sql/opt1_temporal_partitioning/deploy.sql"
    assert change_files.read_change(str(REPO / "files/sql"), "opt1_temporal_partitioning")["deploy"]["sha256"] in opt1
    assert deploy.read_text() in opt1
    assert "SELECT set_config('stage4.partition_through_year', '2028', true);" in opt1
    # OPT3 declares repeatable read: set by the file's first statement; OPT1 (copies under a lock) does not.
    opt3 = (exported / migrations[OPT3]).read_text()
    statements = [line for line in opt3.splitlines() if line.strip() and not line.startswith("--")]
    assert statements[0] == "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ;"
    assert "SET TRANSACTION" not in opt1
    # every Supabase migration file name must match the CLI's pattern
    assert all(re.fullmatch(r"[0-9]+_.*\.sql", name) for name in migrations)


def test_no_migration_has_a_top_level_statement_that_needs_a_transaction_block(exported):
    """A CLI that sends a file as a pipeline without BEGIN refuses those (LOCK TABLE: 25P01)."""
    for path in sorted(exported.glob("*.sql")) + sorted((exported / "rollbacks").glob("*.sql")):
        assert not re.search(r"^\s*LOCK\b", path.read_text(), re.MULTILINE | re.IGNORECASE), path.name


def test_migrations_apply_record_the_ledger_and_revert_cleanly(cluster, exported):
    before = query(cluster, TABLE_STATE)
    migrations = sorted(exported.glob("*.sql"))

    for path in migrations:
        done = psql(cluster, path)
        assert done.returncode == 0, "%s:\n%s" % (path.name, done.stderr)

    # The ledger holds every change as stage4_change would have recorded it: its own planner finds
    # nothing to do, so a later ansible-playbook run sees them applied.
    ledger = query(cluster, "SELECT change, seq, files FROM stage4.ledger ORDER BY seq")
    assert [row[0] for row in ledger] == CHANGES
    for change, seq, files in ledger:
        scripts = change_files.read_change(str(REPO / "files/sql"), change)
        row = {"change": change, "seq": seq, "files": files}
        assert change_files.plan("applied", row, scripts, [], change in pgcluster.TOOLKIT) == ("unchanged", None)
    assert query(cluster, "SELECT count(*) FROM cron.job WHERE jobname LIKE 'stage4%'")[0][0] > 0
    assert query(cluster, TABLE_STATE) == before

    # Pushing a migration again is refused by its ledger guard; reverting out of order is refused too.
    again = psql(cluster, migrations[OPT1])
    assert again.returncode != 0 and "already applied" in again.stderr
    early = psql(cluster, exported / "rollbacks" / ("revert_" + migrations[OPT1].name))
    assert early.returncode != 0 and "revert opt2_storage_layout" in early.stderr

    for path in sorted((exported / "rollbacks").glob("revert_*.sql"), reverse=True):
        done = psql(cluster, path)
        assert done.returncode == 0, "%s:\n%s" % (path.name, done.stderr)

    assert query(cluster, TABLE_STATE) == before
    assert query(cluster, "SELECT count(*) FROM stage4.ledger") == [(0,)]
    assert query(cluster, "SELECT count(*) FROM cron.job WHERE jobname LIKE 'stage4%'") == [(0,)]
    assert query(cluster, "SELECT relkind FROM pg_class WHERE oid = 'public.geometrias'::regclass") == [("r",)]


def test_the_supabase_cli_pushes_every_migration(cluster, exported, tmp_path):
    """The real CLI (tools/supabase-cli, 2.117.0: a file goes as a pipeline without BEGIN, where a top-level
    LOCK TABLE is refused) applies all of them; the rollbacks, run as the README says, undo them."""
    before = query(cluster, TABLE_STATE)
    project = tmp_path / "project"
    (project / "supabase").mkdir(parents=True)
    os.symlink(exported, project / "supabase" / "migrations")
    url = "postgresql://%s:%s@%s:%s/%s?sslmode=disable" % (cluster.user, cluster.password, cluster.host, cluster.port, DB)
    done = run([str(REPO / "tools/supabase-cli/node_modules/.bin/supabase"), "db", "push", "--db-url", url,
                "--include-all", "--yes"], cwd=project)
    assert done.returncode == 0, done.stdout + done.stderr
    assert [row[0] for row in query(cluster, "SELECT change FROM stage4.ledger ORDER BY seq")] == CHANGES
    assert query(cluster, "SELECT count(*) FROM supabase_migrations.schema_migrations") == [(len(CHANGES),)]
    assert query(cluster, "SELECT relkind FROM pg_class WHERE oid = 'public.geometrias'::regclass") == [("p",)]
    for path in sorted((exported / "rollbacks").glob("revert_*.sql"), reverse=True):
        reverted = psql(cluster, path)
        assert reverted.returncode == 0, "%s:\n%s" % (path.name, reverted.stderr)
    assert query(cluster, TABLE_STATE) == before

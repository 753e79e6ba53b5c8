"""The Supabase migrations exported from files/sql apply and revert on a real PostgreSQL.

They run the way `supabase db push` runs them, one transaction per file (psql --single-transaction
-v ON_ERROR_STOP=1 -f), on a throwaway cluster (tests/pgcluster.py) that preloads pg_cron (OPT4 and OPT5
need it) holding the reference database at 251 features; then the Supabase CLI pushes them.
"""
import os

import pytest

import pgcluster
from ansible_collections.biblioteca.stage4.plugins.module_utils import change_files
from exported_migrations import REPO, export_migrations, run

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
    return export_migrations(tmp_path_factory.mktemp("migrations"))


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

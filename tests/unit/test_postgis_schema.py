"""PostGIS outside Supabase's `extensions` schema (issue 20, items 11 and 16). Older Supabase projects and
most self-hosted servers have PostGIS in `public`; the RPCs still say `SET search_path = public, extensions`,
whether a schema `extensions` exists (holding other extensions) or not (PostgreSQL skips a missing schema
of a search path). All five changes, through library/stage4_change.py, then their reverts, must work there
and leave pg_dump --schema-only of every schema, and every row, as they were."""
import pytest

import pgcluster
import stage4_change

DB = "BIBLIOTECA"
ORDER = ["opt1_temporal_partitioning", "opt2_storage_layout", "opt3_search_matview", "opt4_future_partitions",
         "opt5_dashboard_matviews"]
VARIABLES = {"opt1_temporal_partitioning": {"partition_through_year": "2028", "lock_timeout": "2s"},
             "opt2_storage_layout": {"now": "2026-12-07", "lock_timeout": "2s"},
             "opt3_search_matview": {},
             "opt4_future_partitions": {"partition_years_ahead": "2", "now": "2026-12-07"},
             "opt5_dashboard_matviews": {"refresh_schedule": "*/10 * * * *"}}
ROWS = "SELECT count(*), stage4.table_checksum('public.geometrias') FROM public.geometrias"


@pytest.fixture(scope="module")
def cluster():
    with pgcluster.running_cluster() as running:
        running.preload_pg_cron(DB)
        yield running


def change(capsys, cluster, name, state):
    args = dict(cluster.login_args(DB), sql_root=pgcluster.SQL_ROOT, change=name, state=state,
                variables=VARIABLES.get(name, {}), lock_retry_delay=0.5)
    return pgcluster.run_module(capsys, stage4_change.main, args)


@pytest.mark.parametrize("extensions_schema", [True, False],
                         ids=["an-extensions-schema-without-postgis", "no-extensions-schema"])
def test_every_change_and_its_revert_work_with_postgis_in_public(cluster, capsys, extensions_schema):
    cluster.build_reference_db(DB, postgis_schema="public")
    if not extensions_schema:
        cluster.query(DB, "DROP EXTENSION IF EXISTS pg_stat_statements; DROP SCHEMA extensions")
    cluster.query(DB, "CREATE EXTENSION pg_cron")  # what the stage4_pg_cron role does
    assert cluster.query(DB, "SELECT extnamespace::regnamespace::text FROM pg_extension "
                             "WHERE extname = 'postgis'") == [("public",)]
    assert cluster.query(DB, "SELECT proconfig FROM pg_proc WHERE proname = 'search_geometrias'") == [
        (["search_path=public, extensions, pg_temp"],)]
    assert change(capsys, cluster, "stage4_toolkit", "applied")["changed"]
    schema_before, rows_before = pgcluster.schema_dump(cluster, DB), cluster.query(DB, ROWS)

    for name in ORDER:
        result = change(capsys, cluster, name, "applied")
        assert result.get("action") == "deployed", (name, result.get("msg"))
    # The rewritten search answers through the helper, which pinned PostGIS's schema.
    assert cluster.query(DB, "SELECT proconfig FROM pg_proc WHERE proname = 'candidatos'") == [
        (["search_path=pg_catalog, public, pg_temp"],)]
    assert cluster.query(DB, "SELECT count(*) > 0 FROM public.search_geometrias('parque')") == [(True,)]
    for name in reversed(ORDER):
        result = change(capsys, cluster, name, "reverted")
        assert result.get("action") == "reverted", (name, result.get("msg"))

    assert cluster.query(DB, ROWS) == rows_before
    assert pgcluster.schema_dump(cluster, DB) == schema_before

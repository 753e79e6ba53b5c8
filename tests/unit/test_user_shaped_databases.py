"""Databases shaped as users have them, not as the reference fixture is. All five changes, through
library/stage4_change.py, then their reverts, must work there (their verify.sql proves each rewritten RPC
answers as the original for every role) and leave pg_dump --schema-only of every schema, and every row, as
they were.

- PostGIS outside Supabase's `extensions` schema (issue 20, items 11 and 16): older Supabase projects and
  most self-hosted servers have it in `public`, while the RPCs still say `SET search_path = public,
  extensions`, whether a schema `extensions` exists (holding other extensions) or not (PostgreSQL skips a
  missing schema of a search path).
- Policies and grants in the user's words (issue 21, item 2): the read policies under other names, written
  as Supabase advises (`(select auth.uid())`, `publico = true`), write policies beside them, and the RPCs
  executable by PUBLIC, Supabase's default for a new function."""
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


USERS_POLICIES_AND_GRANTS = """
    DROP POLICY geometrias_dono ON public.geometrias;
    DROP POLICY geometrias_leitura_publica ON public.geometrias;
    CREATE POLICY "Features are public when marked so" ON public.geometrias
        FOR SELECT TO anon, authenticated USING (publico = true);
    CREATE POLICY "Users read their own features" ON public.geometrias
        FOR SELECT TO authenticated USING ((select auth.uid()) = owner_id);
    CREATE POLICY "Users add their own features" ON public.geometrias
        FOR INSERT TO authenticated WITH CHECK ((select auth.uid()) = owner_id);
    CREATE POLICY "Users change their own features" ON public.geometrias
        FOR UPDATE TO authenticated USING ((select auth.uid()) = owner_id);
    GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA public TO PUBLIC;
    -- a role outside the API that may read the table: PUBLIC's grant lets it call the RPCs and their helpers
    CREATE ROLE leitor NOLOGIN;
    GRANT SELECT ON public.geometrias TO leitor;
    GRANT USAGE ON SCHEMA extensions TO leitor;
"""
CASES = {
    "postgis-in-public-beside-an-extensions-schema": ("public", ""),
    "postgis-in-public-no-extensions-schema": ("public", "DROP EXTENSION IF EXISTS pg_stat_statements; DROP SCHEMA extensions"),
    "users-policies-and-public-execute": ("extensions", USERS_POLICIES_AND_GRANTS),
}
SEARCH = "SELECT count(*) FROM public.search_geometrias('parque', NULL, 500)"


def as_leitor(cluster, sql):
    return cluster.query(DB, "BEGIN; SET LOCAL ROLE leitor; %s" % sql)


@pytest.mark.parametrize("case", list(CASES))
def test_every_change_and_its_revert_work_on_a_user_shaped_database(cluster, capsys, case):
    postgis_schema, decoration = CASES[case]
    cluster.build_reference_db(DB, postgis_schema=postgis_schema)
    if decoration:
        cluster.query(DB, decoration)
    cluster.query(DB, "CREATE EXTENSION pg_cron")  # what the stage4_pg_cron role does
    assert cluster.query(DB, "SELECT extnamespace::regnamespace::text FROM pg_extension "
                             "WHERE extname = 'postgis'") == [(postgis_schema,)]
    assert cluster.query(DB, "SELECT proconfig FROM pg_proc WHERE proname = 'search_geometrias'") == [
        (["search_path=public, extensions, pg_temp"],)]
    users = case == "users-policies-and-public-execute"
    if users:
        assert as_leitor(cluster, SEARCH) == [(0,)]  # RLS: no policy lets it read a row
    assert change(capsys, cluster, "stage4_toolkit", "applied")["changed"]
    schema_before, rows_before = pgcluster.schema_dump(cluster, DB), cluster.query(DB, ROWS)

    for name in ORDER:
        result = change(capsys, cluster, name, "applied")
        assert result.get("action") == "deployed", (name, result.get("msg"))
    # The rewritten search answers through the helper, which pinned PostGIS's schema.
    assert cluster.query(DB, "SELECT proconfig FROM pg_proc WHERE proname = 'candidatos'") == [
        (["search_path=pg_catalog, %s, pg_temp" % postgis_schema],)]
    assert cluster.query(DB, "SELECT count(*) > 0 FROM public.search_geometrias('parque')") == [(True,)]
    if users:
        # Open to PUBLIC as the RPC is, the helper still returns nothing its caller may not read.
        assert as_leitor(cluster, SEARCH) == [(0,)]
        assert as_leitor(cluster, "SELECT count(*) FROM stage4_search_api.candidatos('parque', NULL)") == [(0,)]
        assert as_leitor(cluster, "SELECT count(*) FROM public.resumo_anual()") == [(0,)]
    for name in reversed(ORDER):
        result = change(capsys, cluster, name, "reverted")
        assert result.get("action") == "reverted", (name, result.get("msg"))

    assert cluster.query(DB, ROWS) == rows_before
    assert pgcluster.schema_dump(cluster, DB) == schema_before


def test_a_read_policy_of_another_shape_is_refused_naming_it(cluster, capsys):
    cluster.build_reference_db(DB)
    cluster.query(DB, """CREATE POLICY "Parks are public" ON public.geometrias FOR SELECT TO anon
                         USING (categoria = 'parque');
                         CREATE POLICY "Writers" ON public.geometrias FOR INSERT TO authenticated WITH CHECK (true)""")
    assert change(capsys, cluster, "stage4_toolkit", "applied")["changed"]
    schema_before = pgcluster.schema_dump(cluster, DB)
    result = change(capsys, cluster, "opt3_search_matview", "applied")
    assert result["failed"] and not result.get("changed")
    assert ("the RLS policies of public.geometrias are not the known ones, so a materialized copy cannot reproduce "
            "what each caller may see. Policies that decide reads otherwise: Parks are public (permissive, FOR "
            "SELECT, TO anon, USING (categoria = 'parque'::text)).") in result["msg"]
    assert "Writers" not in result["msg"]  # a write policy never hides a row from a read
    assert pgcluster.schema_dump(cluster, DB) == schema_before

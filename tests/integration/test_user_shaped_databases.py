"""Databases shaped as users have them, not as the reference fixture is. All five changes, through
plugins/modules/stage4_change.py, then their reverts, must work there (their verify.sql proves each rewritten RPC
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
from ansible_collections.biblioteca.stage4.plugins.modules import stage4_change

DB = "BIBLIOTECA"
ORDER = ["opt1_temporal_partitioning", "opt2_storage_layout", "opt3_search_matview", "opt4_future_partitions",
         "opt5_dashboard_matviews"]
VARIABLES = {"opt1_temporal_partitioning": {"partition_through_year": "2028", "lock_timeout": "2s"},
             "opt2_storage_layout": {"now": "2026-12-07", "lock_timeout": "2s"},
             "opt3_search_matview": {},
             "opt4_future_partitions": {"partition_years_ahead": "2", "now": "2026-12-07"},
             "opt5_dashboard_matviews": {"refresh_schedule": "*/10 * * * *"}}
ROWS = "SELECT count(*), stage4.table_checksum('public.geometrias') FROM public.geometrias"


def user_shaped(name):
    """SQL of tests/fixtures/sql/user_shaped/: a database's API and policies as its users wrote them."""
    return pgcluster.fixture_sql("user_shaped", name)


@pytest.fixture(scope="module")
def cluster():
    with pgcluster.running_cluster() as running:
        running.preload_pg_cron(DB)
        yield running


def install_toolkit(capsys, cluster):
    for tool in pgcluster.TOOLKIT:
        assert change(capsys, cluster, tool, "applied")["changed"]


def change(capsys, cluster, name, state, **variables):
    args = dict(cluster.login_args(DB), sql_root=pgcluster.SQL_ROOT, change=name, state=state,
                variables=dict(VARIABLES.get(name, {}), **variables), lock_retry_delay=0.5)
    return pgcluster.run_module(capsys, stage4_change.main, args)


USERS_POLICIES_AND_GRANTS = user_shaped("policies.sql") + """
    -- a role outside the API that may read the table: PUBLIC's grant lets it call the RPCs and their helpers
    CREATE ROLE leitor NOLOGIN;
    GRANT SELECT ON public.geometrias TO leitor;
    GRANT USAGE ON SCHEMA extensions TO leitor;
"""
# The RPCs as users write them (tests/fixtures/sql/user_shaped/rpcs.sql).
USERS_RPCS = user_shaped("rpcs.sql")
# A stored tsvector column in English, searched with to_tsquery, ranked by ts_rank with weights.
USERS_FTS_COLUMN = """
    ALTER TABLE public.geometrias ADD COLUMN fts tsvector
        GENERATED ALWAYS AS (setweight(to_tsvector('english', nome), 'A')
                             || setweight(to_tsvector('english', coalesce(descricao, '')), 'B')) STORED;
    CREATE INDEX geometrias_fts_idx ON public.geometrias USING gin (fts);
    CREATE OR REPLACE FUNCTION public.search_geometrias(q text, bbox extensions.geometry DEFAULT NULL, max_results int DEFAULT 50)
    RETURNS SETOF public.geometrias LANGUAGE sql STABLE SET search_path = public, extensions AS $$
        SELECT g.* FROM public.geometrias AS g
        WHERE g.fts @@ to_tsquery('english', q) AND (bbox IS NULL OR g.geom && bbox)
        ORDER BY ts_rank('{0.1, 0.2, 0.4, 1.0}', g.fts, to_tsquery('english', q)) DESC, g.id
        LIMIT max_results
    $$;
"""
CASES = {
    "postgis-in-public-beside-an-extensions-schema": ("public", ""),
    "postgis-in-public-no-extensions-schema": ("public", "DROP EXTENSION IF EXISTS pg_stat_statements; DROP SCHEMA extensions"),
    "users-policies-and-public-execute": ("extensions", USERS_POLICIES_AND_GRANTS),
    "users-rpcs": ("extensions", USERS_RPCS),
    "users-fts-column": ("extensions", USERS_FTS_COLUMN),
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
    if case not in ("users-rpcs", "users-fts-column"):
        assert cluster.query(DB, "SELECT proconfig FROM pg_proc WHERE proname = 'search_geometrias'") == [
            (["search_path=public, extensions, pg_temp"],)]
    users = case == "users-policies-and-public-execute"
    if users:
        assert as_leitor(cluster, SEARCH) == [(0,)]  # RLS: no policy lets it read a row
    install_toolkit(capsys, cluster)
    schema_before, rows_before = pgcluster.schema_dump(cluster, DB), cluster.query(DB, ROWS)

    for name in ORDER:
        result = change(capsys, cluster, name, "applied")
        assert result.get("action") == "deployed", (name, result.get("msg"))
    # The rewritten search answers through the helper, which pinned PostGIS's schema.
    assert cluster.query(DB, "SELECT proconfig FROM pg_proc WHERE proname = 'candidatos'") == [
        (["search_path=pg_catalog, %s, pg_temp" % postgis_schema],)]
    assert cluster.query(DB, "SELECT count(*) > 0 FROM public.search_geometrias('parque', %s)" % (
        "st_makeenvelope(-75, -35, -30, 6, 4326)" if case == "users-rpcs" else "NULL")) == [(True,)]
    # Both RPCs were recognised and rewritten, the radius one with its point computed once.
    assert cluster.query(DB, "SELECT proname, prosrc ~ 'stage4_search_api.candidatos|stage4_ponto_geografico' "
                             "FROM pg_proc WHERE proname IN ('search_geometrias', 'geometrias_no_raio') "
                             "ORDER BY 1") == [("geometrias_no_raio", True), ("search_geometrias", True)]
    # OPT5 serves the dashboard RPCs it recognises and leaves the others as they were.
    assert cluster.query(DB, "SELECT proname, prosrc LIKE '%stage4_dashboard_api%' FROM pg_proc WHERE proname IN "
                             "('area_por_categoria', 'extensao_por_categoria', 'resumo_anual') ORDER BY 1") == [
        ("area_por_categoria", True), ("extensao_por_categoria", case != "users-rpcs"), ("resumo_anual", True)]
    assert (cluster.query(DB, "SELECT to_regclass('stage4_dashboard.extensao_categoria') IS NOT NULL")
            == [(case != "users-rpcs",)])
    if users:
        # Open to PUBLIC as the RPC is, the helper still returns nothing its caller may not read.
        assert as_leitor(cluster, SEARCH) == [(0,)]
        assert as_leitor(cluster, "SELECT count(*) FROM stage4_search_api.candidatos(websearch_to_tsquery('portuguese', 'parque'), NULL)") == [(0,)]
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
    install_toolkit(capsys, cluster)
    schema_before = pgcluster.schema_dump(cluster, DB)
    result = change(capsys, cluster, "opt3_search_matview", "applied")
    assert result["failed"] and not result.get("changed")
    assert ("the RLS policies of public.geometrias are not the known ones, so a materialized copy cannot reproduce "
            "what each caller may see. Policies that decide reads otherwise: Parks are public (permissive, FOR "
            "SELECT, TO anon, USING (categoria = 'parque'::text)).") in result["msg"]
    assert "Writers" not in result["msg"]  # a write policy never hides a row from a read
    assert pgcluster.schema_dump(cluster, DB) == schema_before


def test_a_search_of_another_shape_is_left_as_it_is_and_said_why(cluster, capsys):
    """A search OPT3 cannot serve from its view (here it also filters on a column) is left as it is, and OPT3
    rewrites only the radius RPC; with no radius RPC to rewrite either, OPT3 declines, saying what does not
    fit, and nothing changes. The other changes are not held back by it."""
    cluster.build_reference_db(DB)
    cluster.query(DB, """
        CREATE OR REPLACE FUNCTION public.search_geometrias(q text, bbox extensions.geometry DEFAULT NULL, max_results int DEFAULT 50)
        RETURNS SETOF public.geometrias LANGUAGE sql STABLE SET search_path = public, extensions AS $$
            SELECT g.* FROM public.geometrias g
            WHERE to_tsvector('portuguese', g.nome) @@ websearch_to_tsquery('portuguese', q) AND g.categoria <> 'lote'
            ORDER BY g.id LIMIT max_results
        $$""")
    cluster.query(DB, "CREATE EXTENSION pg_cron")
    install_toolkit(capsys, cluster)
    schema_before = pgcluster.schema_dump(cluster, DB)
    search = "SELECT prosrc FROM pg_proc WHERE proname = 'search_geometrias'"
    search_before = cluster.query(DB, search)
    result = change(capsys, cluster, "opt3_search_matview", "applied")
    assert result.get("action") == "deployed", result.get("msg")
    assert cluster.query(DB, search) == search_before
    assert change(capsys, cluster, "opt3_search_matview", "reverted")["action"] == "reverted"
    assert pgcluster.schema_dump(cluster, DB) == schema_before

    cluster.query(DB, "ALTER FUNCTION public.geometrias_no_raio(double precision, double precision, double precision) "
                      "SECURITY DEFINER")
    schema_before = pgcluster.schema_dump(cluster, DB)
    result = change(capsys, cluster, "opt3_search_matview", "applied")
    assert result.get("action") == "declined" and not result["changed"], result.get("msg")
    assert result["declined"] == (
        "OPT3 rewrites none of its RPCs: public.search_geometrias(): not a text search OPT3 can serve from a "
        "materialized view: a condition other than the text match and a bounding box: g.categoria <> 'lote'::text; "
        "public.geometrias_no_raio(): it is SECURITY DEFINER")
    assert pgcluster.schema_dump(cluster, DB) == schema_before
    assert change(capsys, cluster, "opt5_dashboard_matviews", "applied")["action"] == "deployed"


def test_dashboard_rpcs_of_other_shapes_decline_opt5_saying_why(cluster, capsys):
    """OPT5 declines when it can serve none of the dashboard RPCs, with each one's reason."""
    cluster.build_reference_db(DB)
    cluster.query(DB, """
        ALTER FUNCTION public.area_por_categoria(integer) SECURITY DEFINER;
        DROP FUNCTION public.resumo_anual();
        CREATE OR REPLACE FUNCTION public.extensao_por_categoria()
        RETURNS TABLE (categoria text, extensao extensions.geometry, n bigint)
        LANGUAGE sql STABLE SET search_path = public, extensions, pg_temp AS $$
            SELECT g.categoria, ST_SetSRID(ST_Extent(g.geom)::geometry, 4326), count(*)
            FROM public.geometrias g WHERE g.publico GROUP BY g.categoria ORDER BY g.categoria
        $$;
        CREATE EXTENSION pg_cron""")
    install_toolkit(capsys, cluster)
    schema_before = pgcluster.schema_dump(cluster, DB)
    result = change(capsys, cluster, "opt5_dashboard_matviews", "applied")
    assert result["action"] == "declined" and not result["changed"]
    assert result["declined"].startswith(
        "OPT5 serves none of the dashboard RPCs: public.area_por_categoria(integer): it is SECURITY DEFINER (RLS "
        "would judge its owner, not the caller); public.extensao_por_categoria(): its query is not one of the "
        "aggregates OPT5 reproduces: SELECT g.categoria,")
    assert result["declined"].endswith("public.resumo_anual(): it does not exist")
    assert pgcluster.schema_dump(cluster, DB) == schema_before


def test_on_a_small_table_opt3_rewrites_only_the_radius_rpc_and_opt5_declines(cluster, capsys):
    """Below min_parallel_table_scan_size ('auto', as prod) a scan of the table costs less than a
    materialized copy's lookups and lags nothing: OPT5 declines, and OPT3 leaves the search as it is but
    still rewrites the radius RPC, which reads only the table; its revert restores everything."""
    cluster.build_reference_db(DB)
    cluster.query(DB, "CREATE EXTENSION pg_cron")
    install_toolkit(capsys, cluster)
    schema_before, rows_before = pgcluster.schema_dump(cluster, DB), cluster.query(DB, ROWS)
    search_before = cluster.query(DB, "SELECT prosrc FROM pg_proc WHERE proname = 'search_geometrias'")
    result = change(capsys, cluster, "opt5_dashboard_matviews", "applied", min_table_bytes="auto")
    assert result.get("action") == "declined", result.get("msg")
    assert result["declined"].startswith("public.geometrias holds 251 rows in ")
    assert "below 8192 kB (min_parallel_table_scan_size): aggregating a table this small" in result["declined"]
    result = change(capsys, cluster, "opt3_search_matview", "applied", min_table_bytes="auto")
    assert result.get("action") == "deployed", result.get("msg")
    assert cluster.query(DB, "SELECT prosrc FROM pg_proc WHERE proname = 'search_geometrias'") == search_before
    assert cluster.query(DB, "SELECT prosrc LIKE '%stage4_ponto_geografico%' FROM pg_proc "
                             "WHERE proname = 'geometrias_no_raio'") == [(True,)]
    assert cluster.query(DB, "SELECT to_regnamespace('stage4_search_api'), to_regclass('stage4_search.geometrias_busca')") == [
        (None, None)]
    assert change(capsys, cluster, "opt3_search_matview", "reverted")["action"] == "reverted"
    assert cluster.query(DB, ROWS) == rows_before
    assert pgcluster.schema_dump(cluster, DB) == schema_before


def test_opt3_declines_when_it_rewrites_neither_rpc(cluster, capsys):
    cluster.build_reference_db(DB)
    cluster.query(DB, "ALTER FUNCTION public.geometrias_no_raio(double precision, double precision, double precision) "
                      "SECURITY DEFINER")
    install_toolkit(capsys, cluster)
    result = change(capsys, cluster, "opt3_search_matview", "applied", min_table_bytes="auto")
    assert result.get("action") == "declined", result.get("msg")
    assert result["declined"].startswith("OPT3 rewrites none of its RPCs: public.search_geometrias(): public.geometrias "
                                         "holds 251 rows in ")
    assert result["declined"].endswith("the search view would not pay; public.geometrias_no_raio(): it is SECURITY DEFINER")

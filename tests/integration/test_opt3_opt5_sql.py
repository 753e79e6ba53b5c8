"""Tests of the OPT3 (search materialized view) and OPT5 (dashboard materialized views refreshed by
pg_cron) SQL changes, against a throwaway cluster that preloads pg_cron.

The changes run as plugins/modules/stage4_change.py runs them: precheck + deploy + verify in one
transaction, revert + verify_reverted in another, with `variables` as stage4.<name> settings. The
database is the reference fixture (251 features) with the toolkit and OPT1 applied first, as in the
pipeline. Every result is captured before OPT3/OPT5 and compared after them, for anon, an
authenticated owner (request.jwt.claims sub) and postgres.
"""
import math
import os
import subprocess
import sys

import psycopg2
import pytest

# Importable however pytest is invoked (its rootdir decides which conftest.py it loads).
TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if TESTS not in sys.path:
    sys.path.insert(0, TESTS)

import pgcluster  # noqa: E402

DB = "BIBLIOTECA"
SCHEDULE = "*/10 * * * *"
OPT5_VARIABLES = {"refresh_schedule": SCHEDULE}
# pg_cron must be preloaded (scripts/localdb.py leaves it out on purpose): what the stage4_pg_cron
# role sets with ALTER SYSTEM, appended to the cluster's postgresql.auto.conf.

SP_BOX = "ST_MakeEnvelope(-46.9333, -23.8505, -46.3333, -23.2505, 4326)"
RJ_BOX = "ST_MakeEnvelope(-43.3229, -23.0568, -43.0229, -22.7568, 4326)"
SEARCHES = [
    "'parque'",                                # 51 matches as postgres: the default LIMIT 50 cuts
    "'parque', %s, 50" % SP_BOX,
    "'parque', %s, 3" % SP_BOX,
    "'lote residencial', NULL, 10",
    "'\"área de preservação\" or lago', NULL, 200",
    "'rio -parque', %s, 20" % RJ_BOX,
    "'xyzzy inexistente'",
]
# (lon, lat, radius in m) around Sao Paulo and Rio; 0 m and a point far from any feature
RADIUS_SEARCHES = ["-46.6339, -23.5505, 5000", "-46.6339, -23.5505, 30000", "-43.1822, -22.9711, 15000",
                   "-46.6549, -23.5929, 0", "0, 0, 5000"]
DASHBOARD = ["area_por_categoria(%d)" % year for year in range(2018, 2028)] + [
    "area_por_categoria(NULL)", "extensao_por_categoria()", "resumo_anual()"]
MATVIEWS = ["stage4_search.geometrias_busca", "stage4_dashboard.resumo_categoria_ano",
            "stage4_dashboard.extensao_categoria"]
JOBS = ["stage4_refresh_resumo_categoria_ano", "stage4_refresh_extensao_categoria",
        "stage4_refresh_geometrias_busca"]


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------

def apply_change(cluster, change, state="applied", variables=None, extra_sql=None):
    """Runs a change's scripts in one transaction; extra_sql runs first (to stage a refusal)."""
    conn = cluster.connect(DB, autocommit=False)
    try:
        pgcluster.run_change(conn, change, state, variables, prelude_sql=extra_sql)
    finally:
        conn.close()


def fetch(conn, query, params=None):
    with conn.cursor() as cur:
        cur.execute(query, params)
        return cur.fetchall()


def as_role(conn, role, owner_uid, query):
    """Rows of query as postgres (role None), anon or the authenticated owner, in a transaction
    rolled back afterwards."""
    with conn.cursor() as cur:
        try:
            if role == "authenticated":
                cur.execute("SELECT set_config('request.jwt.claims', %s, true)",
                            ('{"sub": "%s"}' % owner_uid,))
            if role:
                cur.execute("SET LOCAL ROLE %s" % role)
            cur.execute(query)
            return cur.fetchall()
        finally:
            conn.rollback()


ROLES = [None, "anon", "authenticated"]


def search_rows(conn, role, owner_uid):
    """{(role, call): [row as JSON text, in the function's order]}"""
    return {(role, call): as_role(conn, role, owner_uid,
                                  "SELECT to_jsonb(s)::text FROM public.search_geometrias(%s) WITH ORDINALITY s "
                                  "ORDER BY s.ordinality" % call)
            for call in SEARCHES}


def ring_search(conn):
    """Around Sao Paulo, a radius 1 m beyond the nearest feature: that feature lies outside the planar
    distance OPT3's shortcut accepts (0.99 * radius / 111700 degrees), so the geodesic test decides it."""
    (radius,) = fetch(conn, "SELECT ceil(min(ST_Distance(geom::geography, "
                            "ST_SetSRID(ST_MakePoint(-46.6339, -23.5505), 4326)::geography)))::int + 1 "
                            "FROM public.geometrias")[0]
    conn.rollback()
    return "-46.6339, -23.5505, %d" % radius


def radius_rows(conn, role, owner_uid, searches):
    """{(role, call): [row as JSON text, in the function's order]}"""
    return {(role, call): as_role(conn, role, owner_uid,
                                  "SELECT to_jsonb(s)::text FROM public.geometrias_no_raio(%s) WITH ORDINALITY s "
                                  "ORDER BY s.ordinality" % call)
            for call in searches}


def dashboard_rows(conn, role, owner_uid):
    return {(role, call): as_role(conn, role, owner_uid,
                                  "SELECT to_jsonb(s) FROM public.%s WITH ORDINALITY s ORDER BY s.ordinality" % call)
            for call in DASHBOARD}


def same_dashboard(got, expected):
    """Same rows in the same order; float sums equal up to summation order (1e-9 relative)."""
    if len(got) != len(expected):
        return False
    for (a,), (b,) in zip(got, expected):
        a, b = dict(a), dict(b)
        area_a, area_b = a.pop("total_area_m2", None), b.pop("total_area_m2", None)
        if a != b or (area_a is None) != (area_b is None):
            return False
        if area_a is not None and not math.isclose(area_a, area_b, rel_tol=1e-9):
            return False
    return True


def schema_dump(cluster):
    done = subprocess.run(
        ["pg_dump", "--schema-only", "--no-password", "-h", cluster.host, "-p", str(cluster.port),
         "-U", cluster.user, "-N", "stage4", "-N", "stage4_benchmark", "-N", "cron", DB],
        env=dict(os.environ, PGPASSWORD=cluster.password), capture_output=True, text=True, check=True)
    # pg_dump 15.14+ brackets the dump with a random \restrict key
    return [line for line in done.stdout.splitlines() if not line.startswith(("\\restrict", "\\unrestrict"))]


# --------------------------------------------------------------------------
# Fixtures: one cluster for the module; OPT3 then OPT5 applied once, in the pipeline's order
# --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cluster():
    with pgcluster.running_cluster() as running:
        running.preload_pg_cron(DB)
        running.build_reference_db(DB, features=251)
        for tool in pgcluster.TOOLKIT:
            apply_change(running, tool)
        apply_change(running, "opt1_temporal_partitioning", variables={"partition_through_year": "2028"})
        conn = running.connect(DB)
        with conn.cursor() as cur:
            cur.execute("CREATE EXTENSION pg_cron")  # what the stage4_pg_cron role does
        conn.close()
        yield running


@pytest.fixture(scope="module")
def conn(cluster):
    connection = cluster.connect(DB, autocommit=False)
    yield connection
    connection.close()


@pytest.fixture(scope="module")
def owner_uid(conn):
    """The owner with the most private rows plays the authenticated user."""
    uid = fetch(conn, "SELECT owner_id FROM public.geometrias WHERE NOT publico AND owner_id IS NOT NULL "
                      "GROUP BY owner_id ORDER BY count(*) DESC, owner_id LIMIT 1")[0][0]
    conn.rollback()
    return uid


@pytest.fixture(scope="module")
def before(cluster, conn, owner_uid):
    """Results and schema before OPT3 and OPT5."""
    searches, radius, dashboards = {}, {}, {}
    radius_searches = RADIUS_SEARCHES + [ring_search(conn)]
    for role in ROLES:
        searches.update(search_rows(conn, role, owner_uid))
        radius.update(radius_rows(conn, role, owner_uid, radius_searches))
        dashboards.update(dashboard_rows(conn, role, owner_uid))
    return {"searches": searches, "radius": radius, "dashboards": dashboards, "dump": schema_dump(cluster)}


@pytest.fixture(scope="module")
def opt3(cluster, before):  # pylint: disable=unused-argument
    apply_change(cluster, "opt3_search_matview")


@pytest.fixture(scope="module")
def opt5(cluster, opt3):  # pylint: disable=unused-argument
    apply_change(cluster, "opt5_dashboard_matviews", variables=OPT5_VARIABLES)


# --------------------------------------------------------------------------
# Tests, in the order they run (the last one reverts both changes)
# --------------------------------------------------------------------------

def test_opt5_precheck_refuses_unknown_policies(cluster, before):  # pylint: disable=unused-argument
    extra = ("CREATE POLICY so_2024 ON public.geometrias AS RESTRICTIVE FOR SELECT TO anon "
             "USING (data_referencia >= '2024-01-01')")
    with pytest.raises(psycopg2.errors.RaiseException, match="policies of public.geometrias are not the known ones"):
        apply_change(cluster, "opt5_dashboard_matviews", variables=OPT5_VARIABLES, extra_sql=extra)


def test_opt3_precheck_refuses_unknown_policies(cluster, before):  # pylint: disable=unused-argument
    """OPT3's helper filters by the same known policies as OPT5 (stage4.assert_known_read_policies)."""
    extra = ("CREATE POLICY so_2024 ON public.geometrias AS RESTRICTIVE FOR SELECT TO anon "
             "USING (data_referencia >= '2024-01-01')")
    with pytest.raises(psycopg2.errors.RaiseException, match="OPT3: the RLS policies of public.geometrias are not the known ones"):
        apply_change(cluster, "opt3_search_matview", extra_sql=extra)


def test_opt5_precheck_refuses_a_schedule_pg_cron_1_4_cannot_read(cluster, before):  # pylint: disable=unused-argument
    with pytest.raises(psycopg2.errors.RaiseException, match="not a 5-field cron schedule"):
        apply_change(cluster, "opt5_dashboard_matviews", variables={"refresh_schedule": "30 seconds"})


def test_opt3_search_results_identical(opt3, conn, owner_uid, before):  # pylint: disable=unused-argument
    for role in ROLES:
        for key, rows in search_rows(conn, role, owner_uid).items():
            assert rows == before["searches"][key], key
    # the cases exercise what they should: the cut-off, and RLS (anon sees fewer rows)
    assert len(before["searches"][(None, "'parque'")]) == 50
    assert len(before["searches"][("anon", "'parque', %s, 50" % SP_BOX)]) < \
        len(before["searches"][(None, "'parque', %s, 50" % SP_BOX)])
    assert before["searches"][("authenticated", "'parque'")] != before["searches"][("anon", "'parque'")]


def test_opt3_radius_results_identical(opt3, conn, owner_uid, before):  # pylint: disable=unused-argument
    """The planar shortcut adds no row and loses none, for every role."""
    ring = ring_search(conn)
    for role in ROLES:
        assert radius_rows(conn, role, owner_uid, RADIUS_SEARCHES + [ring]) == \
            {key: rows for key, rows in before["radius"].items() if key[0] == role}
    # Both paths are exercised: rows the shortcut accepts (within 30 km of Sao Paulo), and the ring
    # search's feature, which only the geodesic test accepts.
    radius = int(ring.rsplit(",", 1)[1])
    inside, geodesic_only = fetch(conn, """
        SELECT (SELECT count(*) FROM public.geometrias_no_raio(-46.6339, -23.5505, 30000) AS s
                WHERE ST_DWithin(s.geom, ST_SetSRID(ST_MakePoint(-46.6339, -23.5505), 4326), 0.99 * 30000 / 111700)),
               (SELECT count(*) FROM public.geometrias_no_raio(%s) AS s
                WHERE NOT ST_DWithin(s.geom, ST_SetSRID(ST_MakePoint(-46.6339, -23.5505), 4326), 0.99 * %s / 111700))""" %
        (ring, radius))[0]
    conn.rollback()
    assert inside > 0 and geodesic_only > 0, (inside, geodesic_only)


def test_opt3_helper_keeps_the_best_readable_matches(opt3, conn, owner_uid):  # pylint: disable=unused-argument
    """candidatos(query, bbox, n) stops after the n best matches the caller may read: they are the first n
    of its whole answer, for each caller; a row deleted since the last refresh takes no place; a
    negative n fails as the original's LIMIT did."""
    ranked = "SELECT c.id FROM stage4_search_api.candidatos(websearch_to_tsquery('portuguese', 'parque'), NULL{0}) WITH ORDINALITY c ORDER BY c.ordinality"
    for role in ROLES:
        every = as_role(conn, role, owner_uid, ranked.format(""))
        assert len(every) > 5
        assert as_role(conn, role, owner_uid, ranked.format(", 5")) == every[:5], role
    every = as_role(conn, None, None, ranked.format(""))
    with conn.cursor() as cur:
        cur.execute("DELETE FROM public.geometrias WHERE id = %s", every[0])
        cur.execute(ranked.format(", 5"))
        assert cur.fetchall() == every[1:6]
    conn.rollback()
    for call in ("public.search_geometrias('parque', NULL, -1)", "stage4_search_api.candidatos(websearch_to_tsquery('portuguese', 'parque'), NULL, -1)"):
        with pytest.raises(psycopg2.errors.InvalidRowCountInLimitClause):
            as_role(conn, "anon", None, "SELECT count(*) FROM %s" % call)


def test_opt5_dashboard_results_identical(opt5, conn, owner_uid, before):  # pylint: disable=unused-argument
    for role in ROLES:
        for key, rows in dashboard_rows(conn, role, owner_uid).items():
            assert same_dashboard(rows, before["dashboards"][key]), key
    assert before["dashboards"][("anon", "resumo_anual()")] != before["dashboards"][(None, "resumo_anual()")]
    assert before["dashboards"][("authenticated", "resumo_anual()")] != before["dashboards"][("anon", "resumo_anual()")]


def test_no_materialized_view_readable_by_api_roles(opt5, conn):  # pylint: disable=unused-argument
    found = [name for (name,) in fetch(conn, "SELECT oid::regclass::text FROM pg_class WHERE relkind = 'm' ORDER BY 1")]
    conn.rollback()
    assert sorted(found) == sorted(MATVIEWS)
    for role in ("anon", "authenticated"):
        for view in MATVIEWS:
            assert fetch(conn, "SELECT has_table_privilege(%s, %s, 'SELECT')", (role, view)) == [(False,)]
            conn.rollback()
            with pytest.raises(psycopg2.errors.InsufficientPrivilege):
                as_role(conn, role, None, "SELECT count(*) FROM %s" % view)


def test_cron_jobs_scheduled_and_staggered(opt5, conn):  # pylint: disable=unused-argument
    jobs = fetch(conn, "SELECT jobname, schedule, command, database, username, active FROM cron.job ORDER BY jobid")
    conn.rollback()
    assert [(name, schedule) for name, schedule, *_ in jobs] == [
        (JOBS[0], "*/10 * * * *"), (JOBS[1], "1-59/10 * * * *"), (JOBS[2], "2-59/10 * * * *")]
    for (_, _, command, database, username, active), view in zip(jobs, [MATVIEWS[1], MATVIEWS[2], MATVIEWS[0]]):
        assert command.endswith("REFRESH MATERIALIZED VIEW CONCURRENTLY %s" % view)
        assert "statement_timeout = '10min'" in command
        assert (database, username, active) == (DB, "postgres", True)


def test_refresh_concurrently_brings_new_rows_in(opt5, cluster, conn, owner_uid, before):  # pylint: disable=unused-argument
    new_row = ("INSERT INTO public.geometrias (nome, categoria, descricao, geom, area_m2, data_referencia, owner_id, publico) "
               "VALUES ('Parque Stage Quatro', 'parque', 'Parque de teste', "
               "ST_Multi(ST_Buffer(ST_SetSRID(ST_MakePoint(-46.60, -23.55), 4326), 0.001)), 12345.5, "
               "'2024-06-01', %s, false) RETURNING id")
    refresh = "; ".join("REFRESH MATERIALIZED VIEW CONCURRENTLY %s" % view for view in MATVIEWS)
    counts = ("SELECT (SELECT sum(n) FROM public.area_por_categoria(2024)), "
              "(SELECT count(*) FROM public.search_geometrias('stage quatro'))")
    owner_2024 = sum(row["n"] for (row,) in before["dashboards"][("authenticated", "area_por_categoria(2024)")])
    writer = cluster.connect(DB)
    try:
        fetch(writer, new_row, (owner_uid,))
        # Stale until the next refresh: the documented window.
        assert as_role(conn, "authenticated", owner_uid, counts) == [(owner_2024, 0)]
        fetch(writer, refresh + "; SELECT 1")  # implicit transaction block: allowed
        # The owner sees its new private row; anon does not; both equal the direct aggregate.
        assert as_role(conn, "authenticated", owner_uid, counts) == [(owner_2024 + 1, 1)]
        assert as_role(conn, "authenticated", owner_uid,
                       "SELECT count(*) FROM public.geometrias WHERE data_referencia >= '2024-01-01' "
                       "AND data_referencia < '2025-01-01'") == [(owner_2024 + 1,)]
        assert as_role(conn, "anon", None, counts)[0][1] == 0
        assert as_role(conn, None, None, counts)[0][1] == 1
    finally:
        fetch(writer, "DELETE FROM public.geometrias WHERE nome = 'Parque Stage Quatro'; " + refresh + "; SELECT 1")
        writer.close()
    for role in ROLES:
        for key, rows in dashboard_rows(conn, role, owner_uid).items():
            assert same_dashboard(rows, before["dashboards"][key]), key


def test_functions_fall_back_to_the_table_when_policies_change(opt5, cluster, conn, owner_uid):  # pylint: disable=unused-argument
    admin = cluster.connect(DB)
    policy = ("CREATE POLICY so_2024 ON public.geometrias AS RESTRICTIVE FOR SELECT TO anon "
              "USING (data_referencia >= '2024-01-01')")
    try:
        fetch(admin, policy + "; SELECT 1")
        direct = as_role(conn, "anon", None, "SELECT extract(year FROM g.data_referencia)::int, g.categoria, count(*) "
                                              "FROM public.geometrias g GROUP BY 1, 2 ORDER BY 1, 2")
        via_function = as_role(conn, "anon", None, "SELECT ano, categoria, n FROM public.resumo_anual()")
        assert via_function == direct
        assert min(year for year, _, _ in via_function) == 2024
        # OPT3 too: the search runs its original query, its helper and the dashboard views answer nothing.
        search = ("SELECT s.id FROM public.search_geometrias('parque', NULL, 500) s ORDER BY s.id")
        original = ("SELECT g.id FROM public.geometrias g WHERE to_tsvector('portuguese', g.nome || ' ' || "
                    "coalesce(g.descricao, '')) @@ websearch_to_tsquery('portuguese', 'parque') ORDER BY g.id")
        assert as_role(conn, "anon", None, search) == as_role(conn, "anon", None, original)
        assert as_role(conn, "anon", None, search) and as_role(conn, "anon", None, search) != as_role(conn, None, None, search)
        assert as_role(conn, "anon", None, "SELECT stage4_search_api.papel_exato(), stage4_dashboard_api.papel_exato(), "
                                           "(SELECT count(*) FROM stage4_search_api.candidatos(websearch_to_tsquery('portuguese', 'parque'), NULL)), "
                                           "(SELECT count(*) FROM stage4_dashboard_api.resumo_categoria_ano)") == [(None, None, 0, 0)]
    finally:
        fetch(admin, "DROP POLICY so_2024 ON public.geometrias; SELECT 1")
        admin.close()


def run_script(cluster, change, script):
    """One script alone in autocommit, as stage4_change runs a prepare."""
    admin = cluster.connect(DB)
    try:
        with open(os.path.join(pgcluster.SQL_ROOT, change, script + ".sql"), encoding="utf-8") as handle:
            fetch(admin, handle.read() + "; SELECT 1")
    finally:
        admin.close()


def test_opt5_revert_prepared_then_abandoned_keeps_opt5(opt5, cluster, conn, owner_uid, before):  # pylint: disable=unused-argument
    """prepare_revert puts the original dashboard functions back before the revert's transaction (no
    new call plans on the views it will drop), resumably; cleanup puts OPT5's back when the revert
    does not follow. The answers never change."""
    on_views = ("SELECT count(*) FROM pg_proc WHERE proname IN ('area_por_categoria', 'extensao_por_categoria', "
                "'resumo_anual') AND pronamespace = 'public'::regnamespace AND prosrc LIKE '%stage4_dashboard_api%'")
    saved = "SELECT count(*) FROM stage4.function_snapshots WHERE change = 'opt5_dashboard_matviews:applied' " \
            "AND definition LIKE '%stage4_dashboard_api%'"
    assert fetch(conn, on_views) == [(3,)]
    conn.rollback()
    for _ in range(2):  # a second run (resumed after a kill) keeps OPT5's definitions saved
        run_script(cluster, "opt5_dashboard_matviews", "prepare_revert")
        assert fetch(conn, on_views) == [(0,)] and fetch(conn, saved) == [(3,)]
        conn.rollback()
        for role in ROLES:
            for key, rows in dashboard_rows(conn, role, owner_uid).items():
                assert same_dashboard(rows, before["dashboards"][key]), key
    run_script(cluster, "opt5_dashboard_matviews", "cleanup")
    assert fetch(conn, on_views) == [(3,)] and fetch(conn, saved) == [(0,)]
    conn.rollback()
    for role in ROLES:
        for key, rows in dashboard_rows(conn, role, owner_uid).items():
            assert same_dashboard(rows, before["dashboards"][key]), key


def test_opt3_revert_prepared_then_abandoned_keeps_opt3(opt3, cluster, conn, owner_uid, before):  # pylint: disable=unused-argument
    """As OPT5's: the original search and radius functions first, then OPT3's back by cleanup."""
    rewritten = ("SELECT count(*) FROM pg_proc WHERE pronamespace = 'public'::regnamespace AND "
                 "((proname = 'search_geometrias' AND prosrc LIKE '%stage4_search_api.candidatos%') OR "
                 "(proname = 'geometrias_no_raio' AND prosrc LIKE '%111700%'))")
    saved = "SELECT count(*) FROM stage4.function_snapshots WHERE change = 'opt3_search_matview:applied'"
    ring = ring_search(conn)

    def same_answers():
        for role in ROLES:
            assert search_rows(conn, role, owner_uid) == {k: v for k, v in before["searches"].items() if k[0] == role}
            assert radius_rows(conn, role, owner_uid, RADIUS_SEARCHES + [ring]) == \
                {k: v for k, v in before["radius"].items() if k[0] == role}
    assert fetch(conn, rewritten) == [(2,)]
    conn.rollback()
    for _ in range(2):
        run_script(cluster, "opt3_search_matview", "prepare_revert")
        assert fetch(conn, rewritten) == [(0,)] and fetch(conn, saved) == [(2,)]
        conn.rollback()
        same_answers()
    run_script(cluster, "opt3_search_matview", "cleanup")
    assert fetch(conn, rewritten) == [(2,)] and fetch(conn, saved) == [(0,)]
    conn.rollback()
    same_answers()


def test_revert_restores_the_schema_and_unschedules(opt5, cluster, conn, owner_uid, before):  # pylint: disable=unused-argument
    apply_change(cluster, "opt5_dashboard_matviews", state="reverted")
    apply_change(cluster, "opt3_search_matview", state="reverted")
    assert fetch(conn, "SELECT count(*) FROM cron.job") == [(0,)]
    conn.rollback()
    assert schema_dump(cluster) == before["dump"]
    for role in ROLES:
        for key, rows in search_rows(conn, role, owner_uid).items():
            assert rows == before["searches"][key], key

"""Tests of the OPT2 (storage layout) and OPT4 (future partitions) SQL changes.

They run against a real throwaway cluster (tests/pgcluster.py) that preloads pg_cron, holding
the reference fixture at 251 features with the stage4 toolkit and OPT1 applied; every test gets
its own copy of that database. The scripts run the way plugins/modules/stage4_change.py runs them:
precheck + deploy + verify in one transaction, revert + verify_reverted in another, with the
`variables` visible as current_setting('stage4.<name>').
"""
import os
import subprocess
import sys

import psycopg2
import pytest

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPO = os.path.dirname(TESTS)
if TESTS not in sys.path:
    sys.path.insert(0, TESTS)

import pgcluster  # noqa: E402

PG_DUMP = "/usr/lib/postgresql/15/bin/pg_dump"
DB = "BIBLIOTECA"  # pg_cron runs its jobs in cron.database_name, set to this name
TEMPLATE = "stage4_opt1_template"
# OPT2 decides which partitions are closed from "now": pinned, so 2019..2025 are closed.
OPT2_VARS = {"now": "2026-06-15"}
CLOSED_YEARS = range(2019, 2026)
BIG_ROW = "SELECT id, g::text, pg_column_compression(geom) FROM public.geometrias g WHERE nome = 'grande'"
OPEN_PARTITIONS = ["geometrias_p2026", "geometrias_p2027", "geometrias_p2028", "geometrias_default"]


def deploy(conn, change, variables=None):
    return pgcluster.run_change(conn, change, "applied", variables)


def revert(conn, change, variables=None):
    return pgcluster.run_change(conn, change, "reverted", variables)


def query(conn, sql, params=None):
    with conn, conn.cursor() as cur:
        cur.execute(sql, params)
        return cur.fetchall() if cur.description else []


def scalar(conn, sql, params=None):
    return query(conn, sql, params)[0][0]


def schema_dump(cluster):
    """pg_dump --schema-only without the rollout's own schemas (nor pg_dump's random \\restrict key)."""
    done = subprocess.run([PG_DUMP, "--schema-only", "--exclude-schema=stage4", "--exclude-schema=stage4_benchmark",
                           "-h", cluster.host, "-p", str(cluster.port), "-U", cluster.user, DB],
                          env=dict(os.environ, PGPASSWORD=cluster.password), capture_output=True, text=True,
                          check=True)
    return "\n".join(line for line in done.stdout.splitlines()
                     if not line.startswith(("\\restrict", "\\unrestrict")))


def table_state(conn):
    """What must survive a storage change: rows, ACL, policies, RLS and grants of every partition."""
    return {
        "checksum": scalar(conn, "SELECT stage4.table_checksum('public.geometrias')"),
        "rows": scalar(conn, "SELECT count(*) FROM public.geometrias"),
        "acl": scalar(conn, "SELECT relacl::text FROM pg_class WHERE oid = 'public.geometrias'::regclass"),
        "policies": query(conn, "SELECT polname, polcmd, pg_get_expr(polqual, polrelid) FROM pg_policy"
                                " WHERE polrelid = 'public.geometrias'::regclass ORDER BY 1"),
        "partitions": query(conn, """
            SELECT c.relname, c.relrowsecurity, coalesce(c.relacl::text, ''),
                   has_table_privilege('anon', c.oid, 'SELECT,INSERT,UPDATE,DELETE'),
                   has_table_privilege('authenticated', c.oid, 'SELECT,INSERT,UPDATE,DELETE')
            FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
            WHERE i.inhparent = 'public.geometrias'::regclass ORDER BY 1"""),
        "indexes": query(conn, "SELECT indexrelid::regclass::text FROM pg_index i JOIN pg_partition_tree("
                               "'public.geometrias') t ON t.relid = i.indrelid ORDER BY 1"),
    }


def geom_layout(conn):
    """{partition: (access method, geom compression, geom storage, clustered index)}."""
    rows = query(conn, """
        SELECT c.relname, am.amname, a.attcompression::text, a.attstorage::text,
               (SELECT ic.relname FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
                WHERE i.indrelid = c.oid AND i.indisclustered)
        FROM pg_partition_tree('public.geometrias') t
        JOIN pg_class c ON c.oid = t.relid
        LEFT JOIN pg_am am ON am.oid = c.relam
        JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = 'geom'""")
    return {row[0]: row[1:] for row in rows}


def partition_years(conn):
    rows = query(conn, "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
                       " WHERE i.inhparent = 'public.geometrias'::regclass AND c.relname ~ '_p[0-9]{4}$'")
    return sorted(int(name[-4:]) for (name,) in rows)


@pytest.fixture(scope="module")
def cluster():
    """A cluster preloading pg_cron (when it can), holding the OPT1-applied template database."""
    running = pgcluster.start_cluster()
    try:
        conf = os.path.join(running.folder, "data", "postgresql.auto.conf")
        with open(conf, encoding="utf-8") as handle:
            original = handle.read()
        try:
            running.preload_pg_cron(DB)
        except RuntimeError:
            with open(conf, "w", encoding="utf-8") as handle:
                handle.write(original)
            running._localdb("restart")  # pylint: disable=protected-access
        running.build_reference_db(TEMPLATE)
        conn = running.connect(TEMPLATE, autocommit=False)
        try:
            for tool in pgcluster.TOOLKIT:
                deploy(conn, tool)
            deploy(conn, "opt1_temporal_partitioning", {"partition_through_year": "2028"})
            running.pg_cron_loaded = "pg_cron" in scalar(conn, "SHOW shared_preload_libraries")
        finally:
            conn.close()
        yield running
    finally:
        running.destroy()


@pytest.fixture
def db(cluster):
    """A fresh copy of the template as BIBLIOTECA (database settings are not copied: set again)."""
    admin = cluster.connect("postgres")
    try:
        with admin.cursor() as cur:
            cur.execute('DROP DATABASE IF EXISTS "%s" WITH (FORCE)' % DB)
            cur.execute('CREATE DATABASE "%s" TEMPLATE "%s"' % (DB, TEMPLATE))
            cur.execute('ALTER DATABASE "%s" SET search_path = "$user", public, extensions' % DB)
    finally:
        admin.close()
    conn = cluster.connect(DB, autocommit=False)
    yield conn
    conn.close()


# --------------------------------------------------------------------------
# OPT2
# --------------------------------------------------------------------------

def test_opt2_portable_path_lz4_cluster_and_exact_revert(cluster, db):
    # A large, pglz-compressed geometry in a closed partition, last updated in 2020: CLUSTER alone
    # would keep it pglz; OPT2 must recompress it without touching its content or updated_at.
    query(db, """
        INSERT INTO public.geometrias (nome, categoria, geom, data_referencia, updated_at)
        SELECT 'grande', 'lote', extensions.ST_Multi(extensions.ST_Collect(array_agg(extensions.ST_Buffer(
                   extensions.ST_SetSRID(extensions.ST_MakePoint(-46.6, -23.5), 4326), 0.01, 50)))),
               '2020-05-05', '2020-06-01 12:00+00'
        FROM generate_series(1, 100) RETURNING id""")
    big_before = query(db, BIG_ROW)
    assert big_before[0][2] == "pglz"
    dump_before = schema_dump(cluster)
    state_before = table_state(db)
    layout_before = geom_layout(db)

    notices = deploy(db, "opt2_storage_layout", OPT2_VARS)

    assert any("portable path" in n and "lz4" in n for n in notices), notices
    assert query(db, "SELECT DISTINCT path FROM stage4.opt2_layout") == [("portable",)]
    assert scalar(db, "SELECT details->>'toast' FROM stage4.opt2_layout WHERE relation = 'public.geometrias'") == "lz4"
    layout = geom_layout(db)
    for year in CLOSED_YEARS:
        name = "geometrias_p%d" % year
        assert layout[name] == ("heap", "l", "m", name + "_geom_idx"), name
    for name in OPEN_PARTITIONS:
        assert layout[name] == ("heap", "l", "m", None), name
    assert layout["geometrias"][1] == "l"  # the parent: inherited by partitions created later
    assert scalar(db, "SELECT details->>'recompressed' FROM stage4.opt2_layout"
                      " WHERE relation = 'public.geometrias_p2020'") == "1"
    big_after = query(db, BIG_ROW)
    assert big_after[0][:2] == big_before[0][:2]  # same id, same content, updated_at included
    assert big_after[0][2] == "lz4"
    assert table_state(db) == state_before

    revert(db, "opt2_storage_layout")

    assert scalar(db, "SELECT to_regclass('stage4.opt2_layout')") is None
    assert geom_layout(db) == layout_before
    assert table_state(db) == state_before
    assert schema_dump(cluster) == dump_before


def test_opt2_portable_path_external_storage(cluster, db):
    dump_before = schema_dump(cluster)
    state_before = table_state(db)

    deploy(db, "opt2_storage_layout", dict(OPT2_VARS, toast_mode="external"))

    assert query(db, "SELECT DISTINCT path, details->>'toast' FROM stage4.opt2_layout") == [("portable", "external")]
    layout = geom_layout(db)
    for year in CLOSED_YEARS:
        name = "geometrias_p%d" % year
        assert layout[name] == ("heap", "", "e", name + "_geom_idx"), name
    assert table_state(db) == state_before

    revert(db, "opt2_storage_layout")

    assert table_state(db) == state_before
    assert schema_dump(cluster) == dump_before


def test_opt2_columnar_branch_with_a_stand_in_access_method(cluster, db):
    query(db, "CREATE ACCESS METHOD columnar TYPE TABLE HANDLER heap_tableam_handler")
    dump_before = schema_dump(cluster)
    state_before = table_state(db)

    notices = deploy(db, "opt2_storage_layout", OPT2_VARS)

    assert any("columnar path on 7 closed" in n for n in notices), notices
    assert query(db, "SELECT DISTINCT path FROM stage4.opt2_layout") == [("columnar",)]
    layout = geom_layout(db)
    for year in CLOSED_YEARS:
        assert layout["geometrias_p%d" % year] == ("columnar", "", "m", None)
    for name in OPEN_PARTITIONS:
        assert layout[name] == ("heap", "", "m", None), name
    assert table_state(db) == state_before

    revert(db, "opt2_storage_layout")

    assert {name: am for name, (am, *_rest) in geom_layout(db).items() if name != "geometrias"} == \
        {name: "heap" for name in OPEN_PARTITIONS + ["geometrias_p%d" % y for y in CLOSED_YEARS]}
    assert table_state(db) == state_before
    assert schema_dump(cluster) == dump_before


def test_opt2_precheck_requires_opt1(db):
    revert(db, "opt1_temporal_partitioning")
    with pytest.raises(psycopg2.Error, match="apply OPT1"):
        deploy(db, "opt2_storage_layout", OPT2_VARS)
    assert scalar(db, "SELECT to_regclass('stage4.opt2_layout')") is None


# --------------------------------------------------------------------------
# OPT4
# --------------------------------------------------------------------------

def test_opt4_future_partitions_time_travel_rows_and_revert(cluster, db):
    # Rows already parked in DEFAULT: three of 2031 (must move into geometrias_p2031) and one of 2040.
    parked = query(db, """
        INSERT INTO public.geometrias (nome, categoria, descricao, geom, area_m2, propriedades, data_referencia,
                                       owner_id, publico, created_at, updated_at)
        SELECT nome || ' (futuro)', categoria, descricao, geom, area_m2, propriedades, make_date(y, 3, 1) + id::int,
               owner_id, publico, created_at, '2021-02-03 04:05:06+00'
        FROM public.geometrias, (VALUES (2031), (2031), (2031), (2040)) v(y)
        WHERE id = 7
        RETURNING id""")
    parked_rows = dict(query(db, "SELECT id, g::text FROM public.geometrias g WHERE id = ANY(%s)",
                             ([i for (i,) in parked],)))
    assert query(db, "SELECT DISTINCT tableoid::regclass::text FROM public.geometrias WHERE id = ANY(%s)",
                 (list(parked_rows),)) == [("geometrias_default",)]
    dump_before = schema_dump(cluster)
    state_before = table_state(db)
    current_year = scalar(db, "SELECT extract(year FROM current_date)::int")
    target = max(2029, current_year + 2)

    notices = deploy(db, "opt4_future_partitions", {"partition_years_ahead": "2"})

    years = partition_years(db)
    assert years == list(range(2019, target + 1))
    assert any("NOT scheduled" in n for n in notices), notices
    assert query(db, "SELECT years_ahead, scheduled FROM stage4.partition_policy") == [(2, False)]

    # Time travel: in mid-2033 with 2 years ahead, 2029..2035 must exist.
    created = scalar(db, "SELECT stage4.ensure_future_partitions('2033-06-01')")
    assert created == ["public.geometrias_p%d" % y for y in range(target + 1, 2036)]
    assert partition_years(db) == list(range(2019, 2036))
    assert scalar(db, "SELECT stage4.ensure_future_partitions('2033-06-01')") == []
    assert query(db, "SELECT year FROM stage4.opt4_created_partitions ORDER BY 1") == [(y,) for y in range(2029, 2036)]
    assert scalar(db, "SELECT rows_moved FROM stage4.opt4_created_partitions WHERE year = 2031") == 3

    # The parked rows: same ids, same content (updated_at included), 2031 in its partition.
    moved = query(db, "SELECT id, tableoid::regclass::text, g::text FROM public.geometrias g WHERE id = ANY(%s)",
                  (list(parked_rows),))
    for row_id, partition, text in moved:
        assert text == parked_rows[row_id]
        assert partition == ("geometrias_default" if "2040-" in text else "geometrias_p2031")
    assert sum(1 for _, partition, _ in moved if partition == "geometrias_p2031") == 3

    # New partitions: RLS on, nothing granted to the API roles, every index of the parent.
    parent_indexes = scalar(db, "SELECT count(*) FROM pg_index WHERE indrelid = 'public.geometrias'::regclass")
    for year in range(2029, 2036):
        name = "public.geometrias_p%d" % year
        rls, anon, authenticated, indexes, attached = query(db, """
            SELECT c.relrowsecurity,
                   has_table_privilege('anon', c.oid, %(all)s),
                   has_table_privilege('authenticated', c.oid, %(all)s),
                   (SELECT count(*) FROM pg_index WHERE indrelid = c.oid),
                   (SELECT count(*) FROM pg_index ci JOIN pg_inherits ii ON ii.inhrelid = ci.indexrelid
                    JOIN pg_index pi ON pi.indexrelid = ii.inhparent AND pi.indrelid = 'public.geometrias'::regclass
                    WHERE ci.indrelid = c.oid AND ci.indisvalid)
            FROM pg_class c WHERE c.oid = %(name)s::regclass""",
            {"name": name, "all": "SELECT,INSERT,UPDATE,DELETE,TRUNCATE,REFERENCES,TRIGGER"})[0]
        assert (rls, anon, authenticated) == (True, False, False), name
        assert indexes == attached == parent_indexes, name
    assert table_state(db)["checksum"] == state_before["checksum"]

    notices = revert(db, "opt4_future_partitions")

    assert partition_years(db) == list(range(2019, 2029))
    after = query(db, "SELECT id, tableoid::regclass::text, g::text FROM public.geometrias g WHERE id = ANY(%s)",
                  (list(parked_rows),))
    assert {row_id: text for row_id, _, text in after} == parked_rows
    assert {partition for _, partition, _ in after} == {"geometrias_default"}
    assert table_state(db) == state_before
    assert query(db, "SELECT to_regprocedure('stage4.ensure_future_partitions(date, integer)'),"
                     " to_regclass('stage4.partition_policy'), to_regclass('stage4.opt4_created_partitions')") == \
        [(None, None, None)]
    assert schema_dump(cluster) == dump_before


def test_opt4_revert_checks_the_rows_it_moves(db):
    """The revert checksums only the rows it moves back into DEFAULT (not every row, under its lock):
    one of them changed between the revert and its verify is caught."""
    query(db, """
        INSERT INTO public.geometrias (nome, categoria, descricao, geom, area_m2, propriedades, data_referencia,
                                       owner_id, publico)
        SELECT nome || ' (futuro)', categoria, descricao, geom, area_m2, propriedades, '2031-03-01',
               owner_id, publico
        FROM public.geometrias WHERE id = 7""")
    deploy(db, "opt4_future_partitions", {"partition_years_ahead": "2", "now": "2030-06-15"})
    assert scalar(db, "SELECT tableoid::regclass::text FROM public.geometrias WHERE data_referencia = '2031-03-01'") \
        == "geometrias_p2031"
    scripts = {name: open(os.path.join(REPO, "files", "sql", "opt4_future_partitions", name + ".sql"),
                          encoding="utf-8").read() for name in ("revert", "verify_reverted")}
    with pytest.raises(psycopg2.Error, match="are not those proven before"):
        with db, db.cursor() as cur:
            cur.execute(scripts["revert"])
            cur.execute("UPDATE public.geometrias SET nome = nome || ' alterado' WHERE data_referencia = '2031-03-01'")
            cur.execute(scripts["verify_reverted"])
    revert(db, "opt4_future_partitions")
    assert scalar(db, "SELECT tableoid::regclass::text FROM public.geometrias WHERE data_referencia = '2031-03-01'") \
        == "geometrias_default"


def test_opt4_precheck_refuses_a_bad_years_ahead(db):
    with pytest.raises(psycopg2.Error, match="partition_years_ahead"):
        deploy(db, "opt4_future_partitions", {"partition_years_ahead": "-1"})
    assert scalar(db, "SELECT to_regclass('stage4.partition_policy')") is None


def test_opt4_schedules_the_pg_cron_job(cluster, db):
    if not cluster.pg_cron_loaded:
        pytest.skip("this cluster cannot preload pg_cron")
    query(db, "CREATE EXTENSION pg_cron")

    deploy(db, "opt4_future_partitions", {"partition_years_ahead": "2", "now": "2026-06-15"})

    job = ("stage4_ensure_future_partitions", "17 3 * * *", "SELECT stage4.ensure_future_partitions()", DB, True)
    jobs = "SELECT jobname, schedule, command, database, active FROM cron.job"
    assert query(db, jobs) == [job]
    assert scalar(db, "SELECT scheduled FROM stage4.partition_policy") is True
    assert scalar(db, "SELECT stage4.schedule_future_partitions()") is True  # upsert: still one job
    assert query(db, jobs) == [job]
    assert partition_years(db)[-1] == 2029

    revert(db, "opt4_future_partitions")

    assert query(db, jobs) == []


# --------------------------------------------------------------------------
# OPT2 and OPT4 together, in the rollout's order
# --------------------------------------------------------------------------

def test_opt2_then_opt4_and_back(cluster, db):
    dump_before = schema_dump(cluster)
    state_before = table_state(db)

    deploy(db, "opt2_storage_layout", OPT2_VARS)
    deploy(db, "opt4_future_partitions", {"partition_years_ahead": "2", "now": "2026-06-15"})

    layout = geom_layout(db)
    assert layout["geometrias_p2029"] == ("heap", "l", "m", None)  # inherited lz4 from the parent
    assert table_state(db)["checksum"] == state_before["checksum"]

    revert(db, "opt4_future_partitions")
    revert(db, "opt2_storage_layout")

    assert table_state(db) == state_before
    assert schema_dump(cluster) == dump_before

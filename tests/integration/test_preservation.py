"""Nothing lost on a table decorated as real applications decorate theirs (issue 20): OPT1 and OPT2, and
their reverts, through plugins/modules/stage4_change.py (the online path, prepare included), leave pg_dump
--schema-only of every schema identical to the original and every row in place; what a rebuild could
not carry is refused before any change, named; what a swap retired is never dropped with CASCADE."""
import os

import pytest

import pgcluster
from ansible_collections.biblioteca.stage4.plugins.modules import stage4_change

TEMPLATE = "decorated_template"
DECORATIONS = os.path.join(pgcluster.REPO, "tests", "fixtures", "sql", "decorated", "carried.sql")
OPT1 = "opt1_temporal_partitioning"
OPT2 = "opt2_storage_layout"
OPT4 = "opt4_future_partitions"
VARIABLES = {OPT4: {"partition_years_ahead": "2", "now": "2026-12-07"},
             OPT1: {"partition_through_year": "2028", "batch_rows": "50", "lock_timeout": "2s"},
             OPT2: {"now": "2026-12-07", "batch_rows": "50", "lock_timeout": "2s"}}
ROWS = ("SELECT count(*), stage4.table_checksum('public.geometrias'), stage4.table_checksum('public.anexos'), "
        "(SELECT last_value FROM public.geometrias_numero_seq) FROM public.geometrias")


@pytest.fixture(scope="module")
def cluster():
    with pgcluster.running_cluster() as running:
        running.build_reference_db(TEMPLATE)
        conn = running.connect(TEMPLATE)
        with open(DECORATIONS, encoding="utf-8") as handle, conn.cursor() as cur:
            cur.execute(handle.read())
        pgcluster.install_toolkit(conn)
        conn.close()
        yield running


@pytest.fixture
def db(cluster, request):
    return cluster.clone_database("t_" + request.node.name[:50], TEMPLATE)


def change(capsys, cluster, db, name, state="applied"):
    args = dict(cluster.login_args(db), sql_root=pgcluster.SQL_ROOT, change=name, state=state,
                variables=VARIABLES[name], lock_retry_delay=0.5)
    return pgcluster.run_module(capsys, stage4_change.main, args)


def fetch(cluster, db, sql, params=None):
    return cluster.query(db, sql, params)


def schema(cluster, db):
    return pgcluster.schema_dump(cluster, db)


def visible_as_authenticated(cluster, db):
    """What an authenticated user sees of the table and of the other table whose policy reads it."""
    return fetch(cluster, db, """
        BEGIN; SET LOCAL ROLE authenticated;
        SELECT set_config('request.jwt.claims', '{"sub": "00000000-0000-0000-0000-000000000001"}', true);
        SELECT (SELECT count(*) FROM public.geometrias), (SELECT count(*) FROM public.anexos);""")


def test_opt1_opt2_and_their_reverts_keep_every_decoration_and_every_row(cluster, db, capsys):
    schema_before, rows_before = schema(cluster, db), fetch(cluster, db, ROWS)
    visible_before = visible_as_authenticated(cluster, db)
    assert change(capsys, cluster, db, OPT1)["action"] == "deployed"
    # Partitioned: every partition publishes as the table, keeps its settings and the table's owner.
    assert fetch(cluster, db, "SELECT pubviaroot FROM pg_publication WHERE pubname = 'supabase_realtime'") == [(True,)]
    assert fetch(cluster, db, """
        SELECT DISTINCT c.relreplident, pg_get_userbyid(c.relowner), a.attstattarget
        FROM pg_partition_tree('public.geometrias') t JOIN pg_class c ON c.oid = t.relid
        JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = 'categoria'""") == [("f", "postgres", 500)]
    assert visible_as_authenticated(cluster, db) == visible_before
    assert to_regnamespace_gone(cluster, db)
    assert change(capsys, cluster, db, OPT2)["action"] == "deployed"
    # The serial column still numbers new rows; the generated column is computed.
    inserted = fetch(cluster, db, """
        INSERT INTO public.geometrias (nome, categoria, geom, data_referencia)
        SELECT 'Nova', categoria, geom, '2027-03-01' FROM public.geometrias WHERE id = 1
        RETURNING numero > 0, nome_normalizado""")
    assert inserted == [(True, "nova")]
    fetch(cluster, db, "DELETE FROM public.geometrias WHERE nome = 'Nova'")
    rows_after_opt2 = fetch(cluster, db, ROWS)
    assert change(capsys, cluster, db, OPT2, "reverted")["action"] == "reverted"
    assert change(capsys, cluster, db, OPT1, "reverted")["action"] == "reverted"
    assert fetch(cluster, db, ROWS) == rows_after_opt2
    assert rows_after_opt2[0][:3] == rows_before[0][:3]
    assert schema(cluster, db) == schema_before
    assert visible_as_authenticated(cluster, db) == visible_before
    assert to_regnamespace_gone(cluster, db)


def to_regnamespace_gone(cluster, db):
    return fetch(cluster, db, "SELECT to_regnamespace('stage4_retired') IS NULL")[0][0]


@pytest.mark.parametrize("decoration, named", [
    ("CREATE TABLE public.copias (id int, original public.geometrias)", "table column public.copias.original"),
    ("CREATE TABLE public.lotes (id int, itens public.geometrias[])", "table column public.lotes.itens"),
    ("CREATE TABLE public.log (id int); CREATE RULE copia AS ON INSERT TO public.log DO ALSO "
     "DELETE FROM public.geometrias WHERE id = NEW.id", "rule copia on public.log"),
    ("CREATE VIEW public.v AS SELECT id FROM public.geometrias; CREATE FUNCTION public.tf() RETURNS trigger "
     "LANGUAGE plpgsql AS 'BEGIN RETURN NULL; END'; CREATE TRIGGER t INSTEAD OF INSERT ON public.v "
     "FOR EACH ROW EXECUTE FUNCTION public.tf()", "trigger t on public.v"),
    ("CREATE PUBLICATION other_partitioned FOR TABLE public.geometrias; CREATE TABLE public.p (d date) "
     "PARTITION BY RANGE (d); ALTER PUBLICATION other_partitioned ADD TABLE public.p",
     "other_partitioned (also publishes public.p)"),
])
def test_what_a_rebuild_cannot_carry_is_refused_before_any_change(cluster, db, capsys, decoration, named):
    fetch(cluster, db, decoration)
    schema_before, rows_before = schema(cluster, db), fetch(cluster, db, ROWS)
    result = change(capsys, cluster, db, OPT1)
    assert result.get("failed") and named in result["msg"] and "Nothing was changed" in result["msg"], result["msg"]
    assert fetch(cluster, db, "SELECT to_regnamespace('stage4_online') IS NULL")[0][0]  # no prepare ran
    assert (schema(cluster, db), fetch(cluster, db, ROWS)) == (schema_before, rows_before)


def test_settle_drops_retired_objects_one_by_one_and_never_with_cascade(cluster, db):
    """What still depends on a retired object keeps it, and is named; the rest goes."""
    conn = cluster.connect(db)
    conn.notices.clear()
    with conn.cursor() as cur:
        cur.execute("""
            CREATE TABLE public.antiga (id int);
            CREATE TABLE public.solta (id int);
            CREATE FUNCTION public.f_antiga() RETURNS SETOF public.solta LANGUAGE sql AS 'SELECT * FROM public.solta';
            SELECT stage4.retire('TABLE public.antiga'), stage4.retire('TABLE public.solta'),
                   stage4.retire('FUNCTION public.f_antiga()');
            CREATE VIEW public.ainda_usa AS SELECT id FROM stage4_retired.antiga;
            SELECT stage4.drop_retired(0)""")
        outcome = cur.fetchone()[0]
    conn.close()
    assert "stage4_retired.antiga" in outcome and "view public.ainda_usa depends on" in outcome, outcome
    assert fetch(cluster, db, "SELECT to_regclass('public.ainda_usa') IS NOT NULL, "
                              "to_regclass('stage4_retired.antiga') IS NOT NULL, "
                              "to_regclass('stage4_retired.solta') IS NULL, "
                              "to_regprocedure('stage4_retired.f_antiga()') IS NULL") == [(True, True, True, True)]


def test_truncate_of_a_partition_is_refused_while_the_table_is_rebuilt_online(cluster, db, capsys):
    """The guard is a statement trigger, which PostgreSQL does not clone to partitions: each has its own."""
    assert change(capsys, cluster, db, OPT1)["action"] == "deployed"
    conn = cluster.connect(db)
    with conn.cursor() as cur:
        cur.execute("SELECT stage4.start_online_rebuild('public.geometrias', "
                    "stage4.layout_in_snapshot('opt1_temporal_partitioning', 'public.geometrias')); "
                    "SELECT stage4.start_capture('public.geometrias')")
        with pytest.raises(Exception, match="is being rebuilt online; TRUNCATE it after the rebuild"):
            cur.execute("TRUNCATE public.geometrias_p2021")
        cur.execute("SELECT stage4.abort_online_rebuild('public.geometrias')")
    conn.close()
    assert fetch(cluster, db, "SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'stage4_online%'") == [(0,)]


def test_id_stays_unique_across_partitions_and_the_revert_cannot_meet_a_duplicate(cluster, db, capsys):
    """The partitioned key is (id, data_referencia); the registry keeps (id) unique, race-free, and answers
    a duplicate as the primary key did, so OPT1's revert can always put the primary key (id) back."""
    assert change(capsys, cluster, db, OPT1)["action"] == "deployed"
    duplicate = ("INSERT INTO public.geometrias (id, nome, categoria, geom, data_referencia) "
                 "SELECT 5, 'dup', categoria, geom, '2027-06-01' FROM public.geometrias WHERE id = 5")
    conn = cluster.connect(db)
    with conn.cursor() as cur, pytest.raises(Exception) as raised:
        cur.execute(duplicate)
    assert raised.value.pgcode == "23505" and raised.value.diag.constraint_name == "geometrias_pkey"
    assert 'duplicate key value violates unique constraint "geometrias_pkey"' in str(raised.value)
    assert "Key (id)=(5) already exists." in str(raised.value)
    # Two transactions inserting the same new id: the second waits for the first, then fails.
    first, second = cluster.connect(db, autocommit=False), cluster.connect(db, autocommit=False)
    new_row = ("INSERT INTO public.geometrias (id, nome, categoria, geom, data_referencia) "
               "SELECT 90001, 'race', categoria, geom, %s FROM public.geometrias WHERE id = 1")
    with first.cursor() as cur:
        cur.execute(new_row, ("2021-01-01",))
    with second.cursor() as cur:
        cur.execute("SET lock_timeout = '300ms'")
        with pytest.raises(Exception, match="lock timeout|canceling statement due to lock timeout"):
            cur.execute(new_row, ("2024-01-01",))
    second.rollback()
    first.commit()
    with second.cursor() as cur, pytest.raises(Exception, match="Key \\(id\\)=\\(90001\\) already exists"):
        cur.execute(new_row, ("2024-01-01",))
    first.close(), second.close()
    # A row moved to another year's partition, a deletion and a TRUNCATE of a partition keep it exact.
    fetch(cluster, db, "UPDATE public.geometrias SET data_referencia = '2027-02-02' WHERE id = 7")
    fetch(cluster, db, "DELETE FROM public.geometrias WHERE id = 8")
    fetch(cluster, db, "TRUNCATE public.geometrias_p2020")
    assert fetch(cluster, db, "SELECT (SELECT count(*) FROM stage4_keys.geometrias), count(*), "
                              "count(*) FILTER (WHERE id = 7) FROM public.geometrias") == [
        (fetch(cluster, db, "SELECT count(*) FROM public.geometrias")[0][0],) * 2 + (1,)]
    assert change(capsys, cluster, db, OPT2)["action"] == "deployed"
    assert fetch(cluster, db, "SELECT count(*) FROM pg_partition_tree('public.geometrias') t WHERE t.relid <> "
                              "'public.geometrias'::regclass AND NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = t.relid "
                              "AND tgname = 'stage4_unique_key_truncate')") == [(0,)]
    conn.close()
    assert change(capsys, cluster, db, OPT2, "reverted")["action"] == "reverted"
    assert change(capsys, cluster, db, OPT1, "reverted")["action"] == "reverted"
    assert fetch(cluster, db, "SELECT to_regnamespace('stage4_keys') IS NULL") == [(True,)]


def test_opt4_moves_rows_out_of_default_and_back_without_firing_the_applications_triggers(cluster, db, capsys):
    """A row trigger that audits, and one that rewrites the row on INSERT: a move changes nothing, so
    neither fires, and the moved rows keep their exact content (the daily job would fail otherwise)."""
    assert change(capsys, cluster, db, OPT1)["action"] == "deployed"
    fetch(cluster, db, """
        INSERT INTO public.geometrias (nome, categoria, geom, data_referencia)
        SELECT 'futura ' || g, categoria, geom, make_date(2029, 3 + g, 1) FROM public.geometrias, generate_series(1, 3) g
        WHERE id = 1;
        CREATE TABLE public.auditoria (op text, id bigint);
        CREATE FUNCTION public.auditar() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN INSERT INTO public.auditoria VALUES (TG_OP, coalesce(NEW.id, OLD.id)); RETURN NULL; END $$;
        CREATE FUNCTION public.carimbar() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN NEW.nome := NEW.nome || ' (carimbado)'; RETURN NEW; END $$;
        CREATE TRIGGER auditar AFTER INSERT OR DELETE ON public.geometrias FOR EACH ROW EXECUTE FUNCTION public.auditar();
        CREATE TRIGGER carimbar BEFORE INSERT ON public.geometrias FOR EACH ROW EXECUTE FUNCTION public.carimbar();""")
    rows = fetch(cluster, db, ROWS)
    assert fetch(cluster, db, "SELECT count(*) FROM public.geometrias_default") == [(3,)]
    assert change(capsys, cluster, db, OPT4)["action"] == "deployed"
    assert fetch(cluster, db, "SELECT (SELECT count(*) FROM public.geometrias_default), "
                              "(SELECT count(*) FROM public.geometrias_p2029), "
                              "(SELECT count(*) FROM public.auditoria)") == [(0, 3, 0)]
    assert change(capsys, cluster, db, OPT4, "reverted")["action"] == "reverted"
    assert fetch(cluster, db, "SELECT (SELECT count(*) FROM public.geometrias_default), (SELECT count(*) FROM public.auditoria), "
                              "(SELECT count(*) FROM public.geometrias WHERE nome LIKE '%carimbado%')") == [(3, 0, 0)]
    assert fetch(cluster, db, ROWS) == rows
    # The triggers are still the table's, on every partition.
    assert fetch(cluster, db, "SELECT count(DISTINCT tgrelid) FROM pg_trigger WHERE tgname = 'auditar'") == fetch(
        cluster, db, "SELECT count(*) FROM pg_partition_tree('public.geometrias')")


def test_partitions_belong_to_the_tables_owner_not_to_the_role_that_deploys(cluster, db, capsys):
    fetch(cluster, db, "DO $$ BEGIN IF to_regrole('dono_geometrias') IS NULL THEN CREATE ROLE dono_geometrias; END IF; END $$; "
                       "GRANT CREATE ON SCHEMA public TO dono_geometrias; "
                       "ALTER TABLE public.geometrias OWNER TO dono_geometrias")
    assert change(capsys, cluster, db, OPT1)["action"] == "deployed"
    assert fetch(cluster, db, "SELECT DISTINCT pg_get_userbyid(c.relowner) FROM pg_partition_tree('public.geometrias') t "
                              "JOIN pg_class c ON c.oid = t.relid") == [("dono_geometrias",)]
    assert change(capsys, cluster, db, OPT1, "reverted")["action"] == "reverted"
    assert fetch(cluster, db, "SELECT pg_get_userbyid(relowner) FROM pg_class WHERE oid = 'public.geometrias'::regclass") == [
        ("dono_geometrias",)]


def test_postgrest_is_told_to_reload_its_schema_after_a_swap_and_its_revert(cluster, db, capsys):
    listener = cluster.connect(db)
    with listener.cursor() as cur:
        cur.execute("LISTEN pgrst")
    for state in ("applied", "reverted"):
        listener.notifies.clear()
        change(capsys, cluster, db, OPT1, state)
        listener.poll()
        assert [(n.channel, n.payload) for n in listener.notifies] == [("pgrst", "reload schema")], state
    listener.close()


def test_no_api_call_runs_under_the_cutovers_lock(cluster, db, capsys):
    """A user's RPC may cost seconds at scale (a radius search without a bounding-box prefilter scans
    the whole table): the checks under ACCESS EXCLUSIVE only plan the API's calls, so the cutover fits
    its transaction_timeout whatever they cost; the benchmark after the change runs them."""
    fetch(cluster, db, """
        CREATE OR REPLACE FUNCTION public.geometrias_no_raio(lon double precision, lat double precision, raio_m double precision)
        RETURNS SETOF public.geometrias LANGUAGE sql STABLE SET search_path = public, extensions, pg_temp AS $$
            SELECT g.* FROM public.geometrias g  -- 12 ms a row: 3 s a call at 251 features
            WHERE pg_sleep(0.012) IS NOT NULL AND ST_DWithin(g.geom::geography, ST_SetSRID(ST_MakePoint(lon, lat), 4326)::geography, raio_m) ORDER BY g.id
        $$""")
    for state in ("applied", "reverted"):
        args = dict(cluster.login_args(db), sql_root=pgcluster.SQL_ROOT, change=OPT1, state=state,
                    variables=VARIABLES[OPT1], transaction_timeout=1.8, lock_retries=0)
        result = pgcluster.run_module(capsys, stage4_change.main, args)
        assert not result.get("failed"), result.get("msg")
        assert result["duration_s"] < 1.8


def test_a_publication_the_deploying_role_may_not_alter_is_refused(cluster, db):
    """The swap takes the table out of its publications and back in: only their owner may."""
    conn = cluster.connect(db)
    with conn.cursor() as cur:
        cur.execute("DO $$ BEGIN IF to_regrole('implantador') IS NULL THEN CREATE ROLE implantador; END IF; "
                    "IF to_regrole('dono_publicacao') IS NULL THEN CREATE ROLE dono_publicacao; END IF; END $$; "
                    "ALTER PUBLICATION supabase_realtime OWNER TO dono_publicacao; "
                    "GRANT USAGE ON SCHEMA stage4 TO implantador; GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA stage4 TO implantador; "
                    "SET ROLE implantador")
        with pytest.raises(Exception, match="supabase_realtime \\(owner dono_publicacao\\)"):
            cur.execute("SELECT stage4.assert_can_publish_via_root('public.geometrias', 'OPT1')")
    conn.close()

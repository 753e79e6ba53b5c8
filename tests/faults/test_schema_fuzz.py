"""Schema fuzzing (issue 20): Hypothesis decorates public.geometrias at random, as applications do (extra
columns of each kind, serial and generated columns, constraints, partial and expression indexes, policies
of every command and role, policies of other tables reading it, extended statistics, replica identity,
publications, views, materialized views and functions in other schemas, triggers, comments, settings, a
second owner), then runs OPT1 and OPT2 and their reverts through plugins/modules/stage4_change.py. Each example
must end in one of two ways: a refusal before any change (schema and rows as they were), or every row
kept and pg_dump --schema-only of every schema identical to the original after the reverts.

STAGE4_FUZZ_EXAMPLES sets the number of schemas (20 in make test, 200 in make faults). make test runs
the same derandomized examples every time; make faults explores (STAGE4_FUZZ_RANDOM=1). A failing
example found there is kept below as an @example.
"""
import os

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import pgcluster
from ansible_collections.biblioteca.stage4.plugins.modules import stage4_change

EXAMPLES = int(os.environ.get("STAGE4_FUZZ_EXAMPLES", "20"))
TEMPLATE = "fuzz_template"
OPT1 = "opt1_temporal_partitioning"
OPT2 = "opt2_storage_layout"
VARIABLES = {OPT1: {"partition_through_year": "2028", "batch_rows": "100", "lock_timeout": "2s"},
             OPT2: {"now": "2026-12-07", "batch_rows": "100", "lock_timeout": "2s"}}
ROWS = "SELECT count(*), stage4.table_checksum('public.geometrias') FROM public.geometrias"

COLUMN_TYPES = ["text DEFAULT 'x'", "integer NOT NULL DEFAULT 0", "numeric(12,2)", "jsonb DEFAULT '{}'",
                "uuid DEFAULT gen_random_uuid()", "varchar(20) COLLATE \"C\"", "timestamptz DEFAULT now()",
                "bigserial", "serial", "text GENERATED ALWAYS AS (upper(categoria)) STORED",
                "double precision GENERATED ALWAYS AS (area_m2 * 2) STORED", "boolean DEFAULT false NOT NULL"]
COMMANDS = ["SELECT", "INSERT", "UPDATE", "DELETE", "ALL"]
ROLES = ["anon", "authenticated", "PUBLIC", "anon, authenticated"]


def column(n, kind):
    return "ALTER TABLE public.geometrias ADD COLUMN extra_%d %s" % (n, COLUMN_TYPES[kind])


def policy(n, command, roles, restrictive):
    command = COMMANDS[command]
    using = "" if command == "INSERT" else " USING (publico OR owner_id = auth.uid())"
    check = " WITH CHECK (owner_id = auth.uid())" if command in ("INSERT", "UPDATE", "ALL") else ""
    return "CREATE POLICY fuzz_pol_%d ON public.geometrias AS %s FOR %s TO %s%s%s" % (
        n, "RESTRICTIVE" if restrictive else "PERMISSIVE", command, ROLES[roles], using, check)


# Each decoration takes a number that makes its names unique, and a small integer that varies it.
DECORATIONS = {
    "column": lambda n, v: column(n, v % len(COLUMN_TYPES)),
    "policy": lambda n, v: policy(n, v % 5, (v // 5) % 4, v % 3 == 0),
    "check": lambda n, v: "ALTER TABLE public.geometrias ADD CONSTRAINT fuzz_chk_%d CHECK (%s)" % (
        n, ["area_m2 IS NULL OR area_m2 >= 0", "nome <> ''", "data_referencia > '1900-01-01'"][v % 3]),
    "index": lambda n, v: "CREATE %sINDEX fuzz_idx_%d ON public.geometrias %s" % (
        "UNIQUE " if v % 5 == 4 else "", n,
        ["(data_referencia) WHERE publico", "(lower(nome))", "(categoria, data_referencia DESC)",
         "USING brin (created_at)", "(id, data_referencia)"][v % 5]),
    "statistics": lambda n, v: "CREATE STATISTICS public.fuzz_stx_%d (%s) ON categoria, publico FROM public.geometrias%s" % (
        n, ["dependencies", "ndistinct", "mcv"][v % 3],
        "; ALTER STATISTICS public.fuzz_stx_%d SET STATISTICS %d" % (n, 100 + v) if v % 2 else ""),
    "column_setting": lambda n, v: "ALTER TABLE public.geometrias ALTER COLUMN %s" % [
        "categoria SET STATISTICS %d" % (50 + v), "categoria SET (n_distinct = %d)" % (5 + v),
        "descricao SET STORAGE EXTERNAL", "nome SET (n_distinct = -0.5)"][v % 4],
    "replica_identity": lambda n, v: [
        "ALTER TABLE public.geometrias REPLICA IDENTITY FULL", "ALTER TABLE public.geometrias REPLICA IDENTITY NOTHING",
        "CREATE UNIQUE INDEX fuzz_ri_%d ON public.geometrias (id, data_referencia); "
        "ALTER TABLE public.geometrias REPLICA IDENTITY USING INDEX fuzz_ri_%d" % (n, n)][v % 3],
    "publication": lambda n, v: "CREATE PUBLICATION fuzz_pub_%d FOR TABLE public.geometrias%s" % (
        n, " WITH (publish = 'insert')" if v % 2 else ""),
    "view": lambda n, v: ("CREATE SCHEMA IF NOT EXISTS fuzz; CREATE VIEW fuzz.v_%d%s AS SELECT id, nome, categoria "
                          "FROM public.geometrias WHERE %s; GRANT SELECT ON fuzz.v_%d TO authenticated; "
                          "COMMENT ON VIEW fuzz.v_%d IS 'vista %d'") % (
        n, " WITH (security_invoker = true)" if v % 2 else "", ["publico", "true", "area_m2 > 0"][v % 3], n, n, n),
    "matview": lambda n, v: ("CREATE SCHEMA IF NOT EXISTS fuzz; CREATE MATERIALIZED VIEW fuzz.mv_%d AS SELECT categoria, "
                             "count(*) AS n FROM public.geometrias GROUP BY categoria%s; "
                             "CREATE UNIQUE INDEX fuzz_mv_%d_key ON fuzz.mv_%d (categoria)") % (
        n, " WITH NO DATA" if v % 3 == 0 else "", n, n),
    "function": lambda n, v: "CREATE SCHEMA IF NOT EXISTS fuzz; " + [
        "CREATE FUNCTION fuzz.f_%d(q text) RETURNS SETOF public.geometrias LANGUAGE sql STABLE "
        "AS $$ SELECT * FROM public.geometrias WHERE nome = q $$" % n,
        "CREATE FUNCTION fuzz.f_%d(g public.geometrias) RETURNS text LANGUAGE sql IMMUTABLE AS $$ SELECT g.nome $$" % n,
        "CREATE FUNCTION fuzz.f_%d(gs public.geometrias[]) RETURNS bigint LANGUAGE sql IMMUTABLE "
        "AS $$ SELECT count(*) FROM unnest(gs) $$" % n][v % 3]
        + "; REVOKE ALL ON FUNCTION fuzz.f_%d FROM PUBLIC; GRANT EXECUTE ON FUNCTION fuzz.f_%d TO authenticated" % (n, n),
    "other_table_policy": lambda n, v: (
        "CREATE TABLE public.fuzz_t_%d (id bigint PRIMARY KEY, geometria_id bigint); "
        "ALTER TABLE public.fuzz_t_%d ENABLE ROW LEVEL SECURITY; "
        "CREATE POLICY fuzz_t_%d_all ON public.fuzz_t_%d FOR SELECT USING (true); "
        "CREATE POLICY fuzz_t_%d_ref ON public.fuzz_t_%d AS %s FOR %s TO authenticated USING "
        "(EXISTS (SELECT 1 FROM public.geometrias g WHERE g.id = geometria_id)); "
        "INSERT INTO public.fuzz_t_%d SELECT g, g FROM generate_series(1, 50) g") % (
        n, n, n, n, n, n, "RESTRICTIVE" if v % 2 else "PERMISSIVE", ["SELECT", "ALL"][v // 2 % 2], n),
    "trigger": lambda n, v: (
        "CREATE FUNCTION public.fuzz_trg_%d() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN %s; END $$; "
        "CREATE TRIGGER fuzz_trg_%d %s ON public.geometrias FOR EACH %s EXECUTE FUNCTION public.fuzz_trg_%d()%s") % (
        n, "NEW" if v % 2 == 0 else "NULL", n,
        ["BEFORE INSERT OR UPDATE", "AFTER DELETE", "AFTER INSERT"][v % 3], "ROW" if v % 2 == 0 else "STATEMENT", n,
        "; ALTER TABLE public.geometrias DISABLE TRIGGER fuzz_trg_%d" % n if v % 4 == 1 else ""),
    "comment": lambda n, v: ["COMMENT ON COLUMN public.geometrias.categoria IS 'categoria %d'" % v,
                             "COMMENT ON INDEX public.geometrias_geom_gist IS 'gist %d'" % v,
                             "COMMENT ON CONSTRAINT geometrias_pkey ON public.geometrias IS 'pk %d'" % v][v % 3],
    "grant": lambda n, v: ["GRANT SELECT (id, nome) ON public.geometrias TO relatorios_fuzz",
                           "GRANT UPDATE (nome) ON public.geometrias TO authenticated",
                           "GRANT SELECT ON public.geometrias TO relatorios_fuzz WITH GRANT OPTION"][v % 3],
    "owner": lambda n, v: "ALTER TABLE public.geometrias OWNER TO dono_fuzz",
    # Two that no rebuild can carry: refused before any change.
    "typed_column": lambda n, v: "CREATE TABLE public.fuzz_copias_%d (id int, original public.geometrias%s)" % (
        n, "[]" if v % 2 else ""),
    "rule": lambda n, v: ("CREATE TABLE public.fuzz_log_%d (id bigint); CREATE RULE fuzz_rule_%d AS ON INSERT TO "
                          "public.fuzz_log_%d DO ALSO DELETE FROM public.geometrias WHERE id = NEW.id") % (n, n, n),
}

decorations = st.lists(st.tuples(st.sampled_from(sorted(DECORATIONS)), st.integers(0, 59)), min_size=1, max_size=8)


@pytest.fixture(scope="module")
def fuzz_cluster(cluster):
    conn = cluster.connect("postgres")
    with conn.cursor() as cur:
        cur.execute('DROP DATABASE IF EXISTS "%s"' % TEMPLATE)
        cur.execute('CREATE DATABASE "%s" TEMPLATE "BIBLIOTECA"' % TEMPLATE)
        cur.execute("DO $$ BEGIN IF to_regrole('relatorios_fuzz') IS NULL THEN CREATE ROLE relatorios_fuzz; END IF; "
                    "IF to_regrole('dono_fuzz') IS NULL THEN CREATE ROLE dono_fuzz; END IF; END $$")
        cur.execute("GRANT CREATE ON SCHEMA public TO dono_fuzz")
    conn.close()
    conn = cluster.connect(TEMPLATE)
    pgcluster.install_toolkit(conn)
    conn.close()
    return cluster


def fresh(cluster):
    conn = cluster.connect("postgres")
    with conn.cursor() as cur:
        cur.execute('DROP DATABASE IF EXISTS "fuzz" WITH (FORCE)')
        cur.execute('CREATE DATABASE "fuzz" TEMPLATE "%s"' % TEMPLATE)
        cur.execute('ALTER DATABASE "fuzz" SET search_path = "$user", public, extensions')
    conn.close()


def fetch(cluster, sql):
    return cluster.query("fuzz", sql)


def run_change(cluster, name, state, capsys):
    args = dict(cluster.login_args("fuzz"), sql_root=pgcluster.SQL_ROOT, change=name, state=state,
                variables=VARIABLES[name], lock_retry_delay=0.2)
    return pgcluster.run_module(capsys, stage4_change.main, args)


def schema(cluster):
    return pgcluster.schema_dump(cluster, "fuzz")


@settings(max_examples=EXAMPLES, deadline=None, derandomize=not os.environ.get("STAGE4_FUZZ_RANDOM"),
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow], database=None)
@given(chosen=decorations)
@example(chosen=[("column", 7), ("column", 9), ("replica_identity", 0), ("statistics", 1), ("column_setting", 0),
                 ("publication", 0), ("other_table_policy", 1), ("function", 2), ("matview", 1)])
@example(chosen=[("replica_identity", 2)])  # found by hand: the revert looked the index up in a partition tree
def test_a_decorated_table_is_carried_whole_or_refused_before_any_change(fuzz_cluster, capsys, chosen):
    cluster = fuzz_cluster
    fresh(cluster)
    # A column typed by the row type forbids altering the table afterwards: it comes last.
    ordered = sorted(enumerate(chosen), key=lambda item: item[1][0] == "typed_column")
    fetch(cluster, ";\n".join(DECORATIONS[kind](n, v) for n, (kind, v) in ordered))
    schema_before, rows_before = schema(cluster), fetch(cluster, ROWS)
    applied = run_change(cluster, OPT1, "applied", capsys)
    if applied.get("failed"):
        assert "Nothing was changed" in applied["msg"], (chosen, applied["msg"])
        assert any(kind in ("typed_column", "rule") for kind, _ in chosen) or "publication" in applied["msg"], (
            chosen, applied["msg"])
        assert (schema(cluster), fetch(cluster, ROWS)) == (schema_before, rows_before)
        return
    assert fetch(cluster, ROWS) == rows_before
    for name, state in ((OPT2, "applied"), (OPT2, "reverted"), (OPT1, "reverted")):
        result = run_change(cluster, name, state, capsys)
        assert not result.get("failed"), (chosen, name, state, result.get("msg"))
    assert fetch(cluster, ROWS) == rows_before
    assert schema(cluster) == schema_before, chosen
    assert fetch(cluster, "SELECT to_regnamespace('stage4_retired') IS NULL") == [(True,)]

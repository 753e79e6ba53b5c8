"""Issue 4 (security): no optimization and no rollback changes what the API roles see.

One throwaway cluster (pg_cron preloaded, as the stage4_pg_cron role leaves a self-managed server)
holds the reference database (251 features). The rollout is replayed with plugins/modules/stage4_change.py
itself (the tooling changes, then every entry of stage4_optimizations in
playbooks/group_vars/all.yml with its variables, then every revert, newest first), and after each
step the database is looked at as PostgREST looks at it: in a transaction, SET LOCAL ROLE and
request.jwt.claims, for four principals:

    anon          the anon role, no subject
    owner         authenticated, sub = the owner with the most private rows
    non_owner     authenticated, sub = another owner with private rows of its own
    service_role  the service role (BYPASSRLS)

What each principal sees through the API (the table, the view public.geometrias_publicas, the
set-returning RPCs search_geometrias and geometrias_no_raio with several argument sets, the
aggregate RPCs area_por_categoria, extensao_por_categoria and resumo_anual) must equal what it saw
on the original database, at every stage. Around the API, every partition of public.geometrias,
every materialized view and every relation the rollout created, read directly, must be refused
(insufficient_privilege) or show a principal no more than it sees through the parent table; the
same holds for functions the rollout created that the API roles may execute. After OPT1, rows
inserted by the owner through the parent are visible to the owner (and service_role) only.

Already covered elsewhere, and not repeated here: the catalog-level checks (RLS on every partition,
no grant to anon/authenticated on partitions, no materialized view readable by anon/authenticated:
stage4.assert_partitions_secured / assert_no_api_readable_matviews in every verify.sql, and
molecule/default); anon's and one owner's results of search and dashboard RPCs around OPT3/OPT5
alone (test_opt3_opt5_sql.py); anon and authenticated parent-table ids after a full rollout
(molecule/default). Here: every principal, every surface, every stage, rollbacks included.
"""
import contextlib
import io
import json
import math
import os
import sys

import psycopg2
import psycopg2.errors
import pytest
from ansible.module_utils.testing import patch_module_args

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPO = os.path.dirname(TESTS)
for _folder in (TESTS, REPO):
    if _folder not in sys.path:
        sys.path.insert(0, _folder)

import pgcluster  # noqa: E402
from ansible_collections.biblioteca.stage4.plugins.modules import stage4_change  # noqa: E402

DB = "BIBLIOTECA"
SQL_ROOT = os.path.join(REPO, "files", "sql")
# What the stage4_pg_cron role sets with ALTER SYSTEM, appended to postgresql.auto.conf.

_GROUP_VARS = pgcluster.group_vars()
TOOLING = _GROUP_VARS["stage4_tooling_changes"]
OPTIMIZATIONS = _GROUP_VARS["stage4_optimizations"]
STAGES = (["original", "tooling"] + [opt["id"] for opt in OPTIMIZATIONS]
          + ["%s_reverted" % opt["id"] for opt in reversed(OPTIMIZATIONS)])

PRINCIPALS = ("anon", "owner", "non_owner", "service_role")
DENIED = "denied"
SYSTEM_SCHEMAS = ("pg_catalog", "information_schema")

SP_BOX = "ST_MakeEnvelope(-46.9333, -23.8505, -46.3333, -23.2505, 4326)"
RJ_BOX = "ST_MakeEnvelope(-43.8, -23.2, -43.0, -22.2, 4326)"
# Arguments of search_geometrias: the default LIMIT cutting a visible set, words matching private
# rows of both owners, bounding boxes, phrase/or/negation syntax, no match.
SEARCH_ARGS = [
    "'parque'",
    "'curitiba', NULL, 500",
    "'chácara', NULL, 500",
    "'santa luzia', NULL, 500",
    "'\"área de preservação\" or lago', NULL, 500",
    "'parque', %s, 500" % SP_BOX,
    "'parque', %s, 3" % SP_BOX,
    "'rio -parque', %s, 20" % RJ_BOX,
    "'xyzzy inexistente'",
]
# What stage4_search_api.candidatos (OPT3's helper) is called with directly.
HELPER_ARGS = ["websearch_to_tsquery('portuguese', '%s'), NULL" % words
               for words in ("parque", "curitiba", "chácara", "santa luzia")]
YEARS = list(range(2018, 2028))
AREA_TOLERANCE = 1e-9  # float sums in another order (OPT5) may differ in their last bits


# --------------------------------------------------------------------------
# Acting as a principal
# --------------------------------------------------------------------------

class Denied(Exception):
    pass


def claims_of(principal, uids):
    """(role, request.jwt.claims) of a principal, as PostgREST sets them."""
    if principal == "anon":
        return "anon", {"role": "anon"}
    if principal == "service_role":
        return "service_role", {"role": "service_role"}
    return "authenticated", {"sub": uids[principal], "role": "authenticated"}


def as_principal(conn, principal, uids, sql, params=None, commit=False):
    """Rows of sql run as the principal, in a transaction rolled back (or committed) afterwards;
    raises Denied on insufficient_privilege."""
    role, claims = claims_of(principal, uids)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT set_config('request.jwt.claims', %s, true)", (json.dumps(claims),))
            cur.execute("SET LOCAL ROLE %s" % role)
            cur.execute(sql, params)
            rows = cur.fetchall() if cur.description else cur.rowcount
        if commit:
            conn.commit()
        return rows
    except psycopg2.errors.InsufficientPrivilege as error:
        raise Denied(str(error).strip()) from error
    finally:
        conn.rollback()


def as_admin(conn, sql, params=None):
    try:
        with conn.cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchall() if cur.description else []
    finally:
        conn.rollback()


# --------------------------------------------------------------------------
# The snapshot: what each principal sees
# --------------------------------------------------------------------------

def api_surfaces(points):
    """{surface: (kind, sql)}: kind 'ids' (ids in the surface's order) or 'agg' (rows)."""
    surfaces = {
        "table public.geometrias": ("ids", "SELECT id FROM public.geometrias ORDER BY id"),
        "view public.geometrias_publicas": ("ids", "SELECT id FROM public.geometrias_publicas ORDER BY id"),
    }
    for args in SEARCH_ARGS:
        surfaces["rpc search_geometrias(%s)" % args] = (
            "ids", "SELECT s.id FROM public.search_geometrias(%s) WITH ORDINALITY s ORDER BY s.ordinality"
            % args.replace("%", "%%"))
    for lon, lat, radius in points:
        args = "%r, %r, %d" % (lon, lat, radius)
        surfaces["rpc geometrias_no_raio(%s)" % args] = (
            "ids", "SELECT s.id FROM public.geometrias_no_raio(%s) WITH ORDINALITY s ORDER BY s.ordinality" % args)
    for year in YEARS + [None]:
        args = "NULL" if year is None else str(year)
        surfaces["rpc area_por_categoria(%s)" % args] = (
            "agg", "SELECT categoria, n, total_area_m2 FROM public.area_por_categoria(%s) WITH ORDINALITY s "
                   "ORDER BY s.ordinality" % args)
    surfaces["rpc extensao_por_categoria()"] = (
        "agg", "SELECT categoria, n, encode(ST_AsEWKB(extensao), 'hex') FROM public.extensao_por_categoria() WITH ORDINALITY s "
               "ORDER BY s.ordinality")
    surfaces["rpc resumo_anual()"] = (
        "agg", "SELECT ano, categoria, n, total_area_m2 FROM public.resumo_anual() WITH ORDINALITY s "
               "ORDER BY s.ordinality")
    return surfaces


def relation_inventory(conn):
    """[(relation, relkind, schema, columns)] of every non-system relation."""
    return as_admin(conn, """
        SELECT c.oid::regclass::text, c.relkind::text, n.nspname,
               array(SELECT a.attname::text FROM pg_attribute a
                     WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum)
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f')
          AND n.nspname NOT IN ('pg_catalog', 'information_schema')
          AND n.nspname NOT LIKE 'pg\\_toast%%' AND n.nspname NOT LIKE 'pg\\_temp%%'
        ORDER BY 1""")


def partitions(conn):
    return {name for (name,) in as_admin(
        conn, "SELECT relid::regclass::text FROM pg_partition_tree('public.geometrias') "
              "WHERE relid <> 'public.geometrias'::regclass")}


def surrounding_relations(conn, original):
    """Partitions of public.geometrias, every materialized view, and every relation that was not in
    the original database (in the schemas the rollout created, or new in old schemas):
    {relation: columns}."""
    parts = partitions(conn)
    found = {}
    for name, relkind, schema, columns in relation_inventory(conn):
        if name in parts or relkind == "m" or schema not in original["schemas"] or name not in original["relations"]:
            found[name] = columns
    return found


def read_relation(conn, principal, uids, name, columns):
    """What a principal reads from a relation directly: DENIED, {"ids": [...]}, or
    {"groups": {key: (n, extent)}} for aggregate views, or {"rows": count}."""
    try:
        if "id" in columns:
            return {"ids": sorted(r for (r,) in as_principal(conn, principal, uids, "SELECT id FROM %s" % name))}
        if {"categoria", "n"} <= set(columns):
            keys = [c for c in ("ano_inicio", "categoria") if c in columns]
            extent = ", min(x_min), min(y_min), max(x_max), max(y_max)" if "x_min" in columns else ""
            rows = as_principal(conn, principal, uids, "SELECT %s, sum(n)::bigint%s FROM %s GROUP BY %s" % (
                ", ".join(keys), extent, name, ", ".join(keys)))
            return {"groups": {tuple(r[:len(keys)]): tuple(r[len(keys):]) for r in rows}, "keys": keys}
        return {"rows": as_principal(conn, principal, uids, "SELECT count(*) FROM %s" % name)[0][0]}
    except Denied:
        return DENIED


def table_groups(conn, principal, uids, keys, with_extent):
    """The groups an aggregate view should show a principal, computed from the parent table."""
    exprs = {"ano_inicio": "date_trunc('year', data_referencia::timestamp)::date", "categoria": "categoria"}
    extent = (", ST_XMin(ST_Extent(geom)), ST_YMin(ST_Extent(geom)), ST_XMax(ST_Extent(geom)), "
              "ST_YMax(ST_Extent(geom))" if with_extent else "")
    rows = as_principal(conn, principal, uids, "SELECT %s, count(*)%s FROM public.geometrias GROUP BY %s" % (
        ", ".join(exprs[k] for k in keys), extent, ", ".join(str(i + 1) for i in range(len(keys)))))
    return {tuple(r[:len(keys)]): tuple(r[len(keys):]) for r in rows}


FUNCTIONS = """
    SELECT p.oid::regprocedure::text, p.proretset
    FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
    WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'cron')
      AND EXISTS (SELECT 1 FROM unnest(ARRAY['anon', 'authenticated', 'service_role']) r
                  WHERE has_schema_privilege(r, n.oid, 'USAGE') AND has_function_privilege(r, p.oid, 'EXECUTE'))
    ORDER BY 1"""


def api_executable_functions(conn, original):
    """Functions the original database did not have (pg_cron's own schema aside) that some API role
    may call: [(signature, returns a set?)]."""
    return [(sig, retset) for sig, retset in as_admin(conn, FUNCTIONS) if sig not in original["functions"]]


def take_snapshot(conn, uids, points, original=None):
    snap = {"api": {}, "relations": {}, "functions": {}, "expected_groups": {}}
    for surface, (kind, sql) in api_surfaces(points).items():
        snap["api"][surface] = {}
        for principal in PRINCIPALS:
            try:
                rows = as_principal(conn, principal, uids, sql)
                snap["api"][surface][principal] = [r[0] for r in rows] if kind == "ids" else [tuple(r) for r in rows]
            except Denied:
                snap["api"][surface][principal] = DENIED
    if original is None:  # the original database: what it holds, to tell new relations apart
        scope = {"schemas": {s for (s,) in as_admin(conn, "SELECT nspname FROM pg_namespace")},
                 "relations": {name for name, *_ in relation_inventory(conn)},
                 "functions": {sig for sig, _ in as_admin(conn, FUNCTIONS)}}
    else:
        scope = original["scope"]
    snap["scope"] = scope
    snap["partitions"] = partitions(conn)
    for name, columns in surrounding_relations(conn, scope).items():
        snap["relations"][name] = {p: read_relation(conn, p, uids, name, columns) for p in PRINCIPALS}
        for principal, seen in snap["relations"][name].items():
            if isinstance(seen, dict) and "groups" in seen:
                snap["expected_groups"][(name, principal)] = table_groups(
                    conn, principal, uids, seen["keys"], "x_min" in columns)
    for signature, retset in api_executable_functions(conn, scope):
        snap["functions"][signature] = {}
        for principal in PRINCIPALS:
            calls = {}
            if signature.startswith("stage4_search_api.candidatos("):
                for args in HELPER_ARGS:
                    try:
                        calls[args] = sorted(r for (r,) in as_principal(
                            conn, principal, uids, "SELECT id FROM stage4_search_api.candidatos(%s)" % args))
                    except Denied:
                        calls[args] = DENIED
            elif not retset and "()" in signature:
                try:
                    calls["()"] = as_principal(conn, principal, uids, "SELECT %s" % signature)[0][0]
                except Denied:
                    calls["()"] = DENIED
            else:
                calls = None  # a function this test does not know how to call
            snap["functions"][signature][principal] = calls
    return snap


# --------------------------------------------------------------------------
# Comparisons, with readable differences
# --------------------------------------------------------------------------

def describe_ids(before, after):
    if before == DENIED or after == DENIED:
        return "was %s, now %s" % (summary(before), summary(after))
    missing = sorted(set(before) - set(after))
    extra = sorted(set(after) - set(before))
    if missing or extra:
        return "missing ids %s, extra ids %s (%d -> %d rows)" % (missing, extra, len(before), len(after))
    if before != after:
        return "same ids, different order or multiplicity: %s -> %s" % (before, after)
    return None


def summary(value):
    return value if value == DENIED else "%d rows" % len(value)


def same_aggregate_row(a, b):
    if len(a) != len(b):
        return False
    for x, y in zip(a, b):
        if isinstance(x, float) and isinstance(y, float):
            if not math.isclose(x, y, rel_tol=AREA_TOLERANCE):
                return False
        elif x != y:
            return False
    return True


def describe_aggregate(before, after):
    if before == DENIED or after == DENIED:
        return None if before == after else "was %s, now %s" % (summary(before), summary(after))
    if len(before) == len(after) and all(same_aggregate_row(a, b) for a, b in zip(before, after)):
        return None
    gone = [row for row in before if not any(same_aggregate_row(row, other) for other in after)]
    new = [row for row in after if not any(same_aggregate_row(row, other) for other in before)]
    return "rows no longer returned %s, rows now returned %s" % (gone, new) if gone or new else \
        "same rows in another order: %s -> %s" % (before, after)


def api_differences(stage, original, snap):
    problems = []
    for surface, by_principal in original["api"].items():
        for principal in PRINCIPALS:
            before, after = by_principal[principal], snap["api"][surface][principal]
            if surface.startswith(("rpc area", "rpc extensao", "rpc resumo")):
                diff = describe_aggregate(before, after)
            else:
                diff = describe_ids(before, after)
            if diff:
                problems.append("%s: %s: %s: %s" % (stage, principal, surface, diff))
    return problems


def surrounding_leaks(stage, snap):
    """Every directly read relation: refused, or no more than the principal's parent-table ids."""
    problems = []
    for name, by_principal in sorted(snap["relations"].items()):
        for principal in PRINCIPALS:
            seen = by_principal[principal]
            if seen == DENIED:
                continue
            parent = snap["api"]["table public.geometrias"][principal]
            allowed = set() if parent == DENIED else set(parent)
            if "ids" in seen:
                extra = sorted(set(seen["ids"]) - allowed)
                if extra:
                    problems.append("%s: %s: direct SELECT on %s shows %d ids it cannot see through "
                                    "public.geometrias: %s" % (stage, principal, name, len(extra), extra))
            elif "groups" in seen:
                expected = snap["expected_groups"][(name, principal)]
                if seen["groups"] != expected:
                    wrong = sorted(set(seen["groups"].items()) ^ set(expected.items()), key=str)
                    problems.append("%s: %s: direct SELECT on %s shows aggregates other than those of its "
                                    "visible rows: %s" % (stage, principal, name, wrong))
            elif seen["rows"]:
                problems.append("%s: %s: direct SELECT on %s returns %d rows that cannot be checked against "
                                "public.geometrias" % (stage, principal, name, seen["rows"]))
    return problems


def function_leaks(stage, snap):
    problems = []
    for signature, by_principal in sorted(snap["functions"].items()):
        for principal in PRINCIPALS:
            calls = by_principal[principal]
            if calls is None:
                problems.append("%s: %s may execute %s, which this test cannot check" % (stage, principal, signature))
                continue
            parent = snap["api"]["table public.geometrias"][principal]
            allowed = set() if parent == DENIED else set(parent)
            for args, seen in calls.items():
                if isinstance(seen, list):
                    extra = sorted(set(seen) - allowed)
                    if extra:
                        problems.append("%s: %s: %s called directly with (%s) returns %d ids it cannot see "
                                        "through public.geometrias: %s" % (
                                            stage, principal, signature.split("(")[0], args, len(extra), extra))
    return problems


# --------------------------------------------------------------------------
# The rollout, replayed with the stage4_change module
# --------------------------------------------------------------------------

def run_stage4_change(cluster, change, state="applied", variables=None, repeatable=False):
    args = dict(cluster.login_args(DB), change=change, sql_root=SQL_ROOT, state=state,
                variables=dict(variables or {}), repeatable=repeatable, run_id="test_api_visibility")
    out = io.StringIO()
    with patch_module_args(args), contextlib.redirect_stdout(out):
        try:
            stage4_change.main()
        except SystemExit:
            pass
    result = json.loads(out.getvalue())
    if result.get("failed"):
        raise RuntimeError("stage4_change %s (%s) failed: %s" % (change, state, result.get("msg")))
    expected = "deployed" if state == "applied" else "reverted"
    if result.get("action") not in (expected, "redeployed"):
        raise RuntimeError("stage4_change %s (%s): action %s" % (change, state, result.get("action")))
    return result


class Rollout:
    """Walks the stages in order on first demand, keeping each stage's snapshot."""

    def __init__(self, cluster):
        self.cluster = cluster
        self.conn = cluster.connect(DB, autocommit=False)
        self.snapshots = {}
        self.insert_report = None
        self.broken = None
        self.done = 0
        self.uids, self.private = self._pick_principals()
        self.points = self._pick_points()

    def _pick_principals(self):
        """The owner with the most private rows, and the next one, who owns private rows too."""
        owners = as_admin(self.conn, "SELECT owner_id::text FROM public.geometrias WHERE NOT publico "
                                     "GROUP BY owner_id ORDER BY count(*) DESC, owner_id LIMIT 2")
        uids = {"owner": owners[0][0], "non_owner": owners[1][0]}
        private = {who: {i for (i,) in as_admin(self.conn, "SELECT id FROM public.geometrias WHERE NOT publico "
                                                           "AND owner_id = %s", (uid,))}
                   for who, uid in uids.items()}
        return uids, private

    def _pick_points(self):
        """A point on the first private row of each owner (radius 30 and 60 km) and central São Paulo."""
        points = []
        for who in ("owner", "non_owner"):
            lon, lat = as_admin(self.conn, "SELECT ST_X(p), ST_Y(p) FROM (SELECT ST_PointOnSurface(geom) p "
                                           "FROM public.geometrias WHERE id = %s) s", (min(self.private[who]),))[0]
            points += [(round(lon, 6), round(lat, 6), 30000), (round(lon, 6), round(lat, 6), 60000)]
        return points + [(-46.63, -23.55, 20000)]

    def snapshot(self):
        return take_snapshot(self.conn, self.uids, self.points, self.snapshots.get("original"))

    def step(self, stage):
        if stage == "original":
            pass
        elif stage == "tooling":
            for tool in TOOLING:
                run_stage4_change(self.cluster, tool["change"], repeatable=tool.get("repeatable", False))
        elif not stage.endswith("_reverted"):
            opt = next(o for o in OPTIMIZATIONS if o["id"] == stage)
            if opt.get("server_role") == "stage4_pg_cron":
                with self.conn, self.conn.cursor() as cur:  # what the role does, committed
                    cur.execute("CREATE EXTENSION IF NOT EXISTS pg_cron")
            run_stage4_change(self.cluster, opt["change"], variables=opt.get("variables"))
            if stage == OPTIMIZATIONS[0]["id"]:
                self.insert_report = owner_inserts(self.conn, self.uids, self.points[0])
        else:
            opt = next(o for o in OPTIMIZATIONS if o["id"] == stage[:-len("_reverted")])
            run_stage4_change(self.cluster, opt["change"], state="reverted", variables=opt.get("variables"))
        self.snapshots[stage] = self.snapshot()

    def at(self, stage):
        target = STAGES.index(stage)
        while self.done <= target:
            if self.broken:
                pytest.fail("the rollout could not reach %s: %s" % (stage, self.broken))
            current = STAGES[self.done]
            try:
                self.step(current)
            except Exception as error:  # noqa: BLE001  (every later stage must say why it cannot run)
                self.broken = "%s: %s" % (current, error)
                raise
            self.done += 1
        return self.snapshots[stage]

    def close(self):
        self.conn.close()


def owner_inserts(conn, uids, point):
    """After OPT1: the owner inserts two private rows through the parent (one in a yearly partition,
    one in DEFAULT), everyone looks, the non-owner tries to write them, the owner deletes them."""
    lon, lat, _ = point
    report = {"visible": {}, "search": {}, "radius": {}, "partitions": {}, "area_2024": {}}
    before_area = {p: as_principal(conn, p, uids, "SELECT coalesce(sum(n), 0) FROM public.area_por_categoria(2024)")
                   [0][0] for p in PRINCIPALS}
    inserted = as_principal(conn, "owner", uids, """
        INSERT INTO public.geometrias (nome, categoria, descricao, geom, area_m2, data_referencia, owner_id, publico)
        SELECT 'Marco Stage Quatro ' || d, 'lote', 'Linha de teste de visibilidade',
               ST_Multi(ST_Buffer(ST_SetSRID(ST_MakePoint(%s, %s), 4326), 0.001)), 1234.5, d::date, %s, false
        FROM unnest(ARRAY['2024-06-01', '2031-03-01']) d
        RETURNING id""", (lon, lat, uids["owner"]), commit=True)
    ids = sorted(i for (i,) in inserted)
    report["ids"] = ids
    report["routed"] = dict(as_admin(conn, "SELECT id, tableoid::regclass::text FROM public.geometrias "
                                           "WHERE id = ANY(%s)", (ids,)))
    for principal in PRINCIPALS:
        report["visible"][principal] = sorted(i for (i,) in as_principal(
            conn, principal, uids, "SELECT id FROM public.geometrias WHERE id = ANY(%s)", (ids,)))
        report["search"][principal] = sorted(i for (i,) in as_principal(
            conn, principal, uids, "SELECT id FROM public.search_geometrias('stage quatro', NULL, 500)"))
        report["radius"][principal] = sorted(set(ids) & {i for (i,) in as_principal(
            conn, principal, uids, "SELECT id FROM public.geometrias_no_raio(%s, %s, 1000)", (lon, lat))})
        report["area_2024"][principal] = as_principal(
            conn, principal, uids, "SELECT coalesce(sum(n), 0) FROM public.area_por_categoria(2024)")[0][0] \
            - before_area[principal]
        report["partitions"][principal] = {}
        for part in sorted(set(report["routed"].values())):
            try:
                report["partitions"][principal][part] = sorted(i for (i,) in as_principal(
                    conn, principal, uids, "SELECT id FROM %s WHERE id = ANY(%%s)" % part, (ids,)))
            except Denied:
                report["partitions"][principal][part] = DENIED
    report["view"] = {p: sorted(i for (i,) in as_principal(
        conn, p, uids, "SELECT id FROM public.geometrias_publicas WHERE id = ANY(%s)", (ids,))) for p in PRINCIPALS}
    # The non-owner can neither change nor delete them, nor insert a row in the owner's name.
    report["non_owner_update"] = as_principal(conn, "non_owner", uids, "UPDATE public.geometrias SET publico = true "
                                                                       "WHERE id = ANY(%s)", (ids,))
    report["non_owner_delete"] = as_principal(conn, "non_owner", uids, "DELETE FROM public.geometrias "
                                                                       "WHERE id = ANY(%s)", (ids,))
    try:
        as_principal(conn, "non_owner", uids, """
            INSERT INTO public.geometrias (nome, categoria, geom, data_referencia, owner_id, publico)
            VALUES ('intruso', 'lote', ST_Multi(ST_Buffer(ST_SetSRID(ST_MakePoint(%s, %s), 4326), 0.001)),
                    '2024-06-02', %s, false)""", (lon, lat, uids["owner"]))
        report["non_owner_insert_as_owner"] = "accepted"
    except Denied as refusal:
        report["non_owner_insert_as_owner"] = "refused: %s" % refusal
    report["owner_delete"] = as_principal(conn, "owner", uids, "DELETE FROM public.geometrias WHERE id = ANY(%s)",
                                          (ids,), commit=True)
    report["left"] = as_admin(conn, "SELECT count(*) FROM public.geometrias WHERE id = ANY(%s) OR nome = 'intruso'",
                              (ids,))[0][0]
    return report


# --------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def rollout():
    with pgcluster.running_cluster() as cluster:
        cluster.preload_pg_cron(DB)
        cluster.build_reference_db(DB, features=251)
        walker = Rollout(cluster)
        try:
            yield walker
        finally:
            walker.close()


# --------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------

def test_the_original_snapshot_tells_the_principals_apart(rollout):
    """Otherwise comparing snapshots would prove little."""
    snap = rollout.at("original")
    api = snap["api"]
    everything = set(range(1, 252))
    public = {i for (i,) in as_admin(rollout.conn, "SELECT id FROM public.geometrias WHERE publico")}
    owner_private, non_owner_private = rollout.private["owner"], rollout.private["non_owner"]
    table = {p: set(api["table public.geometrias"][p]) for p in PRINCIPALS}
    assert table["service_role"] == everything
    assert table["anon"] == public and 0 < len(public) < 251
    assert table["owner"] == public | owner_private and len(owner_private) >= 2
    assert table["non_owner"] == public | non_owner_private and non_owner_private
    assert not owner_private & non_owner_private
    for principal in PRINCIPALS:
        assert set(api["view public.geometrias_publicas"][principal]) == public, principal

    def seen(principal, prefix):
        return set().union(*(set(v[principal]) for k, v in api.items() if k.startswith(prefix)))
    for prefix in ("rpc search_geometrias", "rpc geometrias_no_raio"):
        assert seen("owner", prefix) & owner_private, prefix  # the owner finds its private rows
        assert seen("non_owner", prefix) & non_owner_private, prefix
        assert not seen("non_owner", prefix) & owner_private, prefix
        assert not seen("anon", prefix) - public, prefix
        assert seen("service_role", prefix) - public, prefix
    owners_in_radius = as_admin(rollout.conn, "SELECT count(DISTINCT owner_id) FROM public.geometrias_no_raio(%s, %s, %s)",
                                rollout.points[1])[0][0]
    assert owners_in_radius >= 3
    assert len(api["rpc search_geometrias('parque')"]["service_role"]) == 50  # the default LIMIT cuts
    for surface in ("rpc resumo_anual()", "rpc extensao_por_categoria()", "rpc area_por_categoria(2021)"):
        results = [api[surface][p] for p in PRINCIPALS]
        assert all(results) and len({repr(r) for r in results}) == 4, surface


@pytest.mark.parametrize("stage", STAGES[1:])
def test_api_roles_see_exactly_what_they_saw(rollout, stage):
    snap = rollout.at(stage)
    problems = api_differences(stage, rollout.at("original"), snap)
    assert not problems, "what the API roles see changed:\n" + "\n".join(problems)


@pytest.mark.parametrize("stage", STAGES)
def test_no_partition_matview_or_new_relation_shows_more(rollout, stage):
    snap = rollout.at(stage)
    problems = surrounding_leaks(stage, snap)
    assert not problems, "relations read directly show more than the parent table:\n" + "\n".join(problems)
    if stage in [o["id"] for o in OPTIMIZATIONS]:
        assert snap["relations"], "%s: nothing around public.geometrias was examined" % stage
        # every partition and materialized view is refused to anon and authenticated
        exposed = [(name, p) for name, seen in snap["relations"].items()
                   if name in snap["partitions"] or name.startswith(("stage4_search.", "stage4_dashboard."))
                   for p in ("anon", "owner", "non_owner") if seen[p] != DENIED]
        assert not exposed, "%s: readable by API roles: %s" % (stage, exposed)


@pytest.mark.parametrize("stage", STAGES)
def test_no_function_of_the_rollout_shows_more(rollout, stage):
    snap = rollout.at(stage)
    problems = function_leaks(stage, snap)
    assert not problems, "functions the API roles may call show more than the parent table:\n" + "\n".join(problems)


def test_rows_inserted_by_the_owner_after_opt1_are_the_owners_only(rollout):
    rollout.at(OPTIMIZATIONS[0]["id"])
    report = rollout.insert_report
    ids = report["ids"]
    assert len(ids) == 2
    assert sorted(report["routed"].values()) == ["geometrias_default", "geometrias_p2024"], report["routed"]
    for principal, expected in (("owner", ids), ("service_role", ids), ("non_owner", []), ("anon", [])):
        assert report["visible"][principal] == expected, ("table", principal, report["visible"])
        assert report["search"][principal] == expected, ("search_geometrias", principal, report["search"])
        assert report["radius"][principal] == expected, ("geometrias_no_raio", principal, report["radius"])
        assert report["area_2024"][principal] == (1 if expected else 0), ("area_por_categoria", principal)
        assert report["view"][principal] == [], ("a private row in geometrias_publicas", principal)
    for principal in ("anon", "owner", "non_owner"):
        assert set(report["partitions"][principal].values()) == {DENIED}, (principal, report["partitions"])
    assert report["non_owner_update"] == 0 and report["non_owner_delete"] == 0
    assert report["non_owner_insert_as_owner"].startswith("refused"), report["non_owner_insert_as_owner"]
    assert report["owner_delete"] == 2 and report["left"] == 0

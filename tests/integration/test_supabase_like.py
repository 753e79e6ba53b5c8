"""The five optimizations and their reverts on a database set up as Supabase sets one up (tests/supabase_like.py):
postgres, the role that deploys, is not a superuser; PostGIS and pg_cron belong to supabase_admin; the
application lives in database postgres. Through plugins/modules/stage4_change.py with the variables of
playbooks/group_vars/all.yml, as the playbook applies them."""

import pytest

import pgcluster
from ansible_collections.biblioteca.stage4.plugins.modules import stage4_change
import supabase_like

ROWS = "SELECT count(*), stage4.table_checksum('public.geometrias') FROM public.geometrias"


@pytest.fixture(scope="module")
def supabase():
    with pgcluster.running_cluster() as cluster:
        cluster.admin_password = supabase_like.build(cluster)
        yield cluster


def optimizations():
    return pgcluster.group_vars()["stage4_optimizations"]


def change(capsys, cluster, name, state, variables=None):
    args = dict(cluster.login_args(supabase_like.DATABASE), sql_root=pgcluster.SQL_ROOT, change=name, state=state,
                variables=variables or {}, lock_retry_delay=0.2, repeatable=name in pgcluster.TOOLKIT)
    return pgcluster.run_module(capsys, stage4_change.main, args)


def fetch(cluster, sql):
    return cluster.query(supabase_like.DATABASE, sql)


def schema(cluster):
    """Every schema but the rollout's own, read by supabase_admin (postgres may not read them all)."""
    return pgcluster.schema_dump(cluster, supabase_like.DATABASE, "supabase_admin", cluster.admin_password)


def test_the_deploying_role_is_not_a_superuser(supabase):
    assert fetch(supabase, "SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = current_user") == [(False, True)]
    assert fetch(supabase, "SELECT pg_get_userbyid(extowner) FROM pg_extension WHERE extname IN ('postgis', 'pg_cron')") == [
        ("supabase_admin",), ("supabase_admin",)]


def test_all_five_apply_and_revert_as_postgres_leaving_the_schema_and_rows_as_they_were(supabase, capsys):
    for tool in pgcluster.TOOLKIT:
        assert not change(capsys, supabase, tool, "applied").get("failed")
    schema_before, rows_before = schema(supabase), fetch(supabase, ROWS)
    applied = []
    for optimization in optimizations():
        result = change(capsys, supabase, optimization["change"], "applied", optimization.get("variables"))
        assert result.get("action") == "deployed", (optimization["id"], result.get("msg"))
        applied.append(optimization)
    # The jobs run as postgres; nothing the rollout made is readable by the API roles around RLS.
    assert fetch(supabase, "SELECT DISTINCT username FROM cron.job WHERE jobname LIKE 'stage4%'") == [("postgres",)]
    assert fetch(supabase, "SELECT count(*) FROM pg_class c, (VALUES ('anon'), ('authenticated')) r(role) "
                           "WHERE c.relkind IN ('m', 'r', 'p') AND c.relnamespace::regnamespace::text LIKE 'stage4%' "
                           "AND has_table_privilege(r.role, c.oid, 'SELECT')") == [(0,)]
    assert fetch(supabase, ROWS) == rows_before
    for optimization in reversed(applied):
        result = change(capsys, supabase, optimization["change"], "reverted", optimization.get("variables"))
        assert result.get("action") == "reverted", (optimization["id"], result.get("msg"))
    assert fetch(supabase, ROWS) == rows_before
    assert schema(supabase) == schema_before

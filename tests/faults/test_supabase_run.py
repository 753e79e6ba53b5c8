"""The playbooks as a user runs them on Supabase (issue 21): `stage4.yml` then `playbooks/rollback.yml`
against a database set up as Supabase sets one up (tests/supabase_like.py: postgres is not a superuser,
PostGIS and pg_cron belong to supabase_admin), over TLS only (ssl_mode require; the server rejects any
connection without TLS), with a password, as the managed-server settings of the prod inventory say."""
import pytest

import pgcluster
import supabase_like
from stage4_runs import run_stage4

SUPABASE = ["-e", "stage4_db_ssl_mode=require", "-e", '{"stage4_managed_server": true}']
ROWS = "SELECT count(*), md5(string_agg(g::text, '|' ORDER BY id)) FROM public.geometrias g"


@pytest.fixture(scope="module")
def supabase():
    with pgcluster.running_cluster() as cluster:
        cluster.admin_password = supabase_like.build(cluster)
        supabase_like.require_tls(cluster)
        yield cluster


def as_admin(cluster, sql):
    return cluster.query(supabase_like.DATABASE, sql, user="supabase_admin", password=cluster.admin_password)


def schema(cluster):
    return pgcluster.schema_dump(cluster, supabase_like.DATABASE, "supabase_admin", cluster.admin_password,
                                 ("stage4", "stage4_benchmark"), sslmode="require")


def test_rollout_then_rollback_on_supabase_over_tls(supabase):
    schema_before, rows_before = schema(supabase), as_admin(supabase, ROWS)
    rc, output = run_stage4(supabase, supabase_like.DATABASE, *SUPABASE)
    assert rc == 0, output[-3000:]
    assert "completed: 5 applied" in output
    assert as_admin(supabase, "SELECT DISTINCT username FROM cron.job WHERE jobname LIKE 'stage4%'") == [("postgres",)]
    assert as_admin(supabase, ROWS) == rows_before
    rc, output = run_stage4(supabase, supabase_like.DATABASE, *SUPABASE, playbook="playbooks/rollback.yml")
    assert rc == 0, output[-3000:]
    assert "reverted opt5, opt4, opt3, opt2, opt1" in output
    assert as_admin(supabase, ROWS) == rows_before
    assert schema(supabase) == schema_before

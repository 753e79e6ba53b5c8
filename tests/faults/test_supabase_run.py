"""The playbooks as a user runs them on Supabase (issue 21): `stage4.yml` then `playbooks/rollback.yml`
against a database set up as Supabase sets one up (tests/supabase_like.py: postgres is not a superuser,
PostGIS and pg_cron belong to supabase_admin), over TLS only (ssl_mode require; the server rejects any
connection without TLS), with a password, as the managed-server settings of the prod inventory say."""
import os
import subprocess

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
    conn = supabase_like.admin_connect(cluster, cluster.admin_password)
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
            return cur.fetchall()
    finally:
        conn.close()


def schema(cluster):
    done = subprocess.run(["pg_dump", "--schema-only", "-N", "stage4", "-N", "stage4_benchmark", "-h", cluster.host,
                           "-p", str(cluster.port), "-U", "supabase_admin", supabase_like.DATABASE], check=True,
                          capture_output=True, text=True,
                          env=dict(os.environ, PGPASSWORD=cluster.admin_password, PGSSLMODE="require"))
    return [line for line in done.stdout.splitlines() if not line.startswith(("\\restrict", "\\unrestrict"))]


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

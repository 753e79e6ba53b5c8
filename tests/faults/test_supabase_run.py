"""The playbooks as a user runs them on Supabase (issue 21): `stage4.yml` then `playbooks/rollback.yml`
against a database set up as Supabase sets one up (tests/supabase_like.py: postgres is not a superuser,
PostGIS and pg_cron belong to supabase_admin), over TLS only (ssl_mode require; the server rejects any
connection without TLS), with a password, as the managed-server settings of the prod inventory say."""
import json

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


def roll_out_and_back(cluster, *extra, outcome, reverted, after_rollout):
    """stage4.yml with extra, then playbooks/rollback.yml with no extra variable: every row and the schema as
    before, seen by supabase_admin; after_rollout checks the rolled-out database."""
    schema_before, rows_before = schema(cluster), as_admin(cluster, ROWS)
    rc, output = run_stage4(cluster, supabase_like.DATABASE, *SUPABASE, *extra)
    assert rc == 0, output[-3000:]
    assert outcome in output
    after_rollout()
    assert as_admin(cluster, ROWS) == rows_before
    rc, output = run_stage4(cluster, supabase_like.DATABASE, *SUPABASE, playbook="playbooks/rollback.yml")
    assert rc == 0, output[-3000:]
    assert reverted in output
    assert as_admin(cluster, ROWS) == rows_before
    assert schema(cluster) == schema_before


def test_rollout_then_rollback_on_supabase_over_tls(supabase):
    def jobs_run_as_postgres():
        assert as_admin(supabase, "SELECT DISTINCT username FROM cron.job WHERE jobname LIKE 'stage4%'") == [("postgres",)]
    roll_out_and_back(supabase, outcome="completed: 5 applied", reverted="reverted opt5, opt4, opt3, opt2, opt1",
                      after_rollout=jobs_run_as_postgres)


# As prod runs (issue 21's "done when"): OPT1 decides from the data, every query is measured as the owner,
# anon and an authenticated user.
DECIDE_FROM_THE_DATA = ["-e", "stage4_min_table_bytes=auto", "-e", json.dumps({"stage4_benchmark_roles": [
    {"label": "", "role": ""}, {"label": "anon", "role": "anon"},
    {"label": "authenticated", "role": "authenticated", "claims": "{{ stage4_benchmark_authenticated_claims }}"}]})]


@pytest.fixture(scope="module")
def users_supabase():
    """Supabase-like, filled with real census-tract outlines, with the policies and RPCs in the users' own
    words (tests/fixtures/sql/user_shaped), written by postgres as a user would."""
    with pgcluster.running_cluster() as cluster:
        cluster.admin_password = supabase_like.build(cluster, dataset="real")
        for name in ("policies.sql", "rpcs.sql"):
            cluster.query(supabase_like.DATABASE, pgcluster.fixture_sql("user_shaped", name))
        supabase_like.require_tls(cluster)
        yield cluster


def test_rollout_then_rollback_on_a_users_supabase_database(users_supabase):
    """On the database users have: the table is too small to partition or to keep materialized copies of
    (OPT1, OPT2, OPT4 and OPT5 decline, each saying why, and OPT3 leaves the search as it is), OPT3 rewrites
    the radius RPC it recognises and passes its gate, and the rollback, with no extra variable, restores
    every schema and row."""
    def recognised_rpcs_rewritten():
        assert as_admin(users_supabase, "SELECT proname FROM pg_proc WHERE prosrc LIKE '%stage4_dashboard_api%' "
                                        "OR prosrc LIKE '%stage4_search_api.candidatos%' OR prosrc LIKE '%stage4_ponto%' "
                                        "ORDER BY 1") == [("geometrias_no_raio",)]
    roll_out_and_back(users_supabase, *DECIDE_FROM_THE_DATA, outcome="completed: 1 applied, 0 already applied, 4 declined",
                      reverted="reverted opt3", after_rollout=recognised_rpcs_rewritten)

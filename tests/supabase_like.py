"""A database set up the way Supabase sets one up, for the tests (issue 21).

Written from what the init scripts and migrations of Supabase's image do (the supabase/postgres
repository, migrations/db: init-scripts/00000000000000-initial-schema.sql, 00000000000003-post-setup.sql,
migrations/10000000000000_demote-postgres.sql, 20231020085357_revoke_writes_on_cron_job_from_postgres.sql,
20230306081037_grant_pg_monitor_to_postgres.sql, 20240606060239_grant_predefined_roles_to_postgres.sql,
20230201083204_grant_auth_roles_to_postgres.sql, 20230529180330_alter_api_roles_for_inherit.sql, and
the PostgREST event triggers), not copied from them:

- supabase_admin is the superuser; postgres, the role users log in as, is NOT a superuser
  (NOSUPERUSER CREATEDB CREATEROLE LOGIN REPLICATION BYPASSRLS) and owns database postgres, where the
  application lives;
- the API roles anon, authenticated (statement_timeout 3 s and 8 s), service_role (BYPASSRLS) and
  authenticator; default privileges that open what postgres or supabase_admin create in public to all of them;
- extensions in schema extensions, created by supabase_admin (as the dashboard does): PostGIS, and
  pg_cron in database postgres, whose cron.job postgres may read but not write;
- the publication supabase_realtime, owned by postgres;
- event triggers, owned by supabase_admin, that tell PostgREST to reload its schema after DDL.

    with pgcluster.running_cluster() as cluster:
        admin_password = supabase_like.build(cluster)   # postgres is demoted: use supabase_admin to inspect
"""
import os
import secrets
import subprocess
import sys

import psycopg2

import pgcluster

DATABASE = "postgres"

# As the bootstrap superuser (postgres), before anything else: the superuser Supabase's image runs as.
ADMIN = "CREATE ROLE supabase_admin SUPERUSER CREATEDB CREATEROLE REPLICATION BYPASSRLS LOGIN PASSWORD %s"

# As supabase_admin, in database postgres.
PLATFORM = r"""
CREATE PUBLICATION supabase_realtime;
ALTER PUBLICATION supabase_realtime OWNER TO postgres;

CREATE ROLE anon NOLOGIN INHERIT;
CREATE ROLE authenticated NOLOGIN INHERIT;
CREATE ROLE service_role NOLOGIN INHERIT BYPASSRLS;
CREATE ROLE authenticator LOGIN NOINHERIT;
GRANT anon, authenticated, service_role TO authenticator;
GRANT anon, authenticated, service_role TO postgres;
ALTER ROLE anon SET statement_timeout = '3s';
ALTER ROLE authenticated SET statement_timeout = '8s';

CREATE SCHEMA extensions AUTHORIZATION postgres;
GRANT USAGE ON SCHEMA public, extensions TO postgres, anon, authenticated, service_role;
CREATE EXTENSION postgis SCHEMA extensions;
CREATE EXTENSION pg_stat_statements SCHEMA extensions;
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT ALL ON TABLES TO postgres, anon, authenticated, service_role;
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT ALL ON FUNCTIONS TO postgres, anon, authenticated, service_role;
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT ALL ON SEQUENCES TO postgres, anon, authenticated, service_role;
ALTER DEFAULT PRIVILEGES FOR ROLE postgres IN SCHEMA public GRANT ALL ON TABLES TO anon, authenticated, service_role;
ALTER DEFAULT PRIVILEGES FOR ROLE postgres IN SCHEMA public GRANT ALL ON FUNCTIONS TO anon, authenticated, service_role;
ALTER DEFAULT PRIVILEGES FOR ROLE postgres IN SCHEMA public GRANT ALL ON SEQUENCES TO anon, authenticated, service_role;

-- The auth schema; the reference application creates its auth.uid() there (Supabase's own is owned by
-- supabase_auth_admin, with the same body).
CREATE SCHEMA auth;
GRANT ALL ON SCHEMA auth TO postgres;
GRANT USAGE ON SCHEMA auth TO anon, authenticated, service_role;

-- pg_cron, enabled from the dashboard: postgres schedules through its functions, reads cron.job.
CREATE EXTENSION pg_cron;
GRANT USAGE ON SCHEMA cron TO postgres WITH GRANT OPTION;
GRANT ALL ON ALL TABLES IN SCHEMA cron TO postgres WITH GRANT OPTION;
REVOKE ALL ON TABLE cron.job FROM postgres;
GRANT SELECT ON TABLE cron.job TO postgres WITH GRANT OPTION;

-- PostgREST reloads its schema cache after DDL.
CREATE FUNCTION extensions.pgrst_ddl_watch() RETURNS event_trigger LANGUAGE plpgsql AS $$
BEGIN
    NOTIFY pgrst, 'reload schema';
END $$;
CREATE FUNCTION extensions.pgrst_drop_watch() RETURNS event_trigger LANGUAGE plpgsql AS $$
BEGIN
    NOTIFY pgrst, 'reload schema';
END $$;
CREATE EVENT TRIGGER pgrst_ddl_watch ON ddl_command_end EXECUTE FUNCTION extensions.pgrst_ddl_watch();
CREATE EVENT TRIGGER pgrst_drop_watch ON sql_drop EXECUTE FUNCTION extensions.pgrst_drop_watch();

-- Demote postgres, with the predefined roles Supabase grants it.
GRANT pg_monitor, pg_read_all_data, pg_signal_backend TO postgres;
GRANT ALL ON DATABASE postgres TO postgres;
GRANT ALL ON SCHEMA extensions TO postgres;
ALTER ROLE postgres NOSUPERUSER CREATEDB CREATEROLE LOGIN REPLICATION BYPASSRLS;
ALTER ROLE postgres SET search_path TO "$user", public, extensions;
"""


def admin_connect(cluster, password, dbname=DATABASE):
    conn = psycopg2.connect(host=cluster.host, port=cluster.port, user="supabase_admin", password=password, dbname=dbname)
    conn.autocommit = True
    return conn


def build(cluster, features=251, dataset="synthetic"):
    """Turns a fresh cluster (pgcluster) into a Supabase-like one and loads the reference application into
    database postgres as postgres, a non-superuser (with real census-tract outlines when dataset is real).
    Returns supabase_admin's password."""
    password = secrets.token_urlsafe(18)
    cluster.preload_pg_cron(DATABASE)
    conn = cluster.connect()
    with conn.cursor() as cur:
        cur.execute(ADMIN, (password,))
    conn.close()
    conn = admin_connect(cluster, password)
    with conn.cursor() as cur:
        cur.execute(PLATFORM)
    conn.close()
    subprocess.run([sys.executable, pgcluster.REFERENCE_DB, "--host", cluster.host, "--port", str(cluster.port),
                    "--user", "postgres", "--dbname", DATABASE, "--features", str(features), "--dataset", dataset],
                   env=dict(os.environ, DB_PASSWORD=cluster.password), check=True, capture_output=True, text=True)
    return password


def require_tls(cluster):
    """Serves TLS only (a self-signed certificate; a connection without TLS is rejected by pg_hba), as
    Supabase's database does for a client that asks for it: a run with ssl_mode require then proves that
    each of its connections uses TLS."""
    data = os.path.join(cluster.folder, "data")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
                    "-keyout", os.path.join(data, "server.key"), "-out", os.path.join(data, "server.crt")],
                   check=True, capture_output=True)
    for name in ("server.key", "server.crt"):
        os.chmod(os.path.join(data, name), 0o600)
        subprocess.run(["chown", "postgres", os.path.join(data, name)], check=True)
    with open(os.path.join(data, "postgresql.auto.conf"), "a", encoding="utf-8") as conf:
        conf.write("ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n")
    hba = os.path.join(data, "pg_hba.conf")
    with open(hba, encoding="utf-8") as handle:
        rules = handle.read()
    with open(hba, "w", encoding="utf-8") as handle:
        handle.write("hostnossl all all all reject\n" + rules)
    cluster._localdb("restart")  # noqa: SLF001 (the cluster's own restart)

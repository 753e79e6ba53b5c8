"""Throwaway PostgreSQL clusters for the tests.

A cluster is made by scripts/localdb.py in a fresh folder under /tmp (the
postgres OS user must be able to enter it) on a free port, and removed whole
afterwards:

    with pgcluster.running_cluster() as cluster:
        cluster.build_reference_db("BIBLIOTECA", features=251)
        conn = cluster.connect("BIBLIOTECA")
"""
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile

import psycopg2

from ansible_collections.biblioteca.stage4.plugins.module_utils import change_files

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOCALDB = os.path.join(REPO, "scripts", "localdb.py")
REFERENCE_DB = os.path.join(REPO, "scripts", "reference_db.py")


def free_port():
    """A TCP port nothing listens on right now (the kernel's pick for port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _run(argv, env):
    done = subprocess.run(argv, env=env, text=True, capture_output=True, check=False)
    if done.returncode != 0:
        raise RuntimeError("%s exited with %d:\n%s%s" % (" ".join(argv), done.returncode,
                                                         done.stdout, done.stderr))
    return done


class Cluster:
    host = "127.0.0.1"
    user = "postgres"

    def __init__(self, folder, port):
        self.folder = folder
        self.port = port
        self.password = None

    def _localdb(self, command):
        env = dict(os.environ, STAGE4_LOCALDB_DIR=self.folder, STAGE4_LOCALDB_PORT=str(self.port))
        return _run([sys.executable, LOCALDB, command], env)

    def start(self):
        self._localdb("start")
        with open(os.path.join(self.folder, "password"), encoding="utf-8") as handle:
            self.password = handle.read().strip()

    def destroy(self):
        self._localdb("destroy")

    def login_args(self, dbname):
        """The login_* options of the stage4 modules for this cluster."""
        return dict(login_host=self.host, login_port=self.port, login_user=self.user,
                    login_password=self.password, login_db=dbname)

    def connect(self, dbname="postgres", autocommit=True):
        conn = psycopg2.connect(host=self.host, port=self.port, user=self.user,
                                password=self.password, dbname=dbname)
        conn.autocommit = autocommit
        return conn

    def query(self, dbname, sql, params=None, user=None, password=None):
        """Runs sql in autocommit on dbname (as user, default the superuser); its rows, or None."""
        conn = psycopg2.connect(host=self.host, port=self.port, user=user or self.user,
                                password=password or self.password, dbname=dbname)
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                cur.execute(sql, params)
                return cur.fetchall() if cur.description else None
        finally:
            conn.close()

    def clone_database(self, name, template):
        """A fresh copy of template (a file copy), with the search_path the reference database sets, a
        database setting the copy does not carry."""
        self.query("postgres", 'DROP DATABASE IF EXISTS "%s" WITH (FORCE)' % name)
        self.query("postgres", 'CREATE DATABASE "%s" TEMPLATE "%s"' % (name, template))
        self.query("postgres", 'ALTER DATABASE "%s" SET search_path = "$user", public, extensions' % name)
        return name

    def preload_pg_cron(self, dbname):
        """Restarts the cluster with pg_cron loaded, running its jobs in dbname (what the
        stage4_pg_cron role configures on a self-managed server)."""
        with open(os.path.join(self.folder, "data", "postgresql.auto.conf"), "a", encoding="utf-8") as conf:
            conf.write("shared_preload_libraries = 'pg_stat_statements,pg_cron'\n"
                       "cron.database_name = '%s'\n"
                       "cron.use_background_workers = on\n" % dbname)
        self._localdb("restart")

    def create_database(self, dbname):
        conn = self.connect()
        try:
            with conn.cursor() as cur:
                cur.execute('CREATE DATABASE "%s"' % dbname.replace('"', '""'))
        finally:
            conn.close()

    def run_sql_file(self, dbname, path):
        """Run a SQL file in one transaction, as the playbooks do."""
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
        conn = self.connect(dbname, autocommit=False)
        try:
            with conn, conn.cursor() as cur:
                cur.execute(text)
        finally:
            conn.close()

    def build_reference_db(self, dbname, features=251, postgis_schema="extensions"):
        """(Re)create the reference fixture database with scripts/reference_db.py."""
        env = dict(os.environ, DB_PASSWORD=self.password)
        _run([sys.executable, REFERENCE_DB, "--host", self.host, "--port", str(self.port),
              "--user", self.user, "--dbname", dbname, "--features", str(features), "--recreate",
              "--postgis-schema", postgis_schema],
             env)


def fixture_sql(*parts):
    """The text of a SQL file under tests/fixtures/sql/."""
    with open(os.path.join(REPO, "tests", "fixtures", "sql", *parts), encoding="utf-8") as handle:
        return handle.read()


def schema_dump(cluster, dbname, user=None, password=None, exclude=("stage4",), sslmode=None):
    """pg_dump --schema-only of every schema but those excluded (the rollout's own), as lines, without the
    random \\restrict token pg_dump writes: what must be identical before a change and after its revert."""
    env = dict(os.environ, PGPASSWORD=password or cluster.password)
    if sslmode:
        env["PGSSLMODE"] = sslmode
    argv = ["pg_dump", "--schema-only", "-h", cluster.host, "-p", str(cluster.port), "-U", user or cluster.user, dbname]
    for schema in exclude:
        argv[2:2] = ["-N", schema]
    done = subprocess.run(argv, check=True, capture_output=True, text=True, env=env)
    return [line for line in done.stdout.splitlines() if not line.startswith(("\\restrict", "\\unrestrict"))]


SQL_ROOT = os.path.join(REPO, "files", "sql")


def _tooling():
    from ansible_collections.biblioteca.stage4.plugins.module_utils.plan import load_plan  # noqa: PLC0415
    return [item["change"] for item in load_plan(SQL_ROOT)["tooling"]]


# The rollout's own changes, in the order it installs them (stage4_tooling_changes): TOOLKIT, the stage4_*
# ones the optimizations call, then the benchmark's schema.
TOOLING = _tooling()
TOOLKIT = [change for change in TOOLING if change.startswith("stage4_")]
# What inventories/local sets for the small fixture: partition it anyway, so every optimization runs.
LOCAL_SETTINGS = {"stage4_min_table_bytes": 0}


def group_vars(**settings):
    """playbooks/group_vars/all.yml with settings (default: inventories/local's) over it, each optimization's
    reference to another setting resolved, as Ansible would (scripts/stage4_settings.py)."""
    import stage4_settings  # noqa: PLC0415  (scripts/ is on the tests' path: tests/conftest.py)
    return stage4_settings.load(**(settings or LOCAL_SETTINGS))
SCRIPTS = {"applied": ("precheck", "deploy", "verify"), "reverted": ("revert", "verify_reverted")}


def install_toolkit(conn):
    """Every change of TOOLKIT, in order, as run_change() runs one."""
    for change in TOOLKIT:
        run_change(conn, change)


def run_change(conn, change, state="applied", variables=None, prelude_sql=None):
    """Runs a change's scripts in one transaction on conn, then its settle.sql, as plugins/modules/stage4_change.py
    does (without its ledger); prelude_sql runs first in the same transaction. Returns the notices raised."""
    conn.notices.clear()
    isolation = change_files.deploy_isolation(change_files.read_change(SQL_ROOT, change)) if state == "applied" else None
    conn.set_session(isolation_level=isolation or "DEFAULT")
    with conn, conn.cursor() as cur:
        if prelude_sql:
            cur.execute(prelude_sql)
        for key, value in sorted((variables or {}).items()):
            cur.execute("SELECT set_config(%s, %s, true)", ("stage4." + key, str(value)))
        for script in SCRIPTS[state]:
            path = os.path.join(SQL_ROOT, change, script + ".sql")
            if os.path.isfile(path):
                with open(path, encoding="utf-8") as handle:
                    cur.execute(handle.read())
    settle = os.path.join(SQL_ROOT, change, "settle.sql")
    if os.path.isfile(settle):  # after the commit, as the module runs it; without waiting for other sessions
        autocommit, conn.autocommit = conn.autocommit, True
        with open(settle, encoding="utf-8") as handle, conn.cursor() as cur:
            cur.execute("SELECT set_config('stage4.settle_wait_seconds', '0', true);\n" + handle.read())
        conn.autocommit = autocommit
    return [notice.strip() for notice in conn.notices]


def start_cluster():
    """Start a cluster in a fresh /tmp folder on a free port; the caller destroys it."""
    folder = tempfile.mkdtemp(prefix="stage4-test-", dir="/tmp")
    os.chmod(folder, 0o755)  # the postgres OS user must enter it
    cluster = Cluster(folder, free_port())
    try:
        cluster.start()
    except BaseException:
        cluster.destroy()
        raise
    return cluster


@contextlib.contextmanager
def running_cluster():
    cluster = start_cluster()
    try:
        yield cluster
    finally:
        cluster.destroy()


def run_module(capsys, main, args, check_mode=False, diff=False):
    """Runs a module's main() with args (as Ansible would pass them) and returns its JSON result."""
    import pytest  # noqa: PLC0415 (only the tests that run modules need it)
    from ansible.module_utils.testing import patch_module_args  # noqa: PLC0415

    capsys.readouterr()
    if check_mode:
        args = dict(args, _ansible_check_mode=True)
    if diff:
        args = dict(args, _ansible_diff=True)
    with patch_module_args(args), pytest.raises(SystemExit):
        main()
    return json.loads(capsys.readouterr().out)

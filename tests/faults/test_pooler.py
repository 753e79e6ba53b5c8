"""A pooler in transaction mode (PgBouncer; Supavisor on Supabase's port 6543) between the run and the
database: the run lock and the session settings need one server session, so preflight refuses, naming
the way out, before anything changes. A session-mode pooler is accepted."""
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

import pytest

import pgcluster
import stage4_runs
from stage4_runs import REPO, run_stage4

PGBOUNCER = "/usr/sbin/pgbouncer"


@pytest.fixture
def pooler(cluster):
    """Starts PgBouncer (as the postgres OS user, which it requires) in front of the cluster; yields a
    function that takes the pool mode and returns the port."""
    started = []

    def start(mode):
        folder = pathlib.Path(tempfile.mkdtemp(prefix="stage4-pgbouncer-", dir="/tmp"))  # the postgres user enters it
        port = pgcluster.free_port()
        (folder / "users.txt").write_text('"postgres" ""\n')
        (folder / "pgbouncer.ini").write_text(
            "[databases]\n* = host=%s port=%s user=postgres password=%s\n"
            "[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = %d\nauth_type = trust\nauth_file = %s/users.txt\n"
            "pool_mode = %s\nunix_socket_dir =\nlogfile = %s/pgbouncer.log\npidfile = %s/pgbouncer.pid\n"
            % (cluster.host, cluster.port, cluster.password, port, folder, mode, folder, folder))
        subprocess.run(["chown", "-R", "postgres", str(folder)], check=True)
        subprocess.run(["runuser", "-u", "postgres", "--", PGBOUNCER, "-d", str(folder / "pgbouncer.ini")], check=True)
        for _ in range(50):
            if (folder / "pgbouncer.pid").exists():
                break
            time.sleep(0.1)
        started.append(folder / "pgbouncer.pid")
        return port

    yield start
    for pidfile in started:
        subprocess.run(["kill", pidfile.read_text().strip()], check=False)
        shutil.rmtree(pidfile.parent, ignore_errors=True)


def hold(port, tmp_path, password=""):
    tmp_path.mkdir()
    state_file, login = tmp_path / "run_lock.json", tmp_path / "login"
    os.mkfifo(login, 0o600)
    holder = subprocess.Popen([sys.executable, os.path.join(REPO, "scripts", "hold_run_lock.py"), "--run-id", "t",
                               "--watch-pid", str(os.getpid()), "--state-file", str(state_file), "--login", str(login)])
    login.write_text(json.dumps({"host": "127.0.0.1", "port": str(port), "dbname": "BIBLIOTECA", "user": "postgres",
                                 "password": password, "sslmode": "disable"}) + "\n")
    for _ in range(100):
        if state_file.exists() and json.loads(state_file.read_text())["state"] in ("held", "error"):
            break
        time.sleep(0.1)
    state = json.loads(state_file.read_text())
    holder.terminate()
    holder.wait(timeout=10)
    return state


def test_a_transaction_mode_pooler_is_refused_in_preflight(cluster, pooler):
    db = stage4_runs.clone(cluster, "POOLED")
    before = stage4_runs.state(cluster, db)
    rc, output = run_stage4(cluster, db, env={"DB_PORT": str(pooler("transaction")), "DB_PASSWORD": "unused"})
    assert rc != 0
    assert "pooler in transaction mode" in output and "port 5432" in output and "Nothing was changed" in output
    stage4_runs.assert_untouched(cluster, db, before)


def test_a_session_mode_pooler_or_a_direct_connection_holds_the_lock(cluster, pooler, tmp_path):
    for port, password, name in ((pooler("session"), "", "session"), (cluster.port, cluster.password, "direct")):
        state = hold(port, tmp_path / name, password)
        assert state["state"] == "held", state

"""Secrets and TLS: the password never shows on a command line, in any output at any verbosity or in
any file a run writes; the backup honours ssl_mode like every other connection."""
import glob
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

import stage4_runs
from stage4_runs import REPO, run_env, stage4_argv

# Long and unusual, so that a hit cannot be a coincidence.
CANARY = "Canary-7fQz9-xK2mWv-8RtL"


class ProcessWatcher(threading.Thread):
    """Reads every process's command line (what `ps` shows) until stopped; keeps those holding needle."""

    def __init__(self, needle):
        super().__init__(daemon=True)
        self.needle = needle
        self.hits = set()
        self.reads = 0
        self.stop = threading.Event()

    def run(self):
        while not self.stop.is_set():
            for cmdline in glob.glob("/proc/[0-9]*/cmdline"):
                try:
                    with open(cmdline, "rb") as handle:
                        args = handle.read().replace(b"\0", b" ").decode("utf-8", "replace")
                except OSError:
                    continue
                if self.needle in args:
                    self.hits.add(args[:300])
            self.reads += 1
            time.sleep(0.02)


def files_holding(folder, needle, since):
    found = []
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            try:
                if os.path.getmtime(path) < since:
                    continue
                with open(path, "rb") as handle:
                    if needle.encode() in handle.read():
                        found.append(path)
            except OSError:
                continue
    return found


def test_the_password_is_on_no_command_line_output_or_file_at_vvvv(cluster):
    stage4_runs.clone(cluster, "SECRETS")
    admin = cluster.connect()  # stays open to put the password back
    with admin.cursor() as cur:
        cur.execute("ALTER ROLE postgres PASSWORD %s", (CANARY,))
    started = time.time()
    watcher = ProcessWatcher(CANARY)
    watcher.start()
    try:
        done = subprocess.run(stage4_argv(cluster, "-vvvv", "-e", "stage4_select=opt1"), cwd=REPO, text=True,
                              capture_output=True, env=run_env(cluster, "SECRETS", DB_PASSWORD=CANARY),
                              timeout=900, check=False)
    finally:
        watcher.stop.set()
        watcher.join()
        with admin.cursor() as cur:
            cur.execute("ALTER ROLE postgres PASSWORD %s", (cluster.password,))
        admin.close()
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    assert "opt1_temporal_partitioning" in output
    assert "EXEC /bin/sh -c" in output  # -vvvv printed the commands it ran
    assert watcher.reads > 100
    assert CANARY not in output
    assert watcher.hits == set()
    written = [cluster.folder + "/reports", cluster.folder + "/backups", os.path.expanduser("~/.ansible_async"),
               os.path.expanduser("~/.ansible/tmp"), tempfile.gettempdir() + "/ansible"]
    assert [path for folder in written for path in files_holding(folder, CANARY, started)] == []


def test_the_backup_honours_ssl_mode_require_against_a_server_without_tls(cluster, tmp_path):
    """The cluster has no TLS: with ssl_mode require the dump must be refused, not made in plain text."""
    playbook = tmp_path / "backup.yml"
    playbook.write_text("""
- name: Back up only
  hosts: biblioteca
  gather_facts: false
  vars_files: [%s/playbooks/group_vars/all.yml]
  tasks:
    - name: Back up the database
      ansible.builtin.include_role:
        name: stage4_backup
""" % REPO)
    env = run_env(cluster, "BIBLIOTECA")
    done = subprocess.run([stage4_runs.ANSIBLE_PLAYBOOK, str(playbook), "-i", os.path.join(REPO, "inventories", "local"),
                           "-e", "stage4_db_ssl_mode=require", "-e", "stage4_backup_dir=%s" % (tmp_path / "backups"),
                           "-e", "stage4_backup_file=%s" % (tmp_path / "backups" / "dump.pgc")],
                          cwd=REPO, text=True, capture_output=True, env=env, timeout=300, check=False)
    output = " ".join((done.stdout + done.stderr).split())
    assert done.returncode != 0, output
    assert "The backup of BIBLIOTECA failed" in output and "SSL" in output, output
    assert not (tmp_path / "backups" / "dump.pgc").exists()


def test_the_run_lock_honours_ssl_mode(cluster, tmp_path):
    state_file, login = tmp_path / "run_lock.json", tmp_path / "login"
    os.mkfifo(login, 0o600)
    holder = subprocess.Popen([sys.executable, os.path.join(REPO, "scripts", "hold_run_lock.py"), "--run-id", "t",
                               "--watch-pid", str(os.getpid()), "--state-file", str(state_file), "--login", str(login)])
    login.write_text(json.dumps({"host": cluster.host, "port": str(cluster.port), "dbname": "BIBLIOTECA",
                                 "user": "postgres", "password": cluster.password, "sslmode": "require"}) + "\n")
    assert holder.wait(timeout=60) == 2
    assert not login.exists()
    state = state_file.read_text()
    assert '"state": "error"' in state and "SSL" in state and cluster.password not in state

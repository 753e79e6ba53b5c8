#!/usr/bin/env python3
"""Throwaway local PostgreSQL 15 cluster for the demo and the tests.

The cluster lives in an ignored folder (default: <repo>/.localdb), listens on
127.0.0.1 only, on its own port, and runs as the `postgres` OS user (PostgreSQL
refuses root). The superuser password is random, kept in <dir>/password (0600)
and never printed.

    scripts/localdb.py start      # initdb on first use, then start
    scripts/localdb.py stop
    scripts/localdb.py restart
    scripts/localdb.py status
    scripts/localdb.py destroy    # stop and delete the folder

Settings come from the environment:
    STAGE4_LOCALDB_DIR   folder of the cluster      (default <repo>/.localdb, or a /tmp
                                                     folder it links to when the postgres
                                                     user cannot enter the repository)
    STAGE4_LOCALDB_PORT  TCP port on 127.0.0.1      (default 55432)
    STAGE4_LOCALDB_SHARED_BUFFERS
                         shared_buffers for this start (default: the cluster's, 256MB).
                         `make bench` sizes it to hold the 1,000,000-feature database: with
                         the data in the kernel's page cache, which this kind of VM reclaims
                         while it is idle, latencies drift by 15-20% for minutes at a time.
"""
import hashlib
import os
import pwd
import secrets
import shutil
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# STAGE4_PG_BIN: another server build; make unit points it nowhere, to prove tests/unit needs none.
PG_BIN = os.environ.get("STAGE4_PG_BIN", "/usr/lib/postgresql/15/bin")
OS_USER = "postgres"

# Settings for a disposable cluster: durability off (the data is rebuilt from
# the fixture at will), pg_stat_statements as on Supabase. pg_cron is left out
# on purpose: OPT5 loads it itself, as it must on a self-managed server.
SERVER_SETTINGS = {
    "listen_addresses": "'127.0.0.1'",
    "unix_socket_permissions": "0700",
    "shared_preload_libraries": "'pg_stat_statements'",
    "shared_buffers": "'256MB'",
    "max_worker_processes": "16",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "log_min_messages": "warning",
    "log_line_prefix": "'%m [%p] %q%u@%d '",
    "timezone": "'UTC'",
}


def settings():
    port = int(os.environ.get("STAGE4_LOCALDB_PORT", "55432"))
    if "STAGE4_LOCALDB_DIR" in os.environ:
        return os.path.abspath(os.environ["STAGE4_LOCALDB_DIR"]), port
    return default_folder(), port


def default_folder():
    """<repo>/.localdb; a symlink to a /tmp folder when the postgres user cannot enter the repository
    (a clone under /root, say)."""
    link = os.path.join(REPO, ".localdb")
    if os.path.isdir(link) or as_postgres("test", "-x", REPO, check=False, capture=True).returncode == 0:
        return link
    target = "/tmp/stage4-localdb-" + hashlib.sha1(REPO.encode()).hexdigest()[:8]
    os.makedirs(target, exist_ok=True)
    os.chmod(target, 0o755)
    if not os.path.islink(link):
        os.symlink(target, link)
    return target


def paths(folder):
    return {
        "data": os.path.join(folder, "data"),
        "run": os.path.join(folder, "run"),
        "log": os.path.join(folder, "postgres.log"),
        "password": os.path.join(folder, "password"),
    }


def as_postgres(*argv, check=True, capture=False):
    cmd = ["runuser", "-u", OS_USER, "--"] if os.geteuid() == 0 else []
    return subprocess.run(cmd + list(argv), check=check, text=True,
                          capture_output=capture)


def chown_to_postgres(path):
    if os.geteuid() == 0:
        entry = pwd.getpwnam(OS_USER)
        os.chown(path, entry.pw_uid, entry.pw_gid)


def ensure_reachable(folder):
    """The postgres user must be able to enter every parent folder."""
    probe = as_postgres("test", "-x", os.path.dirname(folder), check=False)
    if probe.returncode != 0:
        sys.exit(f"localdb: the '{OS_USER}' user cannot enter {os.path.dirname(folder)}; "
                 "set STAGE4_LOCALDB_DIR to a folder it can reach (for example under /tmp).")


def initdb(folder, port):
    p = paths(folder)
    os.makedirs(folder, exist_ok=True)
    ensure_reachable(p["data"])
    for key in ("data", "run"):
        os.makedirs(p[key], mode=0o700, exist_ok=True)
        chown_to_postgres(p[key])
    password = "stage4-" + secrets.token_urlsafe(24)
    with tempfile.NamedTemporaryFile("w", dir=p["run"], delete=False) as handle:
        handle.write(password + "\n")
        pwfile = handle.name
    chown_to_postgres(pwfile)
    try:
        as_postgres(f"{PG_BIN}/initdb", "-D", p["data"], "-U", "postgres", "--pwfile", pwfile,
                    "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8",
                    "--locale=C.UTF-8", capture=True)
    finally:
        os.unlink(pwfile)
    with open(p["password"], "w", encoding="utf-8") as handle:
        os.fchmod(handle.fileno(), 0o600)
        handle.write(password + "\n")
    conf = dict(SERVER_SETTINGS, port=str(port), unix_socket_directories=f"'{p['run']}'")
    with open(os.path.join(p["data"], "postgresql.auto.conf"), "a", encoding="utf-8") as handle:
        handle.write("".join(f"{key} = {value}\n" for key, value in conf.items()))


def is_running(folder):
    p = paths(folder)
    if not os.path.exists(os.path.join(p["data"], "PG_VERSION")):
        return False
    return as_postgres(f"{PG_BIN}/pg_ctl", "-D", p["data"], "status", check=False,
                       capture=True).returncode == 0


def start(folder, port):
    p = paths(folder)
    if not os.path.exists(os.path.join(p["data"], "PG_VERSION")):
        initdb(folder, port)
    if is_running(folder):
        print(f"localdb: already running on 127.0.0.1:{port} ({folder})")
        return
    if not os.path.exists(p["log"]):
        open(p["log"], "a", encoding="utf-8").close()
    chown_to_postgres(p["log"])
    options = []
    if os.environ.get("STAGE4_LOCALDB_SHARED_BUFFERS"):
        options = ["-o", "-c shared_buffers=" + os.environ["STAGE4_LOCALDB_SHARED_BUFFERS"]]
    as_postgres(f"{PG_BIN}/pg_ctl", "-D", p["data"], "-l", p["log"], "-w", "-t", "60", *options, "start",
                capture=True)
    deadline = time.time() + 30
    while as_postgres(f"{PG_BIN}/pg_isready", "-h", "127.0.0.1", "-p", str(port), check=False,
                      capture=True).returncode != 0:
        if time.time() > deadline:
            sys.exit(f"localdb: server did not accept connections; see {p['log']}")
        time.sleep(0.2)
    print(f"localdb: running on 127.0.0.1:{port} ({folder})")


def stop(folder, _port):
    if is_running(folder):
        as_postgres(f"{PG_BIN}/pg_ctl", "-D", paths(folder)["data"], "-m", "fast", "-w", "stop",
                    capture=True)
    print("localdb: stopped")


def restart(folder, port):
    stop(folder, port)
    start(folder, port)


def status(folder, port):
    state = "running" if is_running(folder) else "stopped"
    print(f"localdb: {state} on 127.0.0.1:{port} ({folder})")
    return 0 if state == "running" else 3


def destroy(folder, port):
    stop(folder, port)
    shutil.rmtree(folder, ignore_errors=True)
    link = os.path.join(REPO, ".localdb")
    if os.path.islink(link) and os.path.realpath(link) == os.path.realpath(folder):
        os.unlink(link)
    print(f"localdb: removed {folder}")


COMMANDS = {"start": start, "stop": stop, "restart": restart, "status": status, "destroy": destroy}


def main(argv):
    if len(argv) != 2 or argv[1] not in COMMANDS:
        sys.exit(__doc__)
    folder, port = settings()
    return COMMANDS[argv[1]](folder, port) or 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

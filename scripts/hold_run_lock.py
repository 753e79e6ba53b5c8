"""Holds Stage 4's run lock on a database for as long as one ansible-playbook run lives.

    mkfifo -m 600 login && hold_run_lock.py --run-id RUN --watch-pid PID --state-file run_lock.json --login login &
    echo '{"host": ..., "port": ..., "dbname": ..., "user": ..., "password": ..., "sslmode": ...}' > login

The lock is a session-level advisory lock keyed on the database name, taken by this process's own
connection, so it lives exactly as long as this process: it is released when the run ends (the
playbook deletes the state file), when the run's ansible-playbook process dies (kill -9 included:
this process watches its pid), or when the connection is cut (PostgreSQL releases a session's
locks with the session). A second run on the same database is refused and told who holds the lock.

The state file (JSON) says {"state": "held" | "busy" | "error" | "lost", ...}; the playbook waits
for it, and checks it before every change.
The connection comes as one JSON object read from --login, a named pipe that this process removes once
read: the password is then never on a command line or in an environment (Ansible writes a task's
environment into the shell command it runs, which -vvv prints and ps shows), nor in the arguments of
the async task that starts this process (Ansible keeps those in its job file), nor in any file.
"""
import argparse
import json
import os
import sys
import time

import psycopg

# Advisory lock key space: (classid, objid) = (STAGE4_LOCK_CLASS, hashtext(database name)).
STAGE4_LOCK_CLASS = 5404
APPLICATION_PREFIX = "stage4 run "
WATCH_INTERVAL_S = 1.0
PING_INTERVAL_S = 1.0  # a cut session is noticed before the next change starts


def write_state(path, **state):
    """Writes the state file atomically, so the playbook never reads half of it."""
    temporary = path + ".tmp"
    with open(temporary, "w", encoding="utf-8") as handle:
        json.dump(state, handle, sort_keys=True)
    os.replace(temporary, path)


def still_mine(path):
    """The state file is this holder's: a later holder of the same run may have replaced it."""
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle).get("pid") == os.getpid()
    except (OSError, ValueError):
        return False


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def holder(cur):
    """Who holds the lock: the run id from its application_name, since when, from where."""
    cur.execute(
        "SELECT a.application_name, a.backend_start::text, coalesce(host(a.client_addr), 'local socket'), a.usename "
        "FROM pg_locks l JOIN pg_stat_activity a USING (pid) "
        "WHERE l.locktype = 'advisory' AND l.granted AND l.classid = %s "
        "AND l.objid = hashtext(current_database())::oid AND l.database = "
        "(SELECT oid FROM pg_database WHERE datname = current_database())",
        (STAGE4_LOCK_CLASS,))
    row = cur.fetchone()
    if row is None:
        return {}
    return {"holder_run_id": row[0][len(APPLICATION_PREFIX):] if row[0].startswith(APPLICATION_PREFIX) else row[0],
            "holder_since": row[1], "holder_client": row[2], "holder_user": row[3]}


POOLED = ("A connection pooler in transaction mode sits between Stage 4 and the database (PgBouncer, or Supavisor: "
          "Supabase's port 6543): the run lock and the session settings need one server session for the whole run. "
          "Connect directly (Supabase: db.<project>.supabase.co, port 5432) or through a session-mode pooler")


def transaction_pooled(conn, connect):
    """Whether consecutive transactions of conn may run on different server sessions, as behind a pooler in
    transaction mode: while another connection holds a transaction open, conn asks for its backend's pid
    again. Directly (or through a session-mode pooler) conn keeps its backend and the other has its own;
    behind a transaction-mode pooler the other takes the backend conn just released, and conn gets another."""
    with conn.cursor() as cur:
        cur.execute("SELECT pg_backend_pid()")
        first = cur.fetchone()[0]
    other = connect()
    try:
        with other.cursor() as cur:
            cur.execute("SELECT pg_backend_pid()")  # its transaction stays open
            theirs = cur.fetchone()[0]
        with conn.cursor() as cur:
            cur.execute("SELECT pg_backend_pid()")
            second = cur.fetchone()[0]
    finally:
        other.close()
    return theirs == first or second != first


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-id", required=True)
    parser.add_argument("--watch-pid", type=int, required=True, help="the ansible-playbook process of the run")
    parser.add_argument("--state-file", required=True)
    parser.add_argument("--login", required=True, help="a named pipe giving the connection as one JSON object")
    args = parser.parse_args(argv)

    password = None
    try:
        with open(args.login, encoding="utf-8") as handle:
            login = json.loads(handle.readline())
        os.unlink(args.login)
        password = login.get("password") or None
        def connect():
            # prepare_threshold=None: no statement is prepared behind the run's back (a pooler would lose it).
            return psycopg.connect(host=login["host"], port=login["port"], dbname=login["dbname"], user=login["user"],
                                   password=password, sslmode=login.get("sslmode") or "prefer", connect_timeout=10,
                                   application_name=APPLICATION_PREFIX + args.run_id, prepare_threshold=None)
        conn = connect()
        conn.autocommit = True
        if transaction_pooled(conn, connect):
            write_state(args.state_file, state="error", message=POOLED)
            return 2
        with conn.cursor() as cur:
            cur.execute("SELECT pg_try_advisory_lock(%s, hashtext(current_database()))", (STAGE4_LOCK_CLASS,))
            if not cur.fetchone()[0]:
                write_state(args.state_file, state="busy", **holder(cur))
                return 3
    except (OSError, KeyError, ValueError, AttributeError, psycopg.Error) as error:
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        write_state(args.state_file, state="error",
                    message=message.replace(password, "********") if password else message)
        return 2

    write_state(args.state_file, state="held", pid=os.getpid(), run_id=args.run_id)
    last_ping = time.monotonic()
    try:
        # The run ends by deleting the state file; a dead run by dying.
        while still_mine(args.state_file) and alive(args.watch_pid):
            time.sleep(WATCH_INTERVAL_S)
            if time.monotonic() - last_ping > PING_INTERVAL_S:
                with conn.cursor() as cur:  # a cut connection ends the wait: the lock is gone anyway
                    cur.execute("SELECT 1")
                last_ping = time.monotonic()
    except psycopg.Error:
        if still_mine(args.state_file):
            write_state(args.state_file, state="lost", run_id=args.run_id)
        return 4
    finally:
        conn.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Helpers for the scenarios' testinfra tests: direct connections to the scenario's cluster."""
import contextlib
import glob
import json
import os

import psycopg2

CLUSTER_DIR = os.environ["STAGE4_LOCALDB_DIR"]
PORT = int(os.environ["STAGE4_LOCALDB_PORT"])


def password():
    with open(os.path.join(CLUSTER_DIR, "password"), encoding="utf-8") as handle:
        return handle.read().strip()


@contextlib.contextmanager
def connect(dbname="BIBLIOTECA"):
    conn = psycopg2.connect(host="127.0.0.1", port=PORT, user="postgres", password=password(), dbname=dbname)
    try:
        yield conn
    finally:
        conn.rollback()
        conn.close()


def query(sql, params=None, dbname="BIBLIOTECA", role=None, jwt_sub=None):
    with connect(dbname) as conn, conn.cursor() as cur:
        if jwt_sub:
            cur.execute("SELECT set_config('request.jwt.claims', %s, true)", (json.dumps({"sub": jwt_sub}),))
        if role:
            cur.execute("SET LOCAL ROLE " + role)
        cur.execute(sql, params)
        return cur.fetchall()


def scalar(sql, params=None, **kwargs):
    return query(sql, params, **kwargs)[0][0]


def run_dirs():
    """Report folders of the runs, oldest first."""
    return sorted(glob.glob(os.path.join(CLUSTER_DIR, "reports", "local", "*")))


def load_report(run_dir):
    with open(os.path.join(run_dir, "report.json"), encoding="utf-8") as handle:
        return json.load(handle)

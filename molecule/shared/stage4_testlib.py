"""Helpers for the scenarios' testinfra tests: direct connections to the scenario's cluster."""
import contextlib
import glob
import json
import os
import subprocess

import psycopg2
import yaml

CLUSTER_DIR = os.environ.get("STAGE4_LOCALDB_DIR", "")  # set by molecule; tests/faults import only normalized_schema
PORT = int(os.environ.get("STAGE4_LOCALDB_PORT", "0"))
PROJECT_DIR = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
with open(os.path.join(PROJECT_DIR, "files", "sql", "plan.yml"), encoding="utf-8") as _handle:
    # The rollout's own changes, in the order every run installs them: the first rows of any ledger.
    TOOLING = yaml.safe_load(_handle)["tooling"]


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
    """Report folders of the runs that wrote a report, oldest first (a run refused by preflight
    leaves a folder with its audit trail only)."""
    return sorted(os.path.dirname(path) for path in glob.glob(os.path.join(CLUSTER_DIR, "reports", "local", "*",
                                                                            "report.json")))


def load_report(run_dir):
    with open(os.path.join(run_dir, "report.json"), encoding="utf-8") as handle:
        return json.load(handle)


def normalized_schema(dump):
    """pg_dump --schema-only text as a sorted list of its entries (the "-- Name:" blocks), without
    pg_dump's random \\restrict lines and without the pg_cron extension: pg_cron is a server
    prerequisite that OPT4/OPT5's server role installs and a rollback leaves in place (other jobs
    may use it). Sorting removes pg_dump's tie-breaking order, which that extension can shift."""
    lines = [line for line in dump.splitlines() if not line.startswith(("\\restrict", "\\unrestrict"))]
    blocks, current = [], []
    for line in lines:
        if line.startswith("-- Name: ") and current:
            blocks.append("\n".join(current))
            current = []
        current.append(line)
    blocks.append("\n".join(current))
    return sorted(block.strip() for block in blocks
                  if "Name: pg_cron; Type: EXTENSION" not in block and "Name: EXTENSION pg_cron;" not in block)


def live_state():
    """(normalized schema without the rollout's own schemas, rows checksum and identity position)"""
    dump = subprocess.run(
        ["pg_dump", "--schema-only", "-N", "stage4", "-N", "stage4_benchmark", "-h", "127.0.0.1", "-p", str(PORT),
         "-U", "postgres", "BIBLIOTECA"], check=True, capture_output=True, text=True,
        env=dict(os.environ, PGPASSWORD=password())).stdout
    rows = query("SELECT count(*) || ' ' || md5(string_agg(g::text, '|' ORDER BY id)) || ' ' "
                 "|| (SELECT last_value FROM public.geometrias_id_seq) FROM public.geometrias g")[0][0]
    return normalized_schema(dump), rows


def recorded_state(name="before"):
    """The same, as shared/record_state.yml recorded it under that name."""
    with open(os.path.join(CLUSTER_DIR, f"state_{name}.sql"), encoding="utf-8") as handle:
        schema = normalized_schema(handle.read())
    with open(os.path.join(CLUSTER_DIR, f"state_{name}.txt"), encoding="utf-8") as handle:
        return schema, handle.read().strip()

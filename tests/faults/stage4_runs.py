"""What the fault and gate suites share: a run of `ansible-playbook stage4.yml -i local` against a database of
the throwaway cluster, and what must not change in that database (schema, rows, identity, ledger)."""
import glob
import json
import os
import subprocess
import sys

import pgcluster

REPO = pgcluster.REPO
sys.path.insert(0, os.path.join(REPO, "molecule", "shared"))
from stage4_testlib import normalized_schema  # noqa: E402  (the molecule scenarios' comparison)

ANSIBLE_PLAYBOOK = os.path.join(os.path.dirname(sys.executable), "ansible-playbook")
# The reference database's size (make faults-1m: 1,000,000, for the cases that stop before any change).
FEATURES = int(os.environ.get("STAGE4_FAULTS_FEATURES", "251"))
# Tests assert correctness; figures are the benchmarks' business: few samples, no throughput phase.
FAST_RUN = ["-e", "stage4_benchmark_iterations=10", "-e", "stage4_benchmark_warmup=2",
            "-e", "stage4_benchmark_throughput_seconds=0", "-e", "stage4_optimization_gate_judge_latency=false"]


def sql(cluster, dbname, statement, params=None):
    conn = cluster.connect(dbname)
    try:
        with conn.cursor() as cur:
            cur.execute(statement, params)
            return cur.fetchall() if cur.description else None
    finally:
        conn.close()


def clone(cluster, name, template="BIBLIOTECA"):
    """A fresh copy of the reference database (CREATE DATABASE ... TEMPLATE: a file copy), with its
    search_path, a database setting the copy does not carry."""
    sql(cluster, "postgres", 'DROP DATABASE IF EXISTS "%s" WITH (FORCE)' % name)
    sql(cluster, "postgres", 'CREATE DATABASE "%s" TEMPLATE "%s"' % (name, template))
    sql(cluster, "postgres", 'ALTER DATABASE "%s" SET search_path = "$user", public, extensions' % name)
    return name


def state(cluster, dbname):
    """What must not change: the schema (without Stage 4's own), the rows, the identity position."""
    dump = subprocess.run(["pg_dump", "--schema-only", "-N", "stage4", "-N", "stage4_benchmark", "-h", cluster.host,
                           "-p", str(cluster.port), "-U", "postgres", dbname], check=True, capture_output=True,
                          text=True, env=dict(os.environ, PGPASSWORD=cluster.password)).stdout
    rows = sql(cluster, dbname, "SELECT count(*) || ' ' || md5(string_agg(g::text, '|' ORDER BY id)) || ' ' "
                                "|| (SELECT last_value FROM public.geometrias_id_seq) FROM public.geometrias g")[0][0]
    return normalized_schema(dump), rows


def ledger(cluster, dbname):
    if not sql(cluster, dbname, "SELECT to_regclass('stage4.ledger') IS NOT NULL")[0][0]:
        return []
    return sql(cluster, dbname, "SELECT change, accepted_at IS NOT NULL FROM stage4.ledger ORDER BY seq")


def run_env(cluster, dbname, **overrides):
    env = dict(os.environ, DB_HOST=cluster.host, DB_PORT=str(cluster.port), DB_NAME=dbname, DB_USER="postgres",
               DB_PASSWORD=cluster.password, ANSIBLE_CONFIG=os.path.join(REPO, "ansible.cfg"),
               ANSIBLE_FORCE_COLOR="0", STAGE4_LOCALDB_DIR=cluster.folder, STAGE4_LOCALDB_PORT=str(cluster.port))
    env.update(overrides)
    return env


def stage4_argv(cluster, *extra, playbook="stage4.yml"):
    return [ANSIBLE_PLAYBOOK, os.path.join(REPO, playbook), "-i", os.path.join(REPO, "inventories", "local"),
            "-e", "stage4_reports_root=%s/reports" % cluster.folder,
            "-e", "stage4_backup_dir=%s/backups" % cluster.folder, "-e", "stage4_expected_features=%d" % FEATURES,
            *FAST_RUN, *extra]


def run_stage4(cluster, dbname, *extra, env=None, playbook="stage4.yml"):
    done = subprocess.run(stage4_argv(cluster, *extra, playbook=playbook), cwd=REPO, text=True, capture_output=True,
                          env=run_env(cluster, dbname, **(env or {})), timeout=900, check=False)
    return done.returncode, " ".join((done.stdout + done.stderr).split())


def run_dirs(cluster):
    return set(glob.glob(os.path.join(cluster.folder, "reports", "local", "*")))


def audit_steps(run_dir):
    path = os.path.join(run_dir, "audit.jsonl")
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as handle:
        return [(entry["step"], entry["outcome"]) for entry in map(json.loads, handle) if entry]


def assert_untouched(cluster, dbname, before):
    assert ledger(cluster, dbname) == [] or all(change in pgcluster.TOOLING for change, _ in ledger(cluster, dbname))
    assert state(cluster, dbname) == before

#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: the stage4 authors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
---
module: stage4_change
short_description: Deploy or revert one SQL change (Sqitch layout) with a ledger and drift detection
description:
  - A change is a folder of SQL scripts, C(precheck.sql) (optional), C(deploy.sql), C(verify.sql), C(revert.sql)
    and C(verify_reverted.sql) (optional). Verify scripts fail by raising an exception.
  - With I(state=applied), runs precheck, deploy and verify in one transaction and records the change in the
    ledger table C(<ledger_schema>.ledger) with the SHA-256 of every file, in that same transaction. Any error
    rolls everything back, so a failed deploy or verify leaves the database as it was.
  - A change already in the ledger is left alone (C(changed=false)) when its C(deploy.sql) is unchanged, and
    refused when the file changed since it was applied (drift), as Flyway and Liquibase do; a I(repeatable)
    change (whose deploy can run again, like Flyway's repeatable migrations) is deployed again instead.
  - With I(state=reverted), runs revert and verify_reverted in one transaction and removes the ledger row. A
    change applied before others that are still applied is refused; revert the later ones first.
  - Every deploy and revert is also appended to C(<ledger_schema>.ledger_events).
  - A change may have C(decline.sql), one query returning one text value, the reason why the change does not
    pay, or cannot apply, on this database as it is now (NULL when it should be applied). Before a deploy it runs
    in a transaction that is always rolled back, so it may create temporary objects (the toolkit's reader of an
    RPC's query does) but changes nothing (in check mode, only with I(dry_run_precheck)); a reason ends the module with
    C(action=declined), nothing changed and nothing recorded, so a later run decides again (after the table
    grew, say).
  - DDL should wait for its lock only briefly (the scripts set C(lock_timeout)); when the lock is not granted
    the whole transaction is retried with exponential backoff.
  - A change may also have C(prepare.sql) and C(cleanup.sql), for work too long to do in the deploy transaction
    (copying a live table). Before that transaction, precheck runs (rolled back), the change is marked prepared in
    C(<ledger_schema>.prepared), and C(prepare.sql) runs in autocommit, outside any transaction block, as one
    statement (a C(DO) block or C(CALL)), so it can C(COMMIT) as it goes. It must be idempotent and resumable;
    after an interruption the next run runs it again. It is retried like a transaction when a lock is not granted.
    The change counts as applied only when the deploy transaction commits, which also clears the prepared mark.
  - A change may likewise have C(prepare_revert.sql), run the same way before the revert transaction (copying the
    table back outside any exclusive lock); the prepared mark records which of the two it was made for.
  - A change may have C(settle.sql), for what must wait until its deploy or revert has committed and the
    application's calls held back by that transaction have completed (OPT1 drops what its cutover retired). It runs
    after the commit, in autocommit, as one statement; its last column is returned as I(settled). A failure does not
    undo the change; it is reported in I(settled), and the change's next swap finishes the job.
  - C(cleanup.sql) removes what C(prepare.sql) or C(prepare_revert.sql) left. It runs, in a transaction with the
    prepared mark's removal, when a prepare or the transaction after it fails; before C(revert.sql) in the revert
    transaction when the change is marked prepared for a deploy; alone (action C(cleaned_up)) when a change that
    was prepared but never applied is reverted, or when a change whose revert was prepared but never committed is
    to stay applied.
  - A change whose checks compare a materialized copy with the live table (a materialized view with its source)
    declares C(-- stage4:isolation repeatable read) on a line of its C(deploy.sql), as Liquibase's formatted SQL
    declares changeset attributes. Its deploy transaction then runs in that isolation level, so every statement
    (the copy and the checks) sees the same snapshot and the application's concurrent writes cannot make them
    differ. A change that copies rows under a lock it takes must not declare it (the rows committed between the
    snapshot and the lock would be missed).
  - In check mode nothing is changed; the result says what would happen (whether an interrupted prepare would be
    resumed), and with C(--diff) shows the SQL that would run, prepare included. With I(dry_run_precheck), check mode also runs C(precheck.sql) in a read-only transaction that is
    rolled back, so a dry run reports a refusal before the real run.
version_added: "1.0.0"
author: stage4 authors
extends_documentation_fragment:
  - biblioteca.stage4.connection
options:
  change:
    description: Name of the change, the folder under I(sql_root).
    type: str
    required: true
  sql_root:
    description: Folder holding one sub-folder per change.
    type: path
    required: true
  state:
    description: Whether the change should be applied or reverted.
    type: str
    choices: [applied, reverted]
    default: applied
  repeatable:
    description:
      - The change's deploy can safely run again (C(CREATE OR REPLACE) only). When its C(deploy.sql) changed
        since it was applied, deploy and verify run again and the ledger is updated, instead of failing on drift.
    type: bool
    default: false
  variables:
    description:
      - Settings made visible to the scripts as C(current_setting('stage4.<name>')) for the transaction.
      - Recorded in the ledger.
    type: dict
    default: {}
  run_id:
    description: Identifier of the rollout run, recorded in the ledger and its events.
    type: str
    default: ""
  dry_run_precheck:
    description:
      - In check mode, run C(precheck.sql) in a read-only transaction (rolled back) and fail when it refuses.
      - Only meaningful when every change the precheck depends on is already applied; callers set it for the
        first pending change only.
    type: bool
    default: false
  decline:
    description:
      - A reason to decline the change without asking its C(decline.sql), when it would be deployed (a promotion
        from a staging run that declined it must not apply it where it was never judged). Empty asks C(decline.sql).
      - A change already applied is left as it is.
    type: str
    default: ""
  tooling:
    description:
      - Changes that install tooling (Stage 4's C(stage4_tooling_changes)). A revert does not wait for them; they
        are never reverted by a rollback, and a newer checkout may install one after the optimizations were
        applied.
    type: list
    elements: str
    default: []
  decide_only:
    description:
      - Only decide what the change would do (C(decline), then C(decline.sql) in a rolled-back transaction) and
        return C(action) C(declined), C(unchanged) or C(would_deploy) (C(would_redeploy), ...), running nothing
        else and changing nothing.
      - Stage 4 asks before preparing the server for a change (loading pg_cron may restart PostgreSQL), so that a
        change that declines costs no restart.
    type: bool
    default: false
  gated:
    description:
      - The change is judged after it is deployed (Stage 4's gate). Its ledger row keeps C(accepted_at) empty
        until the caller sets it once the gate passed; a row left empty means a run died between the deploy and
        the verdict, and the next run reverts the change and applies it again through the gate.
      - Without it, a deploy is accepted at once.
    type: bool
    default: false
  ledger_schema:
    description: Schema of the ledger tables, created when missing.
    type: str
    default: stage4
  lock_retries:
    description: How many times a transaction that could not get its lock is retried.
    type: int
    default: 5
  lock_retry_delay:
    description: Seconds before the first retry; doubled at every retry.
    type: float
    default: 2.0
  transaction_timeout:
    description:
      - Longest the deploy or revert transaction may run, waiting for its locks included, in seconds; 0 for no
        limit.
      - Beyond it the module cancels the transaction (rolled back, nothing changed) and retries it as one whose
        lock was not granted. The application's statements queued behind the transaction's locks therefore wait
        no longer than this, plus the time the cancel request takes to reach the server.
      - C(prepare.sql) and C(prepare_revert.sql) run outside the transaction and are not limited by it. Nor is a
        transaction that does the prepare's work itself (a change that has a prepare script for the action, run
        without it), which copies the table under its lock and cannot be this short.
    type: float
    default: 0
notes:
  - Statements that cannot run in a transaction block (C(VACUUM), C(CREATE INDEX CONCURRENTLY)) do not belong
    in the scripts that run in a transaction (all but C(prepare.sql) and C(prepare_revert.sql)).
"""

EXAMPLES = r"""
- name: Apply OPT1
  stage4_change:
    change: opt1_temporal_partitioning
    sql_root: "{{ playbook_dir }}/../files/sql"
    variables:
      partition_through_year: "2028"
    run_id: "{{ stage4_run_id }}"
    login_host: db.example.org
    login_user: postgres
    login_password: "{{ stage4_db_password }}"
    login_db: BIBLIOTECA
  register: opt1

- name: Revert OPT1
  stage4_change:
    change: opt1_temporal_partitioning
    sql_root: files/sql
    state: reverted
    login_user: postgres
    login_db: BIBLIOTECA
"""

RETURN = r"""
action:
  description: What happened.
  returned: always
  type: str
  sample: deployed
  # deployed, redeployed, reverted, cleaned_up, unchanged, declined, would_deploy, would_redeploy,
  # would_revert, would_clean_up
declined:
  description: Why the change was not deployed (what its decline.sql answered).
  returned: when action is declined
  type: str
  sample: "public.geometrias holds 251 rows in 0.6 MB, below 8 MB: partitioning cannot pay at this size"
change:
  description: Name of the change.
  returned: always
  type: str
  sample: opt1_temporal_partitioning
files:
  description: Every script of the change with its path and SHA-256.
  returned: always
  type: dict
  sample: {"deploy": {"path": "files/sql/opt1/deploy.sql", "sha256": "9f2c..."}}
executed:
  description: The scripts executed, in order (with a prepare, precheck runs before it and again in the deploy
    transaction).
  returned: always
  type: list
  elements: str
  sample: ["precheck", "prepare", "precheck", "deploy", "verify"]
prepared:
  description: What happened to C(prepare.sql) (deploy) or C(prepare_revert.sql) (revert) - C(started),
    C(resumed) (an earlier run was interrupted), or C(none) (no such script, or neither a deploy nor a revert).
    In check mode, what would happen.
  returned: always
  type: str
  sample: started
settled:
  description: What C(settle.sql) reported (its last column), C(failed - <error>), or C(not run).
  returned: always
  type: str
  sample: retired objects dropped
prepare_s:
  description: Seconds C(prepare.sql) or C(prepare_revert.sql) ran (in the run that succeeded).
  returned: always
  type: float
  sample: 25.9
attempts:
  description: Transactions tried (more than one when a lock was not granted in time or I(transaction_timeout) ran out).
  returned: always
  type: int
  sample: 1
duration_s:
  description: Seconds spent in the successful transaction (the deploy, the cutover of a prepared change), its COMMIT
    included.
  returned: always
  type: float
  sample: 0.84
commit_s:
  description: Seconds of that transaction's COMMIT, part of I(duration_s). The locks are held until it ends, and it
    cannot be cancelled, so I(transaction_timeout) does not bound it; it is where PostgreSQL removes the files of the
    tables the transaction dropped.
  returned: always
  type: float
  sample: 0.02
applied:
  description: Whether the change is in the ledger after this task (in check mode, whether it would be).
  returned: always
  type: bool
  sample: true
diff:
  description: With C(--diff), the ledger state before and the SQL scripts that run (or would run), in order.
  returned: when the change is deployed, redeployed or reverted (or would be) and diff mode is on
  type: dict
  sample: {"before_header": "opt1_temporal_partitioning: not applied", "before": "",
           "after_header": "opt1_temporal_partitioning: precheck, deploy, verify", "after": "-- precheck.sql ..."}
precheck:
  description: In check mode, what the dry-run precheck found.
  returned: always
  type: str
  sample: passed
notices:
  description: Messages the server raised with RAISE NOTICE while running the scripts.
  returned: always
  type: list
  elements: str
  sample: []
"""

import hashlib
import json
import os
import re
import threading
import time

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.biblioteca.stage4.plugins.module_utils.postgres import CONNECTION_ARGUMENT_SPEC, connect, first_line

try:
    import psycopg2
    from psycopg2 import errors as pg_errors
    from psycopg2 import sql
except ImportError:  # connect() reports it
    pass

SCRIPTS = ("decline", "precheck", "prepare", "deploy", "verify", "prepare_revert", "revert", "verify_reverted", "cleanup", "settle")
REQUIRED_SCRIPTS = ("deploy", "verify", "revert")
RUN_ON = {"deploy": ("precheck", "deploy", "verify"), "redeploy": ("deploy", "verify"),
          "revert": ("revert", "verify_reverted"), "cleanup": ("cleanup",)}
DONE = {"deploy": "deployed", "redeploy": "redeployed", "revert": "reverted", "cleanup": "cleaned_up"}
# The script run in autocommit before the transaction of an action, when the change has it.
PREPARE = {"deploy": "prepare", "redeploy": "prepare", "revert": "prepare_revert"}
# What a prepare is recorded for in the ledger's prepared table.
PREPARED_FOR = {"deploy": "deploy", "redeploy": "deploy", "revert": "revert"}

LEDGER_DDL = """
CREATE SCHEMA IF NOT EXISTS {schema};
CREATE TABLE IF NOT EXISTS {schema}.ledger (
    change      text PRIMARY KEY,
    seq         bigint GENERATED ALWAYS AS IDENTITY,
    applied_at  timestamptz NOT NULL DEFAULT now(),
    applied_by  text NOT NULL DEFAULT current_user,
    run_id      text NOT NULL,
    files       jsonb NOT NULL,
    variables   jsonb NOT NULL
);
-- Changes whose prepare.sql (or prepare_revert.sql) ran or is running, and whose deploy (revert) has not
-- committed yet.
CREATE TABLE IF NOT EXISTS {schema}.prepared (
    change      text PRIMARY KEY,
    started_at  timestamptz NOT NULL DEFAULT now(),
    run_id      text NOT NULL,
    files       jsonb NOT NULL
);
-- What the prepare was for. A ledger made before this column existed held only deploys' prepares.
ALTER TABLE {schema}.prepared ADD COLUMN IF NOT EXISTS action text NOT NULL DEFAULT 'deploy'
    CHECK (action IN ('deploy', 'revert'));
CREATE TABLE IF NOT EXISTS {schema}.ledger_events (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at          timestamptz NOT NULL DEFAULT now(),
    by_role     text NOT NULL DEFAULT current_user,
    change      text NOT NULL,
    action      text NOT NULL,
    run_id      text NOT NULL,
    files       jsonb NOT NULL
);
-- When the change was accepted: at deploy, or, for a gated change, when its gate passed. A ledger
-- made before this column existed held only accepted changes, hence the default.
ALTER TABLE {schema}.ledger ADD COLUMN IF NOT EXISTS accepted_at timestamptz DEFAULT now();
REVOKE ALL ON SCHEMA {schema} FROM PUBLIC;
"""


def read_change(sql_root, change):
    """{script: {"path", "sha256", "text"}} for the scripts present; raises ValueError when incomplete."""
    folder = os.path.join(sql_root, change)
    if not os.path.isdir(folder):
        raise ValueError("change folder {0} does not exist".format(folder))
    scripts = {}
    for name in SCRIPTS:
        path = os.path.join(folder, name + ".sql")
        if os.path.isfile(path):
            with open(path, "rb") as handle:
                data = handle.read()
            scripts[name] = {"path": path, "sha256": hashlib.sha256(data).hexdigest(),
                             "text": data.decode("utf-8")}
    missing = [name for name in REQUIRED_SCRIPTS if name not in scripts]
    if ("prepare" in scripts or "prepare_revert" in scripts) and "cleanup" not in scripts:
        missing.append("cleanup")
    if missing:
        raise ValueError("change {0} lacks {1}".format(change, ", ".join(n + ".sql" for n in missing)))
    return scripts


# The line of deploy.sql declaring its transaction's isolation level (scripts/export_supabase_migrations.py reads it too).
ISOLATION_PATTERN = r"^-- stage4:isolation (read committed|repeatable read|serializable)\s*$"
ISOLATION_DIRECTIVE = re.compile(ISOLATION_PATTERN, re.MULTILINE)


def deploy_isolation(scripts):
    """The isolation level deploy.sql declares for its transaction, or None (the server's default)."""
    found = ISOLATION_DIRECTIVE.search(scripts["deploy"]["text"])
    return found.group(1).upper() if found else None


def public_files(scripts):
    return {name: {"path": item["path"], "sha256": item["sha256"]} for name, item in scripts.items()}


def plan(state, ledger_row, scripts, later_changes, repeatable=False, prepared=None):
    """Decides what to do from the ledger and the prepared mark (None, "deploy" or "revert"): returns
    (action, error)."""
    if state == "applied":
        if ledger_row is None:
            return "deploy", None
        recorded = ledger_row["files"].get("deploy", {}).get("sha256")
        if recorded != scripts["deploy"]["sha256"]:
            if repeatable:
                return "redeploy", None
            return None, ("drift: {0} was applied with deploy.sql {1}, the file is now {2}; revert it with the "
                          "script it was applied with, or restore that file".format(
                              ledger_row["change"], recorded, scripts["deploy"]["sha256"]))
        # A revert that was prepared and never committed: the change stays applied, its copy goes.
        return ("cleanup", None) if prepared == "revert" else ("unchanged", None)
    if ledger_row is None:
        return ("cleanup", None) if prepared and "cleanup" in scripts else ("unchanged", None)
    if later_changes:
        return None, "revert {0} first: applied after {1}".format(", ".join(later_changes), ledger_row["change"])
    return "revert", None


class Ledger:
    def __init__(self, conn, schema):
        self.conn = conn
        self.schema_name = schema
        self.schema = sql.Identifier(schema)

    def exists(self):
        with self.conn.cursor() as cur:
            cur.execute("SELECT to_regclass(format('%%I.ledger', %s::text)) IS NOT NULL", (self.schema_name,))
            return cur.fetchone()[0]

    def ensure(self):
        with self.conn.cursor() as cur:
            cur.execute(sql.SQL(LEDGER_DDL).format(schema=self.schema))

    def row(self, change):
        if not self.exists():
            return None
        with self.conn.cursor() as cur:
            cur.execute(sql.SQL("SELECT change, seq, files FROM {0}.ledger WHERE change = %s").format(self.schema),
                        (change,))
            found = cur.fetchone()
        return None if found is None else {"change": found[0], "seq": found[1], "files": found[2]}

    def prepared_for(self, change):
        """The action the change was prepared for ("deploy" or "revert"), or None."""
        with self.conn.cursor() as cur:
            cur.execute("SELECT to_regclass(format('%%I.prepared', %s::text)) IS NOT NULL", (self.schema_name,))
            if not cur.fetchone()[0]:
                return None
            # to_jsonb(p): a ledger made before the action column (check mode does not add it) still reads.
            cur.execute(sql.SQL("SELECT coalesce(to_jsonb(p)->>'action', 'deploy') FROM {0}.prepared p WHERE change = %s")
                        .format(self.schema), (change,))
            found = cur.fetchone()
        return found[0] if found else None

    def mark_prepared(self, cur, action, change, run_id, files):
        """Recorded (and committed) before prepare.sql (prepare_revert.sql) runs, so a later run knows what to
        resume or clean up."""
        cur.execute(sql.SQL("INSERT INTO {0}.prepared (change, run_id, files, action) VALUES (%s, %s, %s, %s) "
                            "ON CONFLICT (change) DO NOTHING").format(self.schema),
                    (change, run_id, json.dumps(files), PREPARED_FOR[action]))
        cur.execute(sql.SQL("INSERT INTO {0}.ledger_events (change, action, run_id, files) VALUES (%s, %s, %s, %s)")
                    .format(self.schema), (change, PREPARE[action], run_id, json.dumps(files)))

    def applied_after(self, seq):
        with self.conn.cursor() as cur:
            cur.execute(sql.SQL("SELECT change FROM {0}.ledger WHERE seq > %s ORDER BY seq").format(self.schema),
                        (seq,))
            return [r[0] for r in cur.fetchall()]

    def record(self, cur, action, change, run_id, files, variables, gated=False):
        accepted = None if gated else "now"
        if action == "deploy":
            cur.execute(sql.SQL("INSERT INTO {0}.ledger (change, run_id, files, variables, accepted_at) "
                                "VALUES (%s, %s, %s, %s, %s::timestamptz)").format(self.schema),
                        (change, run_id, json.dumps(files), json.dumps(variables), accepted))
        elif action == "redeploy":
            cur.execute(sql.SQL("UPDATE {0}.ledger SET files = %s, variables = %s, run_id = %s, applied_at = now(), "
                                "accepted_at = %s::timestamptz WHERE change = %s").format(self.schema),
                        (json.dumps(files), json.dumps(variables), run_id, accepted, change))
        elif action == "revert":
            cur.execute(sql.SQL("DELETE FROM {0}.ledger WHERE change = %s").format(self.schema), (change,))
        cur.execute(sql.SQL("DELETE FROM {0}.prepared WHERE change = %s").format(self.schema), (change,))
        cur.execute(sql.SQL("INSERT INTO {0}.ledger_events (change, action, run_id, files) VALUES (%s, %s, %s, %s)")
                    .format(self.schema), (change, action, run_id, json.dumps(files)))


class ScriptFailed(Exception):
    def __init__(self, script, error):
        super().__init__("{0}.sql failed: {1}".format(script, first_line(error)))
        self.error = error


class OverBudget(ScriptFailed):
    """The transaction was cancelled because it ran past its transaction_timeout."""

    def __init__(self, seconds, failure):
        Exception.__init__(self, "the transaction ran past its transaction_timeout of {0:g} s and was cancelled{1}".format(
            seconds, " ({0})".format(failure) if failure else ""))
        self.error = None


class TransactionBudget:
    """Cancels what runs on conn once `seconds` have passed (0: never), so the transaction lets go of its locks
    within that time. `spent` tells whether it did; it is final once the budget is left (disarmed)."""

    def __init__(self, conn, seconds):
        self.conn = conn
        self.spent = False
        self._guard = threading.Lock()
        self._timer = threading.Timer(seconds, self._cancel) if seconds > 0 else None

    def _cancel(self):
        with self._guard:
            if self._timer is not None:
                self.spent = True
                self.conn.cancel()

    def __enter__(self):
        if self._timer is not None:
            self._timer.start()
        return self

    def __exit__(self, *exc_info):
        # Under the guard: once this returns, no cancel can be sent (it would hit the COMMIT).
        with self._guard:
            timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()


def steps_before_transaction(action, scripts, prepared):
    """The scripts run before the transaction of `action`: a deploy's precheck (rolled back) and prepare, or a
    revert's prepare_revert, when the change has them. None when a prepare for the other action is pending: a
    revert then cleans up a deploy's prepare in its transaction and copies back there, as without a prepare."""
    prepare = PREPARE.get(action)
    if prepare not in scripts or prepared not in (None, PREPARED_FOR[action]):
        return []
    return [n for n in ("precheck", prepare) if n in scripts and not (n == "precheck" and action == "revert")]


def transaction_scripts(action, scripts, prepared):
    """The scripts of the transaction of `action`; a revert first cleans up what a deploy's prepare left."""
    names = list(RUN_ON[action])
    if action == "revert" and prepared == "deploy":
        names.insert(0, "cleanup")
    return [n for n in names if n in scripts]


def steps_after_transaction(action, scripts):
    """settle.sql, run after the transaction of a deploy or a revert commits, when the change has it."""
    return ["settle"] if "settle" in scripts and action != "cleanup" else []


def sql_diff(change, action, row, scripts, names, prepared):
    """Ansible's diff of a change: the ledger state before, the scripts that run after."""
    before = ("applied with deploy.sql {0}".format(row["files"].get("deploy", {}).get("sha256"))
              if row else "not applied")
    if prepared:
        before += ", prepared for a {0} (interrupted or failed earlier)".format(prepared)
    body = "".join("-- ===== {0}.sql  sha256 {1}\n{2}\n".format(n, scripts[n]["sha256"], scripts[n]["text"].rstrip("\n"))
                   for n in names)
    return {"before_header": "{0}: {1}".format(change, before), "before": "",
            "after_header": "{0}: {1} ({2})".format(change, action, ", ".join(names)), "after": body}


def rolled_back(conn, params, text, read_only=True):
    """Runs text with the change's variables in a transaction that is rolled back, read-only unless told
    otherwise; returns the first row of its last statement's result, or None."""
    conn.autocommit = False
    try:
        with conn.cursor() as cur:
            if read_only:
                cur.execute("SET TRANSACTION READ ONLY")
            for key, value in sorted(params["variables"].items()):
                cur.execute("SELECT set_config(%s, %s, true)", ("stage4." + key, str(value)))
            cur.execute(text)
            return cur.fetchone() if cur.description else None
    finally:
        conn.rollback()
        conn.autocommit = True


def dry_run_precheck(conn, params, scripts):
    """Runs precheck.sql read-only; returns None or the refusal."""
    if "precheck" not in scripts:
        return None
    try:
        rolled_back(conn, params, scripts["precheck"]["text"])
    except psycopg2.Error as error:
        return first_line(error)
    return None


def decline_reason(conn, params, scripts):
    """What decline.sql answers, rolled back: None, or why not to deploy. Not read-only: reading an RPC's
    query as PostgreSQL does (stage4.canonical_query) creates a temporary function."""
    if "decline" not in scripts:
        return None
    row = rolled_back(conn, params, scripts["decline"]["text"], read_only=False)
    return row[0] if row else None


def run_scripts(cur, names, params, scripts, local=True):
    """Sets the change's variables (for the transaction, or the session when not local) and runs the scripts."""
    for key, value in sorted(params["variables"].items()):
        cur.execute("SELECT set_config(%s, %s, %s)", ("stage4." + key, str(value), local))
    for name in names:
        try:
            cur.execute(scripts[name]["text"])
        except psycopg2.Error as error:
            raise ScriptFailed(name, error) from error


def rollback(conn):
    """Rolls back unless the connection is gone (a terminated backend), which rolled it back already."""
    if not conn.closed:
        conn.rollback()


def run_transaction(conn, ledger, action, params, scripts, names, timeout=0.0):
    """Runs `names` and the ledger update of `action` in one transaction, committed; a deploy in the
    isolation level its deploy.sql declares. Cancelled (OverBudget) when it runs past `timeout` seconds; the COMMIT
    cannot be. Returns the seconds the COMMIT took."""
    conn.autocommit = False
    isolation = deploy_isolation(scripts) if action in ("deploy", "redeploy") else None
    conn.set_session(isolation_level=isolation or "DEFAULT")
    budget = TransactionBudget(conn, timeout)
    try:
        with budget, conn.cursor() as cur:
            run_scripts(cur, names, params, scripts)
            ledger.record(cur, action, params["change"], params["run_id"], public_files(scripts), params["variables"],
                          params["gated"])
        if budget.spent:  # the cancel arrived between two statements, where the server ignores it
            raise OverBudget(timeout, None)
        committing = time.monotonic()
        conn.commit()
        return time.monotonic() - committing
    except (ScriptFailed, psycopg2.Error) as failure:
        rollback(conn)
        if budget.spent and not isinstance(failure, OverBudget):
            raise OverBudget(timeout, failure) from failure
        raise
    except BaseException:
        rollback(conn)
        raise


def run_precheck(conn, params, scripts):
    """precheck.sql before a prepare, in a transaction rolled back: refuses before anything is built."""
    conn.autocommit = False
    try:
        with conn.cursor() as cur:
            run_scripts(cur, ["precheck"], params, scripts)
    finally:
        rollback(conn)


def run_prepare(conn, ledger, action, params, scripts):
    """Marks the change prepared for `action` (committed), then runs its prepare script in autocommit."""
    conn.autocommit = False
    with conn.cursor() as cur:
        ledger.mark_prepared(cur, action, params["change"], params["run_id"], public_files(scripts))
    conn.commit()
    conn.autocommit = True
    with conn.cursor() as cur:
        run_scripts(cur, [PREPARE[action]], params, scripts, local=False)


def run_settle(conn, params, scripts):
    """Runs settle.sql in autocommit after the change's transaction committed; returns what it reported."""
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            run_scripts(cur, ["settle"], params, scripts, local=False)
            row = cur.fetchone() if cur.description else None
        return str(row[-1]) if row else "done"
    except ScriptFailed as failure:
        return "failed - {0}".format(failure)


def with_lock_retries(conn, params, step):
    """Runs step() again, with exponential backoff, while it fails because a lock was not granted in time.
    Returns the attempts; raises the last ScriptFailed."""
    delay = params["lock_retry_delay"]
    for attempt in range(1, params["lock_retries"] + 2):
        try:
            step()
            return attempt
        except ScriptFailed as failure:
            failure.attempts = attempt
            retryable = isinstance(failure, OverBudget) or isinstance(failure.error, pg_errors.LockNotAvailable)
            if not retryable or conn.closed or attempt > params["lock_retries"]:
                raise
            time.sleep(delay)
            delay *= 2
    raise AssertionError("unreachable")


def failure_message(change, failure):
    if isinstance(failure.error, pg_errors.LockNotAvailable):
        tries = " (lock not granted after {0} attempts)".format(failure.attempts)
    elif isinstance(failure, OverBudget):
        tries = " (in each of {0} attempts)".format(failure.attempts)
    else:
        tries = ""
    return "change {0}: {1}; rolled back, nothing changed{2}".format(change, failure, tries)


def main():
    argument_spec = dict(
        change=dict(type="str", required=True),
        sql_root=dict(type="path", required=True),
        state=dict(type="str", default="applied", choices=["applied", "reverted"]),
        repeatable=dict(type="bool", default=False),
        variables=dict(type="dict", default={}),
        run_id=dict(type="str", default=""),
        dry_run_precheck=dict(type="bool", default=False),
        decline=dict(type="str", default=""),
        decide_only=dict(type="bool", default=False),
        tooling=dict(type="list", elements="str", default=[]),
        gated=dict(type="bool", default=False),
        ledger_schema=dict(type="str", default="stage4"),
        lock_retries=dict(type="int", default=5),
        lock_retry_delay=dict(type="float", default=2.0),
        transaction_timeout=dict(type="float", default=0.0),
    )
    argument_spec.update(CONNECTION_ARGUMENT_SPEC)
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    params = module.params
    if params["lock_retries"] < 0 or params["lock_retry_delay"] < 0 or params["transaction_timeout"] < 0:
        module.fail_json(msg="lock_retries, lock_retry_delay and transaction_timeout must not be negative")

    try:
        scripts = read_change(params["sql_root"], params["change"])
    except (OSError, ValueError, UnicodeDecodeError) as error:
        module.fail_json(msg=str(error))
    result = dict(change=params["change"], files=public_files(scripts), executed=[], attempts=0,
                  duration_s=0.0, commit_s=0.0, notices=[], precheck="not run", prepared="none", prepare_s=0.0, settled="not run")

    conn = connect(module, application_name="stage4_change", autocommit=True)
    ledger = Ledger(conn, params["ledger_schema"])
    row = ledger.row(params["change"])
    prepared = ledger.prepared_for(params["change"])
    later = ([change for change in ledger.applied_after(row["seq"]) if change not in params["tooling"]]
             if row and params["state"] == "reverted" else [])
    action, error = plan(params["state"], row, scripts, later, params["repeatable"], prepared)
    if error:
        module.fail_json(msg="change {0}: {1}".format(params["change"], error), **result)
    if action == "unchanged":
        module.exit_json(changed=False, action="unchanged", applied=row is not None, **result)
    if action == "deploy" and params["decline"]:
        module.exit_json(changed=False, action="declined", declined=params["decline"], applied=False, **result)
    # In check mode only where the precheck runs too (the first pending change): a later change's answer
    # depends on what the earlier ones would have done.
    if action == "deploy" and (not module.check_mode or params["dry_run_precheck"] or params["decide_only"]):
        try:
            reason = decline_reason(conn, params, scripts)
        except psycopg2.Error as error:
            module.fail_json(msg="change {0}: decline.sql failed: {1}; nothing was changed".format(
                params["change"], first_line(error)), **result)
        if reason:
            module.exit_json(changed=False, action="declined", declined=reason, applied=False, **result)
    if params["decide_only"]:
        module.exit_json(changed=False, action="would_" + action, applied=row is not None, **result)
    before_transaction = steps_before_transaction(action, scripts, prepared)
    uses_prepare = bool(before_transaction)
    result["prepared"] = ("resumed" if prepared else "started") if uses_prepare else "none"
    names = transaction_scripts(action, scripts, prepared)
    if module._diff:
        result["diff"] = sql_diff(params["change"], action, row, scripts,
                                  before_transaction + names + steps_after_transaction(action, scripts), prepared)
    if module.check_mode:
        if params["dry_run_precheck"] and action == "deploy":
            refusal = dry_run_precheck(conn, params, scripts)
            if refusal:
                module.fail_json(msg="change {0}: dry run: precheck.sql refuses: {1}; nothing was changed".format(
                    params["change"], refusal), **result)
            result["precheck"] = "passed"
        module.exit_json(changed=True, action="would_" + action.replace("cleanup", "clean_up"),
                         applied=params["state"] == "applied", **result)

    ledger.ensure()
    try:
        if uses_prepare:
            if "precheck" in before_transaction:
                with_lock_retries(conn, params, lambda: run_precheck(conn, params, scripts))
                result["executed"].append("precheck")
            started = time.monotonic()
            with_lock_retries(conn, params, lambda: run_prepare(conn, ledger, action, params, scripts))
            result["prepare_s"] = round(time.monotonic() - started, 3)
            result["executed"].append(PREPARE[action])

        copies_in_transaction = PREPARE.get(action) in scripts and not uses_prepare
        timeout = 0.0 if copies_in_transaction else params["transaction_timeout"]

        def transaction():
            result["attempts"] += 1
            transaction.started = time.monotonic()
            result["commit_s"] = round(run_transaction(conn, ledger, action, params, scripts, names, timeout), 3)
        with_lock_retries(conn, params, transaction)
        result["duration_s"] = round(time.monotonic() - transaction.started, 3)
        result["executed"] += names
        if steps_after_transaction(action, scripts):
            result["settled"] = run_settle(conn, params, scripts)
            result["executed"].append("settle")
    except ScriptFailed as failure:
        result["notices"] = [] if conn.closed else [n.strip() for n in conn.notices]
        message = failure_message(params["change"], failure)
        if uses_prepare:
            message += "; " + clean_up_after_failure(module, params, scripts, PREPARE[action])
        module.fail_json(msg=message, **result)
    result["notices"] = [n.strip() for n in conn.notices]
    conn.close()
    module.exit_json(changed=True, action=DONE[action], applied=params["state"] == "applied", **result)


def clean_up_after_failure(module, params, scripts, prepare):
    """Runs cleanup.sql after a failed prepare, deploy or revert (on a new connection: the old one may be gone)."""
    conn = connect(module, application_name="stage4_change", autocommit=True)
    ledger = Ledger(conn, params["ledger_schema"])
    try:
        if not ledger.prepared_for(params["change"]):
            return "nothing was prepared"
        with_lock_retries(conn, params, lambda: run_transaction(conn, ledger, "cleanup", params, scripts, ["cleanup"]))
        return "what {0}.sql built was removed (cleanup.sql)".format(prepare)
    except ScriptFailed as failure:
        retry, other = ("revert it again", "apply it") if prepare == "prepare_revert" else ("run the change again", "revert it")
        return "cleanup.sql failed too ({0}): {1} to resume, or {2} to clean up".format(failure, retry, other)
    finally:
        conn.close()


if __name__ == "__main__":
    main()

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
  - DDL should wait for its lock only briefly (the scripts set C(lock_timeout)); when the lock is not granted
    the whole transaction is retried with exponential backoff.
  - In check mode nothing is changed; the result says what would happen, and with C(--diff) shows the SQL that
    would run. With I(dry_run_precheck), check mode also runs C(precheck.sql) in a read-only transaction that is
    rolled back, so a dry run reports a refusal before the real run.
version_added: "1.0.0"
author: stage4 authors
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
  login_host:
    description: Database host.
    type: str
    default: localhost
  login_port:
    description: Database port.
    type: int
    default: 5432
  login_user:
    description: Role to connect as.
    type: str
    required: true
  login_password:
    description: Password of I(login_user). Never logged.
    type: str
    default: ""
  login_db:
    description: Database name.
    type: str
    required: true
  connect_timeout:
    description: Seconds to wait for the connection.
    type: int
    default: 10
  ssl_mode:
    description: libpq sslmode.
    type: str
    default: prefer
    choices: [disable, allow, prefer, require, verify-ca, verify-full]
requirements:
  - psycopg2
notes:
  - Statements that cannot run in a transaction block (C(VACUUM), C(CREATE INDEX CONCURRENTLY)) do not belong
    in these scripts.
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
  # deployed, redeployed, reverted, unchanged, would_deploy, would_redeploy, would_revert
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
  description: The scripts executed, in order.
  returned: always
  type: list
  elements: str
  sample: ["precheck", "deploy", "verify"]
attempts:
  description: Transactions tried (more than one when a lock was not granted in time).
  returned: always
  type: int
  sample: 1
duration_s:
  description: Seconds spent in the successful transaction.
  returned: always
  type: float
  sample: 0.84
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
import time

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.stage4_postgres import CONNECTION_ARGUMENT_SPEC, connect, first_line

try:
    import psycopg2
    from psycopg2 import errors as pg_errors
    from psycopg2 import sql
except ImportError:  # connect() reports it
    pass

SCRIPTS = ("precheck", "deploy", "verify", "revert", "verify_reverted")
REQUIRED_SCRIPTS = ("deploy", "verify", "revert")
RUN_ON = {"deploy": ("precheck", "deploy", "verify"), "redeploy": ("deploy", "verify"),
          "revert": ("revert", "verify_reverted")}
DONE = {"deploy": "deployed", "redeploy": "redeployed", "revert": "reverted"}

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
    if missing:
        raise ValueError("change {0} lacks {1}".format(change, ", ".join(n + ".sql" for n in missing)))
    return scripts


def public_files(scripts):
    return {name: {"path": item["path"], "sha256": item["sha256"]} for name, item in scripts.items()}


def plan(state, ledger_row, scripts, later_changes, repeatable=False):
    """Decides what to do from the ledger: returns (action, error)."""
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
        return "unchanged", None
    if ledger_row is None:
        return "unchanged", None
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
        else:
            cur.execute(sql.SQL("DELETE FROM {0}.ledger WHERE change = %s").format(self.schema), (change,))
        cur.execute(sql.SQL("INSERT INTO {0}.ledger_events (change, action, run_id, files) VALUES (%s, %s, %s, %s)")
                    .format(self.schema), (change, action, run_id, json.dumps(files)))


class ScriptFailed(Exception):
    def __init__(self, script, error):
        super().__init__("{0}.sql failed: {1}".format(script, first_line(error)))
        self.error = error


def sql_diff(change, action, row, scripts):
    """Ansible's diff of a change: the ledger state before, the scripts that run after."""
    names = [n for n in RUN_ON[action] if n in scripts]
    before = ("applied with deploy.sql {0}".format(row["files"].get("deploy", {}).get("sha256"))
              if row else "not applied")
    body = "".join("-- ===== {0}.sql  sha256 {1}\n{2}\n".format(n, scripts[n]["sha256"], scripts[n]["text"].rstrip("\n"))
                   for n in names)
    return {"before_header": "{0}: {1}".format(change, before), "before": "",
            "after_header": "{0}: {1} ({2})".format(change, action, ", ".join(names)), "after": body}


def dry_run_precheck(conn, params, scripts):
    """Runs precheck.sql read-only and rolls back; returns None or the refusal."""
    if "precheck" not in scripts:
        return None
    conn.autocommit = False
    try:
        with conn.cursor() as cur:
            cur.execute("SET TRANSACTION READ ONLY")
            for key, value in sorted(params["variables"].items()):
                cur.execute("SELECT set_config(%s, %s, true)", ("stage4." + key, str(value)))
            cur.execute(scripts["precheck"]["text"])
        return None
    except psycopg2.Error as error:
        return first_line(error)
    finally:
        conn.rollback()


def run_transaction(conn, ledger, action, params, scripts):
    """Runs the scripts of `action` and the ledger update in one transaction; returns the scripts run."""
    names = [n for n in RUN_ON[action] if n in scripts]
    with conn.cursor() as cur:
        for key, value in sorted(params["variables"].items()):
            cur.execute("SELECT set_config(%s, %s, true)", ("stage4." + key, str(value)))
        for name in names:
            try:
                cur.execute(scripts[name]["text"])
            except psycopg2.Error as error:
                raise ScriptFailed(name, error) from error
        ledger.record(cur, action, params["change"], params["run_id"], public_files(scripts), params["variables"],
                      params["gated"])
    return names


def main():
    argument_spec = dict(
        change=dict(type="str", required=True),
        sql_root=dict(type="path", required=True),
        state=dict(type="str", default="applied", choices=["applied", "reverted"]),
        repeatable=dict(type="bool", default=False),
        variables=dict(type="dict", default={}),
        run_id=dict(type="str", default=""),
        dry_run_precheck=dict(type="bool", default=False),
        gated=dict(type="bool", default=False),
        ledger_schema=dict(type="str", default="stage4"),
        lock_retries=dict(type="int", default=5),
        lock_retry_delay=dict(type="float", default=2.0),
    )
    argument_spec.update(CONNECTION_ARGUMENT_SPEC)
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    params = module.params
    if params["lock_retries"] < 0 or params["lock_retry_delay"] < 0:
        module.fail_json(msg="lock_retries and lock_retry_delay must not be negative")

    try:
        scripts = read_change(params["sql_root"], params["change"])
    except (OSError, ValueError, UnicodeDecodeError) as error:
        module.fail_json(msg=str(error))
    result = dict(change=params["change"], files=public_files(scripts), executed=[], attempts=0,
                  duration_s=0.0, notices=[], precheck="not run")

    conn = connect(module, application_name="stage4_change", autocommit=True)
    ledger = Ledger(conn, params["ledger_schema"])
    row = ledger.row(params["change"])
    later = ledger.applied_after(row["seq"]) if row and params["state"] == "reverted" else []
    action, error = plan(params["state"], row, scripts, later, params["repeatable"])
    if error:
        module.fail_json(msg="change {0}: {1}".format(params["change"], error), **result)
    if action == "unchanged":
        module.exit_json(changed=False, action="unchanged", applied=row is not None, **result)
    if module._diff:
        result["diff"] = sql_diff(params["change"], action, row, scripts)
    if module.check_mode:
        if params["dry_run_precheck"] and action == "deploy":
            refusal = dry_run_precheck(conn, params, scripts)
            if refusal:
                module.fail_json(msg="change {0}: dry run: precheck.sql refuses: {1}; nothing was changed".format(
                    params["change"], refusal), **result)
            result["precheck"] = "passed"
        module.exit_json(changed=True, action="would_" + action, applied=action != "revert", **result)

    if action == "deploy":
        ledger.ensure()
    conn.autocommit = False
    delay = params["lock_retry_delay"]
    for attempt in range(1, params["lock_retries"] + 2):
        result["attempts"] = attempt
        started = time.monotonic()
        try:
            result["executed"] = run_transaction(conn, ledger, action, params, scripts)
            conn.commit()
            break
        except ScriptFailed as failure:
            conn.rollback()
            lock_busy = isinstance(failure.error, pg_errors.LockNotAvailable)
            if not lock_busy or attempt > params["lock_retries"]:
                result["notices"] = [n.strip() for n in conn.notices]
                module.fail_json(msg="change {0}: {1}; rolled back, nothing changed{2}".format(
                    params["change"], failure, " (lock not granted after {0} attempts)".format(attempt)
                    if lock_busy else ""), **result)
            time.sleep(delay)
            delay *= 2
    result["duration_s"] = round(time.monotonic() - started, 3)
    result["notices"] = [n.strip() for n in conn.notices]
    conn.close()
    module.exit_json(changed=True, action=DONE[action], applied=action != "revert", **result)


if __name__ == "__main__":
    main()

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

import time

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.biblioteca.stage4.plugins.module_utils.change_files import (DONE, PREPARE, plan, read_change, public_files, sql_diff, steps_after_transaction,
    steps_before_transaction, transaction_scripts)
from ansible_collections.biblioteca.stage4.plugins.module_utils.change_runner import (ScriptFailed, decline_reason, dry_run_precheck, failure_message, run_precheck,
    run_prepare, run_settle, run_transaction, with_lock_retries)
from ansible_collections.biblioteca.stage4.plugins.module_utils.ledger import Ledger
from ansible_collections.biblioteca.stage4.plugins.module_utils.postgres import CONNECTION_ARGUMENT_SPEC, connect, first_line

try:
    import psycopg
except ImportError:  # connect() reports it
    pass


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
        except psycopg.Error as error:
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
        result["notices"] = [] if conn.closed else [n.strip() for n in conn.stage4_notices]
        message = failure_message(params["change"], failure)
        if uses_prepare:
            message += "; " + clean_up_after_failure(module, params, scripts, PREPARE[action])
        module.fail_json(msg=message, **result)
    result["notices"] = [n.strip() for n in conn.stage4_notices]
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

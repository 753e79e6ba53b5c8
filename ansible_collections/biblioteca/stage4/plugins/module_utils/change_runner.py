# -*- coding: utf-8 -*-
"""Runs a change's scripts on a connection: rolled back (decline, precheck), in one transaction with its
ledger row and a time budget, or in autocommit (prepare, settle), retrying while a lock is not granted.
"""
from __future__ import annotations

import threading
import time

from ansible_collections.biblioteca.stage4.plugins.module_utils.change_files import PREPARE, deploy_isolation, public_files
from ansible_collections.biblioteca.stage4.plugins.module_utils.postgres import first_line, to_last_result

try:
    import psycopg
    from psycopg import errors as pg_errors
except ImportError:  # connect() reports it
    pass


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
                self.conn.cancel_safe()

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
            to_last_result(cur.execute(text))
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
    except psycopg.Error as error:
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
        except psycopg.Error as error:
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
    conn.isolation_level = psycopg.IsolationLevel[isolation.replace(" ", "_")] if isolation else None
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
    except (ScriptFailed, psycopg.Error) as failure:
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
            row = cur.fetchone() if to_last_result(cur).description else None
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

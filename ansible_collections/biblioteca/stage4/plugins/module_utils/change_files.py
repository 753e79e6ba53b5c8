# -*- coding: utf-8 -*-
"""A change's folder of SQL scripts (the Sqitch layout), and what an action runs of it, in which order.

Pure: reading the files and deciding; nothing here talks to the database.
"""
from __future__ import annotations

import hashlib
import os
import re


SCRIPTS = ("decline", "precheck", "prepare", "deploy", "verify", "prepare_revert", "revert", "verify_reverted", "cleanup", "settle")

REQUIRED_SCRIPTS = ("deploy", "verify", "revert")

RUN_ON = {"deploy": ("precheck", "deploy", "verify"), "redeploy": ("deploy", "verify"),
          "revert": ("revert", "verify_reverted"), "cleanup": ("cleanup",)}

DONE = {"deploy": "deployed", "redeploy": "redeployed", "revert": "reverted", "cleanup": "cleaned_up"}


# The script run in autocommit before the transaction of an action, when the change has it.
PREPARE = {"deploy": "prepare", "redeploy": "prepare", "revert": "prepare_revert"}


# What a prepare is recorded for in the ledger's prepared table.
PREPARED_FOR = {"deploy": "deploy", "redeploy": "deploy", "revert": "revert"}


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

# -*- coding: utf-8 -*-
"""The plan: which changes run, in which order, with which settings.

files/sql/plan.yml lists the tooling changes and then the optimizations, in order (Sqitch's plan);
each change's folder holds a change.yml with its own settings. Read by the stage4_plan lookup for
the playbooks and by the scripts that run the changes outside Ansible.
"""
from __future__ import annotations

import os

import yaml

PLAN_FILE = "plan.yml"
MANIFEST_FILE = "change.yml"
TOOLING_KEYS = {"repeatable"}
OPTIMIZATION_KEYS = {"id", "title", "requires", "variables", "server_role", "vacuum", "transaction_timeout"}


class PlanError(Exception):
    pass


def _read_yaml(path):
    try:
        with open(path, encoding="utf-8") as handle:
            return yaml.safe_load(handle)
    except OSError as exc:
        raise PlanError("cannot read %s: %s" % (path, exc.strerror)) from exc
    except yaml.YAMLError as exc:
        raise PlanError("%s is not valid YAML: %s" % (path, exc)) from exc


def _manifest(sql_root, change, allowed):
    path = os.path.join(sql_root, change, MANIFEST_FILE)
    manifest = _read_yaml(path)
    if not isinstance(manifest, dict):
        raise PlanError("%s must be a mapping" % path)
    unknown = sorted(set(manifest) - allowed)
    if unknown:
        raise PlanError("%s: unknown keys %s (allowed: %s)" % (path, ", ".join(unknown), ", ".join(sorted(allowed))))
    return path, manifest


def load_plan(sql_root):
    """{"tooling": [{change, repeatable}], "optimizations": [{id, change, title, ...}]} as the plan and
    the manifests give them. Raises PlanError on a missing or malformed file, a duplicate id or change,
    and an optimization that requires one not listed before it."""
    plan_path = os.path.join(sql_root, PLAN_FILE)
    plan = _read_yaml(plan_path)
    if not isinstance(plan, dict) or set(plan) != {"tooling", "optimizations"} \
            or not all(isinstance(plan[key], list) for key in plan):
        raise PlanError("%s must hold two lists, tooling and optimizations" % plan_path)
    changes = plan["tooling"] + plan["optimizations"]
    if len(set(changes)) < len(changes):
        raise PlanError("%s lists a change twice" % plan_path)
    tooling = []
    for change in plan["tooling"]:
        _, manifest = _manifest(sql_root, change, TOOLING_KEYS)
        tooling.append(dict(change=change, repeatable=bool(manifest.get("repeatable", False))))
    optimizations = []
    for change in plan["optimizations"]:
        path, manifest = _manifest(sql_root, change, OPTIMIZATION_KEYS)
        missing = sorted({"id", "title"} - set(manifest))
        if missing:
            raise PlanError("%s: missing %s" % (path, ", ".join(missing)))
        earlier = [item["id"] for item in optimizations]
        if manifest["id"] in earlier:
            raise PlanError("%s: id %s is already the id of another change" % (path, manifest["id"]))
        later = sorted(set(manifest.get("requires") or []) - set(earlier))
        if later:
            raise PlanError("%s: requires %s, which %s not listed before it in %s"
                            % (path, ", ".join(later), "is" if len(later) == 1 else "are", plan_path))
        optimizations.append(dict(manifest, change=change))
    return dict(tooling=tooling, optimizations=optimizations)

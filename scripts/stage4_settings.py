"""The settings as Ansible resolves them for the changes, for the code that runs the changes outside Ansible
(scripts/export_supabase_migrations.py, the tests): playbooks/group_vars/all.yml, and the plan
(files/sql/plan.yml with each change's change.yml) in place of the two settings that read it."""
import re
from pathlib import Path

import yaml

import project_modules

project_modules.register()

from ansible_collections.biblioteca.stage4.plugins.lookup.stage4_plan import with_overrides  # noqa: E402
from ansible_collections.biblioteca.stage4.plugins.module_utils.plan import load_plan  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
GROUP_VARS = REPO / "playbooks" / "group_vars" / "all.yml"
SQL_ROOT = REPO / "files" / "sql"
REFERENCE = re.compile(r"\{\{\s*(stage4_\w+)\s*\}\}")


def load(**overrides):
    """The settings, overrides over them (as an inventory's would be), stage4_tooling_changes and
    stage4_optimizations read from the plan, and every variable of an optimization that is a plain
    reference to another setting ("{{ stage4_x }}") replaced by that setting's value as text. Other
    templates are left as they are: only Ansible can evaluate them."""
    settings = yaml.safe_load(GROUP_VARS.read_text(encoding="utf-8"))
    settings.update(overrides)
    plan = load_plan(str(SQL_ROOT))
    settings["stage4_tooling_changes"] = plan["tooling"]
    settings["stage4_optimizations"] = with_overrides(plan["optimizations"],
                                                      settings.get("stage4_optimization_variables") or {})
    for item in settings["stage4_optimizations"]:
        variables = dict(item.get("variables") or {})
        for key, value in variables.items():
            reference = REFERENCE.fullmatch(str(value))
            if reference and reference.group(1) in settings:
                variables[key] = str(settings[reference.group(1)])
        item["variables"] = variables
    return settings

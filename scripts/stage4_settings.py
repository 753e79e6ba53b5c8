"""playbooks/group_vars/all.yml read as Ansible reads it for the optimizations' SQL variables, for the code
that runs the changes outside Ansible (scripts/export_supabase_migrations.py, the tests)."""
import re
from pathlib import Path

import yaml

GROUP_VARS = Path(__file__).resolve().parent.parent / "playbooks" / "group_vars" / "all.yml"
REFERENCE = re.compile(r"\{\{\s*(stage4_\w+)\s*\}\}")


def load(**overrides):
    """The settings, overrides over them (as an inventory's would be), with every variable of
    stage4_optimizations that is a plain reference to another setting ("{{ stage4_x }}") replaced by that
    setting's value as text. Other templates are left as they are: only Ansible can evaluate them."""
    settings = yaml.safe_load(GROUP_VARS.read_text(encoding="utf-8"))
    settings.update(overrides)
    for item in settings["stage4_optimizations"]:
        variables = item.get("variables") or {}
        for key, value in variables.items():
            reference = REFERENCE.fullmatch(str(value))
            if reference and reference.group(1) in settings:
                variables[key] = str(settings[reference.group(1)])
    return settings

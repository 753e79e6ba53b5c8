# -*- coding: utf-8 -*-
"""stage4_plan: the changes of files/sql/plan.yml, in order, each with its change.yml."""
from __future__ import annotations

from ansible.errors import AnsibleError
from ansible.plugins.lookup import LookupBase

from ansible_collections.biblioteca.stage4.plugins.module_utils.plan import PlanError, load_plan

try:
    from ansible.template import trust_as_template
except ImportError:  # ansible-core before 2.19 templates any string
    def trust_as_template(value):
        return value

DOCUMENTATION = r"""
name: stage4_plan
short_description: The changes of the stage4 plan, in order, with their settings
description:
  - Reads C(plan.yml) in O(sql_root) and the C(change.yml) of every change it lists.
  - Returns the tooling changes (C(change), C(repeatable)) or the optimizations (C(id), C(change), C(title),
    C(requires), C(variables), C(server_role), C(vacuum), C(transaction_timeout)), in the plan's order.
  - An optimization's C(variables) may refer to the play's settings (C({{ stage4_min_table_bytes }})); they are
    templated with the play's variables. O(overrides) replaces some of them per optimization.
options:
  _terms:
    description: Which changes, V(tooling) or V(optimizations).
    required: true
  sql_root:
    description: The folder of the changes, holding C(plan.yml).
    type: path
    required: true
  overrides:
    description:
      - Per optimization id, variables that replace those of its C(change.yml), for example a
        C(refresh_schedule) of V(opt5). An unknown id or variable is an error.
    type: dict
    default: {}
"""

EXAMPLES = r"""
- name: The optimizations, in order
  ansible.builtin.debug:
    msg: "{{ query('biblioteca.stage4.stage4_plan', 'optimizations', sql_root=stage4_sql_root) | map(attribute='id') }}"
"""

RETURN = r"""
_raw:
  description: The tooling changes or the optimizations, one dict each, in the plan's order.
  type: list
  elements: dict
"""


def with_overrides(optimizations, overrides):
    """The optimizations with overrides[id] replacing some of their variables; raises on an unknown id or
    variable (a mistyped name would otherwise change nothing)."""
    by_id = {item["id"]: item for item in optimizations}
    unknown = sorted(set(overrides) - set(by_id))
    if unknown:
        raise PlanError("stage4_optimization_variables names no optimization %s (they are %s)"
                        % (", ".join(unknown), ", ".join(by_id)))
    result = []
    for item in optimizations:
        replaced = overrides.get(item["id"]) or {}
        variables = item.get("variables") or {}
        unknown = sorted(set(replaced) - set(variables))
        if unknown:
            raise PlanError("stage4_optimization_variables.%s: %s has no variable %s (it has %s)"
                            % (item["id"], item["change"], ", ".join(unknown), ", ".join(variables) or "none"))
        result.append(dict(item, variables=dict(variables, **replaced)) if variables else item)
    return result


class LookupModule(LookupBase):
    def run(self, terms, variables=None, **kwargs):
        self.set_options(var_options=variables, direct=kwargs)
        if len(terms) != 1 or terms[0] not in ("tooling", "optimizations"):
            raise AnsibleError("stage4_plan: ask for tooling or optimizations (got %s)" % ", ".join(map(str, terms)))
        try:
            plan = load_plan(self.get_option("sql_root"))
            if terms[0] == "tooling":
                return plan["tooling"]
            optimizations = with_overrides(plan["optimizations"], self.get_option("overrides") or {})
        except PlanError as exc:
            raise AnsibleError("stage4_plan: %s" % exc) from exc
        # The manifests are this repository's own files, as trusted as group_vars: their templates run.
        templar = self._templar.copy_with_new_env(available_variables=variables or {})
        return [dict(item, variables={name: templar.template(trust_as_template(value)) if isinstance(value, str) else value
                                      for name, value in item["variables"].items()})
                if item.get("variables") else item for item in optimizations]

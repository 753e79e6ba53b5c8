# -*- coding: utf-8 -*-
"""stage4_unknown_names: the stage4_* variables a run was given that no role or setting declares,
each with the closest declared name, so a mistyped -e stage4_... stops the run instead of being
silently ignored."""
from __future__ import annotations

import difflib


def stage4_unknown_names(names, known):
    """['stage4_optimizaton_gate_force_fail (did you mean stage4_optimization_gate_force_fail?)', ...]"""
    known = sorted(set(known))
    unknown = []
    for name in sorted(set(names) - set(known)):
        closest = difflib.get_close_matches(name, known, n=1, cutoff=0.8)
        unknown.append("%s (did you mean %s?)" % (name, closest[0]) if closest else name)
    return unknown


class FilterModule:
    def filters(self):
        return {"stage4_unknown_names": stage4_unknown_names}

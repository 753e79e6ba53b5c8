# -*- coding: utf-8 -*-
"""What the benchmark keeps of an EXPLAIN (FORMAT JSON) plan: its shape, relations, partitions and timings.
"""
from __future__ import annotations

import hashlib


def top_node_buffers(explain_output):
    """Shared hit and read blocks of the top plan node of EXPLAIN (FORMAT JSON) output."""
    plan = explain_output[0]["Plan"]
    return plan.get("Shared Hit Blocks"), plan.get("Shared Read Blocks")


def relation_name(node):
    """schema.relation of a scan node (EXPLAIN VERBOSE names the schema), else None."""
    if "Relation Name" not in node:
        return None
    return "%s.%s" % (node["Schema"], node["Relation Name"]) if "Schema" in node else node["Relation Name"]


def node_label(node):
    """Node type, with what it reads: 'Index Scan:public.geometrias', 'Function Scan:f'."""
    function = node.get("Function Name")
    if function and "Schema" in node:
        function = "%s.%s" % (node["Schema"], function)
    target = relation_name(node) or function or node.get("CTE Name")
    return "%s:%s" % (node["Node Type"], target) if target else node["Node Type"]


def plan_shape(node):
    children = node.get("Plans") or []
    if not children:
        return node_label(node)
    return "%s(%s)" % (node_label(node), ", ".join(plan_shape(child) for child in children))


def walk_plan(node, under_append=False):
    """Yield (node, whether an Append or Merge Append is above it) for the whole tree."""
    yield node, under_append
    below = under_append or node["Node Type"] in ("Append", "Merge Append")
    for child in node.get("Plans") or []:
        yield from walk_plan(child, below)


def plan_summary(explain_output):
    """The shape of an EXPLAIN (ANALYZE, VERBOSE, FORMAT JSON) plan and its timings."""
    top = explain_output[0]
    nodes = list(walk_plan(top["Plan"]))
    shape = plan_shape(top["Plan"])
    return dict(
        shape=shape,
        shape_sha256=hashlib.sha256(shape.encode("utf-8")).hexdigest(),
        node_types=sorted({node["Node Type"] for node, _ in nodes}),
        relations=sorted({relation_name(node) for node, _ in nodes if relation_name(node)}),
        partitions_scanned=len({relation_name(node) for node, under in nodes
                                if under and relation_name(node)}),
        planning_ms=top.get("Planning Time"),
        execution_ms=top.get("Execution Time"),
    )

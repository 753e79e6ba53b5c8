# -*- coding: utf-8 -*-
"""How many timed executions each query gets and in which order the clients run them.
"""
from __future__ import annotations

import hashlib
import random


def split_iterations(iterations, workers):
    """Spread iterations over workers as evenly as possible, the first ones taking the rest."""
    share, rest = divmod(iterations, workers)
    return [share + (1 if index < rest else 0) for index in range(workers)]


def default_seed(run_id, stage):
    """A seed fixed by the run and the stage, so a rerun executes in the same order."""
    return int(hashlib.sha256(("%s\n%s" % (run_id, stage)).encode("utf-8")).hexdigest()[:8], 16)


def budgeted_iterations(costs_s, budget_s, workers, least, most):
    """Timed executions per query so that they fit budget_s of wall time on `workers` clients.

    Water-filling over budget_s * workers seconds of executions: the cheapest query still unserved
    takes `most` when that costs no more than an equal share of what is left, and gives the rest
    back; the others then take what their equal share buys. A query gets at least `least`, even
    when that exceeds its share (the budget is then exceeded by that query's minimum alone).
    """
    counts = [least] * len(costs_s)
    left = budget_s * workers
    open_queries = sorted(range(len(costs_s)), key=lambda index: costs_s[index])
    while open_queries:
        share = left / len(open_queries)
        cost = max(costs_s[open_queries[0]], 1e-6)
        if most * cost <= share:
            counts[open_queries.pop(0)] = most
            left -= most * cost
            continue
        for index in open_queries:
            counts[index] = max(least, min(most, int(share / max(costs_s[index], 1e-6))))
        break
    return counts


def interleaved_schedules(shares_per_query, seed):
    """Per worker, its rounds one after the other: every query still owed an execution once per
    round, shuffled. shares_per_query[q][w] is how many executions of q worker w times."""
    rng = random.Random(seed)
    schedules = []
    for worker in range(len(shares_per_query[0]) if shares_per_query else 0):
        owed = [shares[worker] for shares in shares_per_query]
        schedule = []
        for round_number in range(max(owed, default=0)):
            order = [index for index, count in enumerate(owed) if count > round_number]
            rng.shuffle(order)
            schedule.extend(order)
        schedules.append(schedule)
    return schedules


def latency_phases(query_count, params, workers, seed, counts=None):
    """The timed phases: one of mixed rounds (interleaved), or one per query (sequential).

    counts: timed executions per query (default O(iterations) each); a query's warm-up is at most
    a tenth of them (at least 1) when they are fewer than O(iterations).
    A phase is dict(warmup=[query indexes run untimed by every worker first],
    schedules=[query indexes timed, per worker]).
    """
    counts = counts or [params["iterations"]] * query_count
    warmups = [params["warmup"] if count >= params["iterations"] else min(params["warmup"], max(1, count // 10))
               for count in counts]
    shares = [split_iterations(count, workers) for count in counts]
    if params["order"] == "interleaved":
        return [dict(warmup=[index for rounds in range(max(warmups, default=0))
                             for index in range(query_count) if warmups[index] > rounds],
                     schedules=interleaved_schedules(shares, seed))]
    return [dict(warmup=[index] * warmups[index], schedules=[[index] * share for share in shares[index]])
            for index in range(query_count)]

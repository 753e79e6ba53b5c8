# -*- coding: utf-8 -*-
"""One benchmark run: inspect the queries, measure them on the worker processes, explain them,
and put every figure together.
"""
from __future__ import annotations

import datetime
import time

from ansible_collections.biblioteca.stage4.plugins.module_utils.bench_session import (NO_COUNTERS, STATS_SOURCES, BenchmarkError, blocks_after, callers, connect,
    counters_delta, database_blocks, execute, explain, flush_stats, gather_provenance, hit_ratio, open_session,
    statement_counters, statements_relation, statements_summary)
from ansible_collections.biblioteca.stage4.plugins.module_utils.bench_queries import fingerprint
from ansible_collections.biblioteca.stage4.plugins.module_utils.plans import plan_summary, top_node_buffers
from ansible_collections.biblioteca.stage4.plugins.module_utils.schedule import budgeted_iterations, default_seed, latency_phases
from ansible_collections.biblioteca.stage4.plugins.module_utils.stats import confidence_intervals, summarize
from ansible_collections.biblioteca.stage4.plugins.module_utils.workers import WorkerPool, throughput, wall_seconds

try:
    import psycopg
except ImportError:  # gis_benchmark reports it
    pass


def describe_query(query):
    return "query %s (%s)" % (query["query_id"], query["file"])


# A query faster than this runs twice before the measurement: its cost (for O(time_budget_s)) is
# the faster run.
PILOT_REPEAT_BELOW_S = 1.0


def inspect_queries(controls, queries):
    """Fingerprint each query with its plain statement, read its query id (None when the server
    computes none) and time it (pilot_s: the cost time_budget_s shares the budget by)."""
    inspected = []
    # The role each caller's session executes as: pg_stat_statements counts its executions under it.
    userids = [execute(control, "SELECT oid FROM pg_roles WHERE rolname = current_user")[0][0] for control in controls]
    for query in queries:
        control = controls[query.get("session", 0)]
        try:
            began = time.perf_counter()
            rows = execute(control, query["sql"])
            pilot_s = time.perf_counter() - began
            if pilot_s < PILOT_REPEAT_BELOW_S:  # a first run also pays the session's cold caches
                began = time.perf_counter()
                execute(control, query["sql"])
                pilot_s = min(pilot_s, time.perf_counter() - began)
            queryid = explain(control, "VERBOSE", query["sql"])[0].get("Query Identifier")
        except psycopg.Error as exc:
            raise BenchmarkError("%s failed: %s" % (describe_query(query), str(exc).strip())) from exc
        inspected.append(dict(result_rows=len(rows), fingerprint=fingerprint(rows), queryid=queryid,
                              userid=userids[query.get("session", 0)], pilot_s=pilot_s))
    return inspected


def explain_queries(controls, queries):
    """Plan and buffers of one EXPLAIN ANALYZE per query, in the warm state that was measured."""
    explained = []
    for query in queries:
        try:
            output = explain(controls[query.get("session", 0)], "ANALYZE, BUFFERS, VERBOSE", query["sql"])
        except psycopg.Error as exc:
            raise BenchmarkError("%s failed: %s" % (describe_query(query), str(exc).strip())) from exc
        shared_hit, shared_read = top_node_buffers(output)
        explained.append(dict(shared_hit=shared_hit, shared_read=shared_read, plan=plan_summary(output)))
    return explained


def run_phases(params, queries, phases, controls, counters, counter_keys):
    """Run the latency phases, EXPLAIN every query, then run the throughput phases.

    Returns (wall seconds of the latency phases, samples per query, throughput per query,
    EXPLAIN results per query, pg_stat_statements counters per query over the latency phases,
    the names of the EXECUTORS that ran).
    counters() snapshots pg_stat_statements by (role, query id) (counter_keys, per query); None when it
    cannot be used.
    """
    latency_count = sum(1 for phase in phases if "schedules" in phase)
    wall, samples = 0.0, [[] for _ in queries]
    totals = [NO_COUNTERS] * len(queries)
    throughputs, executors = [], set()
    with WorkerPool(params, queries, phases, params["concurrency"]) as pool:
        for phase_number in range(latency_count):
            pool.wait_all("ready", phase_number)
            before = counters() if counters else {}
            pool.signals[phase_number].set()
            payloads = pool.wait_all("done", phase_number)
            after = counters() if counters else {}
            wall += wall_seconds(payloads)
            for _, _, per_query, executor in payloads:
                executors.add(executor)
                for index, values in enumerate(per_query):
                    samples[index].extend(values)
            # Only the queries timed in this phase: a worker done early may already be warming up
            # the next phase's query (order=sequential).
            timed = {index for schedule in phases[phase_number]["schedules"] for index in schedule}
            totals = [counters_delta(before.get(key), after.get(key), total) if index in timed else total
                      for index, (key, total) in enumerate(zip(counter_keys, totals))]
        # While the workers wait: the plans of the warm state that was just measured.
        explained = explain_queries(controls, queries)
        for phase_number in range(latency_count, len(phases)):
            throughputs.append(throughput(pool.run_phase(phase_number)))
            executors.add(throughputs[-1]["client"])
        pool.wait_all("exit")
    return wall, samples, throughputs, explained, totals if counters else None, executors


def run_benchmark(params, queries):
    """Measure all queries; return the benchmark dict (without 'stored')."""
    began = time.monotonic()
    seed = params["seed"] if params["seed"] is not None else default_seed(params["run_id"], params["stage"])
    controls, observer = [], None
    try:
        for caller in callers(params):
            controls.append(open_session(params, caller))
        observer = connect(params)  # the login role, without as_role: statistics of every role
        provenance = gather_provenance(params, controls[0], seed)
        inspected = inspect_queries(controls, queries)
        relation = statements_relation(observer)
        queryids = [item["queryid"] for item in inspected]
        counter_keys = [(item["userid"], item["queryid"]) for item in inspected]
        use_statements = relation is not None and None not in queryids
        counts = None
        if params["time_budget_s"] > 0:
            counts = budgeted_iterations([item["pilot_s"] for item in inspected], params["time_budget_s"],
                                         params["concurrency"], params["min_iterations"], params["iterations"])
        phases = latency_phases(len(queries), params, params["concurrency"], seed, counts)
        if params["throughput_seconds"] > 0:
            phases += [dict(query=index, seconds=params["throughput_seconds"]) for index in range(len(queries))]
        before = database_blocks(observer)
        started_at = datetime.datetime.now(datetime.timezone.utc)
        wall, samples, throughputs, explained, totals, executors = run_phases(
            params, queries, phases, controls,
            (lambda: statement_counters(observer, relation, counter_keys)) if use_statements else None,
            counter_keys)
        finished_at = datetime.datetime.now(datetime.timezone.utc)
        for conn in controls + [observer]:
            flush_stats(conn)
        after = blocks_after(observer, before)
    finally:
        for conn in controls + [observer]:
            if conn is not None:
                conn.close()
    provenance["measurement"]["executor"] = ", ".join(sorted(executors)) or None
    results = {}
    for index, query in enumerate(queries):
        stats = summarize(samples[index])
        stats.update(confidence_intervals(samples[index], params["ci_level"]))
        stats.update(file=query["file"], sql_sha256=query["sql_sha256"], queryid=queryids[index],
                     result_rows=inspected[index]["result_rows"], fingerprint=inspected[index]["fingerprint"],
                     pilot_ms=round(inspected[index]["pilot_s"] * 1000.0, 3),
                     caller=callers(params)[query.get("session", 0)]["label"] or None,
                     statements=statements_summary(totals[index]) if totals else None,
                     qps=throughputs[index]["qps"] if throughputs else None,
                     throughput_executions=throughputs[index]["executions"] if throughputs else None,
                     **explained[index])
        results[query["query_id"]] = stats
    all_samples = [sample for per_query in samples for sample in per_query]
    blks_hit, blks_read = after[0] - before[0], after[1] - before[1]
    executions = len(all_samples)
    return dict(
        run_id=params["run_id"], stage=params["stage"],
        started_at=started_at.isoformat(), finished_at=finished_at.isoformat(),
        iterations=params["iterations"], warmup=params["warmup"],
        time_budget_s=params["time_budget_s"] or None,
        min_iterations=params["min_iterations"] if params["time_budget_s"] else None,
        concurrency=min(params["concurrency"], params["iterations"]),
        prepared=params["prepared"], order=params["order"], seed=seed,
        throughput_seconds=params["throughput_seconds"], ci_level=params["ci_level"],
        executions=executions, duration_s=round(wall, 6),
        elapsed_s=round(time.monotonic() - began, 3),
        qps=round(executions / wall, 3) if wall > 0 else None,
        mean_ms=round(sum(all_samples) / executions, 3),
        cache_hit_ratio=hit_ratio(blks_hit, blks_read), blks_hit=blks_hit, blks_read=blks_read,
        stats_source=STATS_SOURCES[0] if use_statements else STATS_SOURCES[1],
        server_version=provenance["server"]["version"], as_role=params["as_role"],
        provenance=provenance, queries=results,
    )

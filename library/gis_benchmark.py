#!/usr/bin/python
# -*- coding: utf-8 -*-
"""Ansible module: benchmark a set of read-only GIS queries on PostgreSQL."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: gis_benchmark
short_description: Benchmark a set of read-only GIS queries on PostgreSQL and store the results
description:
  - Runs every C(*.sql) file of O(queries_dir), in file-name order, against a PostgreSQL database
    and measures the latency of each query from the client, as an API would see it.
  - The timed executions run in O(concurrency) worker processes (not threads, so the client's
    Python work does not serialize them), each with its own connection. Every session prepares
    each query once and times C(EXECUTE), as PostgREST and C(pgbench -M prepared) do
    (O(prepared)).
  - Each worker first runs every query O(warmup) times, untimed. Then, with O(order=interleaved),
    the workers start together and run rounds, each round executing every query once in a
    random order (reproducible from O(seed)), so that no query always follows the same one;
    O(iterations) timed executions per query in all, spread over the workers. With
    O(order=sequential), the queries are measured one after the other, each with its own
    warm-up.
  - After the latency phase, with O(throughput_seconds) > 0, each query alone runs for that long
    on all the workers, back to back, and its throughput (C(qps)) is returned.
  - Per query it returns latency statistics with confidence intervals (O(ci_level)), the
    fingerprint of the result (so that a change of physical layout can be shown not to change
    the answer), the plan shape, timings and shared buffers of one
    C(EXPLAIN (ANALYZE, BUFFERS, VERBOSE)) run after the latency phase, and, where the
    C(pg_stat_statements) extension is installed and readable, the server-side counters of the
    query over the timed executions.
  - The cache-hit ratio of the run is the delta of C(blks_hit) and C(blks_read) in
    C(pg_stat_database) for the database over the whole run. Other sessions on the same
    database count too.
  - The result also records the provenance of the figures (server version and settings, client
    host, measurement options), merged with what the caller gives in O(provenance).
  - Every benchmark session is read-only (C(default_transaction_read_only)), so a query file that
    writes fails instead of changing data.
  - With O(store=true) the run is written to the tables of O(benchmark_schema) (see
    C(files/sql/benchmark_schema/deploy.sql) and C(files/sql/benchmark_provenance/deploy.sql)) in
    one transaction, replacing an earlier run with the same O(run_id) and O(stage).
author:
  - stage4 rollout maintainers
requirements:
  - psycopg2
extends_documentation_fragment:
  - action_common_attributes
attributes:
  check_mode:
    support: full
    details: In check mode the queries are measured and returned but nothing is stored.
  diff_mode:
    support: none
  platform:
    platforms: posix
options:
  login_host:
    description: Host of the PostgreSQL server.
    type: str
    default: localhost
  login_port:
    description: TCP port of the PostgreSQL server.
    type: int
    default: 5432
  login_user:
    description: Role to log in as. It must be able to write to O(benchmark_schema) when O(store=true).
    type: str
    required: true
  login_password:
    description: Password of O(login_user).
    type: str
    default: ""
  login_db:
    description: Database to benchmark (and to store the results in).
    type: str
    required: true
  connect_timeout:
    description: Seconds to wait for each connection to be established.
    type: int
    default: 10
  ssl_mode:
    description: libpq C(sslmode) of every connection.
    type: str
    default: prefer
    choices: [disable, allow, prefer, require, verify-ca, verify-full]
  queries_dir:
    description:
      - Folder of the queries, one read-only statement per C(.sql) file; a trailing semicolon is
        ignored.
      - The file name without C(.sql) is the query id.
      - The folder is read on the host that runs the module, which is usually the controller
        (a task delegated to V(localhost)), as the module reaches the database over the network.
    type: path
    required: true
  run_id:
    description: Identifier of the run; the stages of one rollout share it so they can be compared.
    type: str
    required: true
  stage:
    description: Rollout stage this run measures, for example V(baseline).
    type: str
    required: true
  iterations:
    description: Timed executions of each query (at least 1).
    type: int
    default: 30
  warmup:
    description: Untimed executions of each query on every benchmark connection before the timed ones.
    type: int
    default: 3
  time_budget_s:
    description:
      - Seconds of timed executions the latency phase may take, spread over the queries by their cost
        (V(0) disables it; every query then gets O(iterations)).
      - Each query's cost is the duration of its untimed execution for the fingerprint (the faster
        of two below one second, so that the session's cold caches do not count). The
        queries get as many timed executions as fit, the cheapest first, between O(min_iterations)
        and O(iterations); a query too slow for even O(min_iterations) within the budget gets
        O(min_iterations), so the budget bounds the phase unless some query alone exceeds it.
      - Its warm-up shrinks with it, to a tenth of its timed executions (at least 1, at most O(warmup)).
    type: float
    default: 0
  min_iterations:
    description: With O(time_budget_s), the fewest timed executions of any query.
    type: int
    default: 8
  concurrency:
    description:
      - Worker processes running the timed executions in parallel, each with its own connection
        (at least 1).
      - With fewer O(iterations) than workers, some workers time nothing in the latency phase;
        all of them run the throughput phase.
    type: int
    default: 2
  prepared:
    description:
      - Each session C(PREPARE)s every query once and the timed executions are C(EXECUTE)s, as
        with PostgREST or C(pgbench -M prepared).
      - With V(false), every execution sends the statement text (parsed and planned each time).
      - The fingerprint and the C(EXPLAIN)s always use the plain statement.
    type: bool
    default: true
  order:
    description:
      - V(interleaved) runs rounds of all the queries in a random order after one warm-up of all
        of them; V(sequential) measures the queries one after the other (warm-up, then the timed
        executions of one query on all workers, then the next query).
    type: str
    default: interleaved
    choices: [interleaved, sequential]
  seed:
    description:
      - Seed of the random order of O(order=interleaved).
      - Default, a number derived from O(run_id) and O(stage), so that a rerun uses the same order.
    type: int
  throughput_seconds:
    description:
      - After the latency phase, each query alone runs for this many seconds on all the workers,
        back to back (prepared), to measure its throughput at O(concurrency).
      - V(0) skips this phase; C(qps) of each query is then null.
    type: float
    default: 1.0
  ci_level:
    description: Confidence level of the intervals returned for the mean and the percentiles (between 0 and 1).
    type: float
    default: 0.95
  provenance:
    description:
      - What the caller knows about the run (for example the git commit, the checksums of the SQL
        files, the number of features), returned and stored with the provenance the module
        gathers itself under the keys C(server), C(client) and C(measurement), which take
        precedence over the same keys given here.
    type: dict
    default: {}
  as_role:
    description:
      - Role to C(SET ROLE) to in every benchmark session, so that row level security and
        privileges apply as for the API (for example V(anon) or V(authenticated)).
      - O(login_user) must be a member of it. Storing the results is done as O(login_user).
    type: str
  roles:
    description:
      - The callers to measure every query as, each in sessions of its own. Empty, the sessions run
        as O(login_user) (or O(as_role)).
      - Each entry names a C(label) (empty for the login role itself), the C(role) to C(SET ROLE) to
        (empty, the login role) and the C(claims) of the request's JWT that
        C(request.jwt.claims) holds, as PostgREST sets them for C(anon) and C(authenticated).
      - A query measured as a labelled caller is returned as C(<query id>@<label>), so the gate and
        the reports treat each caller's latency as a query of its own.
    type: list
    elements: dict
    default: []
    suboptions:
      label:
        description: Name of the caller in the query ids (letters, digits, C(_) and C(-)); empty for the login role.
        type: str
        default: ""
      role:
        description: Role to C(SET ROLE) to; empty for the login role.
        type: str
        default: ""
      claims:
        description: The JWT claims of the caller (for example C(sub) and C(role)); empty, none.
        type: dict
        default: {}
  statement_timeout_ms:
    description: C(statement_timeout) of the benchmark sessions in milliseconds; V(0) disables it.
    type: int
    default: 60000
  store:
    description: Store the run in O(benchmark_schema).
    type: bool
    default: true
  benchmark_schema:
    description: Schema holding the C(runs), C(query_results) and C(queries) tables.
    type: str
    default: stage4_benchmark
notes:
  - Latencies are measured with C(time.perf_counter) around executing the statement, receiving all
    its rows and freeing them, so they include the network round trip and the transfer of the
    result. Through libpq (C(executor)) no row is turned into a Python object; through psycopg2,
    JSON results are fetched as text, not parsed.
  - The workers are forked (start method C(fork)), which lets them run when Ansible executes the
    module from its AnsiballZ archive.
  - The confidence interval of the mean uses Student's t. Those of the percentiles are
    distribution-free, the order statistics whose ranks bound the percentile with the binomial
    probability O(ci_level), each tail at most half of the rest; null when there are too few
    samples for that level (for example fewer than 6 for the median at 95%, or about 300 for p99).
  - The C(pg_stat_statements) counters of a query are those of its query id (C(Query Identifier)
    of C(EXPLAIN (VERBOSE)), on which the prepared C(EXECUTE)s are counted too), summed over the
    roles and nesting levels in this database. Other sessions running the same query count too.
    The login role must be able to read every role's statistics (C(pg_read_all_stats)); otherwise,
    or without the extension, C(stats_source) is C(pg_stat_database) and C(statements) is null.
  - Percentiles use linear interpolation between the closest ranks (numpy's default); the standard
    deviation is the population one.
  - The result fingerprint is the sha256 of the row count and of the sorted text of the rows. A
    query must therefore return deterministic values (for example round floating sums) to get the
    same fingerprint whatever the physical layout.
"""

EXAMPLES = r"""
- name: Measure the baseline before any change
  gis_benchmark:
    login_host: db.internal
    login_user: postgres
    login_password: "{{ vault_postgres_password }}"
    login_db: postgres
    queries_dir: "{{ playbook_dir }}/../files/benchmark/queries"
    run_id: "{{ rollout_id }}"
    stage: baseline
    as_role: anon
  register: baseline

- name: Measure a candidate layout without storing it
  gis_benchmark:
    login_user: postgres
    login_password: "{{ vault_postgres_password }}"
    login_db: postgres
    queries_dir: files/benchmark/queries
    run_id: "{{ rollout_id }}"
    stage: clustered
    iterations: 100
    concurrency: 4
    order: sequential
    throughput_seconds: 0
    store: false
  register: candidate

- name: Record where the figures come from
  gis_benchmark:
    login_user: postgres
    login_db: postgres
    queries_dir: files/benchmark/queries
    run_id: "{{ rollout_id }}"
    stage: opt1
    ci_level: 0.99
    provenance:
      git_commit: "{{ lookup('ansible.builtin.pipe', 'git rev-parse HEAD') }}"
      features: 251

- name: The candidate returns the same results as the baseline
  ansible.builtin.assert:
    that: >-
      candidate.benchmark.queries[item].fingerprint
      == baseline.benchmark.queries[item].fingerprint
  loop: "{{ baseline.benchmark.queries.keys() | list }}"
"""

RETURN = r"""
benchmark:
  description: The measured run.
  returned: success
  type: dict
  contains:
    run_id:
      description: The O(run_id) given.
      type: str
      sample: rollout-2024-06-01
    stage:
      description: The O(stage) given.
      type: str
      sample: baseline
    started_at:
      description: Start of the run, ISO 8601 in UTC.
      type: str
      sample: "2024-06-01T12:00:00.123456+00:00"
    finished_at:
      description: End of the run, ISO 8601 in UTC.
      type: str
      sample: "2024-06-01T12:00:00.529530+00:00"
    iterations:
      description: Timed executions per query (the most, with O(time_budget_s)).
      type: int
      sample: 30
    time_budget_s:
      description: The O(time_budget_s) given, null without a budget.
      type: float
      sample: 60.0
    min_iterations:
      description: The O(min_iterations) given, null without a budget.
      type: int
      sample: 8
    elapsed_s:
      description: Wall time of the whole measurement in seconds, every phase included.
      type: float
      sample: 1.402
    warmup:
      description: Untimed executions per query and connection.
      type: int
      sample: 3
    concurrency:
      description: Connections used for the timed executions of the latency phase.
      type: int
      sample: 2
    prepared:
      description: The O(prepared) given.
      type: bool
      sample: true
    order:
      description: The O(order) given.
      type: str
      sample: interleaved
    seed:
      description: Seed of the random order (the O(seed) given, or the one derived from O(run_id) and O(stage)).
      type: int
      sample: 2882400001
    throughput_seconds:
      description: The O(throughput_seconds) given.
      type: float
      sample: 1.0
    ci_level:
      description: The O(ci_level) given.
      type: float
      sample: 0.95
    executions:
      description: Timed executions of all queries in the latency phase.
      type: int
      sample: 300
    duration_s:
      description:
        - Wall time of the latency phase in seconds (with O(order=sequential), the sum of the
          phases of the queries). The throughput phase is not included.
      type: float
      sample: 0.228366
    qps:
      description: O(executions) divided by O(duration_s).
      type: float
      sample: 1313.678
    mean_ms:
      description: Mean latency over all timed executions, in milliseconds.
      type: float
      sample: 1.329
    cache_hit_ratio:
      description: Share of shared-buffer hits in the blocks the database touched during the run; null if none.
      type: float
      sample: 0.999917
    blks_hit:
      description: Increase of C(pg_stat_database.blks_hit) during the run.
      type: int
      sample: 12000
    blks_read:
      description: Increase of C(pg_stat_database.blks_read) during the run.
      type: int
      sample: 1
    stats_source:
      description:
        - V(pg_stat_statements) when the C(statements) of every query come from that extension,
          V(pg_stat_database) when only the database-wide cache figures above are available.
      type: str
      sample: pg_stat_statements
    provenance:
      description:
        - The O(provenance) given, with C(server) (version, settings that shape plans and caching),
          C(client) (CPU count, CPU model and load average of the host running the module, Python and psycopg2
          versions) and C(measurement) (the options that shape the measurement, and C(executor), how the timed
          executions (latency samples and throughput) ran their prepared statements - C(libpq PQexecPrepared)
          on the session's own connection, as pgbench -M prepared does, or C(psycopg2 EXECUTE + fetchall) where
          that libpq cannot be found) added.
      type: dict
      sample:
        git_commit: "5834190"
        server:
          version: "15.18 (Debian 15.18-0+deb12u1)"
          settings: {shared_buffers: 256MB, work_mem: 4MB, jit: "on", plan_cache_mode: auto}
        client:
          cpu_count: 2
          cpu_model: AMD EPYC
          load_average: [0.52, 0.61, 0.7]
          python_version: 3.11.7
          psycopg2_version: 2.9.13
        measurement:
          concurrency: 2
          client: psycopg2, one process and connection per client
          executor: libpq PQexecPrepared
          prepared: true
          order: interleaved
          seed: 2882400001
          iterations: 30
          warmup: 3
          throughput_seconds: 1.0
          ci_level: 0.95
          statement_timeout_ms: 60000
          as_role: anon
    server_version:
      description: C(server_version) of the server.
      type: str
      sample: "15.18 (Debian 15.18-0+deb12u1)"
    as_role:
      description: The O(as_role) given, or null.
      type: str
      sample: anon
    stored:
      description: Whether the run was written to O(benchmark_schema).
      type: bool
      sample: true
    queries:
      description:
        - Statistics per query id. Times are in milliseconds.
        - C(samples_ms) are the latencies of the timed executions (per worker, in the order measured);
          C(mean_ms), C(p50_ms), C(p95_ms), C(p99_ms), C(min_ms), C(max_ms), C(stddev_ms) summarize them.
        - C(mean_ci_ms), C(p50_ci_ms), C(p95_ci_ms), C(p99_ci_ms) are [low, high] confidence intervals at
          C(ci_level); null when there are too few samples.
        - C(qps) and C(throughput_executions) are those of the throughput phase (null without it).
        - C(queryid) is the query identifier the server computes (null when it computes none).
        - C(statements) are the C(pg_stat_statements) counters of the query over the timed executions
          (C(calls), C(shared_blks_hit), C(shared_blks_read), C(cache_hit_ratio), C(total_exec_time_ms),
          C(mean_exec_time_ms)); null when not available (see C(stats_source)).
        - C(plan) describes one C(EXPLAIN (ANALYZE, BUFFERS, VERBOSE)) run after the latency phase;
          C(shared_hit) and C(shared_read) are the shared buffers of its top node.
        - C(fingerprint) is the hash of the result of the plain statement, C(result_rows) its row count.
        - C(caller) is the label of the O(roles) entry that ran the query, null for the login role.
        - C(pilot_ms) is the duration of that untimed execution (the faster of two below one second),
          the cost by which O(time_budget_s) is shared; C(calls) is how many timed executions the query got.
      type: dict
      sample:
        q01_bbox_intersects:
          file: /srv/stage4/files/benchmark/queries/q01_bbox_intersects.sql
          sql_sha256: 176b0c3369598990bfab422065e8b471e41a5e93c8999810808dea81e8cf2627
          calls: 30
          result_rows: 9
          mean_ms: 0.287
          p50_ms: 0.277
          p95_ms: 0.374
          p99_ms: 0.405
          min_ms: 0.226
          max_ms: 0.411
          stddev_ms: 0.047
          fingerprint: c17ed412a117b0897e32418cc8fd56331f0f9307f0cd86b16f3e37c6aa225aa7
          shared_hit: 8
          shared_read: 0
          samples_ms: [0.392, 0.348, 0.342, 0.276, 0.274, 0.244, 0.234, 0.229, 0.226, 0.253]
          mean_ci_ms: [0.269, 0.305]
          p50_ci_ms: [0.253, 0.291]
          p95_ci_ms: [0.348, 0.411]
          p99_ci_ms: null
          qps: 3120.5
          throughput_executions: 3121
          queryid: 7434962108094004438
          statements:
            calls: 30
            shared_blks_hit: 240
            shared_blks_read: 0
            cache_hit_ratio: 1.0
            total_exec_time_ms: 4.82
            mean_exec_time_ms: 0.161
          plan:
            shape: "Sort(Bitmap Heap Scan:public.geometrias(Bitmap Index Scan))"
            shape_sha256: 0c9a43ab5a47e0a9d6e55e7d1c9f1bd0c2a0b6d9c8d3a7f3e2b1c4d5e6f7a8b9
            node_types: [Bitmap Heap Scan, Bitmap Index Scan, Sort]
            relations: [public.geometrias]
            partitions_scanned: 0
            planning_ms: 0.412
            execution_ms: 0.198
"""

import ctypes
import datetime
import hashlib
import json
import math
import multiprocessing
import os
import platform
import queue
import random
import re
import time
import traceback

from ansible.module_utils.basic import AnsibleModule, missing_required_lib
from ansible.module_utils.stage4_postgres import (CONNECTION_ARGUMENT_SPEC, ConnectionFailed, describe_target,
                                                  open_connection)

try:
    import psycopg2
    import psycopg2.extras
    from psycopg2 import sql
except ImportError:
    HAS_PSYCOPG2 = False
    PSYCOPG2_IMPORT_ERROR = traceback.format_exc()
else:
    HAS_PSYCOPG2 = True
    PSYCOPG2_IMPORT_ERROR = None

APPLICATION_NAME = "stage4_gis_benchmark"
# How long to wait for pg_stat_database to show the run's blocks.
STATS_POLL_TIMEOUT_S = 2.0
STATS_POLL_INTERVAL_S = 0.05
# How often a waiting worker checks that its parent is alive, and the parent that its workers are.
LIVENESS_POLL_S = 1.0
# 'fork': the workers inherit the module as loaded, which works when Ansible runs it from its
# AnsiballZ zip as __main__ (a 'spawn' child would have to import it again, and cannot).
START_METHOD = "fork" if "fork" in multiprocessing.get_all_start_methods() else None
PREPARED_NAME = "stage4_bench_%d"
CLIENT_KIND = "psycopg2, one process and connection per client"
# How every timed execution (latency sample or throughput loop) runs a statement: libpq's
# PQexecPrepared on psycopg2's own connection (as pgbench -M prepared: extended protocol, every row
# received, none turned into a Python object), or psycopg2's EXECUTE and fetchall where that libpq
# cannot be found. Either way the result is freed inside the execution that produced it.
EXECUTORS = ("libpq PQexecPrepared", "psycopg2 EXECUTE + fetchall")
PGRES_COMMAND_OK = 1  # libpq's ExecStatusType
PGRES_TUPLES_OK = 2
PROVENANCE_SETTINGS = (
    "shared_buffers", "work_mem", "effective_cache_size", "random_page_cost", "jit",
    "max_parallel_workers_per_gather", "enable_partitionwise_aggregate", "enable_partitionwise_join",
    "plan_cache_mode",
)
MEASUREMENT_PARAMETERS = ("concurrency", "prepared", "order", "seed", "iterations", "warmup",
                          "throughput_seconds", "ci_level", "statement_timeout_ms", "as_role", "time_budget_s",
                          "min_iterations", "roles")
PERCENTILES = (50, 95, 99)
STATS_SOURCES = ("pg_stat_statements", "pg_stat_database")

ARGUMENT_SPEC = dict(
    CONNECTION_ARGUMENT_SPEC,
    queries_dir=dict(type="path", required=True),
    run_id=dict(type="str", required=True),
    stage=dict(type="str", required=True),
    iterations=dict(type="int", default=30),
    warmup=dict(type="int", default=3),
    time_budget_s=dict(type="float", default=0.0),
    min_iterations=dict(type="int", default=8),
    roles=dict(type="list", elements="dict", default=[],
               options=dict(label=dict(type="str", default=""), role=dict(type="str", default=""),
                            claims=dict(type="dict", default={}))),
    concurrency=dict(type="int", default=2),
    prepared=dict(type="bool", default=True),
    order=dict(type="str", default="interleaved", choices=["interleaved", "sequential"]),
    seed=dict(type="int"),
    throughput_seconds=dict(type="float", default=1.0),
    ci_level=dict(type="float", default=0.95),
    provenance=dict(type="dict", default={}),
    as_role=dict(type="str"),
    statement_timeout_ms=dict(type="int", default=60000),
    store=dict(type="bool", default=True),
    benchmark_schema=dict(type="str", default="stage4_benchmark"),
)

# Columns of the benchmark tables added by the benchmark_provenance change.
PROVENANCE_COLUMNS = {
    "runs": ("prepared", "execution_order", "seed", "throughput_seconds", "ci_level", "stats_source",
             "provenance"),
    "query_results": ("qps", "throughput_executions", "ci", "queryid", "statements", "plan"),
}


class BenchmarkError(Exception):
    """A failure to report to the user as is."""


class QueryFailed(Exception):
    """A query failed in a worker; index is its position in the query list."""

    def __init__(self, index, error):
        super().__init__(str(error).strip())
        self.index = index


# --------------------------------------------------------------------------
# Pure functions
# --------------------------------------------------------------------------

def check_args(params):
    """Return the list of problems with the parameters AnsibleModule cannot check."""
    minimums = dict(login_port=1, connect_timeout=1, iterations=1, warmup=0, concurrency=1,
                    statement_timeout_ms=0)
    errors = ["%s must be >= %d (got %d)" % (name, low, params[name])
              for name, low in minimums.items() if params[name] < low]
    if params["login_port"] > 65535:
        errors.append("login_port must be <= 65535 (got %d)" % params["login_port"])
    if params["time_budget_s"] < 0:
        errors.append("time_budget_s must be >= 0 (got %g)" % params["time_budget_s"])
    if params["time_budget_s"] > 0 and not 1 <= params["min_iterations"] <= params["iterations"]:
        errors.append("min_iterations must be between 1 and iterations (%d) (got %d)"
                      % (params["iterations"], params["min_iterations"]))
    if params["throughput_seconds"] < 0:
        errors.append("throughput_seconds must be >= 0 (got %g)" % params["throughput_seconds"])
    if not 0 < params["ci_level"] < 1:
        errors.append("ci_level must be between 0 and 1, both excluded (got %g)" % params["ci_level"])
    errors.extend("%s must not be empty" % name
                  for name in ("run_id", "stage", "benchmark_schema") if not params[name].strip())
    labels = [entry["label"] for entry in params["roles"]]
    errors.extend("roles: label %r must be empty or letters, digits, _ and -" % label
                  for label in labels if label and not re.match(r"^[A-Za-z0-9_-]+$", label))
    if len(set(labels)) < len(labels):
        errors.append("roles: every label must be different")
    if params["as_role"] is not None and not params["as_role"].strip():
        errors.append("as_role must not be empty when given")
    return errors


def strip_statement(text):
    """The statement of a query file, without surrounding blanks and trailing semicolons."""
    statement = text.strip()
    while statement.endswith(";"):
        statement = statement[:-1].rstrip()
    return statement


def has_code(statement):
    """Whether the text has anything besides blank lines and -- comments."""
    return any(line.strip() and not line.strip().startswith("--") for line in statement.splitlines())


def load_queries(queries_dir):
    """Read every *.sql file of queries_dir, sorted by name.

    Returns a list of dicts with query_id (the file stem), file, sql and sql_sha256 (of the
    statement as executed). Raises BenchmarkError on a missing or empty folder and on a file
    that cannot be read or holds no statement.
    """
    queries_dir = os.path.abspath(queries_dir)
    if not os.path.isdir(queries_dir):
        raise BenchmarkError("queries_dir %s is not a folder" % queries_dir)
    names = sorted(name for name in os.listdir(queries_dir)
                   if name.endswith(".sql") and not name.startswith(".")
                   and not os.path.isdir(os.path.join(queries_dir, name)))
    if not names:
        raise BenchmarkError("queries_dir %s holds no .sql file" % queries_dir)
    queries = []
    for name in names:
        path = os.path.join(queries_dir, name)
        try:
            with open(path, encoding="utf-8") as handle:
                statement = strip_statement(handle.read())
        except (OSError, UnicodeDecodeError) as exc:
            raise BenchmarkError("cannot read query file %s: %s" % (path, exc)) from exc
        if not has_code(statement):
            raise BenchmarkError("query file %s holds no SQL statement" % path)
        queries.append(dict(query_id=name[:-len(".sql")], file=path, sql=statement,
                            sql_sha256=hashlib.sha256(statement.encode("utf-8")).hexdigest()))
    return queries


def percentile(sorted_samples, pct):
    """Percentile pct (0-100) of sorted samples, interpolated linearly like numpy's default."""
    if not sorted_samples:
        raise ValueError("percentile of no samples")
    rank = (len(sorted_samples) - 1) * pct / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(sorted_samples) - 1)
    return sorted_samples[low] + (rank - low) * (sorted_samples[high] - sorted_samples[low])


def summarize(samples_ms):
    """Latency statistics of a list of samples in ms (population standard deviation)."""
    ordered = sorted(samples_ms)
    count = len(ordered)
    mean = sum(ordered) / count
    stddev = math.sqrt(sum((value - mean) ** 2 for value in ordered) / count)
    return dict(
        calls=count,
        mean_ms=round(mean, 3),
        p50_ms=round(percentile(ordered, 50), 3),
        p95_ms=round(percentile(ordered, 95), 3),
        p99_ms=round(percentile(ordered, 99), 3),
        min_ms=ordered[0],
        max_ms=ordered[-1],
        stddev_ms=round(stddev, 3),
        samples_ms=list(samples_ms),
    )


def regularized_beta(x, a, b):
    """The regularized incomplete beta function I_x(a, b) (continued fraction, Lentz's method)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    # The continued fraction converges fast only on this side of the mean.
    if x > (a + 1.0) / (a + b + 2.0):
        return 1.0 - regularized_beta(1.0 - x, b, a)
    tiny = 1e-300
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
                     + a * math.log(x) + b * math.log1p(-x)) / a
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    fraction = d
    for m in range(1, 500):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            fraction *= c * d
        if abs(c * d - 1.0) < 1e-15:
            break
    return front * fraction


def student_t_cdf(t, df):
    """P(T <= t) for Student's t with df degrees of freedom."""
    tail = 0.5 * regularized_beta(df / (df + t * t), df / 2.0, 0.5)
    return 1.0 - tail if t > 0 else tail


def student_t_quantile(probability, df):
    """The t such that P(T <= t) = probability (0.5 < probability < 1), by bisection."""
    low, high = 0.0, 1.0
    while student_t_cdf(high, df) < probability:
        low, high = high, high * 2.0
    while high - low > 1e-12 * high:
        middle = (low + high) / 2.0
        if student_t_cdf(middle, df) < probability:
            low = middle
        else:
            high = middle
    return (low + high) / 2.0


def mean_interval(samples, level):
    """[low, high] confidence interval of the mean (Student's t), None under two samples."""
    count = len(samples)
    if count < 2:
        return None
    mean = sum(samples) / count
    deviation = math.sqrt(sum((value - mean) ** 2 for value in samples) / (count - 1))
    margin = student_t_quantile((1.0 + level) / 2.0, count - 1) * deviation / math.sqrt(count)
    return [round(mean - margin, 3), round(mean + margin, 3)]


def binomial_pmf(count, probability):
    """P(B = k) for k = 0..count, B binomial(count, probability), computed in logs."""
    log_p, log_q = math.log(probability), math.log1p(-probability)
    log_n = math.lgamma(count + 1)
    return [math.exp(log_n - math.lgamma(k + 1) - math.lgamma(count - k + 1)
                     + k * log_p + (count - k) * log_q) for k in range(count + 1)]


def order_statistic_ranks(count, quantile, level):
    """1-based ranks (low, high) of the order statistics bounding the quantile (0 < q < 1).

    Distribution-free: the quantile lies in [X(low), X(high)] with probability
    P(low <= B < high), B ~ binomial(count, quantile), and each tail outside is at most
    (1 - level) / 2 (the equal-tailed choice). None when count is too small for the level.
    """
    pmf = binomial_pmf(count, quantile)
    tail = (1.0 - level) / 2.0
    below, low = 0.0, None  # below = P(B <= rank - 1)
    for rank in range(1, count + 1):
        below += pmf[rank - 1]
        if below > tail:
            break
        low = rank
    above, high = 0.0, None  # above = P(B >= rank)
    for rank in range(count, 0, -1):
        above += pmf[rank]
        if above > tail:
            break
        high = rank
    if low is None or high is None:
        return None
    return low, high


def confidence_intervals(samples_ms, level):
    """mean_ci_ms, p50_ci_ms, p95_ci_ms and p99_ci_ms of the samples; None where too few."""
    ordered = sorted(samples_ms)
    intervals = dict(mean_ci_ms=mean_interval(ordered, level))
    for pct in PERCENTILES:
        ranks = order_statistic_ranks(len(ordered), pct / 100.0, level)
        intervals["p%d_ci_ms" % pct] = (None if ranks is None
                                        else [ordered[ranks[0] - 1], ordered[ranks[1] - 1]])
    return intervals


def fingerprint(rows):
    """sha256 of the row count and the sorted text of the rows: independent of row order."""
    digest = hashlib.sha256(("%d\n" % len(rows)).encode("utf-8"))
    # str() of a tuple escapes newlines inside values, so one row is one line.
    for line in sorted(str(tuple(row)) for row in rows):
        digest.update(line.encode("utf-8"))
        digest.update(b"\n")
    return digest.hexdigest()


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


def hit_ratio(blks_hit, blks_read):
    """Cache-hit ratio of a block delta, None when no block was touched."""
    total = blks_hit + blks_read
    return round(blks_hit / total, 6) if total else None


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


NO_COUNTERS = (0, 0, 0, 0.0)


def counters_delta(before, after, total=NO_COUNTERS):
    """total plus the increase from before to after of pg_stat_statements counters.

    Counters are (calls, shared_blks_hit, shared_blks_read, total_exec_time) tuples, None for a
    query id without an entry (yet).
    """
    return tuple(base + now - then
                 for base, now, then in zip(total, after or NO_COUNTERS, before or NO_COUNTERS))


def statements_summary(counters):
    """The statements dict of a query from its counters over the timed phase."""
    calls, hit, read, total = counters
    return dict(calls=calls, shared_blks_hit=hit, shared_blks_read=read,
                cache_hit_ratio=hit_ratio(hit, read), total_exec_time_ms=round(total, 3),
                mean_exec_time_ms=round(total / calls, 3) if calls else None)


def wall_seconds(payloads):
    """From the first start to the last end of the workers' (start, end, ...) payloads.

    perf_counter is CLOCK_MONOTONIC on Linux, one clock for all processes of the host.
    """
    return max(payload[1] for payload in payloads) - min(payload[0] for payload in payloads)


def throughput(payloads):
    """executions, seconds, qps and client of a throughput phase from its (start, end, count, client)
    per worker."""
    executions = sum(payload[2] for payload in payloads)
    wall = wall_seconds(payloads)
    return dict(executions=executions, seconds=round(wall, 6),
                qps=round(executions / wall, 3) if wall > 0 else None,
                client=", ".join(sorted({payload[3] for payload in payloads})))


def with_defaults(params):
    """The parameters with the module's defaults for what is not given."""
    complete = {name: spec.get("default") for name, spec in ARGUMENT_SPEC.items()}
    complete.update(params)
    return complete


# --------------------------------------------------------------------------
# Database work
# --------------------------------------------------------------------------

def connect(params):
    """An autocommit connection; BenchmarkError naming the target (never the password)."""
    try:
        return open_connection(params, APPLICATION_NAME, autocommit=True)
    except ConnectionFailed as exc:
        raise BenchmarkError(str(exc)) from exc


def callers(params):
    """The callers measured: O(roles), or the login session alone."""
    return params["roles"] or [dict(label="", role="", claims={})]


def with_callers(queries, params):
    """Every query once per caller: its id gets '@<label>' for a labelled caller, and 'session'
    is the caller's index (the session of that caller runs it)."""
    return [dict(query, query_id=query["query_id"] + ("@" + caller["label"] if caller["label"] else ""),
                 session=number)
            for number, caller in enumerate(callers(params)) for query in queries]


def open_session(params, caller=None):
    """A benchmark connection: read-only, with the statement timeout, the caller's role (else
    O(as_role)) and the caller's JWT claims, as PostgREST sets them."""
    caller = caller or {}
    role = caller.get("role") or params["as_role"]
    conn = connect(params)
    try:
        # Fetch JSON as text: parsing it in Python would add client time to the latency.
        psycopg2.extras.register_default_json(conn, loads=lambda text: text)
        psycopg2.extras.register_default_jsonb(conn, loads=lambda text: text)
        with conn.cursor() as cur:
            cur.execute("SET default_transaction_read_only = on")
            cur.execute("SELECT set_config('statement_timeout', %s, false)",
                        (str(params["statement_timeout_ms"]),))
            if caller.get("claims"):
                cur.execute("SELECT set_config('request.jwt.claims', %s, false)", (json.dumps(caller["claims"]),))
            if role:
                cur.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(role)))
    except psycopg2.Error as exc:
        conn.close()
        raise BenchmarkError("cannot prepare a benchmark session on %s: %s"
                             % (describe_target(params), str(exc).strip())) from exc
    return conn


def database_blocks(conn):
    """Current (blks_hit, blks_read) of the connected database, from a fresh stats snapshot."""
    with conn.cursor() as cur:
        cur.execute("SELECT pg_stat_clear_snapshot()")
        cur.execute("SELECT blks_hit, blks_read FROM pg_stat_database "
                    "WHERE datname = current_database()")
        return tuple(cur.fetchone())


def flush_stats(conn):
    """Make the backend publish its pending statistics now instead of within a second or so."""
    if conn.server_version >= 150000:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_stat_force_next_flush()")


def blocks_after(conn, before):
    """pg_stat_database blocks once the run's counts show up there (or after a short wait)."""
    deadline = time.monotonic() + STATS_POLL_TIMEOUT_S
    current = database_blocks(conn)
    while current == before and time.monotonic() < deadline:
        time.sleep(STATS_POLL_INTERVAL_S)
        current = database_blocks(conn)
    return current


def execute(conn, statement, arguments=None):
    with conn.cursor() as cur:
        cur.execute(statement, arguments)
        return cur.fetchall()


def explain(conn, options, statement):
    return json.loads(execute(conn, "EXPLAIN (%s, FORMAT JSON)\n%s" % (options, statement))[0][0])


def statements_relation(conn):
    """pg_stat_statements, schema-qualified, when installed and readable by this login, else None.

    Readable means: loaded by the server (the view fails otherwise) and the login may see the
    query ids of every role (pg_read_all_stats), as the benchmark may run as another role.
    """
    rows = execute(conn, "SELECT quote_ident(n.nspname) || '.pg_stat_statements'"
                         " FROM pg_extension AS e JOIN pg_namespace AS n ON n.oid = e.extnamespace"
                         " WHERE e.extname = 'pg_stat_statements'"
                         " AND pg_has_role(current_user, 'pg_read_all_stats', 'USAGE')")
    if not rows:
        return None
    try:
        execute(conn, "SELECT 1 FROM %s LIMIT 1" % rows[0][0])
    except psycopg2.Error:
        return None
    return rows[0][0]


def statement_counters(conn, relation, keys):
    """{(userid, queryid): (calls, shared_blks_hit, shared_blks_read, total_exec_time)} in this
    database, summed over the nesting levels: one entry per caller's role and query."""
    rows = execute(conn, "SELECT userid, queryid, sum(calls)::bigint, sum(shared_blks_hit)::bigint,"
                         " sum(shared_blks_read)::bigint, sum(total_exec_time)"
                         " FROM %s WHERE queryid = ANY(%%s::bigint[])"
                         " AND dbid = (SELECT oid FROM pg_database WHERE datname = current_database())"
                         " GROUP BY userid, queryid" % relation, (sorted({key[1] for key in keys}),))
    return {(row[0], row[1]): tuple(row[2:]) for row in rows}


def server_settings(conn):
    rows = execute(conn, "SELECT name, current_setting(name) FROM unnest(%s::text[]) AS name",
                   (list(PROVENANCE_SETTINGS),))
    return dict(rows)


def cpu_model():
    """The client's CPU model from /proc/cpuinfo (Linux), or the platform's processor string."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def gather_provenance(params, conn, seed):
    """What the run's figures depend on besides the queries: server, client and measurement."""
    provenance = dict(params["provenance"])
    provenance.update(
        server=dict(version=execute(conn, "SHOW server_version")[0][0], settings=server_settings(conn)),
        client=dict(cpu_count=os.cpu_count(), cpu_model=cpu_model(),
                    load_average=[round(value, 2) for value in os.getloadavg()],
                    python_version=platform.python_version(),
                    psycopg2_version=psycopg2.__version__.split(" ")[0]),
        measurement=dict({name: params[name] for name in MEASUREMENT_PARAMETERS},
                         client=CLIENT_KIND, seed=seed),
    )
    return provenance


# --------------------------------------------------------------------------
# Worker processes
# --------------------------------------------------------------------------

def prepare_statements(sessions, queries, prepared):
    """What runs each query: (its caller's session, EXECUTE of its prepared statement or the SQL)."""
    texts = []
    for index, query in enumerate(queries):
        conn = sessions[query.get("session", 0)]
        if not prepared:
            texts.append((conn, query["sql"]))
            continue
        try:
            with conn.cursor() as cur:
                cur.execute("PREPARE %s AS\n%s" % (PREPARED_NAME % index, query["sql"]))
        except psycopg2.Error as exc:
            raise QueryFailed(index, exc) from exc
        texts.append((conn, "EXECUTE " + PREPARED_NAME % index))
    return texts


def run_untimed(texts, indexes):
    for index in indexes:
        conn, text = texts[index]
        try:
            with conn.cursor() as cur:
                cur.execute(text)
                cur.fetchall()
        except psycopg2.Error as exc:
            raise QueryFailed(index, exc) from exc


def run_schedule(texts, schedule):
    """Time every execution of the schedule; returns (start, end, samples in ms per query, executor).

    Each sample covers executing the statement, receiving all its rows and freeing them, as one
    pgbench transaction does. (Freed by the next execute instead, as a psycopg2 cursor does, the
    43,000 rows of a map query added 4 ms to the point query after it at 1,000,000 features.)
    """
    executors = [statement_executor(conn, text) for conn, text in texts]
    samples = [[] for _ in texts]
    clock = time.perf_counter
    start = clock()
    for index in schedule:
        execute = executors[index][0]
        began = clock()
        try:
            execute()
        except (QueryFailed, psycopg2.Error) as exc:
            raise QueryFailed(index, exc) from exc
        samples[index].append(round((clock() - began) * 1000.0, 3))
    return start, clock(), samples, ", ".join(sorted({name for _, name in executors}))


def loaded_libpq():
    """The libpq psycopg2 runs on (psycopg2-binary loads its own copy), as a ctypes library with the
    four functions the throughput loop calls; None unless exactly one libpq is mapped in this
    process (Linux's /proc/self/maps)."""
    try:
        with open("/proc/self/maps", encoding="utf-8") as maps:
            paths = {fields[-1] for fields in (line.split() for line in maps)
                     if len(fields) >= 6 and os.path.basename(fields[-1]).startswith(("libpq.", "libpq-"))}
    except OSError:
        return None
    if len(paths) != 1:
        return None
    libpq = ctypes.CDLL(paths.pop())
    libpq.PQexecPrepared.restype = ctypes.c_void_p
    libpq.PQexecPrepared.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int, ctypes.c_void_p,
                                     ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int]
    libpq.PQresultStatus.restype = ctypes.c_int
    libpq.PQresultStatus.argtypes = [ctypes.c_void_p]
    libpq.PQresultErrorMessage.restype = ctypes.c_char_p
    libpq.PQresultErrorMessage.argtypes = [ctypes.c_void_p]
    libpq.PQclear.restype = None
    libpq.PQclear.argtypes = [ctypes.c_void_p]
    return libpq


def prepared_executor(conn, text):
    """For "EXECUTE <name>" on an autocommit connection: a function that executes that prepared
    statement through libpq on conn's own PGconn and discards the rows it received, raising
    QueryFailed on an error. None where that is not possible (then psycopg2 executes)."""
    if not text.startswith("EXECUTE ") or not conn.autocommit or not hasattr(conn, "pgconn_ptr"):
        return None
    libpq = loaded_libpq()
    if libpq is None:
        return None
    pgconn = ctypes.c_void_p(conn.pgconn_ptr)
    name = text[len("EXECUTE "):].encode()
    exec_prepared, result_status, clear = libpq.PQexecPrepared, libpq.PQresultStatus, libpq.PQclear

    def execute():
        result = exec_prepared(pgconn, name, 0, None, None, None, 0)
        if result_status(result) not in (PGRES_COMMAND_OK, PGRES_TUPLES_OK):
            message = (libpq.PQresultErrorMessage(result) or b"no result").decode(errors="replace")
            clear(result)
            raise QueryFailed(None, message)
        clear(result)
    return execute


def fetching_executor(conn, text):
    """Executes text on a cursor of its own, closed (its rows freed) before returning."""
    def execute():
        with conn.cursor() as cur:
            cur.execute(text)
            cur.fetchall()
    return execute


def statement_executor(conn, text):
    """(execute, name): the function that runs text once, and which of EXECUTORS it is."""
    execute = prepared_executor(conn, text)
    if execute is not None:
        return execute, EXECUTORS[0]
    return fetching_executor(conn, text), EXECUTORS[1]


def run_for(target, seconds):
    """Execute text back to back for seconds; returns (start, end, executions, executor).

    The loop does nothing but execute, receive all rows and read the clock, to keep the client's
    share of the time as small as pgbench's (executor: which of EXECUTORS ran).
    """
    execute_prepared, client = statement_executor(*target)
    clock = time.perf_counter
    count = 0
    start = clock()
    deadline = start + seconds
    try:
        while True:
            execute_prepared()
            count += 1
            if clock() >= deadline:
                break
    except psycopg2.Error as exc:
        raise QueryFailed(None, exc) from exc
    return start, clock(), count, client


def wait_for_signal(signal, parent_pid):
    while not signal.wait(LIVENESS_POLL_S):
        if os.getppid() != parent_pid:
            raise BenchmarkError("the benchmark's parent process is gone")


def describe_failure(exc, queries, phase):
    if isinstance(exc, QueryFailed):
        index = exc.index if exc.index is not None else phase.get("query")
        query = queries[index]
        where = " (%s)" % query["file"] if query.get("file") else ""
        return "query %s%s failed: %s" % (query["query_id"], where, exc)
    if isinstance(exc, BenchmarkError):
        return str(exc)
    return "benchmark worker failed: %s" % "".join(traceback.format_exception_only(exc)).strip()


def run_worker(params, queries, phases, number, signals, outbox):
    """One worker process: its own session per caller, then every phase, reporting to the parent.

    Messages are (kind, phase, worker, payload): ready (warm, waiting for the start signal),
    done (payload: the phase's measurements), exit (all done), error (payload: the message).
    """
    parent_pid = os.getppid()
    phase = {}
    sessions = []
    try:
        try:
            for caller in callers(params):
                sessions.append(open_session(params, caller))
            texts = prepare_statements(sessions, queries, params["prepared"])
            for phase_number, phase in enumerate(phases):
                run_untimed(texts, phase.get("warmup", []))
                outbox.put(("ready", phase_number, number, None))
                wait_for_signal(signals[phase_number], parent_pid)
                if "seconds" in phase:
                    payload = run_for(texts[phase["query"]], phase["seconds"])
                else:
                    payload = run_schedule(texts, phase["schedules"][number])
                outbox.put(("done", phase_number, number, payload))
            for conn in sessions:
                flush_stats(conn)
        finally:
            for conn in sessions:
                conn.close()
        outbox.put(("exit", None, number, None))
    except Exception as exc:  # any failure is the parent's to report; a worker must not hang it
        outbox.put(("error", None, number, describe_failure(exc, queries, phase)))


class WorkerPool:
    """Worker processes running the same phases, each one with its own connection.

    The parent lets the workers start a phase together, once all of them are ready (warm): the
    start signal is the barrier. Processes, not threads: the clients' Python work then runs in
    parallel, as separate application clients would.
    """

    def __init__(self, params, queries, phases, workers):
        context = multiprocessing.get_context(START_METHOD)
        self.outbox = context.Queue()
        self.signals = [context.Event() for _ in phases]
        self.inbox = {}
        self.processes = [
            context.Process(target=run_worker, name="gis_benchmark-%d" % number, daemon=True,
                            args=(params, queries, phases, number, self.signals, self.outbox))
            for number in range(workers)]

    def __enter__(self):
        for process in self.processes:
            process.start()
        return self

    def __exit__(self, *exc_info):
        for process in self.processes:
            if process.is_alive() and exc_info[0] is not None:
                process.terminate()
            process.join(LIVENESS_POLL_S * 5)
            if process.is_alive():
                process.kill()
                process.join()

    def _receive(self, message):
        kind, phase_number, worker, payload = message
        if kind == "error":
            raise BenchmarkError(payload)
        self.inbox.setdefault((kind, phase_number), {})[worker] = payload

    def wait_all(self, kind, phase_number=None):
        """The payloads of message kind for the phase from every worker, in worker order."""
        key = (kind, phase_number)
        while len(self.inbox.get(key, {})) < len(self.processes):
            try:
                self._receive(self.outbox.get(timeout=LIVENESS_POLL_S))
                continue
            except queue.Empty:
                pass
            ended = [number for number, process in enumerate(self.processes)
                     if process.exitcode is not None]
            # An ended process has written all its messages: read them before judging it.
            try:
                while True:
                    self._receive(self.outbox.get_nowait())
            except queue.Empty:
                pass
            lost = [number for number in ended if number not in self.inbox.get(("exit", None), {})]
            if lost:
                raise BenchmarkError("benchmark worker %d ended without reporting (exit code %s)"
                                     % (lost[0], self.processes[lost[0]].exitcode))
        return [self.inbox[key][number] for number in range(len(self.processes))]

    def run_phase(self, phase_number):
        """Wait until every worker is ready, start them together and return their payloads."""
        self.wait_all("ready", phase_number)
        self.signals[phase_number].set()
        return self.wait_all("done", phase_number)


# --------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------

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
        except psycopg2.Error as exc:
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
        except psycopg2.Error as exc:
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


# --------------------------------------------------------------------------
# Storage
# --------------------------------------------------------------------------

def qualified_tables(conn, schema):
    return {name: sql.Identifier(schema, name).as_string(conn)
            for name in ("runs", "query_results", "queries")}


def check_store_target(params):
    """Fail before measuring, not after, when the benchmark tables or columns are missing."""
    conn = connect(params)
    try:
        names = list(qualified_tables(conn, params["benchmark_schema"]).values())
        with conn.cursor() as cur:
            cur.execute("SELECT name FROM unnest(%s::text[]) AS name WHERE to_regclass(name) IS NULL",
                        (names,))
            missing = [name for (name,) in cur.fetchall()]
            wanted = [(table, column) for table, columns in PROVENANCE_COLUMNS.items() for column in columns]
            cur.execute("SELECT w.table_name || '.' || w.column_name"
                        " FROM unnest(%s::text[], %s::text[]) AS w(table_name, column_name)"
                        " WHERE NOT EXISTS (SELECT 1 FROM information_schema.columns AS c"
                        " WHERE c.table_schema = %s AND c.table_name = w.table_name"
                        " AND c.column_name = w.column_name)",
                        ([table for table, _ in wanted], [column for _, column in wanted],
                         params["benchmark_schema"]))
            missing_columns = [name for (name,) in cur.fetchall()]
    finally:
        conn.close()
    if missing:
        raise BenchmarkError("benchmark table(s) %s missing in %s: deploy "
                             "files/sql/benchmark_schema first, or set store=false"
                             % (", ".join(missing), describe_target(params)))
    if missing_columns:
        raise BenchmarkError("benchmark column(s) %s missing in schema %s of %s: deploy the change "
                             "benchmark_provenance (files/sql/benchmark_provenance) first, or set store=false"
                             % (", ".join(missing_columns), params["benchmark_schema"], describe_target(params)))


def query_result_row(key, query_id, stats, ci_level):
    """One query_results row; the JSON columns adapted for psycopg2."""
    ci = dict(level=ci_level, **{name: stats[name] for name in
                                 ("mean_ci_ms", "p50_ci_ms", "p95_ci_ms", "p99_ci_ms")})
    return dict(stats, run_id=key[0], stage=key[1], query_id=query_id, ci=psycopg2.extras.Json(ci),
                statements=psycopg2.extras.Json(stats["statements"]) if stats["statements"] else None,
                plan=psycopg2.extras.Json(stats["plan"]))


def store_run(params, benchmark, queries):
    """Replace the (run_id, stage) run and upsert the query catalog, in one transaction."""
    conn = connect(params)
    conn.autocommit = False
    try:
        tables = {name: sql.SQL(ident)
                  for name, ident in qualified_tables(conn, params["benchmark_schema"]).items()}
        key = (benchmark["run_id"], benchmark["stage"])
        with conn, conn.cursor() as cur:
            cur.execute("SET LOCAL lock_timeout = '5s'")
            # query_results go with their run (ON DELETE CASCADE).
            cur.execute(sql.SQL("DELETE FROM {} WHERE run_id = %s AND stage = %s")
                        .format(tables["runs"]), key)
            cur.execute(sql.SQL(
                "INSERT INTO {} (run_id, stage, started_at, finished_at, iterations, warmup,"
                " concurrency, executions, duration_s, qps, mean_ms, cache_hit_ratio, blks_hit,"
                " blks_read, server_version, as_role, prepared, execution_order, seed,"
                " throughput_seconds, ci_level, stats_source, provenance)"
                " VALUES (%(run_id)s, %(stage)s, %(started_at)s, %(finished_at)s, %(iterations)s,"
                " %(warmup)s, %(concurrency)s, %(executions)s, %(duration_s)s, %(qps)s,"
                " %(mean_ms)s, %(cache_hit_ratio)s, %(blks_hit)s, %(blks_read)s,"
                " %(server_version)s, %(as_role)s, %(prepared)s, %(order)s, %(seed)s,"
                " %(throughput_seconds)s, %(ci_level)s, %(stats_source)s, %(provenance)s)")
                .format(tables["runs"]),
                dict(benchmark, provenance=psycopg2.extras.Json(benchmark["provenance"])))
            cur.executemany(sql.SQL(
                "INSERT INTO {} AS q (query_id, sql_sha256, sql_text, first_seen, last_seen)"
                " VALUES (%(query_id)s, %(sql_sha256)s, %(sql)s, %(seen)s, %(seen)s)"
                " ON CONFLICT (query_id) DO UPDATE SET sql_sha256 = EXCLUDED.sql_sha256,"
                " sql_text = EXCLUDED.sql_text,"
                " first_seen = LEAST(q.first_seen, EXCLUDED.first_seen),"
                " last_seen = GREATEST(q.last_seen, EXCLUDED.last_seen)")
                .format(tables["queries"]),
                [dict(query, seen=benchmark["started_at"]) for query in queries])
            cur.executemany(sql.SQL(
                "INSERT INTO {} (run_id, stage, query_id, sql_sha256, calls, result_rows,"
                " mean_ms, p50_ms, p95_ms, p99_ms, min_ms, max_ms, stddev_ms, fingerprint,"
                " shared_hit, shared_read, samples_ms, qps, throughput_executions, ci, queryid,"
                " statements, plan)"
                " VALUES (%(run_id)s, %(stage)s, %(query_id)s, %(sql_sha256)s, %(calls)s,"
                " %(result_rows)s, %(mean_ms)s, %(p50_ms)s, %(p95_ms)s, %(p99_ms)s, %(min_ms)s,"
                " %(max_ms)s, %(stddev_ms)s, %(fingerprint)s, %(shared_hit)s, %(shared_read)s,"
                " %(samples_ms)s, %(qps)s, %(throughput_executions)s, %(ci)s, %(queryid)s,"
                " %(statements)s, %(plan)s)").format(tables["query_results"]),
                [query_result_row(key, query_id, stats, benchmark["ci_level"])
                 for query_id, stats in benchmark["queries"].items()])
    except psycopg2.Error as exc:
        raise BenchmarkError("cannot store the run in schema %s of %s: %s"
                             % (params["benchmark_schema"], describe_target(params),
                                str(exc).strip())) from exc
    finally:
        conn.close()


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    if not HAS_PSYCOPG2:
        module.fail_json(msg=missing_required_lib("psycopg2"), exception=PSYCOPG2_IMPORT_ERROR)
    params = module.params
    errors = check_args(params)
    if errors:
        module.fail_json(msg="invalid arguments: %s" % "; ".join(errors))

    store = params["store"] and not module.check_mode
    try:
        queries = with_callers(load_queries(params["queries_dir"]), params)
        if store:
            check_store_target(params)
        benchmark = run_benchmark(params, queries)
        if store:
            store_run(params, benchmark, queries)
    except BenchmarkError as exc:
        module.fail_json(msg=str(exc))
    except psycopg2.Error as exc:
        module.fail_json(msg="benchmark on %s failed: %s" % (describe_target(params),
                                                             str(exc).strip()))
    benchmark["stored"] = store
    module.exit_json(changed=store, benchmark=benchmark)


if __name__ == "__main__":
    main()

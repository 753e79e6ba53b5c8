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
extends_documentation_fragment:
  - action_common_attributes
  - biblioteca.stage4.connection
attributes:
  check_mode:
    support: full
    details: In check mode the queries are measured and returned but nothing is stored.
  diff_mode:
    support: none
  platform:
    platforms: posix
options:
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
  only:
    description:
      - Measure only these queries (their ids, with C(@<label>) for a labelled caller), to add samples
        to the few whose verdict is still open; empty, every query.
      - An id that names no query is an error.
    type: list
    elements: str
    default: []
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
    result. Through libpq (C(executor)) no row is turned into a Python object; through a cursor,
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
          C(client) (CPU count, CPU model and load average of the host running the module, Python and psycopg
          versions) and C(measurement) (the options that shape the measurement, and C(executor), how the timed
          executions (latency samples and throughput) ran their prepared statements - C(libpq PQexecPrepared)
          on the session's own connection through psycopg's libpq wrapper, as pgbench -M prepared does, or
          C(psycopg execute + fetchall) for a statement that is not prepared, O(prepared=false)) added.
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
          psycopg_version: 3.3.9
        measurement:
          concurrency: 2
          client: psycopg, one process and connection per client
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

import re
import traceback

from ansible.module_utils.basic import AnsibleModule, missing_required_lib
from ansible_collections.biblioteca.stage4.plugins.module_utils.bench_queries import load_queries
from ansible_collections.biblioteca.stage4.plugins.module_utils.bench_session import BenchmarkError, with_callers
from ansible_collections.biblioteca.stage4.plugins.module_utils.bench_store import check_store_target, store_run
from ansible_collections.biblioteca.stage4.plugins.module_utils.benchmark import run_benchmark
from ansible_collections.biblioteca.stage4.plugins.module_utils.postgres import CONNECTION_ARGUMENT_SPEC, describe_target

try:
    import psycopg
except ImportError:
    HAS_PSYCOPG = False
    PSYCOPG_IMPORT_ERROR = traceback.format_exc()
else:
    HAS_PSYCOPG = True
    PSYCOPG_IMPORT_ERROR = None

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
    only=dict(type="list", elements="str", default=[]),
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


def only_queries(queries, only):
    """The queries named in `only` (every query when it is empty), in their usual order."""
    if not only:
        return queries
    unknown = sorted(set(only) - {query["query_id"] for query in queries})
    if unknown:
        raise BenchmarkError("only: no query is named %s (the queries are %s)"
                             % (", ".join(unknown), ", ".join(query["query_id"] for query in queries)))
    return [query for query in queries if query["query_id"] in only]


def with_defaults(params):
    """The parameters with the module's defaults for what is not given."""
    complete = {name: spec.get("default") for name, spec in ARGUMENT_SPEC.items()}
    complete.update(params)
    return complete


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    if not HAS_PSYCOPG:
        module.fail_json(msg=missing_required_lib("psycopg"), exception=PSYCOPG_IMPORT_ERROR)
    params = module.params
    errors = check_args(params)
    if errors:
        module.fail_json(msg="invalid arguments: %s" % "; ".join(errors))

    store = params["store"] and not module.check_mode
    try:
        queries = only_queries(with_callers(load_queries(params["queries_dir"]), params), params["only"])
        if store:
            check_store_target(params)
        benchmark = run_benchmark(params, queries)
        if store:
            store_run(params, benchmark, queries)
    except BenchmarkError as exc:
        module.fail_json(msg=str(exc))
    except psycopg.Error as exc:
        module.fail_json(msg="benchmark on %s failed: %s" % (describe_target(params),
                                                             str(exc).strip()))
    benchmark["stored"] = store
    module.exit_json(changed=store, benchmark=benchmark)


if __name__ == "__main__":
    main()

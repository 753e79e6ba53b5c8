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
  - For each query it runs O(warmup) untimed executions on every benchmark connection, then
    O(iterations) timed executions spread over O(concurrency) connections working in parallel.
  - Once per query, untimed, it also fingerprints the result (so that a change of physical layout
    can be shown not to change the answer) and records the shared buffers of one
    C(EXPLAIN (ANALYZE, BUFFERS)).
  - The cache-hit ratio of the run is the delta of C(blks_hit) and C(blks_read) in
    C(pg_stat_database) for the database over the whole run. Other sessions on the same
    database count too.
  - Every benchmark session is read-only (C(default_transaction_read_only)), so a query file that
    writes fails instead of changing data.
  - With O(store=true) the run is written to the tables of O(benchmark_schema) (see
    C(files/sql/benchmark_schema/deploy.sql)) in one transaction, replacing an earlier run with
    the same O(run_id) and O(stage).
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
  concurrency:
    description:
      - Connections running the timed executions in parallel, each in its own thread (at least 1).
      - No more connections than O(iterations) are opened.
    type: int
    default: 2
  as_role:
    description:
      - Role to C(SET ROLE) to in every benchmark session, so that row level security and
        privileges apply as for the API (for example V(anon) or V(authenticated)).
      - O(login_user) must be a member of it. Storing the results is done as O(login_user).
    type: str
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
  - Latencies are measured with C(time.perf_counter) around execute and fetch of all rows, so they
    include the network round trip and the transfer of the result. JSON results are fetched as
    text, not parsed.
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
    store: false
  register: candidate

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
      description: Timed executions per query.
      type: int
      sample: 30
    warmup:
      description: Untimed executions per query and connection.
      type: int
      sample: 3
    concurrency:
      description: Connections used for the timed executions.
      type: int
      sample: 2
    executions:
      description: Timed executions of all queries.
      type: int
      sample: 300
    duration_s:
      description: Wall time of the timed phases of all queries, in seconds.
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
      description: Statistics per query id. Times are in milliseconds.
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
"""

import datetime
import hashlib
import json
import math
import os
import threading
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
BARRIER_TIMEOUT_S = 60.0

ARGUMENT_SPEC = dict(
    CONNECTION_ARGUMENT_SPEC,
    queries_dir=dict(type="path", required=True),
    run_id=dict(type="str", required=True),
    stage=dict(type="str", required=True),
    iterations=dict(type="int", default=30),
    warmup=dict(type="int", default=3),
    concurrency=dict(type="int", default=2),
    as_role=dict(type="str"),
    statement_timeout_ms=dict(type="int", default=60000),
    store=dict(type="bool", default=True),
    benchmark_schema=dict(type="str", default="stage4_benchmark"),
)


class BenchmarkError(Exception):
    """A failure to report to the user as is."""


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
    errors.extend("%s must not be empty" % name
                  for name in ("run_id", "stage", "benchmark_schema") if not params[name].strip())
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


def hit_ratio(blks_hit, blks_read):
    """Cache-hit ratio of a block delta, None when no block was touched."""
    total = blks_hit + blks_read
    return round(blks_hit / total, 6) if total else None


def top_node_buffers(explain_output):
    """Shared hit and read blocks of the top plan node of EXPLAIN (FORMAT JSON) output."""
    plan = explain_output[0]["Plan"]
    return plan.get("Shared Hit Blocks"), plan.get("Shared Read Blocks")


# --------------------------------------------------------------------------
# Database work
# --------------------------------------------------------------------------

def connect(params):
    """An autocommit connection; BenchmarkError naming the target (never the password)."""
    try:
        return open_connection(params, APPLICATION_NAME, autocommit=True)
    except ConnectionFailed as exc:
        raise BenchmarkError(str(exc)) from exc


def open_session(params):
    """A benchmark connection: read-only, with the statement timeout and the API role."""
    conn = connect(params)
    try:
        # Fetch JSON as text: parsing it in Python would add client time to the latency.
        psycopg2.extras.register_default_json(conn, loads=lambda text: text)
        psycopg2.extras.register_default_jsonb(conn, loads=lambda text: text)
        with conn.cursor() as cur:
            cur.execute("SET default_transaction_read_only = on")
            cur.execute("SELECT set_config('statement_timeout', %s, false)",
                        (str(params["statement_timeout_ms"]),))
            if params["as_role"]:
                cur.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(params["as_role"])))
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


def execute(conn, statement):
    with conn.cursor() as cur:
        cur.execute(statement)
        return cur.fetchall()


def warm(conn, statement, count):
    for _ in range(count):
        execute(conn, statement)


def in_parallel(function, argument_lists):
    """Call function(*arguments) for each list, each call in a thread of its own.

    Returns the results in order and re-raises the first exception of a thread. One thread per
    call, not a pool: the timed calls meet at a barrier, so they must all run at once.
    """
    results = [None] * len(argument_lists)
    errors = []

    def call(index, arguments):
        try:
            results[index] = function(*arguments)
        except Exception as exc:  # re-raised in the calling thread below
            errors.append(exc)

    threads = [threading.Thread(target=call, args=(index, arguments), daemon=True)
               for index, arguments in enumerate(argument_lists)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return results


def timed_phase(sessions, statement, iterations):
    """Run the timed executions on all sessions at once; return (wall seconds, samples in ms)."""
    # The timeout only guards against a thread that never arrives.
    barrier = threading.Barrier(len(sessions), timeout=BARRIER_TIMEOUT_S)

    def work(conn, count):
        barrier.wait()
        start = time.perf_counter()
        samples = []
        with conn.cursor() as cur:
            for _ in range(count):
                began = time.perf_counter()
                cur.execute(statement)
                cur.fetchall()
                samples.append(round((time.perf_counter() - began) * 1000.0, 3))
        return start, time.perf_counter(), samples

    results = in_parallel(work, list(zip(sessions, split_iterations(iterations, len(sessions)))))
    wall = max(end for _, end, _ in results) - min(start for start, _, _ in results)
    return wall, [sample for _, _, samples in results for sample in samples]


def measure_query(control, sessions, query, params):
    """Fingerprint, warm up, time and EXPLAIN one query."""
    statement = query["sql"]
    rows = execute(control, statement)
    if params["warmup"]:
        in_parallel(warm, [(conn, statement, params["warmup"]) for conn in sessions])
    wall, samples = timed_phase(sessions, statement, params["iterations"])
    # After the timed phase, so the buffers are those of the steady state that was measured.
    explain = execute(control, "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON)\n" + statement)
    shared_hit, shared_read = top_node_buffers(json.loads(explain[0][0]))
    stats = summarize(samples)
    stats.update(file=query["file"], sql_sha256=query["sql_sha256"], result_rows=len(rows),
                 fingerprint=fingerprint(rows), shared_hit=shared_hit, shared_read=shared_read)
    return wall, stats


def run_benchmark(params, queries):
    """Measure all queries; return the benchmark dict (without 'stored')."""
    control = open_session(params)
    sessions = []
    try:
        for _ in range(min(params["concurrency"], params["iterations"])):
            sessions.append(open_session(params))
        before = database_blocks(control)
        started_at = datetime.datetime.now(datetime.timezone.utc)
        results, duration, all_samples = {}, 0.0, []
        for query in queries:
            try:
                wall, stats = measure_query(control, sessions, query, params)
            except psycopg2.Error as exc:
                raise BenchmarkError("query %s (%s) failed: %s"
                                     % (query["query_id"], query["file"], str(exc).strip())) from exc
            duration += wall
            all_samples.extend(stats["samples_ms"])
            results[query["query_id"]] = stats
        finished_at = datetime.datetime.now(datetime.timezone.utc)
        for conn in sessions + [control]:
            flush_stats(conn)
        after = blocks_after(control, before)
        server_version = execute(control, "SHOW server_version")[0][0]
    finally:
        for conn in sessions + [control]:
            conn.close()
    blks_hit, blks_read = after[0] - before[0], after[1] - before[1]
    executions = len(all_samples)
    return dict(
        run_id=params["run_id"], stage=params["stage"],
        started_at=started_at.isoformat(), finished_at=finished_at.isoformat(),
        iterations=params["iterations"], warmup=params["warmup"], concurrency=len(sessions),
        executions=executions, duration_s=round(duration, 6),
        qps=round(executions / duration, 3) if duration > 0 else None,
        mean_ms=round(sum(all_samples) / executions, 3),
        cache_hit_ratio=hit_ratio(blks_hit, blks_read), blks_hit=blks_hit, blks_read=blks_read,
        server_version=server_version, as_role=params["as_role"], queries=results,
    )


def qualified_tables(conn, schema):
    return {name: sql.Identifier(schema, name).as_string(conn)
            for name in ("runs", "query_results", "queries")}


def check_store_target(params):
    """Fail before measuring, not after, when the benchmark tables are missing."""
    conn = connect(params)
    try:
        names = list(qualified_tables(conn, params["benchmark_schema"]).values())
        with conn.cursor() as cur:
            cur.execute("SELECT name FROM unnest(%s::text[]) AS name WHERE to_regclass(name) IS NULL",
                        (names,))
            missing = [name for (name,) in cur.fetchall()]
    finally:
        conn.close()
    if missing:
        raise BenchmarkError("benchmark table(s) %s missing in %s: deploy "
                             "files/sql/benchmark_schema first, or set store=false"
                             % (", ".join(missing), describe_target(params)))


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
                " blks_read, server_version, as_role)"
                " VALUES (%(run_id)s, %(stage)s, %(started_at)s, %(finished_at)s, %(iterations)s,"
                " %(warmup)s, %(concurrency)s, %(executions)s, %(duration_s)s, %(qps)s,"
                " %(mean_ms)s, %(cache_hit_ratio)s, %(blks_hit)s, %(blks_read)s,"
                " %(server_version)s, %(as_role)s)").format(tables["runs"]), benchmark)
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
                " shared_hit, shared_read, samples_ms)"
                " VALUES (%(run_id)s, %(stage)s, %(query_id)s, %(sql_sha256)s, %(calls)s,"
                " %(result_rows)s, %(mean_ms)s, %(p50_ms)s, %(p95_ms)s, %(p99_ms)s, %(min_ms)s,"
                " %(max_ms)s, %(stddev_ms)s, %(fingerprint)s, %(shared_hit)s, %(shared_read)s,"
                " %(samples_ms)s)").format(tables["query_results"]),
                [dict(stats, run_id=key[0], stage=key[1], query_id=query_id)
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
        queries = load_queries(params["queries_dir"])
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

# -*- coding: utf-8 -*-
"""Stores a benchmark run in the benchmark schema (files/sql/benchmark_schema), replacing an earlier one.
"""
from __future__ import annotations

from ansible_collections.biblioteca.stage4.plugins.module_utils.bench_session import BenchmarkError, connect
from ansible_collections.biblioteca.stage4.plugins.module_utils.postgres import describe_target

try:
    import psycopg
    from psycopg import sql
    from psycopg.types.json import Jsonb
except ImportError:  # gis_benchmark reports it
    pass


# Columns of the benchmark tables added by the benchmark_provenance change.
PROVENANCE_COLUMNS = {
    "runs": ("prepared", "execution_order", "seed", "throughput_seconds", "ci_level", "stats_source",
             "provenance"),
    "query_results": ("qps", "throughput_executions", "ci", "queryid", "statements", "plan"),
}


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
    """One query_results row; the JSON columns adapted for psycopg."""
    ci = dict(level=ci_level, **{name: stats[name] for name in
                                 ("mean_ci_ms", "p50_ci_ms", "p95_ci_ms", "p99_ci_ms")})
    return dict(stats, run_id=key[0], stage=key[1], query_id=query_id, ci=Jsonb(ci),
                statements=Jsonb(stats["statements"]) if stats["statements"] else None,
                plan=Jsonb(stats["plan"]))


def store_run(params, benchmark, queries):
    """Replace the (run_id, stage) run and upsert the query catalog, in one transaction."""
    conn = connect(params)
    try:
        tables = {name: sql.SQL(ident)
                  for name, ident in qualified_tables(conn, params["benchmark_schema"]).items()}
        key = (benchmark["run_id"], benchmark["stage"])
        with conn.transaction(), conn.cursor() as cur:
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
                dict(benchmark, provenance=Jsonb(benchmark["provenance"])))
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
    except psycopg.Error as exc:
        raise BenchmarkError("cannot store the run in schema %s of %s: %s"
                             % (params["benchmark_schema"], describe_target(params),
                                str(exc).strip())) from exc
    finally:
        conn.close()

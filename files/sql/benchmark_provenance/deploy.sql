-- Deploy stage4:benchmark_provenance
--
-- What library/gis_benchmark.py records besides latencies, on top of
-- benchmark_schema (whose files stay as they were applied): per run, how it
-- was measured (prepared statements, execution order and its seed, the
-- throughput phase, the confidence level), where the per-query server
-- counters come from, and the provenance of the figures; per query, its
-- throughput, confidence intervals, pg_stat_statements counters and plan.
-- Existing rows get NULLs: runs measured before this change did not have them.
--
-- The caller runs this file in a single transaction.

SET lock_timeout = '5s';

ALTER TABLE stage4_benchmark.runs
    ADD COLUMN IF NOT EXISTS prepared           boolean,
    ADD COLUMN IF NOT EXISTS execution_order    text CHECK (execution_order IN ('interleaved', 'sequential')),
    ADD COLUMN IF NOT EXISTS seed               bigint,
    ADD COLUMN IF NOT EXISTS throughput_seconds double precision CHECK (throughput_seconds >= 0),
    ADD COLUMN IF NOT EXISTS ci_level           double precision CHECK (ci_level > 0 AND ci_level < 1),
    ADD COLUMN IF NOT EXISTS stats_source       text CHECK (stats_source IN ('pg_stat_statements', 'pg_stat_database')),
    ADD COLUMN IF NOT EXISTS provenance         jsonb;
COMMENT ON COLUMN stage4_benchmark.runs.execution_order IS
    'interleaved: rounds of all queries in a random order (seed); sequential: one query after the other.';
COMMENT ON COLUMN stage4_benchmark.runs.stats_source IS
    'Source of the per-query server counters: pg_stat_statements, or pg_stat_database (none per query).';
COMMENT ON COLUMN stage4_benchmark.runs.provenance IS
    'Given by the caller (git commit, SQL checksums, dataset) plus server, client and measurement settings.';

ALTER TABLE stage4_benchmark.query_results
    ADD COLUMN IF NOT EXISTS qps                   double precision,
    ADD COLUMN IF NOT EXISTS throughput_executions bigint,
    ADD COLUMN IF NOT EXISTS ci                    jsonb,
    ADD COLUMN IF NOT EXISTS queryid               bigint,
    ADD COLUMN IF NOT EXISTS statements            jsonb,
    ADD COLUMN IF NOT EXISTS plan                  jsonb;
COMMENT ON COLUMN stage4_benchmark.query_results.qps IS
    'Executions per second of the query alone on all benchmark clients (throughput phase); NULL without it.';
COMMENT ON COLUMN stage4_benchmark.query_results.ci IS
    'Confidence intervals in ms: {level, mean_ci_ms, p50_ci_ms, p95_ci_ms, p99_ci_ms}, each [low, high] or null.';
COMMENT ON COLUMN stage4_benchmark.query_results.statements IS
    'pg_stat_statements deltas over the timed executions (calls, blocks, execution time); NULL without it.';
COMMENT ON COLUMN stage4_benchmark.query_results.plan IS
    'Shape, node types, relations and timings of one EXPLAIN (ANALYZE, BUFFERS, VERBOSE) after the timed phase.';

-- Verify stage4:benchmark_schema
--
-- Fails (raises) unless every table and view of deploy.sql exists with its
-- columns and the schema is out of reach of PUBLIC and the API roles.

SET lock_timeout = '5s';

SELECT run_id, stage, started_at, finished_at, iterations, warmup, concurrency, executions,
       duration_s, qps, mean_ms, cache_hit_ratio, blks_hit, blks_read, server_version, as_role
FROM stage4_benchmark.runs
WHERE false;

SELECT run_id, stage, query_id, sql_sha256, calls, result_rows, mean_ms, p50_ms, p95_ms, p99_ms,
       min_ms, max_ms, stddev_ms, fingerprint, shared_hit, shared_read, samples_ms
FROM stage4_benchmark.query_results
WHERE false;

SELECT query_id, sql_sha256, sql_text, first_seen, last_seen
FROM stage4_benchmark.queries
WHERE false;

SELECT stage, run_id, started_at, query_id, p50_ms, mean_ms, fingerprint
FROM stage4_benchmark.latest_per_stage
WHERE false;

SELECT run_id, stage, query_id, baseline_p50_ms, baseline_mean_ms, p50_ms, mean_ms,
       delta_p50_ms, delta_mean_ms, delta_p50_pct, delta_mean_pct, fingerprint_changed
FROM stage4_benchmark.delta_vs_baseline
WHERE false;

DO $$
DECLARE
    grantee text;
BEGIN
    -- query_results must go away with its run.
    IF NOT EXISTS (
        SELECT 1 FROM pg_catalog.pg_constraint
        WHERE conrelid = 'stage4_benchmark.query_results'::regclass
          AND confrelid = 'stage4_benchmark.runs'::regclass
          AND contype = 'f' AND confdeltype = 'c'
    ) THEN
        RAISE EXCEPTION 'stage4_benchmark.query_results lacks its ON DELETE CASCADE key to runs';
    END IF;

    FOR grantee IN
        SELECT 'public'
        UNION ALL
        SELECT rolname FROM pg_catalog.pg_roles WHERE rolname IN ('anon', 'authenticated')
    LOOP
        IF has_schema_privilege(grantee, 'stage4_benchmark', 'USAGE') THEN
            RAISE EXCEPTION 'role % can use schema stage4_benchmark', grantee;
        END IF;
    END LOOP;
END
$$;
